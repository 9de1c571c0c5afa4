"""ksminspect rmap and unstable-tree: rmap_items with their unions decoded."""

from __future__ import annotations

import json
from typing import Any, Iterator, Optional

import click

import numpy as np

from .params import (HEX, NID, PID, limit_option, require_one_mm, require_process, require_tree,
                     say_limited, say_not_scanned, say_nothing_matched)
from .records import damage_json, document, fields_text, item_json, item_texts, owner_json
from .render import (JsonArray, emit, emit_json, emit_table, fail_if_walk_found_nothing, format_option,
                     plural, progress, say_damage)


@click.command("rmap")
@click.option("--pid", type=PID, help="Only the mm of process PID.")
@click.option("--mm", "mm_addr", type=HEX, help="Only the mm at ADDRESS.")
@click.option("--state", type=click.Choice(["stable", "unstable", "none", "both"]),  # STATE_NAMES
              help="Only items in this state (by STABLE_FLAG/UNSTABLE_FLAG).")
@click.option("--all-fields", is_flag=True,
              help="Also show every union member under the interpretation the state does not mean.")
@limit_option("rmap_items")
@format_option
@click.pass_obj
def rmap(app, pid: Optional[int], mm_addr: Optional[int], state: Optional[str],
         all_fields: bool, limit: Optional[int], fmt: str) -> None:
    """The rmap_items of each mm, in scan order, with decoded unions.

    A stable item shows anon_vma, head and hlist (and the seed's page offset
    on kernels that have it); an unstable item its nid, seqnr and rb_node; every
    item not stable its oldchecksum, age and remaining_skips.

    \b
    Example:
      ksminspect -c vmcore.xz -s vmlinux.debug.xz rmap --pid 42 --state none --all-fields
    """
    from ksminspect.decode import STATE_NAMES
    from ksminspect.mm import mm_owner
    from ksminspect.session import session

    prog = app.prog
    require_process(prog, pid)
    require_one_mm(prog, pid, mm_addr)
    c = session(prog).collect()
    has_offset = c.layout.rmap_item.offset is not None
    damage = c.rmap_list_damage
    walked = c.walked  # every item walked, before the filters
    mms, shown = [0], [0]  # mms that passed --pid/--mm, items shown
    wanted = None if state is None else STATE_NAMES.index(state)

    def runs() -> Iterator[tuple[Any, np.ndarray]]:
        """Each mm that passes --pid/--mm, with its owner and the rows shown."""
        for run in c.runs:
            if mm_addr is not None and run.mm != mm_addr:
                continue
            owner = mm_owner(prog, run.mm)
            if pid is not None and owner.pid != pid:
                continue
            mms[0] += 1
            rows = np.arange(run.start, run.stop)
            if wanted is not None:
                rows = rows[c.state[rows] == wanted]
            shown[0] += len(rows)
            if limit is not None:
                rows = rows[:max(limit - (shown[0] - len(rows)), 0)]
            yield owner, rows

    def items() -> Iterator[tuple[Any, Any]]:
        for owner, rows in runs():
            for item in c.item_records(rows):
                yield item, owner

    def texts() -> Iterator[str]:
        for owner, rows in runs():
            for lo in range(0, len(rows), 1 << 16):  # bounded temporaries
                yield from item_texts(c, rows[lo:lo + (1 << 16)], owner_json(owner), has_offset)

    if fmt == "json":
        emit_json(document("rmap", {
            "items": JsonArray(texts() if not all_fields else
                               (json.dumps(item_json(i, o, has_offset, True)) for i, o in items())),
            "damage": lambda: damage_json(damage)}))
    else:
        rows = []
        for item, owner in progress(items(), "rmap_items"):
            row = [f"{item.address:#x}", owner.pid if owner.pid is not None else "-",
                   f"{item.page_address:#x}", item.state.value,
                   fields_text(item.meaningful(has_offset))]
            if all_fields:
                row.append(fields_text(item.other(has_offset)))
            rows.append(row)
        emit_table(rows, ["item", "pid", "page address", "state", "fields"]
                   + (["other interpretation"] if all_fields else []),
                   wrap=["fields", "other interpretation"])
        say_damage(prog, damage)
    if limit is not None:
        say_limited(min(limit, shown[0]), shown[0], "rmap_items")
    if pid is None and mm_addr is None:
        fail_if_walk_found_nothing(prog, "rmap_items", walked, bool(damage))
    if not shown[0] and (pid, mm_addr, state) != (None, None, None):
        who = " and ".join(part for part in (f"process {pid}" if pid is not None else "",
                                              f"mm {mm_addr:#x}" if mm_addr is not None else "") if part)
        if who and not mms[0]:
            say_not_scanned(who)
        else:
            say_nothing_matched(f"no rmap_items{' in state ' + state if state else ''}"
                                + (f" in {who}" if who else ""))


