"""A snapshot dimension built night by night, where the engine narrows each full snapshot to
the records that can change something, ends exactly as a full refresh that gives the builder
every record of every day (its in-memory replay does not narrow).

The project is a user's, written as text, built through the installed command. Its snapshots
are messy on purpose: type-2, type-1 and type-0 changes, values to and from NULL, keys that go
and come back, a record with a NULL key, and a key sent twice with different values on one day
(the builder must still see both and fail or pick, so narrowing may not drop one of them)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from starsmith.loaders.landed import write_manifest
from tests.user_projects import build_in_process, starsmith_toml

FIRST = date(2024, 5, 1)
DAYS = 6
KEYS = 400


MODELS = '''\
"""Accounts, snapshotted whole every day."""

from __future__ import annotations

import polars as pl

from starsmith import Cadence, Column, Input, Kind, Model, Source, Strategy
from starsmith.contract import dimension_columns
from starsmith.dimensions import ChangeDetection, DeletePolicy, DimensionSpec, SCDType

ACCOUNTS = Source("accounts", "parquet", (
    Column("account_id", pl.Int64(), "account number"),
    Column("opened_by", pl.String(), "who opened it"),
    Column("nickname", pl.String(), "display name"),
    Column("tier", pl.String(), "pricing tier"),
    Column("region", pl.String(), "region, NULL while unassigned"),
), cadence=Cadence.SNAPSHOT, guard=Guard(max_closed=0.5))

STG = Model(
    name="stg_accounts", kind=Kind.STAGING, inputs=(Input("landing.accounts"),),
    columns=(*ACCOUNTS.columns, Column("load_date", pl.Date(), "landing day", nullable=False)),
    transform=lambda i, ctx: i["landing.accounts"].with_columns(
        load_date=pl.lit(ctx.logical_date)),
    strategy=Strategy.PARTITION, partition_by="load_date", description="accounts as landed")

SPEC = DimensionSpec(
    name="dim_account", surrogate_key="account_key", natural_key=("account_id",),
    columns=(("opened_by", SCDType.FIXED), ("nickname", SCDType.OVERWRITE),
             ("tier", SCDType.VERSIONED), ("region", SCDType.VERSIONED)),
    detection=ChangeDetection.CHECK, snapshot=True, deletes=DeletePolicy.{policy},
    duplicates=DuplicatePolicy.{duplicates}, sequence={sequence})

DIM = Model(
    name="dim_account", kind=Kind.DIMENSION, inputs=(Input("stg_accounts"),),
    columns=dimension_columns(SPEC, tuple(c for c in ACCOUNTS.columns)),
    transform=lambda i, ctx: i["stg_accounts"].select(
        "account_id", *SPEC.attributes{seq_col}),
    strategy=Strategy.SCD, dimension=SPEC, unique_key=("account_key",),
    description="one row per account version")
'''


def snapshots(seed: int, *, twice: bool) -> list[pl.DataFrame]:
    """``DAYS`` daily snapshots, each the day before with changes of every kind."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, KEYS + 1)
    day = pl.DataFrame({
        "account_id": ids,
        "opened_by": [f"clerk {i % 7}" for i in ids],
        "nickname": [f"acct {i}" for i in ids],
        "tier": rng.choice(["free", "pro", "team"], KEYS),
        "region": rng.choice(["north", "south", None], KEYS),
    })
    out, gone, next_id = [], pl.DataFrame(schema=day.schema), KEYS + 1
    for n in range(DAYS):
        if n:
            pick = rng.random(day.height)
            day = day.with_columns(
                tier=pl.when(pl.Series(pick < 0.05)).then(pl.lit("pro")).otherwise("tier"),
                region=pl.when(pl.Series((pick >= 0.05) & (pick < 0.09)))
                .then(pl.when(pl.col("region").is_null()).then(pl.lit("east")))
                .otherwise("region"),
                nickname=pl.when(pl.Series((pick >= 0.09) & (pick < 0.13)))
                .then(pl.col("nickname") + "!").otherwise("nickname"),
                opened_by=pl.when(pl.Series((pick >= 0.13) & (pick < 0.15)))
                .then(pl.lit("someone else")).otherwise("opened_by"),
            )
            leaving = pl.Series(rng.random(day.height) < 0.03)
            back = gone.sample(min(gone.height, 3), seed=seed + n)
            new = day.head(4).with_columns(account_id=pl.int_range(next_id, next_id + 4))
            next_id += 4
            gone = pl.concat([gone.join(back, on="account_id", how="anti"),
                              day.filter(leaving)])
            day = pl.concat([day.filter(~leaving), back, new])
        landed = day
        if n == 2:  # a record with no key: quarantined, and absence proves nothing that day
            landed = pl.concat([landed, landed.head(1).with_columns(
                account_id=pl.lit(None, pl.Int64))])
        if twice and n == 3:  # one key twice with other values: the builder must see both
            landed = pl.concat([landed, landed.slice(5, 1).with_columns(tier=pl.lit("gold"))])
        out.append(landed.sample(fraction=1.0, shuffle=True, seed=seed + n))
    return out


