"""A starsmith project: a folder with a config file, the team's models and sources, its targets.

Like a dbt project, a project is found from the current folder upward (``starsmith.toml``, or a
``[tool.starsmith]`` table in ``pyproject.toml``), or given by ``--project DIR`` /
``STARSMITH_PROJECT``. Model files are loaded by path, never by package name: a folder named
``models`` on ``sys.path``, or two projects in one process, cannot shadow each other, because each
project's files are imported under a package name of its own (``starsmith_project_<name>_<hash>``).
Files may sit in subfolders and import each other with relative imports (``from .sources import
ORDERS``, ``from ..staging import stg_orders``).

The config file::

    name = "shop"
    models = "models"            # folder of model files (subfolders allowed)
    sources = "models"           # file or folder with the Source declarations [default: models]
    landing = "landing"          # the landing zone: a folder, s3://bucket/prefix or gs://...
    state = ".state"             # warehouse, staging and Temporal history
    target = "dev"               # the default target
    secrets_file = "~/.config/starsmith/secrets.toml"  # [connections] NAME = "postgresql://..."

    [targets.dev]
    type = "duckdb"
    path = ".state/warehouse.duckdb"   # [default: <state>/warehouse.duckdb]
    memory_limit = "4GB"

    [targets.prod]
    type = "bigquery"
    project = "my-gcp-project"
    dataset = "shop"
    location = "EU"
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starsmith.errors import ConfigError
from starsmith.loaders.store import Landing, is_uri, landing_root
from starsmith.notify import NotifySettings

CONFIG_FILE = "starsmith.toml"
PROJECT_ENV = "STARSMITH_PROJECT"
TARGET_TYPES = ("duckdb", "bigquery")
_KEYS = {"name", "models", "sources", "landing", "state", "target", "targets", "description",
         "notify_webhook", "notify_on", "notify_smtp_host", "notify_smtp_port", "notify_email_to",
         "notify_email_from", "secrets_file"}
_TARGET_KEYS = {"type", "path", "memory_limit", "project", "dataset", "location", "endpoint",
                "description"}


@dataclass(frozen=True)
class Target:
    """A named warehouse a project builds into (like a dbt profile's output)."""

    name: str
    type: str  # duckdb | bigquery
    path: Path | None = None  # the DuckDB file
    memory_limit: str = ""
    project: str = ""  # BigQuery
    dataset: str = ""
    location: str = ""
    endpoint: str = ""  # a local emulator (tests)

    def bigquery_ref(self) -> str:
        """``bigquery://PROJECT/DATASET[?location=..&endpoint=..]`` (no secrets: Google's chain)."""
        from urllib.parse import urlencode

        options = {k: v for k, v in (("location", self.location), ("endpoint", self.endpoint)) if v}
        return f"bigquery://{self.project}/{self.dataset}" + (
            f"?{urlencode(options)}" if options else "")


@dataclass(frozen=True)
class Project:
    """Where a project's parts live; everything else is derived from these files."""

    root: Path
    name: str
    config_file: Path
    models: Path
    sources: Path
    landing: Landing  # a folder, or an object store prefix (loaders/store.py)
    state: Path
    default_target: str = ""
    targets: dict[str, Target] = field(default_factory=dict)
    description: str = ""
    notify: NotifySettings = field(default_factory=NotifySettings)  # who hears of a bad night
    secrets_file: Path | None = None  # TOML with [connections] NAME = URI (loaders/extract)

    @property
    def package(self) -> str:
        """The private package name its model files are imported under."""
        digest = hashlib.sha1(str(self.models).encode()).hexdigest()[:8]
        safe = "".join(ch if ch.isalnum() else "_" for ch in self.name.lower())
        return f"starsmith_project_{safe}_{digest}"

    def target(self, name: str | None) -> Target | None:
        """The named target, or the default one; None when the project declares none."""
        chosen = name or self.default_target
        if not chosen:
            return None
        if chosen in self.targets:
            return self.targets[chosen]
        if chosen in TARGET_TYPES:  # `--target bigquery` without a declared target: from env
            return None
        known = ", ".join(sorted(self.targets)) or "none declared"
        raise ConfigError(f"project {self.name!r} has no target {chosen!r} (targets: {known})",
                          where=str(self.config_file),
                          fix=f"Declare [targets.{chosen}] in {self.config_file.name}, or pass "
                              "--target with one of the declared names")

    def model_files(self) -> Iterator[Path]:
        """Every ``.py`` file under the models folder (and the sources path), sorted; hidden
        folders, caches, the landing zone and the state folder are skipped."""
        skip = {p.resolve() for p in (self.landing, self.state) if isinstance(p, Path)}
        seen: set[Path] = set()
        for base in (self.models, self.sources):
            if base.is_file():
                if base not in seen:
                    seen.add(base)
                    yield base
                continue
            for path in _walk(base, skip):
                if path not in seen:
                    seen.add(path)
                    yield path


def _walk(folder: Path, skip: set[Path]) -> Iterator[Path]:
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith((".", "_")) and entry.name != "__init__.py":
            continue
        if entry.is_dir():
            if entry.resolve() not in skip:
                yield from _walk(entry, skip)
        elif entry.suffix == ".py":
            yield entry


def find_config(start: Path) -> Path | None:
    """The nearest ``starsmith.toml`` or ``pyproject.toml`` with ``[tool.starsmith]``, upward."""
    for folder in [start, *start.parents]:
        own = folder / CONFIG_FILE
        if own.is_file():
            return own
        py = folder / "pyproject.toml"
        if py.is_file() and "starsmith" in _read_toml(py).get("tool", {}):
            return py
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read {path.name}: {err}", where=str(path),
                          fix="Fix the file's TOML syntax") from err


