"""Build configuration: where the landing zone, the state and the warehouse live.

Defaults come from the project's config file (``starsmith/project.py``); ``STARSMITH_LANDING`` (a
folder, ``s3://bucket/prefix`` or ``gs://bucket/prefix``: loaders/store.py),
``STARSMITH_STATE``, ``STARSMITH_WAREHOUSE``, ``STARSMITH_STAGING`` (the write-audit-publish
staging folder) and ``STARSMITH_MEMORY_LIMIT`` override them, and CLI
flags override those. Nothing secret is read here: credentials come from each client's own chain.

The target is DuckDB unless ``STARSMITH_TARGET=bigquery`` (or ``--target bigquery``): then the
warehouse is ``bigquery://PROJECT/DATASET`` from ``STARSMITH_BQ_PROJECT`` (or
``GOOGLE_CLOUD_PROJECT``), ``STARSMITH_BQ_DATASET`` (default ``starsmith``, one per
environment: ``starsmith_dev``, ``starsmith_prod``), ``STARSMITH_BQ_LOCATION``, and
``STARSMITH_BQ_ENDPOINT`` for a local emulator. ``STARSMITH_WAREHOUSE=bigquery://...`` works too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlencode

from starsmith.errors import ConfigError
from starsmith.loaders.store import Landing, landing_root
from starsmith.project import Project, load_project

TARGETS = ("duckdb", "bigquery")


@dataclass(frozen=True)
class ProjectConfig:
    """One build's settings: the project's files, with its target resolved to paths."""

    root: Path
    landing: Landing
    state: Path
    warehouse: Path
    staging: Path
    memory_limit: str = "4GB"
    memory_budget: str = ""  # a step's peak memory; fact rebuilds are batched to fit it
    max_parallel: int = 4
    target: str = "duckdb"  # the engine: duckdb | bigquery
    bigquery: str = ""  # bigquery://project/dataset[?location=..&endpoint=..]
    project: Project | None = None
    target_name: str = ""  # the project's name for the target (dev, prod), if it has one

    @property
    def warehouse_ref(self) -> str:
        """What a step opens: the DuckDB file, or the BigQuery reference."""
        return self.bigquery if self.target == "bigquery" else str(self.warehouse.resolve())

    @classmethod
    def load(cls, project: Project | Path | str | None = None, *, target: str | None = None,
             **overrides: object) -> ProjectConfig:
        """Settings from the project's config file, then the environment, then ``overrides``
        (the CLI's flags); later wins."""
        proj = project if isinstance(project, Project) else load_project(project)
        chosen_name = target or os.environ.get("STARSMITH_TARGET") or proj.default_target or ""
        chosen = proj.target(chosen_name)
        state = Path(os.environ.get("STARSMITH_STATE", proj.state))
        given_wh = os.environ.get("STARSMITH_WAREHOUSE", "")
        bq = given_wh if given_wh.startswith("bigquery://") else ""
        if chosen is not None and chosen.type == "bigquery" and not bq:
            bq = chosen.bigquery_ref()
        default_file = chosen.path if chosen is not None and chosen.path else \
            state / "warehouse.duckdb"
        warehouse = Path(given_wh) if given_wh and not bq else default_file
        engine = "bigquery" if bq else (chosen.type if chosen is not None else
                                        chosen_name if chosen_name in TARGETS else "duckdb")
        cfg = cls(
            root=proj.root,
            landing=landing_root(os.environ.get("STARSMITH_LANDING") or proj.landing),
            state=state,
            warehouse=warehouse,
            staging=Path(os.environ.get("STARSMITH_STAGING",
                                        warehouse.parent / f"{warehouse.stem}_staging")),
            memory_limit=os.environ.get("STARSMITH_MEMORY_LIMIT", "")
            or (chosen.memory_limit if chosen is not None else "") or "4GB",
            memory_budget=os.environ.get("STARSMITH_MEMORY_BUDGET", ""),
            target=engine,
            bigquery=bq,
            project=proj,
            target_name=chosen.name if chosen is not None else engine,
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(given.get("landing"), str):  # --landing: a folder or a URI
            given["landing"] = landing_root(str(given["landing"]))
        cfg = replace(cfg, **given)  # type: ignore[arg-type]
        if "staging" not in given and "STARSMITH_STAGING" not in os.environ:
            cfg = replace(cfg, staging=cfg.warehouse.parent / f"{cfg.warehouse.stem}_staging")
        if cfg.memory_budget:
            from starsmith.orchestration.budget import parse_size

            parse_size(cfg.memory_budget)  # a bad size fails once, here, not in every step
        if cfg.target not in TARGETS:
            raise ConfigError(f"unknown target {cfg.target!r}", where="--target / STARSMITH_TARGET",
                              fix=f"Use one of {', '.join(TARGETS)}, or a target the project "
                                  "declares")
        if cfg.target == "bigquery" and not cfg.bigquery:
            cfg = replace(cfg, bigquery=bigquery_ref())
        return cfg


def bigquery_ref() -> str:
    """``bigquery://PROJECT/DATASET`` from the environment (no secrets: those stay with Google's
    default credential chain)."""
    project = os.environ.get("STARSMITH_BQ_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise ConfigError("the BigQuery target has no project", where="the environment",
                          fix="Set STARSMITH_BQ_PROJECT (or GOOGLE_CLOUD_PROJECT)")
    dataset = os.environ.get("STARSMITH_BQ_DATASET", "starsmith")
    options = {k: v for k, v in (("location", os.environ.get("STARSMITH_BQ_LOCATION", "")),
                                 ("endpoint", os.environ.get("STARSMITH_BQ_ENDPOINT", ""))) if v}
    return f"bigquery://{project}/{dataset}" + (f"?{urlencode(options)}" if options else "")
