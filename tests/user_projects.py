"""What the tests that write a user's project share: the installed command, and the project file
of a DuckDB warehouse in the project's state folder."""

from __future__ import annotations

import sys
from pathlib import Path

STARSMITH = Path(sys.executable).parent / "starsmith"  # the command this environment installed


def starsmith_toml(name: str, *, memory_limit: str | None = None) -> str:
    """``starsmith.toml`` of a project named ``name``: models in ``models/``, landing in
    ``landing/``, a DuckDB warehouse in ``.state/`` as the default target."""
    limit = f'memory_limit = "{memory_limit}"\n' if memory_limit else ""
    return (f'name = "{name}"\nmodels = "models"\nlanding = "landing"\nstate = ".state"\n'
            'target = "dev"\n\n[targets.dev]\ntype = "duckdb"\n'
            f'path = ".state/warehouse.duckdb"\n{limit}')
