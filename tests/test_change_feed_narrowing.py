"""A change-feed dimension built night by night, where each step reads only the current version
of a key whose records merely add to its history, ends exactly as a full refresh (which
replays every record from an empty dimension, holding every version).

The feed is messy on purpose: type-1 changes (they rewrite every version of the key, so those
keys need their whole history), type-2 changes, several changes of a key in one day, deletes
(INVALIDATE: the key has no current version afterwards) and returns, a key changed twice at one
instant (the higher sequence wins), records dated before their landing day, and a re-run of a
last day (every record is then a replay). The project is a user's, built through the command."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from tests.user_projects import build_in_process, land_daily, starsmith_toml

FIRST = date(2024, 6, 1)
DAYS = 6
KEYS = 300


MODELS = '''\
"""Members, as a change log."""

from __future__ import annotations

import polars as pl

from starsmith import Cadence, Column, Input, Kind, Model, Source, Strategy
from starsmith.contract import dimension_columns
from starsmith.dimensions import (ChangeDetection, DeletePolicy, DimensionSpec, DuplicatePolicy,
                                  SCDType)

CHANGES = Source("member_changes", "parquet", (
    Column("member_id", pl.Int64(), "member number"),
    Column("joined_by", pl.String(), "who signed them up"),
    Column("email", pl.String(), "contact"),
    Column("plan", pl.String(), "plan"),
    Column("city", pl.String(), "city, NULL when unknown"),
    Column("seen_at", pl.Datetime("us", "UTC"), "last seen (a zone: read back as Etc/UTC)"),
    Column("updated_at", pl.Datetime("us"), "when it changed"),
    Column("is_delete", pl.Boolean(), "the member left"),
    Column("seq", pl.Int64(), "export sequence"),
), cadence=Cadence.CHANGE_FEED)

STG = Model(
    name="stg_members", kind=Kind.STAGING, inputs=(Input("landing.member_changes"),),
    columns=(*CHANGES.columns, Column("load_date", pl.Date(), "landing day", nullable=False)),
    transform=lambda i, ctx: i["landing.member_changes"].with_columns(
        load_date=pl.lit(ctx.logical_date)),
    strategy=Strategy.PARTITION, partition_by="load_date", description="member changes")

SPEC = DimensionSpec(
    name="dim_member", surrogate_key="member_key", natural_key=("member_id",),
    columns=(("joined_by", SCDType.FIXED), ("email", SCDType.OVERWRITE),
             ("plan", SCDType.VERSIONED), ("city", SCDType.VERSIONED),
             ("seen_at", SCDType.OVERWRITE)),
    detection=ChangeDetection.TIMESTAMP, updated_at="updated_at", deleted_flag="is_delete",
    deletes=DeletePolicy.{policy}, duplicates=DuplicatePolicy.LATEST, sequence="seq")

DIM = Model(
    name="dim_member", kind=Kind.DIMENSION, inputs=(Input("stg_members"),),
    columns=dimension_columns(SPEC, tuple(c for c in CHANGES.columns
                                          if c.name not in ("updated_at", "is_delete", "seq"))),
    transform=lambda i, ctx: i["stg_members"].select(
        "member_id", *SPEC.attributes, "updated_at", "is_delete", "seq"),
    strategy=Strategy.SCD, dimension=SPEC, unique_key=("member_key",),
    description="one row per member version")
'''


def feed(seed: int) -> list[pl.DataFrame]:
    """``DAYS`` days of changes: all keys on day 1, then a mix of every kind of change."""
    rng = np.random.default_rng(seed)
    state = {i: {"joined_by": f"rep {i % 5}", "email": f"m{i}@x.org",
                 "plan": str(rng.choice(["basic", "plus"])), "city": None, "dead": False}
             for i in range(1, KEYS + 1)}
    days: list[pl.DataFrame] = []
    seq = 0
    for n in range(DAYS):
        day = FIRST + timedelta(n)
        rows = []
        keys = list(state) if n == 0 else [int(k) for k in rng.choice(list(state), 60, replace=False)]
        for k in keys:
            s = state[k]
            for j in range(1 + int(rng.random() < 0.2)):  # some keys change twice in a day
                kind = rng.random() if n else 1.0
                if kind < 0.12:
                    s["dead"] = not s["dead"]  # leaves, or comes back
                elif kind < 0.35:
                    s["email"] = f"m{k}.{n}.{j}@x.org"  # type 1: every version rewritten
                elif kind < 0.55:
                    s["city"] = None if s["city"] else str(rng.choice(["Oslo", "Bergen"]))
                elif kind < 0.9:
                    s["plan"] = str(rng.choice(["basic", "plus", "pro"]))
                # else: the same state re-sent
                at = datetime(day.year, day.month, day.day, 8 + j, int(rng.integers(0, 59)))
                if n and rng.random() < 0.08:  # dated the evening before its landing day
                    at = at - timedelta(hours=14)
                seq += 1
                rows.append({"member_id": k, **{c: s[c] for c in ("joined_by", "email",
                             "plan", "city")}, "seen_at": at.replace(tzinfo=UTC),
                             "updated_at": at, "is_delete": s["dead"], "seq": seq})
        if n == 4:  # a record landed two days late: dated between records already built
            late = days[1].filter(pl.col("member_id") == days[1]["member_id"][0]).row(
                0, named=True)
            seq += 1
            rows.append(dict(late, plan="late", updated_at=late["updated_at"]
                             + timedelta(hours=1), seq=seq))
        if n == 3:  # a key changed twice at one instant: the higher sequence wins
            tie = dict(rows[0], plan="tie", seq=seq + 1)
            rows.append(tie)
            seq += 1
        days.append(pl.DataFrame(rows, schema={
            "member_id": pl.Int64, "joined_by": pl.String, "email": pl.String,
            "plan": pl.String, "city": pl.String, "seen_at": pl.Datetime("us", "UTC"),
            "updated_at": pl.Datetime("us"),
            "is_delete": pl.Boolean, "seq": pl.Int64}))
    return days


def project(root: Path, days: list[pl.DataFrame], policy: str) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "starsmith.toml").write_text(starsmith_toml("members"))
    (root / "models" / "members.py").write_text(MODELS.format(policy=policy))
    land_daily(root, "member_changes", days, FIRST)
    return root


def build(root: Path, *args: str) -> int:
    done = build_in_process(root, *args)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode


def dimension(root: Path) -> pl.DataFrame:
    con = duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True)
    try:
        return con.sql("SELECT * FROM dim_member ORDER BY member_key").pl()
    finally:
        con.close()


def quarantine(root: Path) -> pl.DataFrame:
    con = duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True)
    try:
        return con.sql("SELECT * EXCLUDE (run_id, quarantined_at) FROM dim_member__quarantine"
                       " ORDER BY ALL").pl()
    finally:
        con.close()


@pytest.mark.parametrize("policy", ["INVALIDATE", "NEW_RECORD"])
def test_nightly_change_feed_equals_a_full_refresh(tmp_path: Path, policy: str) -> None:
    nightly = project(tmp_path / "nightly", feed(11), policy)
    for n in range(DAYS):
        build(nightly, "--date", (FIRST + timedelta(n)).isoformat())
    # a re-run of the last day: every record a replay (an earlier day would be a restatement,
    # rebuilt from history, which would hide what the nightly reads did)
    build(nightly, "--date", (FIRST + timedelta(DAYS - 1)).isoformat())
    refreshed = tmp_path / "refreshed"
    shutil.copytree(nightly, refreshed)
    # it must succeed: a failed refresh would leave the copy's tables equal by construction
    assert build(refreshed, "--full-refresh", "--date", (FIRST + timedelta(DAYS - 1)).isoformat()) == 0

    got, want = dimension(nightly), dimension(refreshed)
    assert got.height > KEYS + 100  # the days made many versions
    assert got.filter(pl.col("member_key") >= 0).group_by("member_id").len()["len"].max() >= 3
    assert got.equals(want), (got.join(want, on=got.columns, how="anti", nulls_equal=True),
                              want.join(got, on=got.columns, how="anti", nulls_equal=True))
    # the same records held back, for the same reasons (when the quarantine ran differs)
    q_got, q_want = (quarantine(r) for r in (nightly, refreshed))
    assert q_got.height >= 1
    assert sorted(map(str, q_got.rows())) == sorted(map(str, q_want.rows()))
