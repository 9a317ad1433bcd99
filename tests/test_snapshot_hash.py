"""On DuckDB a snapshot is narrowed by one hash per key of its compared attributes, each cast to
the stored column's type first; these tests hold that hash to the builder's own comparison.

The string-only narrowing test cannot see what a hash gets wrong across types, so here the
dimension's attributes span them, and the transform hands the builder other types than the
table stores: a BIGINT as Int32, a DECIMAL(12,2) at scale 4, a DOUBLE (0.0, -0.0, NaN, NULL) as
Float32, a TIMESTAMPTZ in nanoseconds; and a BOOLEAN, a DATE, an Enum and two texts as they are.
DuckDB hashes a DECIMAL by its scale, a FLOAT apart from a DOUBLE and a nanosecond time by its
nanoseconds, so without the cast an unchanged record would hash apart (an INTEGER hashes as a
BIGINT). The builder takes 0.0 and -0.0 for one value, and NaN for NaN whatever its sign; so
does DuckDB's hash, and the nightly build agrees: such a record is unchanged. A value the
stored type cannot hold casts to NULL: it must still reach the builder, not pass for a NULL.

(A Polars Enum reaches DuckDB as VARCHAR and is stored so; a transform handing it over as text
fails the first publish whatever the narrowing does, so text against ENUM cannot arise here.)

The project is a user's, written as text, built through the installed command."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from tests.user_projects import build_in_process, land_daily, starsmith_toml

FIRST = date(2024, 5, 1)
DAYS = 6
KEYS = 300
STATUSES = ["new", "open", "closed"]

MODELS = '''\
"""Items, snapshotted whole every day, with attributes of many types."""

from __future__ import annotations

import polars as pl

from starsmith import Cadence, Column, Guard, Input, Kind, Model, Source, Strategy
from starsmith.contract import dimension_columns
from starsmith.dimensions import ChangeDetection, DeletePolicy, DimensionSpec, SCDType

ITEMS = Source("items", "parquet", (
    Column("item_id", pl.Int64(), "item number"),
    Column("qty", pl.Int64(), "units on hand"),
    Column("price", pl.Decimal(16, 4), "list price, exported at scale 4"),
    Column("ratio", pl.Float64(), "fill ratio: 0.0, -0.0, NaN or NULL too"),
    Column("active", pl.Boolean(), "on sale"),
    Column("since", pl.Date(), "listed on"),
    Column("seen_at", pl.Datetime("us", "UTC"), "last counted"),
    Column("status", pl.Enum(["new", "open", "closed"]), "workflow state"),
    Column("note", pl.String(), "free text, empty or NULL too"),
    Column("origin", pl.String(), "where it was first listed"),
), cadence=Cadence.SNAPSHOT, guard=Guard(max_closed=0.5))

STG = Model(
    name="stg_items", kind=Kind.STAGING, inputs=(Input("landing.items"),),
    columns=(*ITEMS.columns, Column("load_date", pl.Date(), "landing day", nullable=False)),
    transform=lambda i, ctx: i["landing.items"].with_columns(load_date=pl.lit(ctx.logical_date)),
    strategy=Strategy.PARTITION, partition_by="load_date", description="items as landed")

# the dimension keeps prices at scale 2 (a value that does not fit must not be dropped)
STORED = tuple(Column(c.name, pl.Decimal(12, 2), c.description) if c.name == "price" else c
               for c in ITEMS.columns)

SPEC = DimensionSpec(
    name="dim_item", surrogate_key="item_key", natural_key=("item_id",),
    columns=(("origin", SCDType.FIXED),
             ("qty", SCDType.VERSIONED), ("price", SCDType.VERSIONED),
             ("active", SCDType.VERSIONED), ("seen_at", SCDType.VERSIONED),
             ("status", SCDType.VERSIONED),
             ("ratio", SCDType.OVERWRITE), ("since", SCDType.OVERWRITE),
             ("note", SCDType.OVERWRITE)),
    detection=ChangeDetection.CHECK, snapshot=True, deletes=DeletePolicy.NEW_RECORD)

# The builder gets narrower or other types than the table stores: the hash must not care.
DIM = Model(
    name="dim_item", kind=Kind.DIMENSION, inputs=(Input("stg_items"),),
    columns=dimension_columns(SPEC, STORED),
    transform=lambda i, ctx: i["stg_items"].select(
        "item_id", "origin",
        pl.col("qty").cast(pl.Int32),
        "price",
        "active",
        pl.col("seen_at").cast(pl.Datetime("ns", "UTC")),
        "status",
        pl.col("ratio").cast(pl.Float32),
        "since", "note"),
    strategy=Strategy.SCD, dimension=SPEC, unique_key=("item_key",),
    description="one row per item version")
'''

SCHEMA = pl.Schema({
    "item_id": pl.Int64(), "qty": pl.Int64(), "price": pl.Decimal(16, 4),
    "ratio": pl.Float64(), "active": pl.Boolean(), "since": pl.Date(),
    "seen_at": pl.Datetime("us", "UTC"), "status": pl.Enum(STATUSES), "note": pl.String(),
    "origin": pl.String(),
})

# the ratios drawn: both zeros, NaN, NULL and plain values
RATIOS = [0.0, -0.0, float("nan"), None, 1.5, -2.25]


def _pools(rng: np.random.Generator, n: int) -> dict[str, list[object]]:
    """``n`` random values of each attribute, a fifth of them NULL, awkward values included."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    ints = rng.integers(0, 100_000, n)
    values: dict[str, list[object]] = {
        "qty": [int(x) % 1000 for x in ints],
        "price": [Decimal(int(x)).scaleb(-2) for x in ints],  # at scale 2 but sent at scale 4
        "ratio": [RATIOS[int(x)] for x in rng.integers(0, len(RATIOS), n)],
        "active": [bool(x % 2) for x in ints],
        "since": [date(2020, 1, 1) + timedelta(int(x) % 1500) for x in ints],
        "seen_at": [start + timedelta(microseconds=int(x)) for x in rng.integers(0, 10**13, n)],
        "status": [STATUSES[int(x) % 3] for x in ints],
        "note": [["", "a", "b", "ä ✓"][int(x) % 4] for x in ints],
    }
    values = {c: [None if hole else v for v, hole in zip(vs, rng.random(n) < 0.2, strict=True)]
              for c, vs in values.items()}
    return {**values, "origin": [f"shop {int(x) % 5}" for x in ints]}


