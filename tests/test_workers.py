"""Workers build the project they are given, and refuse a build planned with other code."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError

from starsmith.config import ProjectConfig
from starsmith.discover import load_catalogue
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.orchestration.messages import BuildRequest, Paths
from starsmith.orchestration.server import LocalServer
from starsmith.scaffold import init_project
from tests.temporal_helpers import run_build

pytestmark = [pytest.mark.temporal, pytest.mark.slow]
DAY = date(2024, 1, 1)


def shop_request(root: Path, **kw: object) -> BuildRequest:
    proj = init_project(root)
    cfg = ProjectConfig.load(proj)
    cat = load_catalogue(proj)
    paths = Paths(str(cfg.landing), cfg.warehouse_ref, "1GB", str(cfg.staging))
    return BuildRequest(paths, dates=(DAY.isoformat(),), project=cat.project,
                        fingerprint=cat.fingerprint, **kw)  # type: ignore[arg-type]


async def attempts(handle: object, activity: str) -> list[int]:
    """The attempt number each started activity of that type reached (history keeps the last)."""
    names: dict[int, str] = {}
    out = []
    async for e in handle.fetch_history_events():  # type: ignore[attr-defined]
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            names[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = e.activity_task_started_event_attributes
            if names[attrs.scheduled_event_id] == activity:
                out.append(attrs.attempt)
    return out


def test_a_worker_refuses_a_build_planned_with_other_code(temporal_server: LocalServer,
                                                           tmp_path: Path) -> None:
    req = shop_request(tmp_path / "shop")
    stale = replace(req, fingerprint="0123456789abcdef")
    from starsmith.project import load_project

    with pytest.raises(WorkflowFailureError) as err:
        asyncio.run(run_build(temporal_server.address, stale,
                              project=load_project(tmp_path / "shop")))
    cause = err.value.cause
    text = str(getattr(cause, "cause", None) or cause)
    assert "this worker's copy of project 'shop' (fingerprint " in text
    assert "differs from the one the build was planned with (0123456789abcdef)" in text
    assert not (tmp_path / "shop" / ".state" / "warehouse.duckdb").exists() or \
        not DuckDBWarehouse(tmp_path / "shop" / ".state" / "warehouse.duckdb").exists("fact_sales")


def test_the_same_project_builds_and_a_model_mistake_is_not_retried(
        temporal_server: LocalServer, tmp_path: Path) -> None:
    from starsmith.project import load_project

    root = tmp_path / "shop"
    req = shop_request(root)
    report, handle = asyncio.run(run_build(temporal_server.address, req,
                                           project=load_project(root)))
    assert report.ok and {r.model for r in report.days[0].built} == {
        "stg_sales", "dim_customer", "fact_sales"}

    fact = root / "models" / "marts" / "fact_sales.py"
    fact.write_text(fact.read_text().replace('pl.col("unit_price").cast(AMOUNT)',
                                             'pl.col("unit_prize").cast(AMOUNT)'))
    cat = load_catalogue(load_project(root))
    broken = replace(req, dates=("2024-01-02",), fingerprint=cat.fingerprint)
    report, handle = asyncio.run(run_build(temporal_server.address, broken,
                                           project=load_project(root)))
    failed = report.days[0].failed
    assert list(failed) == ["fact_sales"]
    assert failed["fact_sales"].startswith(
        "the transform of fact_sales failed: ColumnNotFoundError: unable to find column "
        "\"unit_prize\"")
    assert asyncio.run(attempts(handle, "build_model")).count(1) == 3  # each step: one attempt
    assert max(asyncio.run(attempts(handle, "build_model"))) == 1
