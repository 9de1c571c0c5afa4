"""Renderers: JSON and tables. Data goes to stdout, nothing else does."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Iterable, Sequence

import click
from tabulate import tabulate

FORMATS = ("table", "json")

format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
    help="Output format; json keys are documented in the README.")


def hexaddr(value: int | None) -> str | None:
    """Kernel addresses as hex strings in JSON: they exceed 2**53."""
    return None if value is None else f"{value:#x}"


def emit_json(data: Any) -> None:
    # Only json.dumps() without indentation takes json's C encoder: ten times
    # faster on a host's million items. Pipe through `jq .` to read it.
    sys.stdout.write(json.dumps(data) + "\n")


def emit_table(rows: Iterable[Sequence[Any]], headers: Sequence[str], title: str | None = None) -> None:
    if title:
        click.echo(title)
    click.echo(tabulate(list(rows), headers=headers, disable_numparse=True))


def emit(fmt: str, data: Any, table: Callable[[], None]) -> None:
    if fmt == "json":
        emit_json(data)
    else:
        table()


def fail_if_walk_found_nothing(prog, counter: str, walked: int, damaged: bool) -> None:
    """After the output: exit with EXIT_FINDINGS and say why, when a full walk
    found nothing of what the kernel's *counter* says it holds, and no walk
    damage (already said) explains it."""
    from ksminspect.counters import walk_found_nothing
    from ksminspect.errors import EXIT_FINDINGS

    why = None if damaged else walk_found_nothing(prog, counter, walked)
    if why:
        click.echo(f"ksminspect: error: {why}", err=True)
        click.get_current_context().exit(EXIT_FINDINGS)


def say_changed_while_read(count: int) -> None:
    """Live kernel: the walks that met their lists changing, in one line."""
    if count:
        click.echo(f"ksminspect: {count} walk{'s' if count != 1 else ''} met lists that changed "
                   f"while they were read (live kernel), again on every retry; not shown as damage",
                   err=True)


def progress(items: Iterable, label: str) -> Iterable:
    """A progress bar on stderr for long walks, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return items
    return _bar(items, label)


def _bar(items: Iterable, label: str) -> Iterable:
    with click.progressbar(items, label=label, file=sys.stderr) as bar:
        yield from bar