def _frame(ids: list[int], pools: dict[str, list[object]]) -> pl.DataFrame:
    return pl.DataFrame({"item_id": ids, **pools}, schema=SCHEMA)


def _flip_zero(ratio: pl.Expr) -> pl.Expr:
    """0.0 as -0.0 and back, NaN with its sign flipped: equal to the builder, other bits."""
    return pl.when(ratio == 0.0).then(-ratio).when(ratio.is_nan()).then(-ratio).otherwise(ratio)


def snapshots(seed: int) -> list[pl.DataFrame]:
    """``DAYS`` daily snapshots, each the day before with changes of every type and kind."""
    rng = np.random.default_rng(seed)
    day = _frame(list(range(1, KEYS + 1)), _pools(rng, KEYS))
    out, gone, next_id = [], day.clear(), KEYS + 1
    for n in range(DAYS):
        if n:
            fresh = _frame(day["item_id"].to_list(), _pools(rng, day.height))
            pick = rng.random((day.height, len(SCHEMA)))
            day = day.with_columns(
                pl.when(pl.Series(pick[:, i] < 0.04)).then(fresh[c]).otherwise(pl.col(c)).alias(c)
                for i, c in enumerate(SCHEMA.names()) if c != "item_id")
            # some zeros change sign and some NaNs theirs: no change to the builder (column 0
            # of the draws is the key's, otherwise unused)
            day = day.with_columns(ratio=pl.when(pl.Series(pick[:, 0] < 0.3))
                                   .then(_flip_zero(pl.col("ratio"))).otherwise("ratio"))
            leaving = pl.Series(rng.random(day.height) < 0.03)
            back = gone.sample(min(gone.height, 3), seed=seed + n)
            back = back.with_columns(qty=pl.col("qty").fill_null(0) + 1)  # back, changed
            new = _frame(list(range(next_id, next_id + 4)), _pools(rng, 4))
            next_id += 4
            gone = pl.concat([gone.join(back, on="item_id", how="anti"), day.filter(leaving)])
            day = pl.concat([day.filter(~leaving), back, new])
        landed = day
        if n == 2:  # a record with no key: quarantined
            landed = pl.concat([landed, landed.head(1).with_columns(item_id=pl.lit(None, pl.Int64))])
        out.append(landed.sample(fraction=1.0, shuffle=True, seed=seed + n))
    return out


