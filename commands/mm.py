"""ksminspect mm: one row per mm that KSM scans."""

from __future__ import annotations

from typing import Any, Optional

import click

from .params import PID, require_process, say_nothing_matched
from .render import (emit, emit_table, fail_if_walk_found_nothing, format_option, hexaddr, progress,
                     say_damage)


def cursor_json(prog, cursor) -> dict[str, Any]:
    return {"mm_slot": hexaddr(cursor.mm_slot), "address": hexaddr(cursor.address),
            "seqnr": cursor.seqnr, "at_head": cursor.at_head(prog)}


def mm_slot_json(s, cursor) -> dict[str, Any]:
    return {
        "slot": hexaddr(s.slot),
        "mm": hexaddr(s.mm),
        "pid": s.owner.pid,
        "comm": s.owner.comm,
        "exited": s.owner.exited,
        "items": s.items,
        "ksm_stat": s.counters,
        "cursor": {"address": hexaddr(cursor.address), "next_item": hexaddr(cursor.next_item)}
        if cursor.mm_slot == s.slot else None,
        "damage": s.damage.sentence() if s.damage else None,
    }


@click.command("mm")
@click.option("--pid", type=PID, help="Only the mm of process PID.")
@format_option
@click.pass_obj
def mm_command(app, pid: Optional[int], fmt: str) -> None:
    """One row per mm on ksm_mm_head, in scan order.

    Shows the owner (pid, comm; "exited" when mm_users is 0), the mm's
    rmap_items by state, the mm's own counters as /proc/<pid>/ksm_stat names
    them, and which mm the scan cursor (ksm_scan) is in.

    \b
    Example:
      ksminspect -c vmcore.xz -s vmlinux.debug.xz mm --format json
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
    data = {
        "mm_slots": [mm_slot_json(s, cursor) for s in shown],
        "cursor": cursor_json(prog, cursor),
        "damage": damage.sentence() if damage else None,
    }

    def table() -> None:
        keys = sorted({k for s in shown for k in s.counters},
                      key=["ksm_rmap_items", "ksm_merging_pages", "ksm_zero_pages",
                           "ksm_process_profit"].index)
        rows = []
        for s in shown:
            owner = "exited" if s.owner.exited else (s.owner.comm or "?")
            here = f"<- next {cursor.address:#x}" if cursor.mm_slot == s.slot else ""
            rows.append([s.owner.pid if s.owner.pid is not None else "-", owner, f"{s.mm:#x}",
                         s.items["stable"], s.items["unstable"], s.items["none"]]
                        + [s.counters.get(k, "-") for k in keys] + [here])
        emit_table(rows, ["pid", "comm", "mm", "stable", "unstable", "none"] + keys + ["cursor"])
        if cursor.at_head(prog):
            click.echo(f"scan cursor: between passes (full_scans {cursor.seqnr})")
        say_damage(prog, [s.damage for s in slots if s.damage] + ([damage] if damage else []))

    emit(fmt, data, table)
    fail_if_walk_found_nothing(prog, "rmap_items", sum(sum(s.items.values()) for s in slots),
                               bool(damage) or any(s.damage for s in slots))
    if pid is not None and not shown:
        say_nothing_matched(f"process {pid}: not on ksm_mm_head (KSM does not scan it)")