def locate(project: Path | str | None = None, *, cwd: Path | None = None) -> Path:
    """The config file of the project to use: ``project`` (a folder or a file), else
    ``STARSMITH_PROJECT``, else the nearest one from ``cwd`` upward."""
    given = project or os.environ.get(PROJECT_ENV) or None
    if given:
        path = Path(given).expanduser().resolve()
        if path.is_file():
            return path
        found = (path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else None
        if found is None and (path / "pyproject.toml").is_file() \
                and "starsmith" in _read_toml(path / "pyproject.toml").get("tool", {}):
            found = path / "pyproject.toml"
        if found is None:
            raise ConfigError(f"{path} is not a starsmith project (no {CONFIG_FILE} and no "
                              "[tool.starsmith] in a pyproject.toml)", where="--project / "
                              f"{PROJECT_ENV}", fix=f"Run `starsmith init {given}` to create one")
        return found
    start = (cwd or Path.cwd()).resolve()
    found = find_config(start)
    if found is None:
        raise ConfigError(f"no starsmith project in {start} or its parents (looked for "
                          f"{CONFIG_FILE}, or [tool.starsmith] in pyproject.toml)",
                          fix="Run `starsmith init DIR` to create a project, `starsmith demo` "
                              "for the demo, or pass --project DIR")
    return found


def load_project(project: Path | str | None = None, *, cwd: Path | None = None) -> Project:
    """Read and check a project's config file (found as :func:`locate` says)."""
    config = locate(project, cwd=cwd)
    raw = _read_toml(config)
    if config.name == "pyproject.toml":
        raw = raw["tool"]["starsmith"]
    where = str(config)
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown} in the project config", where=where,
                          fix=f"Use only {sorted(_KEYS)}")
    root = config.parent
    name = str(raw.get("name") or root.name)

    def path(key: str, default: str) -> Path:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"setting {key!r} must be a path (a string)", where=where)
        return (root / value).resolve()

    models = path("models", "models")
    if not models.is_dir():
        raise ConfigError(f"the models folder {models} does not exist", where=where,
                          fix="Create it, or set `models = \"...\"` to the folder of model files")
    sources = path("sources", str(models.relative_to(root)) if models.is_relative_to(root)
                   else str(models))
    if not sources.exists():
        raise ConfigError(f"the sources path {sources} does not exist", where=where,
                          fix="Set `sources` to the file or folder that declares the Sources")
    state = path("state", ".state")
    targets = {n: _target(n, t, root, state, where) for n, t in dict(raw.get("targets", {})).items()}
    default = str(raw.get("target", ""))
    if default and default not in targets and default not in TARGET_TYPES:
        raise ConfigError(f"the default target {default!r} is not declared", where=where,
                          fix=f"Add [targets.{default}], or set target to one of "
                              f"{sorted(targets) or list(TARGET_TYPES)}")
    return Project(root=root, name=name, config_file=config, models=models, sources=sources,
                   landing=landing_root(raw["landing"]) if is_uri(raw.get("landing", ""))
                   else path("landing", "landing"), state=state, default_target=default,
                   targets=targets, description=str(raw.get("description", "")),
                   notify=NotifySettings.from_config(raw),
                   secrets_file=(root / Path(str(raw["secrets_file"])).expanduser()).resolve()
                   if raw.get("secrets_file") else None)


def _target(name: str, raw: object, root: Path, state: Path, where: str) -> Target:
    if not isinstance(raw, dict):
        raise ConfigError(f"[targets.{name}] must be a table", where=where)
    unknown = sorted(set(raw) - _TARGET_KEYS)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown} in [targets.{name}]", where=where,
                          fix=f"Use only {sorted(_TARGET_KEYS)}")
    kind = str(raw.get("type", "duckdb"))
    if kind not in TARGET_TYPES:
        raise ConfigError(f"[targets.{name}] has type {kind!r}", where=where,
                          fix=f"Use one of {', '.join(TARGET_TYPES)}")
    if kind == "bigquery":
        missing = [k for k in ("project", "dataset") if not raw.get(k)]
        if missing:
            raise ConfigError(f"[targets.{name}] (bigquery) needs {' and '.join(missing)}",
                              where=where)
        return Target(name, kind, memory_limit=str(raw.get("memory_limit", "")),
                      project=str(raw["project"]), dataset=str(raw["dataset"]),
                      location=str(raw.get("location", "")), endpoint=str(raw.get("endpoint", "")))
    file = raw.get("path")
    return Target(name, kind, path=(root / str(file)).resolve() if file
                  else state / "warehouse.duckdb", memory_limit=str(raw.get("memory_limit", "")))
