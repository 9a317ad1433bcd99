"""Project configuration: where the landing zone, the state and the warehouse live.

Defaults are relative to the project folder (the current directory); ``STARSMITH_LANDING``,
``STARSMITH_STATE``, ``STARSMITH_WAREHOUSE`` and ``STARSMITH_MEMORY_LIMIT`` override them, and CLI
flags override those. Nothing secret is read here: credentials come from each client's own chain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class ProjectConfig:
    root: Path
    landing: Path
    state: Path
    warehouse: Path
    memory_limit: str = "4GB"
    max_parallel: int = 4

    @classmethod
    def load(cls, root: Path | None = None, **overrides: object) -> ProjectConfig:
        base = (root or Path.cwd()).resolve()
        state = Path(os.environ.get("STARSMITH_STATE", base / ".state"))
        cfg = cls(
            root=base,
            landing=Path(os.environ.get("STARSMITH_LANDING", base / "landing")),
            state=state,
            warehouse=Path(os.environ.get("STARSMITH_WAREHOUSE", state / "warehouse.duckdb")),
            memory_limit=os.environ.get("STARSMITH_MEMORY_LIMIT", "4GB"),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(cfg, **given)  # type: ignore[arg-type]
