#!/usr/bin/env python3
"""The reference walk: what a competent drgn user writes to walk the
structures ``ksminspect check`` walks, with drgn's Object attribute access and
its list and rbtree helpers, counting the same things.

    baseline.py VMCORE VMLINUX
"""

from __future__ import annotations

import sys
import time

import drgn
from drgn.helpers.linux.list import hlist_for_each_entry, list_for_each_entry
from drgn.helpers.linux.rbtree import rbtree_inorder_for_each_entry

STABLE_FLAG, UNSTABLE_FLAG, STABLE_NODE_CHAIN = 0x200, 0x100, -1024


def walk(prog: drgn.Program) -> dict[str, int]:
    counts = dict(mm_slots=0, rmap_items=0, stable=0, unstable=0, out_of_order=0, wrong_mm=0,
                  pages_shared=0, pages_sharing=0, chains=0, dups=0, bad_head=0, bad_len=0,
                  unstable_tree=0)
    head = prog["ksm_mm_head"]
    for slot in list_for_each_entry("struct ksm_mm_slot", head.slot.mm_node.address_of_(),
                                    "slot.mm_node"):
        counts["mm_slots"] += 1
        mm = slot.slot.mm.value_()
        last = -1
        item = slot.rmap_list
        while item:
            counts["rmap_items"] += 1
            address = item.address.value_()
            if item.mm.value_() != mm:
                counts["wrong_mm"] += 1
            if address & ~0xFFF <= last:
                counts["out_of_order"] += 1
            last = address & ~0xFFF
            if address & STABLE_FLAG:
                counts["stable"] += 1
                item.anon_vma.value_()
                item.head.value_()
            elif address & UNSTABLE_FLAG:
                counts["unstable"] += 1
                item.nid.value_()
            item.oldchecksum.value_()
            item = item.rmap_list

    def page_node(node: drgn.Object) -> None:
        n = 0
        for item in hlist_for_each_entry("struct ksm_rmap_item", node.hlist.address_of_(), "hlist"):
            n += 1
            if item.head != node:
                counts["bad_head"] += 1
        if n:
            counts["pages_shared"] += 1
            counts["pages_sharing"] += n - 1
        if node.rmap_hlist_len.value_() != n:
            counts["bad_len"] += 1

    nr = prog["ksm_nr_node_ids"].value_()
    for nid in range(nr):
        root = prog["root_stable_tree"][nid].address_of_()
        for node in rbtree_inorder_for_each_entry("struct ksm_stable_node", root, "node"):
            if node.rmap_hlist_len.value_() == STABLE_NODE_CHAIN:
                counts["chains"] += 1
                for dup in hlist_for_each_entry("struct ksm_stable_node", node.hlist.address_of_(),
                                                "hlist_dup"):
                    counts["dups"] += 1
                    page_node(dup)
            else:
                page_node(node)
        root = prog["root_unstable_tree"][nid].address_of_()
        for item in rbtree_inorder_for_each_entry("struct ksm_rmap_item", root, "node"):
            counts["unstable_tree"] += 1
            item.address.value_()
    return counts


def main() -> None:
    start = time.perf_counter()
    prog = drgn.Program()
    try:
        prog.set_core_dump(sys.argv[1])
        prog.load_debug_info([sys.argv[2]], main=True)
    except ValueError:
        # A dump without a VMCOREINFO note (a guest that never loaded
        # qemu_fw_cfg): plain drgn cannot open it; ksminspect finds the note
        # in memory. Only the opening is borrowed, the walk stays plain drgn.
        from ksminspect.program import open_program

        prog = open_program(sys.argv[1], [sys.argv[2]])
    counts = walk(prog)
    print(counts)
    print(f"baseline: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
