"""A local day's landing is inspected once and reused while it cannot have changed.

A build asks about the same thousands of landed days several times (its plan, each publish of a
full refresh, each read); ``loaders/landed.py`` remembers a complete local day with the state
(device, inode, size, mtime, ctime) of its folder, files and manifest, and the source folder's
list of day folders with the state of that folder. Every change a landing can go through must
make the next listing look again, and agree with a fresh inspection.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

import starsmith.loaders.landed as landed_mod
import starsmith.orchestration.plan as plan_mod
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
)
from starsmith.loaders.landed import MANIFEST, MARKER, LandedDay, landed, write_manifest
from starsmith.loaders.landing_look import one_look, scope_of
from starsmith.orchestration.plan import landed_days, list_sources, readiness
from starsmith.registry import build_catalogue

D0 = date(2024, 3, 1)
COLS = (Column("id", pl.Int64(), nullable=False),)
SETTLE = 0.3  # seconds: longer than the RACY_SECONDS the tests set
INSPECT = landed_mod._inspect  # a day's inspection from its folder, nothing reused


def day(n: int) -> date:
    return D0 + timedelta(days=n - 1)


def src(name: str = "feed", **kw: object) -> Source:
    return Source(name, "csv", COLS, cadence=Cadence.DAILY, **kw)  # type: ignore[arg-type]


def land(root: Path, source: Source, n: int, *, ids: tuple[int, ...] = (1,),
         manifest: bool = False, marker: bool = False, name: str = "part-0") -> Path:
    folder = root / source.name / f"date={day(n).isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": list(ids)}).write_csv(folder / f"{name}.csv")
    if manifest:
        write_manifest(folder, {f"{name}.csv": len(ids)})
    if marker:
        (folder / MARKER).touch()
    return folder


@pytest.fixture
def inspected(monkeypatch: pytest.MonkeyPatch) -> list[date]:
    """The days inspected from their folders (not reused), in order; nothing remembered yet,
    and a change settles after 0.1 s (instead of 2 s)."""
    monkeypatch.setattr(landed_mod, "RACY_SECONDS", 0.1)
    monkeypatch.setattr(landed_mod, "_SEEN", {})
    monkeypatch.setattr(landed_mod, "_FOLDERS", {})
    calls: list[date] = []

    def counting(source: Source, d: date, folder: Path, *, markers: bool) -> LandedDay:
        calls.append(d)
        return INSPECT(source, d, folder, markers=markers)

    monkeypatch.setattr(landed_mod, "_inspect", counting)
    return calls


def fresh(root: Path, source: Source) -> list[LandedDay]:
    """Every day as an inspection of its folder now finds it (nothing reused)."""
    first = landed_mod.first_marker_day(root, source)
    return [INSPECT(source, d, root / source.name / f"date={d.isoformat()}",
                                markers=landed_mod.marker_rules(first, d))
            for d in sorted(date.fromisoformat(f.name.removeprefix("date="))
                            for f in (root / source.name).iterdir())]


def test_a_settled_landing_is_inspected_once_then_reused(tmp_path: Path,
                                                         inspected: list[date]) -> None:
    source = src()
    for n in range(1, 31):
        land(tmp_path, source, n, manifest=n > 20)  # days judged by their files, then manifests
    time.sleep(SETTLE)
    first = landed(tmp_path, source)
    assert inspected == [day(n) for n in range(1, 31)] and all(d.complete for d in first)
    inspected.clear()
    assert landed(tmp_path, source) == first == fresh(tmp_path, source)
    assert inspected == []  # one stat a path, no inspection


def _truncate(folder: Path) -> None:
    (folder / "part-0.csv").write_text("")  # in place: the folder's times do not change


def _in_progress(folder: Path) -> None:
    (folder / "part-1.csv.part").write_text("id\n2\n")


def _removed(folder: Path) -> None:
    (folder / "part-0.csv").unlink()


def _renamed(folder: Path) -> None:
    (folder / "part-0.csv").rename(folder / "part-9.csv")


def _same_size_same_mtime(folder: Path) -> None:
    """Other bytes of the same length, and the old mtime set back (as ``cp -p`` or rsync
    leave a copied file): only the ctime tells."""
    path = folder / "part-0.csv"
    st = path.stat()
    path.write_text(path.read_text().replace("1", "7"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _manifest_in_place(folder: Path) -> None:
    found = json.loads((folder / MANIFEST).read_text())
    found["files"][0]["bytes"] += 1
    (folder / MANIFEST).write_text(json.dumps(found))  # not renamed over: written in place


def _manifest_removed(folder: Path) -> None:
    (folder / MANIFEST).unlink()


def _grown_in_place(folder: Path) -> None:
    with open(folder / "part-0.csv", "a") as f:  # the manifest's byte count no longer holds
        f.write("2\n")


def _marker_removed(folder: Path) -> None:
    (folder / MARKER).unlink()


def _relanded(folder: Path) -> None:
    """The day folder removed and landed again, with other rows under another name."""
    shutil.rmtree(folder)
    folder.mkdir()
    pl.DataFrame({"id": [5, 6]}).write_csv(folder / "part-3.csv")


CHANGES: dict[str, tuple[Callable[[Path], None], dict[str, object], bool]] = {
    # change: (what it does to day 2's folder, how the day landed, the day complete after it)
    "emptied in place": (_truncate, {}, False),
    "a file in progress added": (_in_progress, {}, False),
    "its file removed": (_removed, {}, False),
    "its file renamed": (_renamed, {}, True),
    "rewritten, same size and mtime": (_same_size_same_mtime, {}, True),
    "its manifest rewritten in place": (_manifest_in_place, {"manifest": True}, False),
    "its manifest removed": (_manifest_removed, {"manifest": True}, False),  # marker expected
    "a manifested file grown in place": (_grown_in_place, {"manifest": True}, False),
    "its marker removed": (_marker_removed, {"marker": True}, False),
    "re-landed": (_relanded, {}, True),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_change_to_a_remembered_day_is_noticed(tmp_path: Path, inspected: list[date],
                                                     change: str) -> None:
    act, how, complete = CHANGES[change]
    source = src(completion=Completion.MARKER) if how.get("marker") else src()
    folders = {n: land(tmp_path, source, n, **how) for n in (1, 2, 3)}  # type: ignore[arg-type]
    time.sleep(SETTLE)
    before = landed(tmp_path, source)
    assert all(d.complete for d in before)
    inspected.clear()
    act(folders[2])
    after = landed(tmp_path, source)
    assert inspected == [day(2)]  # the changed day alone is looked at again
    assert after == fresh(tmp_path, source)  # and found as a fresh inspection finds it
    assert after[1].complete is complete
    assert after[0] == before[0] and after[2] == before[2]
    if change in ("its file renamed", "re-landed"):
        assert after[1].files != before[1].files


def test_a_day_changed_just_before_it_was_inspected_is_not_remembered(
        tmp_path: Path, inspected: list[date]) -> None:
    """A change within RACY_SECONDS of the inspection could share its time stamp with a later
    change: such a day is inspected again each time, until it has settled."""
    source = src()
    land(tmp_path, source, 1)
    landed(tmp_path, source)
    landed(tmp_path, source)
    assert inspected == [day(1), day(1)]
    time.sleep(SETTLE)
    landed(tmp_path, source)
    landed(tmp_path, source)
    assert inspected == [day(1)] * 3  # inspected once more, then reused


def test_day_folders_added_and_removed_are_listed(tmp_path: Path, inspected: list[date]) -> None:
    source = src()
    for n in (1, 2, 3):
        land(tmp_path, source, n)
    time.sleep(SETTLE)
    assert [d.day for d in landed(tmp_path, source)] == [day(1), day(2), day(3)]
    land(tmp_path, source, 5)
    shutil.rmtree(tmp_path / source.name / f"date={day(2).isoformat()}")
    (tmp_path / source.name / "date=2024-13-01").mkdir()  # badly named: skipped
    assert [d.day for d in landed(tmp_path, source)] == [day(1), day(3), day(5)]


def _copy(frames: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return next(iter(frames.values()))


def test_readiness_of_several_model_sets_comes_from_one_listing(
        tmp_path: Path, inspected: list[date], monkeypatch: pytest.MonkeyPatch) -> None:
    feed, ref = src(), Source("ref", "csv", COLS, cadence=Cadence.REFERENCE)
    models = [Model("stg_feed", Kind.STAGING, (Input("landing.feed"),), COLS, _copy,
                    Strategy.FULL),
              Model("stg_ref", Kind.STAGING, (Input("landing.ref"),), COLS, _copy,
                    Strategy.FULL)]
    cat = build_catalogue(models, [feed, ref])
    for n in (1, 2, 3, 4):
        land(tmp_path, feed, n)
    land(tmp_path, ref, 1)
    (tmp_path / "feed" / f"date={day(3).isoformat()}" / "part-0.csv").write_text("")
    listed: list[str] = []
    real = landed

    def counting(landing: Path, source: Source) -> list[LandedDay]:
        listed.append(source.name)
        return real(landing, source)

    monkeypatch.setattr(plan_mod, "landed", counting)
    listing = list_sources(cat, list(cat.order), tmp_path)
    assert sorted(listed) == ["feed", "ref"]  # each source listed once
    assert sorted(listing) == ["landing.feed", "landing.ref"]
    whole = readiness(cat, list(cat.order), tmp_path, listing)
    alone = readiness(cat, ["stg_ref"], tmp_path, listing)
    assert landed_days(cat, ["stg_feed"], tmp_path, listing) == [day(1), day(2)]
    assert sorted(listed) == ["feed", "ref"]  # nothing listed again
    assert whole == readiness(cat, list(cat.order), tmp_path)  # as listing anew finds
    assert alone == readiness(cat, ["stg_ref"], tmp_path)
    assert whole.ready == [day(1), day(2)] and "part-0.csv is empty" in whole.held[day(3)]
    assert whole.held[day(4)] == f"an earlier day ({day(3)}) is not ready"
    assert alone.ready == [day(1)] and not alone.held
    # a listing without a source the models need is not trusted: the sources are listed
    listed.clear()
    assert readiness(cat, ["stg_feed"], tmp_path, {"landing.ref": listing["landing.ref"]}) == readiness(
        cat, ["stg_feed"], tmp_path)
    assert listed == ["feed", "feed"]


def test_within_a_steps_look_a_source_is_listed_once(tmp_path: Path, inspected: list[date]
                                                     ) -> None:
    """A step (its build run's job key and day) judges one landing zone: what lands or changes
    after its first look is the next build's; outside the scope, and in another, it is seen."""
    source = src()
    for n in (1, 2):
        land(tmp_path, source, n)
    time.sleep(SETTLE)
    scope = scope_of("run-1", day(2).isoformat())
    with one_look(scope):
        first = landed(tmp_path, source)
        land(tmp_path, source, 3)
        _truncate(tmp_path / source.name / f"date={day(1).isoformat()}")
        assert landed(tmp_path, source) == first  # the same look, nothing inspected again
        assert [d.day for d in first] == [day(1), day(2)] and all(d.complete for d in first)
    now = landed(tmp_path, source)
    assert now == fresh(tmp_path, source)  # outside: looked at again
    assert [(d.day, d.complete) for d in now] == [(day(1), False), (day(2), True), (day(3), True)]
    with one_look(scope_of("run-2", day(2).isoformat())):
        assert landed(tmp_path, source) == now  # another build run looks for itself
    with one_look(scope):  # the same step again (a retry) sees what its first look saw
        assert landed(tmp_path, source) == first
    with one_look(scope_of("", day(2).isoformat())):  # no job key: nothing shared
        assert landed(tmp_path, source) == now


def test_steps_looking_at_once_wait_for_one_listing(tmp_path: Path, inspected: list[date]
                                                    ) -> None:
    """Steps of one run and day that start together list a source once between them (each
    listing its own, they paid the first look each, in Python, side by side)."""
    source = src()
    for n in range(1, 21):
        land(tmp_path, source, n)  # not settled: a listing alone would inspect every day again
    scope = scope_of("run-1", day(20).isoformat())
    start = threading.Barrier(4)

    def step() -> list[LandedDay]:
        with one_look(scope):
            start.wait()
            return landed(tmp_path, source)

    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda _: step(), range(4)))
    assert all(f == found[0] for f in found) and len(found[0]) == 20
    assert sorted(inspected) == [day(n) for n in range(1, 21)]  # each day once, not 4 times
    landed(tmp_path, source)
    assert len(inspected) == 40  # outside the scope the unsettled days are inspected again
