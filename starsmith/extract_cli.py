"""``starsmith extract``: land database extracts in the landing zone; and the extracts a build
runs first (``starsmith build`` extracts the days it is about to build).

Each source is extracted on its own: one that fails (its error printed, typed) does not stop the
others, and the command exits 2 if any failed.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from starsmith.errors import ConfigError, StarsmithError
from starsmith.loaders.store import local_folder
from starsmith.shell import config, console, exit_now, guard, parse_date

if TYPE_CHECKING:
    from starsmith.config import ProjectConfig
    from starsmith.contract import Source
    from starsmith.loaders.extract.messages import ExtractResult


def due_days(day: str | None, start: str | None, end: str | None) -> list[date]:
    """The days a build extracts: its --date, its --from/--to range, else today."""
    from starsmith.orchestration.plan import date_range

    if day:
        return [parse_date(day, "--date")]  # type: ignore[list-item]
    first, last = parse_date(start, "--from"), parse_date(end, "--to")
    if first and last and first <= last:
        return date_range(first, last)
    return [date.today()]


def run_extracts(cfg: ProjectConfig, pairs: list[tuple[Source, date]], *,
                 force: bool = False, attempts: int = 1) -> tuple[list[ExtractResult], int]:
    """Run each (source, day) extract, printing a line for each; returns the results and how
    many failed (each failure printed with its typed message)."""
    from starsmith.loaders.extract.land import extract_day
    from starsmith.loaders.extract.run import with_retries

    assert cfg.project is not None
    landing = local_folder(cfg.landing, "starsmith extract")
    secrets = cfg.project.secrets_file
    results: list[ExtractResult] = []
    failed = 0
    for source, day in pairs:
        try:
            result = with_retries(
                lambda s=source, d=day: extract_day(s, d, landing, secrets,  # type: ignore[misc]
                                                    force=force),
                what=f"extract {source.name} {day}", attempts=attempts)
        except StarsmithError as err:
            failed += 1
            kind = "retryable" if err.retryable else "not retryable"
            console.print(f"[bold red]error:[/] extract {escape(source.name)} {day} "
                          f"({kind}): {escape(str(err))}")
            continue
        results.append(result)
        console.print(escape(f"extract {result.describe()}"))
    return results, failed


def extract_for_build(cfg: ProjectConfig, select: list[str] | None, day: str | None,
                      start: str | None, end: str | None) -> int:
    """The extracts a build runs first: the database sources its models read, for the days it
    builds, unless landed. Retried with backoff; returns how many failed."""
    from starsmith.discover import load_catalogue
    from starsmith.loaders.extract.run import ATTEMPTS, due, extracting

    assert cfg.project is not None
    cat = load_catalogue(cfg.project)
    sources = extracting(cat, cat.select(select))
    if not sources:
        return 0
    pairs = due(sources, due_days(day, start, end),
                local_folder(cfg.landing, "starsmith extract"))
    return run_extracts(cfg, pairs, attempts=ATTEMPTS)[1]


def extract(
    day: Annotated[str | None, typer.Option("--date", help="the day to land (default: today)")]
    = None,
    source: Annotated[list[str] | None, typer.Option(
        "--source", "-S", help="a source to extract, repeatable (default: every database source)")]
    = None,
    force: Annotated[bool, typer.Option(help="extract again a day already landed (same window)")]
    = False,
    attempts: Annotated[int, typer.Option(
        help="tries of an extract whose error is retryable (server unreachable), with "
             "exponential backoff")] = 1,
) -> None:
    """Land the database sources' extracts for a day: part-0.parquet, any dead letters, and
    _manifest.json last. Incremental sources land the rows past the previous day's watermark."""
    from starsmith.discover import load_catalogue
    from starsmith.loaders.extract.run import due, extracting

    def go() -> int:
        cfg = config()
        assert cfg.project is not None
        cat = load_catalogue(cfg.project)
        when = parse_date(day, "--date") or date.today()
        sources = extracting(cat, names=source or None)
        if not sources:
            raise ConfigError("the project has no source extracted from a database",
                              where=str(cfg.project.sources),
                              fix="Declare Source(..., extract=Postgres(...))")
        pairs = [(s, when) for s in sources] if force else due(
            sources, [when], local_folder(cfg.landing, "starsmith extract"))
        for s in sources:
            if (s, when) not in pairs:
                console.print(escape(f"extract {s.name} {when}: already landed (--force "
                                     "extracts it again)"))
        _, failed = run_extracts(cfg, pairs, force=force, attempts=max(1, attempts))
        return 2 if failed else 0

    exit_now(guard(go))
