"""What changed in the models since the warehouse last built them: `starsmith plan`'s report.

Each model's fingerprint is stored with every build (``_starsmith.watermarks``). A model whose
code or spec changed is listed with why (transform or spec changed, column added, removed or
retyped) and with its dependants, which read what it writes; a breaking change names the command
that rebuilds. Descriptions and owners are not in the fingerprint, so they never list a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from starsmith.registry import Catalogue


@dataclass(frozen=True)
class ModelChange:
    model: str
    reasons: tuple[str, ...]
    breaking: bool
    dependants: tuple[str, ...]

    def advice(self) -> str:
        if self.breaking:
            return f"refused until rebuilt: starsmith build -s {self.model}+ --full-refresh"
        if any("added" in r for r in self.reasons):
            return "columns are added to the table on the next build (older rows NULL)"
        return f"new days use the new code; to restate history: starsmith build -s " \
               f"{self.model}+ --full-refresh"


def stored_fingerprints(marks: pl.DataFrame) -> dict[str, str]:
    """Each model's fingerprint at its latest build."""
    if not marks.height:
        return {}
    order = "published_at" if "published_at" in marks.columns else "logical_date"
    latest = marks.sort(order).group_by("model").agg(pl.col("fingerprint").last())
    return {m: f for m, f in latest.iter_rows() if f}


def model_changes(cat: Catalogue, models: list[str], wh: object) -> list[ModelChange]:
    """The selected models whose stored fingerprint differs from the code's, with why."""
    from starsmith.loaders.evolve import schema_diff

    stored = stored_fingerprints(wh.watermarks())  # type: ignore[attr-defined]
    out = []
    for name in models:
        model = cat.models[name]
        before = stored.get(name)
        if before is None or before == model.fingerprint():
            continue
        diff = schema_diff(wh, model) if hasattr(wh, "table_types") else None  # type: ignore[arg-type]
        reasons = tuple(diff.reasons()) if diff is not None else ()
        out.append(ModelChange(name, reasons or ("transform or spec changed",),
                               bool(diff and diff.breaking),
                               tuple(cat.downstream(name))))
    return out
