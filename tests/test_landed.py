"""When a landing day is complete and how it is read: AUTO markers from the first marked day on,
empty change-feed days, drift against the previous landing, what a whole read verifies, and
half-written manifests."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

import starsmith.loaders.landed as landed_mod
import starsmith.loaders.landing as landing_mod
from starsmith.contract import (
    BuildContext,
    Cadence,
    Column,
    Completion,
    Input,
    Kind,
    Model,
    Source,
    Strategy,
    Window,
)
from starsmith.errors import DataError, SourceMissing
from starsmith.loaders.landed import (
    MANIFEST,
    MARKER,
    LandedDay,
    fingerprint,
    first_marker_day,
    incomplete,
    landed,
    landed_dates,
    write_manifest,
)
from starsmith.loaders.landing import (
    check_drift,
    day_landing,
    fingerprints,
    landed_columns,
    scan_source,
    source_folder,
)
from starsmith.orchestration.step import _landings
from starsmith.registry import build_catalogue

D0 = date(2024, 3, 1)
COLS = (Column("id", pl.Int64(), nullable=False), Column("name", pl.String()))


def day(n: int) -> date:
    return D0 + timedelta(days=n - 1)


def src(name: str = "feed", cadence: Cadence = Cadence.DAILY, fmt: str = "csv",
        columns: tuple[Column, ...] = COLS, **kw: object) -> Source:
    return Source(name, fmt, columns, cadence=cadence, **kw)  # type: ignore[arg-type]


def land(landing: Path, source: Source, n: int, frame: pl.DataFrame | None = None, *,
         marker: bool = False, manifest: bool = False, name: str = "part-0") -> Path:
    """Land day ``n``: a data file (unless ``frame`` is None), then a marker or manifest."""
    folder = source_folder(landing, source, day(n))
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    if frame is not None:
        path = folder / f"{name}.{source.format}"
        if source.format == "csv":
            frame.write_csv(path)
        elif source.format == "parquet":
            frame.write_parquet(path)
        else:
            frame.write_ndjson(path)
        rows[path.name] = frame.height
    if manifest:
        write_manifest(folder, rows)
    if marker:
        (folder / MARKER).touch()
    return folder


def rows(*ids: int) -> pl.DataFrame:
    return pl.DataFrame({"id": list(ids), "name": [f"n{i}" for i in ids]})


# 1. AUTO: marker rules from the first marked day on; the first marked day is cached briefly


def test_auto_judges_days_before_the_first_marker_by_their_files(tmp_path: Path) -> None:
    source = src()
    land(tmp_path, source, 1, rows(1))
    land(tmp_path, source, 2, rows(2))
    land(tmp_path, source, 3, rows(3), marker=True)
    land(tmp_path, source, 4, rows(4), manifest=True)
    land(tmp_path, source, 5, rows(5))  # from day 3 on a marker is expected: still being written
    assert first_marker_day(tmp_path, source) == day(3)
    assert landed_dates(tmp_path, source) == [day(1), day(2), day(3), day(4)]
    assert incomplete(tmp_path, source) == {day(5): f"no {MARKER} marker yet (still being "
                                                    "written?)"}
    assert day_landing(tmp_path, source, day(1)).complete
    got = scan_source(tmp_path, source, day(5), whole=True).collect()
    assert got["id"].to_list() == [1, 2, 3, 4]
    with pytest.raises(SourceMissing, match="not complete: no _SUCCESS marker yet"):
        day_landing(tmp_path, source, day(5))


def test_explicit_marker_completion_still_needs_a_marker_every_day(tmp_path: Path) -> None:
    source = src(completion=Completion.MARKER)
    land(tmp_path, source, 1, rows(1))
    land(tmp_path, source, 2, rows(2), marker=True)
    assert landed_dates(tmp_path, source) == [day(2)]


def test_the_first_marker_day_is_scanned_about_once_per_build_and_noticed_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = src()
    for n in range(1, 41):
        land(tmp_path, source, n, rows(n), marker=n >= 20)
    bucket = [1_000]
    monkeypatch.setattr(landed_mod, "_bucket", lambda: bucket[0])
    before = landed_mod._first_marker_day.cache_info().misses
    assert len(scan_source(tmp_path, source, day(40), whole=True).collect()) == 40
    for n in range(1, 41):
        day_landing(tmp_path, source, day(n))
    assert landed_dates(tmp_path, source)[-1] == day(40)
    assert landed_mod._first_marker_day.cache_info().misses - before == 1

    # a long-lived worker: a marker written into an existing day folder (the source's folder
    # does not change) is seen once the time bucket moves on
    (source_folder(tmp_path, source, day(5)) / MARKER).touch()
    bucket[0] += 1
    assert first_marker_day(tmp_path, source) == day(5)
    assert incomplete(tmp_path, source) == {
        day(n): f"no {MARKER} marker yet (still being written?)" for n in range(6, 20)}


def test_the_cache_bucket_follows_the_monotonic_clock() -> None:
    assert landed_mod.CACHE_SECONDS == 30
    assert abs(landed_mod._bucket() - time.monotonic() // landed_mod.CACHE_SECONDS) <= 1


# 2. empty change-feed days


def test_a_marker_alone_is_an_empty_day_of_a_change_feed(tmp_path: Path) -> None:
    feed = src(cadence=Cadence.CHANGE_FEED)
    land(tmp_path, feed, 1, rows(1), marker=True)
    land(tmp_path, feed, 2, marker=True)  # only _SUCCESS: a quiet day
    land(tmp_path, feed, 3, manifest=True)  # a manifest listing no files
    assert landed_dates(tmp_path, feed) == [day(1), day(2), day(3)]
    for n in (2, 3):
        got = scan_source(tmp_path, feed, day(n)).collect()
        assert got.height == 0 and got.schema == feed.schema
    assert scan_source(tmp_path, feed, day(3), whole=True).collect()["id"].to_list() == [1]


def test_a_marker_alone_is_refused_when_read_unless_empty_days_are_allowed(
        tmp_path: Path) -> None:
    daily = src()
    land(tmp_path, daily, 1, marker=True)
    land(tmp_path, daily, 2, manifest=True)
    assert landed_dates(tmp_path, daily) == [day(1), day(2)]  # complete: the export finished
    for n in (1, 2):
        with pytest.raises(DataError, match="has no rows"):
            scan_source(tmp_path, daily, day(n))


def test_a_marker_beside_files_of_another_format_is_not_an_empty_day(tmp_path: Path) -> None:
    feed = src(cadence=Cadence.CHANGE_FEED)
    folder = land(tmp_path, feed, 1, marker=True)
    (folder / "part-0.csv.gz").write_bytes(b"x")
    assert incomplete(tmp_path, feed) == {day(1): "no csv file (found part-0.csv.gz)"}


@pytest.mark.parametrize("fmt", ["csv", "parquet", "ndjson"])
def test_a_zero_byte_file_in_a_manifest_counts_zero_rows(tmp_path: Path, fmt: str) -> None:
    feed = src(cadence=Cadence.CHANGE_FEED, fmt=fmt)
    folder = land(tmp_path, feed, 1)
    (folder / f"part-0.{fmt}").write_bytes(b"")
    write_manifest(folder, {f"part-0.{fmt}": 0})
    assert scan_source(tmp_path, feed, day(1)).collect().height == 0

    land(tmp_path, feed, 2, rows(7, 8), name="part-1")
    folder = source_folder(tmp_path, feed, day(2))
    (folder / f"part-0.{fmt}").write_bytes(b"")
    write_manifest(folder, {f"part-0.{fmt}": 0, f"part-1.{fmt}": 2})
    assert scan_source(tmp_path, feed, day(2)).collect()["id"].to_list() == [7, 8]

    daily = src("daily", fmt=fmt)
    folder = land(tmp_path, daily, 1)
    (folder / f"part-0.{fmt}").write_bytes(b"")
    write_manifest(folder, {f"part-0.{fmt}": 0})
    with pytest.raises(DataError, match="has no rows"):
        scan_source(tmp_path, daily, day(1))


# 3. drift: a missing nullable column of a snapshot or change feed


REGION = (*COLS, Column("region", pl.String()))


def with_region(*ids: int) -> pl.DataFrame:
    return rows(*ids).with_columns(region=pl.lit("north"))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("cadence", [Cadence.SNAPSHOT, Cadence.CHANGE_FEED])
def test_days_landed_before_a_nullable_column_was_added_read_it_as_null(
        tmp_path: Path, fmt: str, cadence: Cadence) -> None:
    source = src(cadence=cadence, fmt=fmt, columns=REGION)
    land(tmp_path, source, 1, rows(1), manifest=True)
    land(tmp_path, source, 2, rows(2), manifest=True)
    land(tmp_path, source, 3, with_region(3), manifest=True)
    land(tmp_path, source, 4, rows(4), manifest=True)  # dropped from the export: drift
    for n in (1, 2):  # a restatement of the old days
        got = scan_source(tmp_path, source, day(n)).collect()
        assert got["region"].to_list() == [None]
    got = scan_source(tmp_path, source, day(3), whole=True).collect()
    assert got["region"].to_list() == [None, None, "north"]
    with pytest.raises(DataError, match=r"missing column 'region' \(String\), which its "
                                        r"previous landing \(2024-03-03\) had"):
        scan_source(tmp_path, source, day(4))
    with pytest.raises(DataError, match="missing column 'region'"):
        scan_source(tmp_path, source, day(4), whole=True)


def test_the_previous_landing_is_the_latest_complete_one_with_data(tmp_path: Path) -> None:
    feed = src(cadence=Cadence.CHANGE_FEED, columns=REGION)
    land(tmp_path, feed, 1, rows(1), marker=True)
    land(tmp_path, feed, 3, with_region(3), marker=True)
    land(tmp_path, feed, 4, marker=True)  # a quiet day says nothing about the columns
    land(tmp_path, feed, 5, rows(5))  # not complete (no marker): skipped
    land(tmp_path, feed, 6, rows(6), marker=True)
    with pytest.raises(DataError, match=r"previous landing \(2024-03-03\) had"):
        scan_source(tmp_path, feed, day(6))
    land(tmp_path, feed, 7, marker=True)
    land(tmp_path, feed, 8, rows(8), marker=True)  # the latest with data before it: day 6
    assert scan_source(tmp_path, feed, day(8)).collect()["region"].to_list() == [None]

    other = src("other", cadence=Cadence.CHANGE_FEED, columns=REGION)
    land(tmp_path, other, 1, with_region(1), marker=True)
    land(tmp_path, other, 2, marker=True)
    land(tmp_path, other, 3, rows(3), marker=True)  # the day before is empty: further back
    with pytest.raises(DataError, match=r"previous landing \(2024-03-01\) had"):
        scan_source(tmp_path, other, day(3))
    assert scan_source(tmp_path, feed, day(1)).collect()["region"].to_list() == [None]


def test_a_missing_required_column_is_refused_everywhere(tmp_path: Path) -> None:
    cols = (*COLS, Column("region", pl.String(), nullable=False))
    for cadence in Cadence:
        source = src(f"s_{cadence.value}", cadence=cadence, columns=cols)
        land(tmp_path, source, 1, rows(1), manifest=True)  # its first landing
        with pytest.raises(DataError, match="missing column 'region'"):
            scan_source(tmp_path, source, day(1))


def test_check_drift_without_earlier_landings_reads_null() -> None:
    snapshot = src(cadence=Cadence.SNAPSHOT, columns=REGION)
    check_drift(snapshot, pl.Schema({"id": pl.Int64(), "name": pl.String()}), "x")
    check_drift(snapshot, pl.Schema({"id": pl.Int64(), "name": pl.String()}), "x",
                earlier=lambda: (day(1), {"id", "name"}))
    with pytest.raises(DataError, match="previous landing"):
        check_drift(snapshot, pl.Schema({"id": pl.Int64(), "name": pl.String()}), "x",
                    earlier=lambda: (day(1), {"id", "name", "region"}))


@pytest.mark.parametrize("fmt", ["csv", "parquet", "ndjson"])
def test_landed_columns_are_read_from_the_first_file_with_data(tmp_path: Path, fmt: str) -> None:
    source = src(fmt=fmt, columns=REGION)
    folder = land(tmp_path, source, 1, with_region(1), manifest=True, name="part-1")
    (folder / f"part-0.{fmt}").write_bytes(b"")
    write_manifest(folder, {f"part-0.{fmt}": 0, f"part-1.{fmt}": 1})
    assert landed_columns(source, day_landing(tmp_path, source, day(1))) == {"id", "name",
                                                                             "region"}


# 4. cost: a whole read verifies the newest landing only; fingerprints from one listing


def test_a_whole_read_verifies_only_the_newest_landing(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    source = src()
    for n in range(1, 4):
        land(tmp_path, source, n, rows(n, n + 10), manifest=True)
    old = source_folder(tmp_path, source, day(1)) / "part-0.csv"
    old.write_bytes(old.read_bytes().replace(b"n1", b"x1"))  # same size, other bytes
    manifest = json.loads((old.parent / MANIFEST).read_text())
    manifest["files"][0]["sha256"] = None
    manifest["files"][0]["rows"] = 99  # and a row count the file does not hold
    (old.parent / MANIFEST).write_text(json.dumps(manifest))
    counted: list[Path] = []
    count = landing_mod._count

    def counting(source: Source, path: Path) -> int:
        counted.append(path)
        return count(source, path)

    monkeypatch.setattr(landing_mod, "_count", counting)
    got = scan_source(tmp_path, source, day(3), whole=True).collect()
    assert got.height == 6 and counted == [source_folder(tmp_path, source, day(3)) / "part-0.csv"]
    with pytest.raises(DataError, match="holds 2 rows, its manifest says 99"):
        scan_source(tmp_path, source, day(1))

    newest = source_folder(tmp_path, source, day(3)) / "part-0.csv"
    newest.write_bytes(newest.read_bytes().replace(b"n3", b"x3"))
    with pytest.raises(DataError, match="does not match its manifest's sha256"):
        scan_source(tmp_path, source, day(3), whole=True)


def _copy(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["landing.ref"]


def test_landings_of_a_whole_input_are_fingerprinted_from_one_listing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = src("ref", cadence=Cadence.REFERENCE)
    for n in (1, 2, 4, 5, 9):
        land(tmp_path, ref, n, rows(n), manifest=n != 5)  # day 5: no manifest yet
    land(tmp_path, ref, 10, rows(10), manifest=True)  # after the logical date
    model = Model("ref_copy", Kind.STAGING, (Input("landing.ref", Window.ALL),), COLS, _copy,
                  Strategy.FULL)
    daily = Model("ref_day", Kind.STAGING, (Input("landing.ref"),), COLS, _copy, Strategy.FULL)
    cat = build_catalogue([model, daily], [ref])
    calls: list[Path] = []
    listing = landed_mod.landed

    def counting(landing: Path, source: Source, **kw: date | None) -> list[LandedDay]:
        calls.append(landing)
        return listing(landing, source, **kw)

    monkeypatch.setattr(landed_mod, "landed", counting)
    monkeypatch.setattr(landing_mod, "landed", counting)
    got = _landings(model, cat, tmp_path, day(9), full_refresh=False)
    assert len(calls) <= 2  # not one listing per landed day
    want = {d.day: fingerprint(d) for d in listing(tmp_path, ref)
            if d.complete and d.day <= day(9)}
    assert got == [("ref", d, fp) for d, fp in sorted(want.items())]
    assert [d for _, d, _ in got] == [day(n) for n in (1, 2, 4, 9)]
    assert fingerprints(tmp_path, ref, day(9), whole=True) == want
    # a full refresh of a daily-window input reads the same landings; a run of one day, the
    # latest landed on or before it
    assert _landings(daily, cat, tmp_path, day(9), full_refresh=True) == got
    assert _landings(daily, cat, tmp_path, day(8), full_refresh=False) == [
        ("ref", day(4), want[day(4)])]
    # nothing landed up to the day: nothing recorded (reading it says so)
    assert _landings(model, cat, tmp_path, day(0), full_refresh=False) == []


# 5. a half-written manifest: the day waits


def test_a_half_written_manifest_makes_the_day_wait(tmp_path: Path) -> None:
    source = src()
    land(tmp_path, source, 1, rows(1), manifest=True)
    folder = land(tmp_path, source, 2, rows(2))
    (folder / MANIFEST).write_text('{"files": [{"name": "part-0.csv", "by')
    why = "the manifest is not valid JSON yet (still being written?)"
    assert incomplete(tmp_path, source) == {day(2): why}
    assert landed_dates(tmp_path, source) == [day(1)]
    assert [d.day for d in landed(tmp_path, source) if d.complete] == [day(1)]
    with pytest.raises(SourceMissing, match=r"not complete: the manifest is not valid JSON yet"):
        day_landing(tmp_path, source, day(2))
    (folder / MANIFEST).write_text('{"rows": 3}')  # valid JSON, not a manifest
    assert "the manifest is not valid" in incomplete(tmp_path, source)[day(2)]
    write_manifest(folder, {"part-0.csv": 1})
    assert landed_dates(tmp_path, source) == [day(1), day(2)]
