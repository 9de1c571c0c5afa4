"""Renderers: JSON and tables. Data goes to stdout, nothing else does."""

from __future__ import annotations

import json
import sys
from itertools import islice
from typing import Any, Callable, Iterable, Sequence

import click
from tabulate import tabulate

FORMATS = ("table", "json")

def format_option_with(*extra: str):
    """-f/--format: table or json, and the command's own *extra* formats."""
    return click.option("-f", "--format", "fmt", type=click.Choice(FORMATS + extra), default="table",
                        show_default=True, help="Output format; json keys are documented in the README.")


format_option = format_option_with()


def hexaddr(value: int | None) -> str | None:
    """Kernel addresses as hex strings in JSON: they exceed 2**53."""
    return None if value is None else f"{value:#x}"


def json_int(value: int | None) -> str:
    """``json.dumps(value)`` of an int or None, without its cost per call."""
    return "null" if value is None else "%d" % value


def emit_json(data: Any, out: Callable[[str], Any] | None = None) -> None:
    """``json.dumps(data)`` and a newline, written to *out* (stdout). A
    :class:`JsonArray` anywhere in *data* is written an item at a time, so a
    host's millions of items are never one Python object each and one string."""
    # Only json.dumps() without indentation takes json's C encoder: ten times
    # faster on a host's million items. Pipe through `jq .` to read it.
    write = out or sys.stdout.write
    _write_json(data, write)
    write("\n")


class JsonArray:
    """A JSON array given as the JSON texts of its items (an iterable, read
    once), *count* of them."""

    def __init__(self, texts: Iterable[str], count: int):
        self.texts = texts
        self.count = count

    def __len__(self) -> int:
        return self.count


def _streams(value: Any) -> bool:
    if isinstance(value, JsonArray):
        return True
    if isinstance(value, dict):
        return any(_streams(v) for v in value.values())
    # a list holds a stream only in its first items (trees: one per NUMA node)
    return isinstance(value, list) and any(_streams(v) for v in value[:64])


def _write_json(value: Any, write: Callable[[str], Any]) -> None:
    if isinstance(value, JsonArray):
        texts = iter(value.texts)
        write("[" + ", ".join(islice(texts, 1)))
        while batch := ", ".join(islice(texts, 4096)):  # a write per item costs as much as its text
            write(", " + batch)
        write("]")
    elif isinstance(value, dict) and _streams(value):
        write("{")
        for i, (k, v) in enumerate(value.items()):
            write((", " if i else "") + json.dumps(k) + ": ")
            _write_json(v, write)
        write("}")
    elif isinstance(value, list) and _streams(value):
        write("[")
        for i, v in enumerate(value):
            if i:
                write(", ")
            _write_json(v, write)
        write("]")
    else:
        write(json.dumps(value))


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


def dump_words(dump: dict) -> str:
    """A dump's format in a line: "kdump-compressed (zlib, flattened), dump level 31: ..."."""
    what = {"elf": "ELF", "kdump": "kdump-compressed"}.get(dump["format"], dump["format"])
    how = [h for h in (dump["compression"], "flattened" if dump["flattened"] else None) if h]
    level = "" if dump["dump_level"] is None else f", dump level {dump['dump_level']}"
    left = f" (left out: {', '.join(dump['left_out'])})" if dump["left_out"] else ""
    return what + (f" ({', '.join(how)})" if how else "") + level + left


def say_damage(prog, damage: Iterable) -> None:
    """After the output, on stderr: each walk's damage in a line, and the
    pages the dump left out (not damage: the dump's doing) in one sentence."""
    from ksminspect.layout import get_layout
    from ksminspect.program import lacks_memory
    from ksminspect.walk import excluded_pages

    damage = list(damage)
    for d in damage:
        if d.problem != "excluded":
            click.echo(f"walk damage: {d.sentence()}", err=True)
    pages = excluded_pages(damage, get_layout(prog).page_mask)
    if pages:
        click.echo(f"ksminspect: partial results: {lacks_memory(prog, pages)}; the walks stopped "
                   f"at {'them' if len(pages) > 1 else 'it'}", err=True)


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
