"""ksminspect summary: the kernel's KSM counters beside the same counters walked."""

from __future__ import annotations

import click

from .records import damage_json, document
from .render import (dump_words, echo_wrapped, emit, emit_table, fail_if_walk_found_nothing,
                     format_option, say_changed_while_read, say_damage, severity)


@click.command()
@click.option("--watch", type=click.FloatRange(min=0, min_open=True, max=86400), metavar="SECONDS",
              help="Live kernel: redraw the counters and their rates every SECONDS until Ctrl-C "
                   "(with --format json: one JSON object per line).")
@format_option
@click.pass_obj
def summary(app, fmt: str, watch: float | None) -> None:
    """KSM's counters and tunables, and the counters recomputed by a walk.

    Keys are the names of the files in /sys/kernel/mm/ksm (plus rmap_items,
    the kernel's ksm_rmap_items). A walked value that differs from the
    kernel's is marked with '!'.

    \b
    Examples:
      ksminspect -c vmcore.xz -s vmlinux summary --format json
      sudo ksminspect summary --watch 2
    """
    from ksminspect.counters import read_counters, read_tunables, walk_counts
    from ksminspect.program import dump_description

    if watch is not None:
        return watch_counters(app, watch, fmt)
    prog = app.prog
    counters = read_counters(prog)
    walked_counts = walk_counts(prog)
    walked = walked_counts.as_counters(prog, counters)
    tunables = read_tunables(prog)
    dump = dump_description(prog)
    data = {"counters": counters, "walked": walked, "tunables": tunables,
            "damage": damage_json(walked_counts.damage), "dump": dump}

    def table() -> None:
        if dump:
            echo_wrapped(f"dump: {dump_words(dump)}")
            click.echo()
        rows = []
        for name, value in counters.items():
            w = walked.get(name)
            mark = "" if w is None or w == value else severity("differs")
            rows.append((name, value, "-" if w is None else w, mark))
        emit_table(rows, ("counter", "kernel", "walked", "walk vs kernel"))
        click.echo()
        emit_table(sorted(tunables.items()), ("tunable", "value"))
        say_damage(prog, walked_counts.damage)

    emit(fmt, "summary", data, table)
    say_changed_while_read(walked_counts.changed_while_read)
    fail_if_walk_found_nothing(prog, "rmap_items", walked_counts.rmap_items,
                               bool(walked_counts.damage))


# Rates worth watching: name shown -> counter whose change per second it is.
RATES = {"merged pages/s": "pages_sharing", "scanned pages/s": "pages_scanned",
         "full scans/s": "full_scans", "rmap_items/s": "rmap_items"}


def watch_counters(app, interval: float, fmt: str) -> None:
    """Redraw the counters and their rates until Ctrl-C."""
    import gc
    import json
    import signal
    import sys
    import time

    from ksminspect.counters import read_counters
    from ksminspect.errors import KsmInspectError

    if not app.live:
        raise KsmInspectError("--watch needs the live kernel: a dump does not change")
    gc.enable()  # run() turns it off for walks; a watch may run for days
    if interval <= 0:
        raise click.BadParameter("must be above 0", param_hint="--watch")
    prog = app.prog
    # One Ctrl-C ends the watch. Later SIGINTs (a second key press, or
    # timeout(1) signalling the child and then its process group) are
    # ignored, down to the OS, so that they cannot break the clean exit.
    # Inside drgn the process is drgn's: its handler is given back.
    def on_sigint(signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: KeyboardInterrupt as usual
        previous = None
    before, then = None, None
    try:
        while True:
            now = time.monotonic()
            counters = read_counters(prog)
            rates = {}
            if before is not None:
                dt = now - then
                rates = {name: round((counters.get(c, 0) - before.get(c, 0)) / dt, 1)
                         for name, c in RATES.items() if c in counters}
            if fmt == "json":
                sys.stdout.write(json.dumps(document("summary-watch", {
                    "time": time.time(), "counters": counters, "rates": rates})) + "\n")
            else:
                if sys.stdout.isatty():
                    click.clear()
                click.echo(time.strftime("%H:%M:%S") + f"  every {interval:g} s, Ctrl-C to stop")
                emit_table(sorted(counters.items()), ("counter", "value"))
                if rates:
                    click.echo()
                    emit_table(sorted(rates.items()), ("rate", "per second"))
                click.echo()
            sys.stdout.flush()
            before, then = counters, now
            time.sleep(interval)
    except KeyboardInterrupt:
        return  # the way to stop watching: no error
    finally:
        if app.embedded and previous is not None:
            signal.signal(signal.SIGINT, previous)
