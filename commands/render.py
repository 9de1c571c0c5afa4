"""Renderers: JSON and tables. Data goes to stdout, nothing else does."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import click
from tabulate import tabulate

from .records import document

FORMATS = ("table", "json")

# whether severities are coloured: stdout is a terminal and NO_COLOR is unset
# (decided once, before a pager takes stdout)
COLOUR = [False]
_PAGING = [False]  # stdout is a pager's pipe: the terminal's width still holds
SEVERITY_COLOURS = {"error": "red", "warning": "yellow", "differs": "yellow"}

def plural(n: int, word: str, words: str | None = None) -> str:
    """"1 check", "2 checks": *n* and the word in its number (*words*
    where the plural is not *word* + "s")."""
    return f"{n} {word if n == 1 else words or word + 's'}"


def format_option_with(*extra: str):
    """-f/--format: table or json, and the command's own *extra* formats."""
    return click.option("-f", "--format", "fmt", type=click.Choice(FORMATS + extra), default="table",
                        show_default=True, help="Output format; json keys are documented in the README.")


format_option = format_option_with()


def emit_json(data: Any, out: Callable[[str], Any] | None = None) -> None:
    """``json.dumps(data)`` and a newline, written to *out* (stdout). A
    :class:`JsonArray` anywhere in *data* is written an item at a time, so a
    host's millions of items are never one Python object each and one string;
    a callable is called when its turn comes (damage found by a walk written
    before it)."""
    # Only json.dumps() without indentation takes json's C encoder: ten times
    # faster on a host's million items. Pipe through `jq .` to read it.
    write = out or sys.stdout.write
    _write_json(data, write)
    write("\n")


class JsonArray:
    """A JSON array given as the JSON texts of its items (an iterable, read
    once), *count* of them."""

    def __init__(self, texts: Iterable[str], count: int = -1):
        self.texts = texts
        self.count = count

    def __len__(self) -> int:
        return self.count


def _streams(value: Any) -> bool:
    if isinstance(value, JsonArray) or callable(value):
        return True
    if isinstance(value, dict):
        return any(_streams(v) for v in value.values())
    # a list holds a stream only in its first items (trees: one per NUMA node)
    return isinstance(value, list) and any(_streams(v) for v in value[:64])


def _write_json(value: Any, write: Callable[[str], Any]) -> None:
    if callable(value):
        value = value()
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


@contextlib.contextmanager
def terminal_output(paged: bool) -> Iterator[None]:
    """On a terminal: severities in colour unless $NO_COLOR, and with
    *paged* the output through a pager as git does ($KSMINSPECT_PAGER, else
    $PAGER, else less; LESS=FRX unless set: one screen goes straight
    through). Elsewhere, nothing changes."""
    tty = sys.stdout.isatty()
    COLOUR[0] = tty and not os.environ.get("NO_COLOR")
    command = os.environ.get("KSMINSPECT_PAGER", os.environ.get("PAGER", "less")).strip()
    if not (tty and paged and command and command != "cat" and shutil.which(command.split()[0])):
        yield
        return
    env = dict(os.environ)
    env.setdefault("LESS", "FRX")
    pager = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE, env=env)
    stdout = sys.stdout
    sys.stdout = io.TextIOWrapper(pager.stdin, encoding=stdout.encoding or "utf-8", errors="replace")
    _PAGING[0] = True
    try:
        yield
    finally:
        try:
            sys.stdout.close()
        except OSError:  # the reader quit first
            pass
        sys.stdout, _PAGING[0] = stdout, False
        pager.wait()


def severity(text: str, level: Optional[str] = None) -> str:
    """*text* in the colour of its severity *level* (by default the text
    itself: "error", "warning", "differs"), where colour is on."""
    level = level or text
    colour = SEVERITY_COLOURS.get(level)
    return click.style(text, fg=colour, bold=level == "error") if COLOUR[0] and colour else text


