"""Load a project's model files by path and collect their Models and Sources.

Each project gets a private package (``Project.package``) whose ``__path__`` is its models
folder, so files import each other with relative imports and nothing depends on what else is on
``sys.path``. A catalogue is cached per project and per state of its files (path, size, mtime):
a worker pays the imports once, and an edited file is seen by the next build.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import traceback
from pathlib import Path
from types import ModuleType

from starsmith.contract import Model, Source
from starsmith.errors import ConfigError, StarsmithError
from starsmith.project import Project
from starsmith.registry import Catalogue, build_catalogue

_LOCK = threading.Lock()
_CACHE: dict[str, tuple[tuple[object, ...], Catalogue]] = {}


def _signature(files: list[Path]) -> tuple[object, ...]:
    out: list[object] = []
    for f in files:
        st = f.stat()
        out.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(out)


def load_catalogue(project: Project) -> Catalogue:
    """The project's checked catalogue (cached until one of its files changes)."""
    files = list(project.model_files())
    signature = _signature(files)
    with _LOCK:
        cached = _CACHE.get(project.package)
        if cached and cached[0] == signature:
            return cached[1]
        cat = _load(project, files)
        _CACHE[project.package] = (signature, cat)
        return cat


def _module_name(project: Project, base: Path, file: Path) -> str:
    rel = file.relative_to(base).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([project.package, *parts])


def _fresh_package(project: Project) -> None:
    """(Re)create the project's private package, dropping any modules a previous load left."""
    prefix = project.package
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]
    init = project.models / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(
            prefix, init, submodule_search_locations=[str(project.models)])
    else:  # a namespace-like package: just a search path for the project's files
        spec = importlib.machinery.ModuleSpec(prefix, None, is_package=True)
        spec.submodule_search_locations = [str(project.models)]
    if spec is None:  # pragma: no cover - only for a path importlib cannot use at all
        raise ConfigError(f"cannot load the models folder {project.models}")
    package = importlib.util.module_from_spec(spec)
    sys.modules[prefix] = package
    if init.exists() and spec.loader is not None:
        spec.loader.exec_module(package)


def _import(project: Project, file: Path) -> ModuleType:
    inside = file.is_relative_to(project.models)
    name = (_module_name(project, project.models, file) if inside
            else f"{project.package}._sources_{file.stem}")
    if name in sys.modules:
        return sys.modules[name]
    try:
        if inside:
            return importlib.import_module(name)
        spec = importlib.util.spec_from_file_location(name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    except StarsmithError as err:
        where = _rel(project, file)
        raise type(err)(err.what, where=f"{where}: {err.where}" if err.where else where,
                        fix=err.fix) from err
    except Exception as err:
        frames = [f for f in traceback.extract_tb(err.__traceback__)
                  if Path(f.filename).is_relative_to(project.root)]
        at = f"{_rel(project, Path(frames[-1].filename))}:{frames[-1].lineno}" if frames \
            else _rel(project, file)
        raise ConfigError(f"cannot load model file {_rel(project, file)}: "
                          f"{type(err).__name__}: {err}", where=at,
                          fix="Fix the file (the message says what Python found), then run "
                              "again") from err


def _rel(project: Project, file: Path) -> str:
    return str(file.relative_to(project.root)) if file.is_relative_to(project.root) else str(file)


def _load(project: Project, files: list[Path]) -> Catalogue:
    _fresh_package(project)
    models: dict[int, tuple[Model, str]] = {}
    sources: dict[int, Source] = {}
    for file in files:
        module = _import(project, file)
        for value in vars(module).values():
            found = value if isinstance(value, list | tuple) else (value,)
            for item in found:
                if isinstance(item, Model) and id(item) not in models:
                    models[id(item)] = (item, _rel(project, file))
                elif isinstance(item, Source):
                    sources.setdefault(id(item), item)
    defined: dict[str, str] = {}
    for model, listed in models.values():  # where a model is defined: its transform's module
        origin = sys.modules.get(getattr(model.transform, "__module__", ""), None)
        origin_file = getattr(origin, "__file__", None)
        defined[model.name] = _rel(project, Path(str(origin_file))) if origin_file else listed
    return build_catalogue([m for m, _ in models.values()], sources.values(),
                           project=project.name, files=defined)
