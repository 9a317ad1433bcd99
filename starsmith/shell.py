"""What every command shares: the project chosen on the command line, the console, clean exits.

Kept apart from the command modules so that they can all use it without importing each other.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from starsmith.config import ProjectConfig
from starsmith.errors import ConfigError, StarsmithError

console = Console(stderr=False)
_PROJECT: dict[str, Path | None] = {"path": None}


def parse_date(value: str | None, flag: str) -> date | None:
    """A date given on the command line (``--date``, ``--from``...), or a ConfigError naming
    the flag."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as err:
        raise ConfigError(f"{flag} {value!r} is not a date", fix="Use YYYY-MM-DD") from err


def choose_project(path: Path | None) -> None:
    """Remember ``--project`` for the command that runs (the CLI's callback sets it)."""
    _PROJECT["path"] = path


def config(**overrides: Any) -> ProjectConfig:
    """The build settings of the chosen project (``--project``, STARSMITH_PROJECT, or found
    from the current folder upward)."""
    target = overrides.pop("target", None)
    return ProjectConfig.load(_PROJECT["path"], target=target, **overrides)


def set_verbose(on: bool) -> None:
    """``--verbose``: an unexpected error shows its traceback too."""
    _PROJECT["verbose"] = Path(".") if on else None


def _innermost(err: BaseException) -> BaseException:
    """The error a chain of wrappers (Temporal's workflow and activity errors) is about."""
    seen = {id(err)}
    while True:
        nxt = getattr(err, "cause", None) or err.__cause__
        if nxt is None or id(nxt) in seen:
            return err
        seen.add(id(nxt))
        err = nxt


def guard(fn: Callable[[], Any]) -> Any:
    """Turn an error into one clear line and a non-zero exit, without a traceback: a
    StarsmithError says what, where and what to do (exit 2); anything else says what it is and
    how to see more (exit 3; ``--verbose`` prints the traceback)."""
    try:
        return fn()
    except StarsmithError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from err
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as err:
        inner = _innermost(err)
        text = str(getattr(inner, "message", "") or inner).strip().splitlines()
        if isinstance(inner, StarsmithError):
            console.print(f"[bold red]error:[/] {escape(str(inner))}")
            raise typer.Exit(2) from err
        console.print(f"[bold red]error:[/] {escape(type(inner).__name__)}: "
                      f"{escape(text[0] if text else '')}")
        if _PROJECT.get("verbose") is not None:
            console.print_exception()
        else:
            console.print("(run again with --verbose for the traceback)")
        raise typer.Exit(3) from err


def exit_now(code: int) -> None:
    """Flush and leave at once: temporalio can crash in interpreter finalisation."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
