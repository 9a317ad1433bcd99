"""A late record in a change feed is placed in its key's history with every record already seen,
and the versions after it are recomputed: the dimension ends as if all records came at once."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from tests.faults.harness import Demo, day


def _records(demo: Demo, customer: int, rows: list[tuple[str, str, datetime, int]]
             ) -> pl.DataFrame:
    template = demo.read("customers", 1).filter(pl.col("customer_id") == customer).head(1)
    return pl.concat([template.with_columns(
        address=pl.lit(address), email=pl.lit(email), op=pl.lit("U"),
        updated_at=pl.lit(at, dtype=pl.Datetime("us")), change_seq=pl.lit(seq, dtype=pl.Int64))
        for address, email, at, seq in rows])


def _land(demo: Demo, n: int, extra: pl.DataFrame) -> None:
    demo.reland("customers", n, pl.concat([demo.read("customers", n), extra.select(
        demo.read("customers", n).columns)], how="vertical_relaxed"))


def _versions(demo: Demo, customer: int) -> pl.DataFrame:
    return demo.query(f"SELECT address, email, valid_from, valid_to, is_current FROM dim_customer "
                      f"WHERE customer_id = {customer} AND valid_from >= TIMESTAMP '{day(5)}' "
                      "ORDER BY valid_from")


RECORDS = [("549 Early St", "a@x.org", datetime(2024, 1, 5, 1, 4), 10**9 + 1),
           ("826 Late Ave", "a@x.org", datetime(2024, 1, 5, 19, 1), 10**9 + 2),
           ("549 Early St", "b@x.org", datetime(2024, 1, 5, 21, 20), 10**9 + 3)]


def test_a_record_a_day_late_lands_where_it_belongs(tmp_path: Path) -> None:
    together = Demo(tmp_path / "together", days=6)
    _land(together, 5, _records(together, 7, RECORDS))
    together.build()

    late = Demo(tmp_path / "late", days=6)
    _land(late, 5, _records(late, 7, [RECORDS[0], RECORDS[2]]))
    _land(late, 6, _records(late, 7, [RECORDS[1]]))  # the 19:01 record arrives a day late
    for n in range(1, 7):
        late.build("--date", str(day(n)))

    want = _versions(together, 7)
    assert want["address"].to_list() == ["549 Early St", "826 Late Ave", "549 Early St"]
    assert want.filter("is_current")["address"].to_list() == ["549 Early St"]
    got = _versions(late, 7)
    assert got.equals(want), (got, want)
    held = late.query("SELECT count(*) AS n FROM dim_customer__quarantine WHERE customer_id = 7")
    assert held["n"][0] == 0  # placed, not quarantined
    # and a full refresh of the late landing gives what the nightly builds gave
    nightly = late.tables()
    late.build("--full-refresh")
    refreshed = late.tables()
    for name, frame in nightly.items():
        assert refreshed[name].equals(frame), name