def project(root: Path, frames: list[pl.DataFrame], *, policy: str, latest: bool) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "starsmith.toml").write_text(starsmith_toml("accounts"))
    text = MODELS.format(policy=policy, duplicates="LATEST" if latest else "FAIL",
                         sequence='"seq"' if latest else "None",
                         seq_col=', "seq"' if latest else "")
    text = text.replace("from starsmith import Cadence,", "from starsmith import Guard, Cadence,")
    text = text.replace("DimensionSpec, SCDType",
                        "DimensionSpec, DuplicatePolicy, SCDType")
    if latest:  # the sequence rides along in the source and staging
        text = text.replace('    Column("region", pl.String(), "region, NULL while unassigned"),',
                            '    Column("region", pl.String(), "region, NULL while unassigned"),\n'
                            '    Column("seq", pl.Int64(), "export sequence"),')
        text = text.replace("columns=dimension_columns(SPEC, tuple(c for c in ACCOUNTS.columns)),",
                            "columns=dimension_columns(SPEC, tuple(c for c in ACCOUNTS.columns"
                            ' if c.name != "seq")),')
    (root / "models" / "accounts.py").write_text(text)
    for n, frame in enumerate(frames):
        if latest:
            frame = frame.with_columns(seq=pl.int_range(pl.len(), dtype=pl.Int64))
        folder = root / "landing" / "accounts" / f"date={(FIRST + timedelta(n)).isoformat()}"
        folder.mkdir(parents=True)
        frame.write_parquet(folder / "part-0.parquet")
        write_manifest(folder, {"part-0.parquet": frame.height})
    return root


def build(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return build_in_process(root, *args)


def table(root: Path, name: str = "dim_account") -> pl.DataFrame:
    con = duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True)
    try:
        return con.sql(f"SELECT * FROM {name} ORDER BY ALL").pl()
    finally:
        con.close()


@pytest.mark.parametrize(("policy", "latest"), [("NEW_RECORD", True), ("INVALIDATE", False)])
def test_nightly_snapshots_equal_a_full_refresh(tmp_path: Path, policy: str, latest: bool) -> None:
    frames = snapshots(7, twice=latest)
    nightly = project(tmp_path / "nightly", frames, policy=policy, latest=latest)
    built = FIRST
    for n in range(DAYS):
        done = build(nightly, "--date", (FIRST + timedelta(n)).isoformat())
        assert done.returncode in (0, 1), done.stdout + done.stderr
        if done.returncode:  # refused (a key sent twice under FAIL): the day before stands
            break
        built = FIRST + timedelta(n)
    assert built >= FIRST + timedelta(3)
    refreshed = tmp_path / "refreshed"
    shutil.copytree(nightly, refreshed)
    # the full refresh replays the days the nightly build applied, and must succeed: a failed
    # refresh would leave the copy's tables as they were, equal by construction
    done = build(refreshed, "--full-refresh", "--date", built.isoformat())
    assert done.returncode == 0, done.stdout + done.stderr

    got, want = table(nightly), table(refreshed)
    assert got.height > KEYS + 20  # many versions were made: the days really changed things
    assert got.filter(pl.col("is_current")).height > KEYS * 0.9
    assert got.equals(want), (got.join(want, on=got.columns, how="anti"),
                              want.join(got, on=got.columns, how="anti"))
    # the same records are quarantined, for the same reasons, on the same days (when the
    # quarantine ran differs: a full refresh runs later)
    q_got = table(nightly, "dim_account__quarantine").drop("run_id", "quarantined_at", strict=False)
    q_want = table(refreshed, "dim_account__quarantine").drop("run_id", "quarantined_at", strict=False)
    assert q_got.height >= 1
    assert sorted(map(str, q_got.rows())) == sorted(map(str, q_want.rows()))


def test_unchanged_records_are_not_built(tmp_path: Path) -> None:
    """A night whose snapshot repeats the day before reads none of it into the builder."""
    frames = snapshots(3, twice=False)
    root = project(tmp_path / "p", [frames[0], frames[0]], policy="NEW_RECORD", latest=False)
    for n in range(2):
        done = build(root, "--date", (FIRST + timedelta(n)).isoformat())
        assert done.returncode == 0, done.stdout + done.stderr
    con = duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True)
    details = con.sql("SELECT details FROM _starsmith.run_log WHERE model = 'dim_account'"
                      " ORDER BY logical_date").fetchall()
    con.close()
    assert '"unchanged": 0' not in str(details[1][0])
    assert f'"unchanged": {frames[0].height}' in str(details[1][0]), details
