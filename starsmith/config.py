"""Project configuration: where the landing zone, the state and the warehouse live.

Defaults are relative to the project folder (the current directory); ``STARSMITH_LANDING``,
``STARSMITH_STATE``, ``STARSMITH_WAREHOUSE``, ``STARSMITH_STAGING`` (the write-audit-publish
staging folder) and ``STARSMITH_MEMORY_LIMIT`` override them, and CLI
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
    staging: Path
    memory_limit: str = "4GB"
    max_parallel: int = 4

    @classmethod
    def load(cls, root: Path | None = None, **overrides: object) -> ProjectConfig:
        base = (root or Path.cwd()).resolve()
        state = Path(os.environ.get("STARSMITH_STATE", base / ".state"))
        warehouse = Path(os.environ.get("STARSMITH_WAREHOUSE", state / "warehouse.duckdb"))
        cfg = cls(
            root=base,
            landing=Path(os.environ.get("STARSMITH_LANDING", base / "landing")),
            state=state,
            warehouse=warehouse,
            staging=Path(os.environ.get("STARSMITH_STAGING",
                                        warehouse.parent / f"{warehouse.stem}_staging")),
            memory_limit=os.environ.get("STARSMITH_MEMORY_LIMIT", "4GB"),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        cfg = replace(cfg, **given)  # type: ignore[arg-type]
        if "staging" not in given and "STARSMITH_STAGING" not in os.environ:
            cfg = replace(cfg, staging=cfg.warehouse.parent / f"{cfg.warehouse.stem}_staging")
        return cfg
