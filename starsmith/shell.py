"""What every command shares: the project chosen on the command line, the console, clean exits.

Kept apart from the command modules so that they can all use it without importing each other.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from starsmith.config import ProjectConfig
from starsmith.errors import StarsmithError

console = Console(stderr=False)
_PROJECT: dict[str, Path | None] = {"path": None}


def choose_project(path: Path | None) -> None:
    """Remember ``--project`` for the command that runs (the CLI's callback sets it)."""
    _PROJECT["path"] = path


def config(**overrides: Any) -> ProjectConfig:
    """The build settings of the chosen project (``--project``, STARSMITH_PROJECT, or found
    from the current folder upward)."""
    target = overrides.pop("target", None)
    return ProjectConfig.load(_PROJECT["path"], target=target, **overrides)


def guard(fn: Callable[[], Any]) -> Any:
    """Turn a StarsmithError into one clear line and exit code 2, without a traceback."""
    try:
        return fn()
    except StarsmithError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from err


def exit_now(code: int) -> None:
    """Flush and leave at once: temporalio can crash in interpreter finalisation."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