def terminal_width() -> Optional[int]:
    """The width tables and prose must fit: $COLUMNS, else the terminal's
    when stdout is one; None (no limit) when the output goes to a file or a
    pipe, as ps and git do."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty() or _PAGING[0]:
        return shutil.get_terminal_size().columns
    return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def _wrap(text: str, width: int, indent: str = "") -> list[str]:
    """Words filled to *width*; a word (an address) is never broken."""
    return textwrap.wrap(text, width, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False) or [""]


def echo_wrapped(text: str, indent: int = 4) -> None:
    """A line of prose, wrapped to the terminal with its continuation
    lines indented."""
    width = terminal_width()
    if width is None or visible_len(text) <= width:
        click.echo(text, color=COLOUR[0])
    else:
        click.echo("\n".join(_wrap(text, width, " " * indent)), color=COLOUR[0])


def echo_parts(first: str, rest: str, parts: Sequence[str]) -> None:
    """A drawing's line: *parts* two spaces apart after the prefix *first*,
    folded after *rest* (the drawing's lines going on) where the terminal
    is too narrow."""
    width = terminal_width()
    line = first + parts[0]
    for part in parts[1:]:
        if width is not None and visible_len(line) + 2 + visible_len(part) > width:
            click.echo(line, color=COLOUR[0])
            line = rest + part
        else:
            line += "  " + part
    click.echo(line, color=COLOUR[0])


def emit_table(rows: Iterable[Sequence[Any]], headers: Sequence[str], title: str | None = None,
               wrap: Sequence[str] = (), shrink: Sequence[str] = ()) -> None:
    """A table that fits the terminal: the *wrap* columns (prose, fields)
    are filled to what the others leave, the *shrink* columns (comm) cut
    short with "~"; where that cannot fit, each row becomes a block of
    "header value" pairs. Addresses are never cut."""
    if title:
        echo_wrapped(title)
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    width = terminal_width()
    text = _table(rows, headers, width, wrap, shrink)
    if text is None:
        text = "\n".join(_blocks(rows, headers, width))
    click.echo(text, color=COLOUR[0])


def _table(rows: list[list[str]], headers: Sequence[str], width: Optional[int],
           wrap: Sequence[str], shrink: Sequence[str]) -> Optional[str]:
    heads = list(headers)

    def render(rows: list[list[str]]) -> str:
        return tabulate(rows, headers=heads, disable_numparse=True)

    def fits(text: str) -> bool:
        return width is None or max(map(visible_len, text.splitlines() or [""])) <= width

    text = render(rows)
    if fits(text):
        return text
    # long names over short values ("merging_pages" over "35"): names on two lines
    heads = [_fold_header(h, max((visible_len(r[i]) for r in rows), default=0)) for i, h in enumerate(headers)]
    text = render(rows)
    if fits(text):
        return text
    flexible = [i for i, h in enumerate(headers) if h in wrap or h in shrink]
    # tabulate's simple format pads a header by 2 (its MIN_PADDING)
    natural = [max([max(map(len, heads[i].split("\n"))) + 2] + [visible_len(r[i]) for r in rows])
               for i in range(len(headers))]
    room = width - 2 * (len(headers) - 1) - sum(w for i, w in enumerate(natural) if i not in flexible)
    if not flexible or room <= 0:
        return None
    # a column cut short takes no more than it needs; the wrapped ones share the rest
    cut = [i for i in flexible if headers[i] not in wrap]
    wrapped = [i for i in flexible if headers[i] in wrap]
    width_of = {i: min(natural[i], room // len(flexible)) for i in cut}
    rest = room - sum(width_of.values())
    width_of.update({i: rest // len(wrapped) for i in wrapped})
    rows = [list(r) for r in rows]
    for i in wrapped:
        longest = max((len(word) for r in rows for word in r[i].split()), default=0)
        if width_of[i] < max(longest, len(headers[i]) + 2):
            return None
        for r in rows:
            r[i] = "\n".join(_wrap(r[i], width_of[i]))
    for i in cut:
        if width_of[i] < max(6, len(headers[i]) + 2):
            return None
        for r in rows:
            r[i] = r[i] if len(r[i]) <= width_of[i] else r[i][:width_of[i] - 1] + "~"
    text = render(rows)
    return text if max(map(visible_len, text.splitlines())) <= width else None


def _fold_header(name: str, room: int) -> str:
    """A column's name on as many lines as its values' width *room* asks,
    broken after "_" or at a space; a word is never broken."""
    words = re.findall(r"[^_ ]+(?:_|$| )", name + " ")
    lines: list[str] = []
    for word in (w.strip() for w in words):
        if lines and len(lines[-1]) + len(word) <= max(room, 1) - 2:
            lines[-1] += ("" if lines[-1].endswith("_") else " ") + word
        else:
            lines.append(word)
    return "\n".join(lines)


def _blocks(rows: list[list[str]], headers: Sequence[str], width: int) -> Iterator[str]:
    """Each row as "header value" pairs filled to *width*, continuation
    lines indented: what a table too wide for the terminal becomes."""
    for row in rows:
        line = ""
        for header, value in zip(headers, row):
            if not value:
                continue
            pair = f"{header} {value}" if header else value
            if not line:
                line = pair
            elif visible_len(line) + 2 + visible_len(pair) <= width:
                line += "  " + pair
            else:
                yield line
                line = "    " + pair
            if visible_len(line) > width:  # prose: fill it
                *done, line = _wrap(line, width, "    ")
                yield from done
        yield line


def emit(fmt: str, name: str, data: dict[str, Any], table: Callable[[], None]) -> None:
    """*data* as the JSON document *name* (schema.json), or *table* drawn."""
    if fmt == "json":
        emit_json(document(name, data))
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
