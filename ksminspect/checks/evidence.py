"""What a finding's judgement read, and what becomes of it: in a dump,
whether the dump holds all of it; on a live kernel, whether it still reads
the same.

A rule names the kernel objects each finding rests on (:data:`Obj`: a kind
and an address) and the walks whose completeness it rests on (a finding
that something is *missing* from a list or tree). The engine never asks
which check a finding came from: it reads the objects again through the
same rows the collection read them with (:class:`~ksminspect.collect.ObjectRows`),
from fresh memory.
"""

from __future__ import annotations

from array import array
from typing import Any, Hashable, Iterable, Optional

import drgn
import numpy as np

from ksminspect.collect import WALK_PARTS, Collection, unstable_tree_items
from ksminspect.program import dump_description, is_gap
from ksminspect.walk import Damage, Walker, WalkDamage

# A kernel object a judgement read: (kind, address).
#   "rmap_item", "stable_node", "mm_struct": the row the collection gathered
#   "stable_node_hlist": the items on that node's hlist, in order
#   "unstable_trees": every item in the unstable trees (address 0)
#   "ksm_counters": KSM's global counters and whether the scan is between passes (0)
#   "word": the pointer-sized word at the address
#   "pte": the page table entry at that physical address (pagetable.entry_at)
#   "anon_vma_tree": the VMAs that anon_vma's interval tree links (rmapwalk.RmapWalk.tree)
Obj = tuple[str, int]
ROWS = ("rmap_item", "stable_node", "mm_struct")


def values_then(c: Collection, counters: Any, objs: Iterable[Obj]) -> dict[Obj, Optional[Hashable]]:
    """What the collection read of each object; None where it kept nothing
    of it (an object no walk reached, a word)."""
    objs = list(objs)
    out: dict[Obj, Optional[Hashable]] = dict.fromkeys(objs)
    for kind in ROWS:
        addresses = np.array([a for k, a in objs if k == kind], np.uint64)
        if not len(addresses):
            continue
        if kind == "rmap_item":
            index, rows = c.item_rows(addresses), c.items
        elif kind == "stable_node":
            if not c.has_nodes:
                continue
            index, rows = c.nodes.index_of(addresses), c.nodes.rows
        else:
            mms = {r.mm: i for i, r in enumerate(c.runs)}
            index = np.array([mms.get(int(a), -1) for a in addresses], np.int64)
            rows = c.mm_rows
        for a, i in zip(addresses.tolist(), index.tolist()):
            if i >= 0:
                out[(kind, a)] = rows[i].tobytes()
    for obj in objs:
        kind, address = obj
        if kind == "stable_node_hlist" and c.has_nodes:
            i = int(c.nodes.index_of(np.array([address], np.uint64))[0])
            if i >= 0 and i not in c.nodes.damage_of:
                start, stop = int(c.nodes.hlist_start[i]), int(c.nodes.hlist_stop[i])
                out[obj] = tuple(c.nodes.hlist_address[start:stop].tolist())
        elif kind == "unstable_trees" and c.has_unstable:
            out[obj] = frozenset(c.item_address[c.unstable[0]].tolist())
        elif kind == "ksm_counters":
            out[obj] = counters
    return out


def values_now(prog: drgn.Program, c: Collection, objs: Iterable[Obj]) -> dict[Obj, Hashable]:
    """Each object as the kernel holds it now, read from fresh memory."""
    from ksminspect.counters import scan_state

    from ksminspect.rmapwalk import RmapWalk

    objs = list(objs)
    w = Walker(prog, c.layout)  # fresh: nothing read before is kept
    replay: Optional[RmapWalk] = None
    out: dict[Obj, Hashable] = {}
    for kind in ROWS:
        addresses = np.array([a for k, a in objs if k == kind], np.uint64)
        if len(addresses):
            rows = c.rows[kind].read_again(prog.read, c.layout, addresses)
            for a, row in zip(addresses.tolist(), rows):
                out[(kind, a)] = row.tobytes()
    for obj in objs:
        kind, address = obj
        if kind == "stable_node_hlist":
            found: array[int] = array("Q")
            try:
                damage = w.stable_node_hlist(address, found)
            except WalkDamage as e:
                damage = e.damage
            out[obj] = tuple(found) + ((damage,) if damage else ())
        elif kind == "unstable_trees":
            items, _, met = unstable_tree_items(w)
            out[obj] = frozenset(items) | frozenset(met)
        elif kind == "ksm_counters":
            out[obj] = scan_state(prog)
        elif kind == "word":
            try:
                out[obj] = w.read_word("word", address, address)
            except WalkDamage as e:
                out[obj] = e.damage
        elif kind == "anon_vma_tree":
            replay = replay or RmapWalk(prog, c.layout)
            tree = replay.tree(address)
            out[obj] = tree if isinstance(tree, str) else tuple(
                tuple(column.tolist()) for column in (tree.vma, tree.mm, tree.start, tree.end, tree.pgoff))
        elif kind == "pte":
            try:
                out[obj] = prog.read(address, 8, True)
            except drgn.FaultError as e:
                out[obj] = str(e)
    return out


def extent(c: Collection, obj: Obj) -> Optional[tuple[int, int]]:
    """``(address, size)`` of the memory *obj* lies in; None for what is
    not one object (the trees, the counters)."""
    kind, address = obj
    lay = c.layout
    if kind in ROWS:
        rows = c.rows[kind]
        return address + rows.start, rows.dtype.itemsize
    if kind == "stable_node_hlist":
        return address, lay.stable_node.size
    if kind == "word":
        return address, lay.pointer_size
    return None


class DumpGaps:
    """The memory a dump lacks: pages it left out on purpose (a dump
    level, a makedumpfile that does not know the kernel) or that a dump cut
    short does not hold. A read that fails elsewhere in a complete dump is
    evidence about the kernel (a wild pointer), not a gap."""

    def __init__(self, prog: drgn.Program):
        self.prog = prog
        self.dump = dump_description(prog) is not None
        self._page: dict[int, bool] = {}

    def lacks(self, address: int, size: int, page_size: int) -> list[int]:
        """The pages of ``address:address+size`` the dump lacks."""
        if not self.dump:
            return []
        out = []
        page = address - address % page_size
        while page < address + size:
            if page not in self._page:
                self._page[page] = self._lacks_page(max(page, address), min(address + size, page + page_size))
            if self._page[page]:
                out.append(page)
            page += page_size
        return out

    def _lacks_page(self, start: int, stop: int) -> bool:
        try:
            self.prog.read(start, max(stop - start, 1))
            return False
        except drgn.FaultError as e:
            return is_gap(self.prog, e)
        except (ValueError, OverflowError):
            return False

    def in_walks(self, damage: Iterable[Damage], walks: Iterable[str], page_size: int) -> list[int]:
        """The pages the dump lacks where *walks* stopped: what they did not see."""
        parts = {p for w in walks for p in WALK_PARTS.get(w, ())}
        return sorted({d.pointer - d.pointer % page_size for d in damage
                       if d.walk in parts and d.problem == "excluded"})