def project(root: Path, frames: list[pl.DataFrame]) -> Path:
    """The user's project, with ``frames`` landed one a day from ``FIRST``."""
    (root / "models").mkdir(parents=True)
    (root / "starsmith.toml").write_text(starsmith_toml("items"))
    (root / "models" / "items.py").write_text(MODELS)
    land_daily(root, "items", frames, FIRST)
    return root


def build(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return build_in_process(root, *args)


def rows(root: Path, name: str) -> list[str]:
    """A table's rows as text, sorted: -0.0 is not 0.0 here, and NaN is NaN."""
    con = duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True)
    try:
        frame = con.sql(f"SELECT * FROM {name}").pl()
    finally:
        con.close()
    drop = [c for c in ("run_id", "quarantined_at") if name.endswith("__quarantine") and c in frame.columns]
    return sorted(map(repr, frame.drop(drop).rows()))


def run_log(root: Path) -> list[tuple[str, str, str]]:
    """The dimension's steps, by day: (status, details, message)."""
    con = duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True)
    try:
        found = con.sql("SELECT status, details, coalesce(message, '') FROM _starsmith.run_log"
                        " WHERE model = 'dim_item' ORDER BY logical_date, started_at").fetchall()
    finally:
        con.close()
    return [(str(a), str(b), str(c)) for a, b, c in found]


def nightly(root: Path, frames: list[pl.DataFrame]) -> Path:
    """The days built night by night, each narrowed."""
    project(root, frames)
    for n in range(len(frames)):
        done = build(root, "--date", (FIRST + timedelta(n)).isoformat())
        assert done.returncode == 0, done.stdout + done.stderr
    return root


def refreshed(root: Path, days: int) -> Path:
    """A copy of a built project rebuilt by a full refresh of its days (no narrowing)."""
    copy = root.with_name(root.name + "_refreshed")
    shutil.copytree(root, copy)
    done = build(copy, "--full-refresh", "--date", (FIRST + timedelta(days - 1)).isoformat())
    assert done.returncode == 0, done.stdout + done.stderr
    return copy


def assert_changes_of_every_kind(frames: list[pl.DataFrame]) -> None:
    """The days change every attribute to NULL, from NULL and between values, and flip zeros'
    and NaNs' signs: the data holds what the test says it does."""
    seen: dict[str, set[str]] = {c: set() for c in SCHEMA.names() if c != "item_id"}
    for before, after in itertools.pairwise(frames):
        both = before.drop_nulls("item_id").join(after.drop_nulls("item_id"), on="item_id",
                                                 suffix="_new")
        for c, kinds in seen.items():
            old, new = both[c], both[f"{c}_new"]
            kinds.update(k for k, hit in (
                ("to NULL", (old.is_not_null() & new.is_null()).any()),
                ("from NULL", (old.is_null() & new.is_not_null()).any()),
                ("changed", (old.is_not_null() & new.is_not_null() & old.ne(new)).any()),
            ) if hit)
        old, new = both["ratio"], both["ratio_new"]
        if (old.eq(0.0) & new.eq(0.0) & (1 / old).ne(1 / new)).any():  # 1/-0.0 is -inf
            seen["ratio"].add("0.0 <-> -0.0")
    assert all({"to NULL", "from NULL", "changed"} <= kinds for c, kinds in seen.items()
               if c != "origin"), seen
    assert "0.0 <-> -0.0" in seen["ratio"], seen


