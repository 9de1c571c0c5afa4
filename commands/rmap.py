"""ksminspect rmap and unstable-tree: rmap_items with their unions decoded."""

from __future__ import annotations

import json
from typing import Any, Iterator, Optional

import click

from .params import (HEX, NID, PID, limit_option, require_process, require_tree, say_limited,
                     say_not_scanned, say_nothing_matched)
from .records import damage_json, document, fields_text, item_json
from .render import (JsonArray, emit, emit_json, emit_table, fail_if_walk_found_nothing, format_option,
                     progress, say_damage)


@click.command("rmap")
@click.option("--pid", type=PID, help="Only the mm of process PID.")
@click.option("--mm", "mm_addr", type=HEX, help="Only the mm at ADDRESS.")
@click.option("--state", type=click.Choice(["stable", "unstable", "none", "both"]),
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
    from ksminspect.mm import mm_owner
    from ksminspect.walk import RmapLists, walker

    prog = app.prog
    require_process(prog, pid)
    w = walker(prog)
    has_offset = w.layout.rmap_item.offset is not None
    lists = RmapLists(w)
    walked = [0]  # every item walked, before the filters
    mms, shown = [0], [0]  # mms that passed --pid/--mm, items shown

    def items() -> Iterator[tuple[Any, Any]]:
        for _, mm, rmap_items in lists:
            if mm_addr is not None and mm != mm_addr:
                continue
            owner = mm_owner(prog, mm)
            if pid is not None and owner.pid != pid:
                continue
            mms[0] += 1
            for item in rmap_items:
                walked[0] += 1
                if state is None or item.state.value == state:
                    shown[0] += 1
                    if limit is None or shown[0] <= limit:
                        yield item, owner

    if fmt == "json":
        emit_json(document("rmap", {
            "items": JsonArray(json.dumps(item_json(i, o, has_offset, all_fields)) for i, o in items()),
            "damage": lambda: damage_json(lists.damage)}))  # after the walk that finds it
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
        say_damage(prog, lists.damage)
    if limit is not None:
        say_limited(min(limit, shown[0]), shown[0], "rmap_items")
    if pid is None and mm_addr is None:
        fail_if_walk_found_nothing(prog, "rmap_items", walked[0], bool(lists.damage))
    if not shown[0] and (pid, mm_addr, state) != (None, None, None):
        who = " and ".join(part for part in (f"process {pid}" if pid is not None else "",
                                              f"mm {mm_addr:#x}" if mm_addr is not None else "") if part)
        if who and not mms[0]:
            say_not_scanned(who)
        else:
            say_nothing_matched(f"no {state + ' ' if state else ''}rmap_items"
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
    from ksminspect.walk import WalkDamage, walker

    prog = app.prog
    require_process(prog, pid)
    require_tree(prog, nid)
    w = walker(prog)
    has_offset = w.layout.rmap_item.offset is not None
    trees = []
    damage = []
    walked = matched = 0
    for tree_nid, root in w.unstable_tree_roots():
        if nid is not None and tree_nid != nid:
            continue
        items = []
        try:
            for item in w.for_each_unstable_item(root):
                walked += 1
                if pid is None or mm_owner(prog, item.mm).pid == pid:
                    items.append(item)
        except WalkDamage as e:
            damage.append(e.damage)
        trees.append((tree_nid, items[:limit]))
        matched += len(items)
    from ksminspect.scan import read_scan_cursor, unstable_tree_seqnr

    cursor = read_scan_cursor(prog)
    seqnr = cursor.seqnr
    tree_seqnr = unstable_tree_seqnr(prog, cursor)
    data = {
        "seqnr": seqnr,
        "tree_seqnr": tree_seqnr,
        "trees": [{"nid": nid, "items": [item_json(i, mm_owner(prog, i.mm), has_offset) for i in items]}
                  for nid, items in trees],
        "damage": damage_json(damage),
    }

    def table() -> None:
        for nid, items in trees:
            click.echo(f"root_unstable_tree[{nid}]: {len(items)} items "
                       f"(full_scans {seqnr}; the tree holds seqnr {tree_seqnr})")
            emit_table([[f"{i.address:#x}", mm_owner(prog, i.mm).pid, mm_owner(prog, i.mm).comm,
                         f"{i.page_address:#x}", i.seqnr, "-" if i.age is None else i.age,
                         f"{i.oldchecksum:#x}"] + ([] if i.nid is None else [i.nid])
                        for i in items],
                       ["item", "pid", "comm", "page address", "seqnr", "age", "oldchecksum"]
                       + (["nid"] if w.layout.numa else []), shrink=["comm"])
            click.echo()
        say_damage(prog, damage)

    emit(fmt, "unstable-tree", data, table)
    say_limited(sum(len(items) for _, items in trees), matched, "unstable tree items")
    if nid is None:
        fail_if_walk_found_nothing(prog, "pages_unshared", walked, bool(damage))
    if pid is not None and not any(items for _, items in trees):
        say_nothing_matched(f"no unstable rmap_items of process {pid}"
                            + (f" in root_unstable_tree[{nid}]" if nid is not None else ""))
