"""The one configured logger.

Library code logs through ``get_logger(__name__)``; only the CLI decides where lines go (a rich
handler on a terminal, plain lines otherwise), so library modules never print.
"""

from __future__ import annotations

import logging
import sys

ROOT = "starsmith"


def get_logger(name: str) -> logging.Logger:
    """A child of the project logger, so one ``configure`` call governs every module."""
    short = name.split(".", 1)[-1] if name.startswith(ROOT) else name
    return logging.getLogger(f"{ROOT}.{short}")


def configure(level: int = logging.INFO, *, rich_console: bool | None = None) -> None:
    """Send project log lines to stderr: rich on a terminal, plain text otherwise."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    use_rich = sys.stderr.isatty() if rich_console is None else rich_console
    handler: logging.Handler
    if use_rich:
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if level > logging.DEBUG:  # a failure is its typed one-line message; --verbose adds the rest
        handler.addFilter(_no_traceback)
    logger.addHandler(handler)
    logger.propagate = False
    # The Temporal SDK logs each failed activity with its traceback: through the same handler,
    # warnings and worse only, so a failed step reads as one line unless --verbose.
    sdk = logging.getLogger("temporalio")
    for old in list(sdk.handlers):
        sdk.removeHandler(old)
    sdk.addHandler(handler)
    sdk.setLevel(level if level <= logging.DEBUG else logging.WARNING)
    sdk.propagate = False


def _no_traceback(record: logging.LogRecord) -> bool:
    """Drop a record's traceback (the message says what failed and where)."""
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True
