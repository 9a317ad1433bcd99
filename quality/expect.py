"""Expectations declared next to a model, as plain data: GX is imported only to validate.

``Expect("expect_column_values_to_not_be_null", column="customer_id")`` names a
great-expectations expectation type and its arguments; ``severity`` is ``error`` (blocks the
publish of the model and skips its dependants) or ``warn`` (recorded, the build goes on).
Keeping the declaration free of GX keeps ``starsmith plan`` and the workflow sandbox fast: GX costs
seconds and hundreds of MiB to import, paid once per worker process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starsmith.errors import ConfigError

SEVERITIES = {"error": "critical", "warn": "warning"}


@dataclass(frozen=True)
class Expect:
    type: str
    kwargs_json: str
    severity: str = "error"

    def __init__(self, type: str, *, severity: str = "error", **kwargs: Any) -> None:
        if severity not in SEVERITIES:
            raise ConfigError(f"severity {severity!r} is not one of {sorted(SEVERITIES)}",
                              where=type)
        if not type.startswith("expect_"):
            raise ConfigError(f"{type!r} is not a great-expectations expectation type")
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "kwargs_json", json.dumps(kwargs, sort_keys=True, default=str))
        object.__setattr__(self, "severity", severity)

    @property
    def kwargs(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.kwargs_json)
        return loaded

    @property
    def column(self) -> str:
        kw = self.kwargs
        return str(kw.get("column") or ",".join(kw.get("column_list", [])) or "")

    def describe(self) -> str:
        return f"{self.type}({', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())})"
