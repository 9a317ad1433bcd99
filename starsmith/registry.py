"""Find the model modules, check the graph when it is loaded, and order it.

Like Dagster's definitions loader, errors surface at load time, not halfway through a build: an
unknown input names the closest existing names, a cycle names every model on it. Models are named
explicitly in their specs, so renaming a function never rewires the graph.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from starsmith.contract import Model, Source
from starsmith.errors import ModelGraphError
from starsmith.model_checks import check_model

SOURCE_PREFIX = "landing."


@dataclass(frozen=True)
class Catalogue:
    """Every model and source, checked and in dependency order."""

    models: dict[str, Model]
    sources: dict[str, Source]
    order: tuple[str, ...]
    project: str = ""
    files: dict[str, str] = field(default_factory=dict)  # model -> the file that defines it

    def where(self, name: str) -> str:
        """The file that defines a model, for error messages."""
        return self.files.get(name, f"model {name}")

    @cached_property
    def fingerprint(self) -> str:
        """One hash of every model's and source's data-relevant definition: two workers with
        the same fingerprint run the same code on the same contracts."""
        parts = [f"{n}={self.models[n].fingerprint()}" for n in sorted(self.models)]
        parts += [f"{n}={self.sources[n].fingerprint()}" for n in sorted(self.sources)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def model(self, name: str) -> Model:
        if name not in self.models:
            raise ModelGraphError(f"no model named {name!r}{_did_you_mean(name, self.models)}",
                                  fix="Run `starsmith plan` to list the models")
        return self.models[name]

    def upstream(self, name: str) -> list[str]:
        """Models (not sources) that ``name`` reads directly."""
        return [i for i in self.model(name).input_names if i in self.models]

    def dependants(self, name: str) -> list[str]:
        return [m for m in self.order if name in self.models[m].input_names]

    def select(self, selectors: Iterable[str] | None) -> list[str]:
        """dbt-style selection: ``m`` alone, ``m+`` with its dependants, ``+m`` with its inputs."""
        chosen: set[str] = set()
        for sel in selectors or []:
            down, up = sel.endswith("+"), sel.startswith("+")
            name = sel.strip("+")
            self.model(name)
            chosen.add(name)
            if down:
                chosen |= self._closure(name, self.dependants)
            if up:
                chosen |= self._closure(name, self.upstream)
        return [m for m in self.order if m in chosen] if selectors else list(self.order)

    def downstream(self, name: str) -> list[str]:
        """Every model that reads ``name``, directly or through others, in build order."""
        found = self._closure(name, self.dependants)
        return [m for m in self.order if m in found]

    def _closure(self, start: str, step: object) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in step(todo.pop()):  # type: ignore[operator]
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def build_catalogue(models: Iterable[Model], sources: Iterable[Source], *, project: str = "",
                    files: Mapping[str, str] | None = None) -> Catalogue:
    """Check the graph (duplicates, unknown inputs, cycles) and order it deterministically."""
    files = dict(files or {})
    by_name: dict[str, Model] = {}
    for model in models:
        if model.name in by_name:
            raise ModelGraphError(f"two models are named {model.name!r}",
                                  where=files.get(model.name),
                                  fix="Give each model a unique name")
        by_name[model.name] = model
    src: dict[str, Source] = {}
    for s in sources:
        key = f"{SOURCE_PREFIX}{s.name}"
        if key in src and src[key] != s:
            raise ModelGraphError(f"two sources are named {s.name!r}",
                                  fix="Give each Source a unique name")
        src[key] = s
    known = [*by_name, *src]
    for model in by_name.values():
        for name in model.input_names:
            if name not in by_name and name not in src:
                raise ModelGraphError(
                    f"model {model.name!r} reads {name!r}, which is neither a model nor a source"
                    f"{_did_you_mean(name, known)}",
                    where=files.get(model.name, f"model {model.name}"),
                )
    order = tuple(_topological(by_name))
    for name in order:
        check_model(by_name[name], by_name, src, files.get(name, f"model {name}"))
    return Catalogue(by_name, src, order, project, files)


def _topological(models: dict[str, Model]) -> list[str]:
    """Kahn's algorithm, alphabetical among ready models; a cycle is reported as a path."""
    deps = {m: sorted(i for i in models[m].input_names if i in models) for m in models}
    done: list[str] = []
    placed: set[str] = set()
    while len(done) < len(models):
        ready = sorted(m for m in models if m not in placed and all(d in placed for d in deps[m]))
        if not ready:
            raise ModelGraphError(f"the models form a cycle: {' -> '.join(_cycle(deps, placed))}",
                                  fix="Remove one of these inputs")
        done.extend(ready)
        placed.update(ready)
    return done


def _cycle(deps: dict[str, list[str]], placed: set[str]) -> list[str]:
    node = min(m for m in deps if m not in placed)
    path: list[str] = []
    while node not in path:
        path.append(node)
        node = next(d for d in deps[node] if d not in placed)
    return [*path[path.index(node):], node]
