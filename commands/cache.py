"""ksminspect cache: what the cache of decompressed and reassembled dumps
holds, and clearing it."""

from __future__ import annotations

import click

from .records import utc
from .render import emit, emit_table, format_option, plural


@click.command("cache")
@click.argument("action", type=click.Choice(["list", "clear"]), default="list")
@format_option
def cache_command(action: str, fmt: str) -> None:
    """The cache of dumps decompressed (.xz, .gz, .zst) or reassembled
    (flattened kdump files) once: list it (the default), or clear it.

    It lives in ~/.cache/ksminspect ($KSMINSPECT_CACHE) and is trimmed to
    $KSMINSPECT_CACHE_MAX GB (default 20) after each new copy, the least
    recently used first.

    \b
    Examples:
      ksminspect cache
      ksminspect cache clear
    """
    import os

    from ksminspect.cache import age, cache_dir, entries, max_bytes, remove

    held = entries()
    total = sum(e.size for e in held)
    if action == "clear":
        for e in held:
            remove(e)
        click.echo(f"ksminspect: removed {plural(len(held), 'entry', 'entries')} ({total / 1e9:.1f} GB) "
                   f"from {cache_dir()}", err=True)
        return

    data = {"directory": cache_dir(), "bytes": total, "max_bytes": max_bytes(),
            "entries": [{"name": os.path.basename(e.path), "bytes": e.size,
                         "used": utc(e.used), "source": e.source} for e in held]}

    def table() -> None:
        emit_table([[os.path.basename(e.path), e.source or "(not recorded)", f"{e.size / 1e6:.1f}", age(e)]
                    for e in held], ["entry", "made from", "MB", "last used"], wrap=["made from"])
        click.echo(f"{cache_dir()}: {plural(len(held), 'entry', 'entries')}, {total / 1e9:.1f} GB of at most "
                   f"{max_bytes() / 1e9:.0f} GB")

    emit(fmt, "cache", data, table)
