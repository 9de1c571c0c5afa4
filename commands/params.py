"""Command-line arguments: their types and ranges, and what a filter names
checked against the kernel, so that a mistake gets one sentence (exit 2)
and a filter that matches nothing says so instead of an empty table."""

from __future__ import annotations

from typing import Optional

import click

from ksminspect.layout import MAX_NID

# include/linux/threads.h: no pid reaches PID_MAX_LIMIT (4M on 64-bit).
PID_MAX_LIMIT = 4 * 1024 * 1024


class Hex(click.ParamType):
    """An address or a page frame number, in hex with or without 0x, as
    crash prints and takes them (``0xffff888012345678``, ``f8b4``)."""

    name = "ADDRESS"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            number = value
        else:
            try:
                number = int(value, 16)
            except ValueError:
                self.fail(f"{value!r} is not a hex number (e.g. 0xffff888012345678 or f8b4)",
                          param, ctx)
        if not 0 <= number < 1 << 64:
            self.fail(f"{value!r} is not an address: addresses are 0 to 0xffffffffffffffff",
                      param, ctx)
        return number


HEX = Hex()
PID = click.IntRange(1, PID_MAX_LIMIT - 1)  # pid 0 is the idle task: it has no mm
NID = click.IntRange(0, MAX_NID - 1)
COUNT = click.IntRange(min=0)


def require_process(prog, pid: Optional[int]) -> None:
    """A --pid that names no process in this kernel is a mistake (exit 2).
    Where the task list cannot be read, the filter simply matches nothing."""
    import drgn

    from ksminspect.mm import find_process

    if pid is not None:
        try:
            find_process(prog, pid)
        except (drgn.FaultError, LookupError):
            pass


def require_one_mm(prog, pid: Optional[int], mm: Optional[int]) -> None:
    """--pid and --mm given together must name the same mm: two filters that
    disagree are a mistake (exit 2), not an empty answer."""
    import drgn

    from ksminspect.errors import KsmInspectError
    from ksminspect.mm import find_process

    if pid is None or mm is None:
        return
    try:
        has = find_process(prog, pid).mm.value_()
    except (drgn.FaultError, LookupError):
        return  # cannot tell: the filters simply match what they match
    if has != mm:
        owns = f"mm {has:#x}" if has else "no mm (a kernel thread)"
        raise KsmInspectError(f"--pid {pid} and --mm {mm:#x} name different mms: process {pid} has "
                              f"{owns}; give one of them")


def require_tree(prog, nid: Optional[int]) -> None:
    """A --nid beyond the trees this kernel keeps is a mistake (exit 2)."""
    from ksminspect.errors import KsmInspectError
    from ksminspect.walk import WalkDamage, walker

    if nid is None:
        return
    try:
        count = len(walker(prog).stable_tree_roots())
    except WalkDamage:
        return  # the commands say what they cannot read
    if nid >= count:
        raise KsmInspectError(f"no tree for nid {nid}: this kernel keeps {count} stable and "
                              f"unstable tree{'s' if count != 1 else ''} (nid 0"
                              f"{f' to {count - 1}' if count > 1 else ''})")


def limit_option(what: str):
    """--limit N: at most N of the long list a command shows."""
    return click.option("--limit", type=COUNT, metavar="N",
                        help=f"Show at most N {what}, in the order shown (JSON too).")


def say_limited(shown: int, total: int, what: str) -> None:
    """On stderr, when --limit left some out: how many of how many."""
    if shown < total:
        click.echo(f"ksminspect: showing {shown} of {total} {what} (--limit)", err=True)


def say_nothing_matched(what: str) -> None:
    """After the (empty) output, on stderr: what the filters left nothing of."""
    click.echo(f"ksminspect: nothing matched: {what}", err=True)


def say_not_scanned(who: str) -> None:
    """A --pid or --mm whose mm is not on ksm_mm_head, said as nothing matched."""
    say_nothing_matched(f"{who}: not on ksm_mm_head (KSM does not scan it)")
