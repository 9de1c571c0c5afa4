"""KSM's objects of a dump as records, read through the collection (the one
way ksminspect reads them): what the damage tests aim their bytes at."""

from __future__ import annotations

import numpy as np

from ksminspect.collect import CHAIN, DUP, TREE, Collection
from ksminspect.decode import RmapItem, StableNode, rmap_items, stable_nodes
from ksminspect.session import begin_session


class Objects:
    """A dump's mm slots, rmap_items, stable nodes and unstable items."""

    def __init__(self, prog):
        self.prog = prog
        s = begin_session(prog)
        self.c: Collection = s.collect("stable_trees", "unstable_trees")
        self.w = self.c.w
        self.layout = self.c.layout
        self.ptr = self.layout.pointer_size

    def _items(self, rows: np.ndarray, successors: list[int] | None = None) -> list[RmapItem]:
        c = self.c
        return rmap_items(self.layout, c.item_address[rows].tolist(), c.items[rows], successors)

    def mm_slots(self) -> list[tuple[int, int, list[RmapItem]]]:
        """``(slot, mm, items)`` in scan order; each item's rmap_list is its successor."""
        out = []
        for run in self.c.runs:
            rows = np.arange(run.start, run.stop)
            addresses = self.c.item_address[rows].tolist()
            out.append((run.slot, run.mm, self._items(rows, addresses[1:] + [0])))
        return out

    def tree_nodes(self) -> list[StableNode]:
        """The nodes and chains of every stable tree, in tree order."""
        n = self.c.nodes
        which = np.nonzero((n.kind == TREE) | (n.kind == CHAIN))[0]
        return stable_nodes(n.address[which].tolist(), n.rows[which])

    def dups(self, chain: int) -> list[StableNode]:
        n = self.c.nodes
        which = np.nonzero((n.kind == DUP) & (n.chain == np.uint64(chain)))[0]
        return stable_nodes(n.address[which].tolist(), n.rows[which])

    def hlist_items(self, node: int) -> list[RmapItem]:
        """The rmap_items on stable node *node*'s hlist, in order."""
        n = self.c.nodes
        i = int(n.index_of(np.array([node], np.uint64))[0])
        return self._items(n.hlist_rows[n.hlist_start[i]:n.hlist_stop[i]])

    def unstable_items(self) -> list[RmapItem]:
        return self._items(self.c.unstable[0])