@click.command("unstable-tree")
@click.option("--nid", type=NID, help="Only root_unstable_tree[NID].")
@click.option("--pid", type=PID, help="Only the items of process PID.")
@limit_option("items of each tree")
@format_option
@click.pass_obj
def unstable_tree(app, nid: Optional[int], pid: Optional[int], limit: Optional[int], fmt: str) -> None:
    """The unstable trees (root_unstable_tree[nid]) in tree order.

    Each node is an rmap_item with UNSTABLE_FLAG: its seqnr (low bits of the
    full scan that inserted it), age, checksum and owner. Between two passes
    the trees still hold the last pass's items (seqnr one behind full_scans).

    \b
    Example:
      ksminspect -c vmcore.xz -s vmlinux.debug.xz unstable-tree --format json
    """
    from ksminspect.mm import mm_owner
    from ksminspect.session import session

    prog = app.prog
    require_process(prog, pid)
    require_tree(prog, nid)
    c = session(prog).collect("unstable_trees")
    layout = c.layout
    has_offset = layout.rmap_item.offset is not None
    rows, tree_nids = c.unstable
    damage = c.damage_of("unstable_trees")
    walked, matched = len(rows), 0
    trees = []
    held: dict[int, int] = {}
    for tree_nid, _ in c.w.unstable_tree_roots():
        if nid is not None and tree_nid != nid:
            continue
        mine = rows[tree_nids == tree_nid]
        if pid is not None:
            mms = c.items["mm"][mine].tolist()
            mine = mine[np.array([mm_owner(prog, mm).pid == pid for mm in mms], bool)]
        trees.append((tree_nid, mine[:limit]))
        held[tree_nid] = len(mine)  # before --limit
        matched += len(mine)
    from ksminspect.scan import read_scan_cursor, unstable_tree_seqnr

    cursor = read_scan_cursor(prog)
    seqnr = cursor.seqnr
    tree_seqnr = unstable_tree_seqnr(prog, cursor)

    def texts(rows: np.ndarray) -> Iterator[str]:
        mms = c.items["mm"][rows].tolist()
        who = {mm: owner_json(mm_owner(prog, mm)) for mm in set(mms)}
        yield from item_texts(c, rows, [who[mm] for mm in mms], has_offset)

    data = {
        "seqnr": seqnr,
        "tree_seqnr": tree_seqnr,
        "trees": [{"nid": nid, "items": JsonArray(texts(rows), len(rows))} for nid, rows in trees],
        "damage": damage_json(damage),
    }

    def table() -> None:
        for nid, rows in trees:
            items = c.item_records(rows)
            click.echo(f"root_unstable_tree[{nid}]: {plural(held[nid], 'item')}"
                       + (f", {len(items)} shown" if len(items) != held[nid] else "")
                       + f" (full_scans {seqnr}; the tree holds seqnr {tree_seqnr})")
            emit_table([[f"{i.address:#x}", mm_owner(prog, i.mm).pid, mm_owner(prog, i.mm).comm,
                         f"{i.page_address:#x}", i.seqnr, "-" if i.age is None else i.age,
                         f"{i.oldchecksum:#x}"] + ([] if i.nid is None else [i.nid])
                        for i in items],
                       ["item", "pid", "comm", "page address", "seqnr", "age", "oldchecksum"]
                       + (["nid"] if layout.numa else []), shrink=["comm"])
            click.echo()
        say_damage(prog, damage)

    emit(fmt, "unstable-tree", data, table)
    say_limited(sum(len(rows) for _, rows in trees), matched, "unstable tree items")
    if nid is None:
        fail_if_walk_found_nothing(prog, "pages_unshared", walked, bool(damage))
    if pid is not None and not any(len(rows) for _, rows in trees):
        say_nothing_matched(f"no unstable rmap_items of process {pid}"
                            + (f" in root_unstable_tree[{nid}]" if nid is not None else ""))