def test_nightly_snapshots_equal_a_full_refresh(tmp_path: Path) -> None:
    """Changes of every type, to and from NULL, keys deleted and back: the nightly builds, each
    narrowed by the hash, end exactly as the full refresh that hands the builder everything."""
    frames = snapshots(11)
    assert_changes_of_every_kind(frames)
    night = nightly(tmp_path / "p", frames)
    # the hash really narrowed: most records of each later night were left out
    later = [json.loads(d)["unchanged"] for _, d, _ in run_log(night)[1:]]
    assert len(later) == DAYS - 1 and all(n > KEYS / 2 for n in later), later
    full = refreshed(night, DAYS)

    got, want = rows(night, "dim_item"), rows(full, "dim_item")
    assert got == want, (sorted(set(got) - set(want))[:5], sorted(set(want) - set(got))[:5])
    assert len(got) > KEYS * 2  # the days really made versions
    q_got, q_want = rows(night, "dim_item__quarantine"), rows(full, "dim_item__quarantine")
    assert q_got and q_got == q_want


@pytest.mark.parametrize("flip", [False, True], ids=["repeated", "zeros_and_nans_flipped"])
def test_a_repeated_snapshot_is_all_unchanged(tmp_path: Path, flip: bool) -> None:
    """Every record of a night that repeats the day before hashes as its key's current version,
    though the builder is handed Int32, DECIMAL(16,4), Float32 and nanoseconds; a 0.0 sent as
    -0.0 (or a NaN with the other sign) is no change to the builder (its full refresh makes no
    version of that day), nor to the hash."""
    first = snapshots(5)[-1]  # a later day: every type has its NULLs, NaNs and zeros
    again = first.with_columns(ratio=_flip_zero(pl.col("ratio"))) if flip else first
    assert first["ratio"].is_nan().any() and first["ratio"].eq(0.0).any()
    assert all(first[c].null_count() for c in SCHEMA.names() if c not in ("item_id", "origin"))
    night = nightly(tmp_path / "p", [first, again])

    status, found, _ = run_log(night)[1]
    assert status == "success"
    assert json.loads(found)["unchanged"] == first.height, found
    want = rows(refreshed(night, 2), "dim_item")  # the builder's own verdict on every record
    assert rows(night, "dim_item") == want
    assert len(want) == first.height + 2  # one version a key (and the two reserved members)


def test_a_value_the_table_cannot_hold_is_not_dropped(tmp_path: Path) -> None:
    """A price beyond DECIMAL(12,2) would cast to NULL, as the stored NULL, and hash alike: the
    night must fail naming the column instead of dropping the record as unchanged, and a full
    refresh must refuse it the same way (its in-memory replay would have published NULL)."""
    day = snapshots(3)[0].head(2).with_columns(price=pl.lit(None, pl.Decimal(16, 4)))
    huge = day.with_columns(price=pl.when(pl.col("item_id") == day["item_id"][0])
                            .then(pl.lit(Decimal("100000000000.0000"), pl.Decimal(16, 4))))
    root = project(tmp_path / "p", [day, huge])
    done = build(root, "--date", FIRST.isoformat())
    assert done.returncode == 0, done.stdout + done.stderr
    before = rows(root, "dim_item")
    done = build(root, "--date", (FIRST + timedelta(1)).isoformat())
    assert done.returncode != 0, done.stdout + done.stderr
    status, _, message = run_log(root)[1]
    assert status == "failed" and "price" in message, message  # refused, naming the column
    assert rows(root, "dim_item") == before  # nothing published
    refreshed = build(root, "--full-refresh", "--date", (FIRST + timedelta(1)).isoformat())
    assert refreshed.returncode != 0, refreshed.stdout + refreshed.stderr
    assert run_log(root)[-1][2] == message
    assert rows(root, "dim_item") == before
