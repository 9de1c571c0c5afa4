"""ksminspect mm: one row per mm that KSM scans."""

from __future__ import annotations

from typing import Optional

import click

from .params import PID, limit_option, require_process, say_limited, say_not_scanned
from .records import cursor_json, mm_slot_json
from .render import (echo_wrapped, emit, emit_table, fail_if_walk_found_nothing, format_option, progress,
                     say_damage)


# --sort keys: the mm's value to sort by, largest first (pid: smallest first)
SORT_KEYS = {
    "pid": lambda s: -(s.owner.pid or 0),
    "items": lambda s: sum(s.items.values()),
    "stable": lambda s: s.items["stable"],
    "merging_pages": lambda s: s.counters.get("ksm_merging_pages", s.items["stable"]),
    "profit": lambda s: s.counters.get("ksm_process_profit", 0),
}


@click.command("mm")
@click.option("--pid", type=PID, help="Only the mm of process PID.")
@click.option("--sort", type=click.Choice(list(SORT_KEYS)),
              help="Largest first (pid: smallest first); without it, scan order.")
@limit_option("mms")
@format_option
@click.pass_obj
def mm_command(app, pid: Optional[int], sort: Optional[str], limit: Optional[int], fmt: str) -> None:
    """One row per mm on ksm_mm_head, in scan order.

    Shows the owner (pid, comm; "exited" when mm_users is 0), the mm's
    rmap_items by state, the mm's own counters as /proc/<pid>/ksm_stat names
    them, and which mm the scan cursor (ksm_scan) is in.

    \b
    Example:
      ksminspect -c vmcore.xz -s vmlinux.debug.xz mm --sort profit --limit 10
    """
    from ksminspect.mm import for_each_mm_slot
    from ksminspect.scan import read_scan_cursor
    from ksminspect.walk import WalkDamage

    prog = app.prog
    require_process(prog, pid)
    cursor = read_scan_cursor(prog)
    slots, damage = [], None
    try:
        for s in progress(for_each_mm_slot(prog), "mm slots"):
            slots.append(s)
    except WalkDamage as e:
        damage = e.damage
    shown = [s for s in slots if pid is None or s.owner.pid == pid]
    if sort:
        shown.sort(key=SORT_KEYS[sort], reverse=True)
    matched = len(shown)
    shown = shown[:limit]
    data = {
        "mm_slots": [mm_slot_json(s, cursor) for s in shown],
        "cursor": cursor_json(prog, cursor),
        "damage": [damage.sentence()] if damage else [],
    }

    def table() -> None:
        keys = sorted({k for s in shown for k in s.counters},
                      key=["ksm_rmap_items", "ksm_merging_pages", "ksm_zero_pages",
                           "ksm_process_profit"].index)
        rows = []
        for s in shown:
            owner = "exited" if s.owner.exited else (s.owner.comm or "?")
            mark = "*" if cursor.mm_slot == s.slot else ""
            rows.append([f"{s.owner.pid if s.owner.pid is not None else '-'}{mark}", owner, f"{s.mm:#x}",
                         s.items["stable"], s.items["unstable"], s.items["none"]]
                        + [s.counters.get(k, "-") for k in keys])
        # ksm_stat's names without their common "ksm_": the table fits a terminal
        emit_table(rows, ["pid", "comm", "mm", "stable", "unstable", "none"]
                   + [k[len("ksm_"):] for k in keys], shrink=["comm"])
        if cursor.at_head(prog):
            click.echo(f"scan cursor: between passes (full_scans {cursor.seqnr})")
        else:
            here = next((s for s in slots if s.slot == cursor.mm_slot), None)
            who = f"pid {here.owner.pid}* " if here and here.owner.pid is not None else ""
            following = "" if cursor.next_item is None else f", next rmap_item {cursor.next_item:#x}"
            echo_wrapped(f"scan cursor: {who}mm slot {cursor.mm_slot:#x} at {cursor.address:#x}"
                         f"{following} (full_scans {cursor.seqnr})")
        say_damage(prog, [s.damage for s in slots if s.damage] + ([damage] if damage else []))

    emit(fmt, "mm", data, table)
    fail_if_walk_found_nothing(prog, "rmap_items", sum(sum(s.items.values()) for s in slots),
                               bool(damage) or any(s.damage for s in slots))
    say_limited(len(shown), matched, "mms")
    if pid is not None and not shown:
        say_not_scanned(f"process {pid}")
