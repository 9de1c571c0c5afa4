"""One collection pass over KSM: what the walks reach, as columns.

The walks follow pointers one word at a time through the session's kept
memory; the objects they reach are then gathered at once into numpy
structured arrays (one row per object, one column per member, overlapping
where the kernel's unions do). Checks and counts work on those columns, so
a million rmap_items cost no million Python records.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Optional

import numpy as np

from ksminspect.decode import record_dtype, rmap_item_fields, stable_node_fields
from ksminspect.layout import SEQNR_MASK, STABLE_NODE_CHAIN, item_flags
from ksminspect.memory import trim_heap
from ksminspect.walk import BadLink, Damage, Walker, WalkDamage

# Where a stable node was met (Collection.node_kind).
TREE, CHAIN, DUP, MIGRATE = 0, 1, 2, 3
# An rmap_item's flag bits, layout.item_flags() (Collection.state).
NONE, UNSTABLE, STABLE, BOTH = 0, 1, 2, 3


@dataclass(frozen=True)
class MmRun:
    """One mm's rmap_list: rows ``start:stop`` of the item columns."""

    slot: int  # struct ksm_mm_slot *
    mm: int
    start: int
    stop: int
    cut: Optional[Damage]  # why the walk of this rmap_list stopped early


class Collection:
    """The rmap_lists, stable trees (with chains, dups and migrate_nodes) and
    unstable trees of one program, each collected on first use.

    Item rows ``0:walked`` are the rmap_lists' items in walk order; rows
    after them are items reached only from a stable node or an unstable tree.
    """

    def __init__(self, w: Walker):
        self.w = w
        self.layout = w.layout
        lay = self.layout
        fields = rmap_item_fields(lay)
        # rmap_list, first in every layout, is what the walk followed: not kept
        self.item_start = min(off for name, (off, _, _) in fields.items()
                              if off is not None and name != "rmap_list")
        self.item_dtype = record_dtype(lay, fields, lay.rmap_item.size, self.item_start)
        fields = stable_node_fields(lay)
        if lay.stable_node.hlist_dup is not None:  # v4.13: a dup's back link
            fields["hlist_dup_pprev"] = (lay.stable_node.hlist_dup + lay.pointer_size,
                                         lay.pointer_size, False)
        self.node_dtype = record_dtype(lay, fields, lay.stable_node.size)
        # walk damage met by the tree walks, in walk order
        self.tree_damage: list[Damage] = []
        # live kernel: walks that met lists changing under them (see set_aside())
        self.changed_while_read = 0
        self._extra: array[int] = array("Q")  # items found beyond the rmap_lists
        self._extra_rows: dict[int, int] = {}

    # -- rmap_lists ----------------------------------------------------

    @cached_property
    def _rmap_lists(self) -> tuple[list[MmRun], Optional[Damage], np.ndarray, np.ndarray]:
        w = self.w
        addresses: array[int] = array("Q")
        runs: list[MmRun] = []
        head_damage = None
        try:
            for slot in w.for_each_mm_slot():
                mm, first = w.mm_slot(slot)
                start = len(addresses)
                cut = w.rmap_list(first, slot, addresses)
                runs.append(MmRun(slot, mm, start, len(addresses), cut))
        except WalkDamage as e:
            head_damage = e.damage
        address = np.frombuffer(addresses, np.uint64) if addresses else np.zeros(0, np.uint64)
        # the items copied out, their slab pages are not kept twice
        items = w.memory.gather(address, self.item_dtype, consume=True, at=self.item_start)
        trim_heap()
        return runs, head_damage, address, items

    @property
    def runs(self) -> list[MmRun]:
        """Each mm slot on ksm_mm_head with its rmap_list's rows."""
        return self._rmap_lists[0]

    @property
    def mm_head_damage(self) -> Optional[Damage]:
        return self._rmap_lists[1]

    @property
    def walked(self) -> int:
        """How many items the rmap_lists hold (rows 0:walked)."""
        return len(self._rmap_lists[2])

    @property
    def rmap_list_damage(self) -> list[Damage]:
        """Every damage met on ksm_mm_head and the rmap_lists, as walked."""
        out = [r.cut for r in self.runs if r.cut]
        return out + ([self.mm_head_damage] if self.mm_head_damage else [])

    def set_aside(self, damage: set[Damage]) -> None:
        """Live kernel: *damage* was met by one walk but not by another of the
        same lists: they changed while they were read, which is no evidence
        of anything. It is counted in :attr:`changed_while_read`, not kept."""
        if not damage:
            return
        runs, head, address, items = self._rmap_lists
        runs[:] = [r if r.cut not in damage else MmRun(r.slot, r.mm, r.start, r.stop, None)
                   for r in runs]
        self.__dict__["_rmap_lists"] = (runs, None if head in damage else head, address, items)
        self.__dict__.pop("cut_mms", None)
        self.tree_damage[:] = [d for d in self.tree_damage if d not in damage]
        if "_stable" in self.__dict__:
            nodes = self.nodes
            nodes.walk_damage[:] = [d for d in nodes.walk_damage if d not in damage]
            for i in [i for i, d in nodes.damage_of.items() if d in damage]:
                del nodes.damage_of[i]
        self.changed_while_read += len(damage)

    @cached_property
    def cut_mms(self) -> frozenset[int]:
        """mms whose rmap_list walk was cut short: what follows was not seen."""
        return frozenset(r.mm for r in self.runs if r.cut)

    @property
    def item_address(self) -> np.ndarray:
        """The address of each item row."""
        return self._items_all[0]

    @property
    def items(self) -> np.ndarray:
        """The item rows: a structured array of ``struct ksm_rmap_item``."""
        return self._items_all[1]

    @cached_property
    def _items_all(self) -> tuple[np.ndarray, np.ndarray]:
        _, _, address, items = self._rmap_lists
        self._gathered_extra = len(self._extra)
        if self._extra:
            extra = np.frombuffer(self._extra, np.uint64).copy()
            address = np.concatenate([address, extra])
            items = np.concatenate([items, self.w.memory.gather(extra, self.item_dtype,
                                                                at=self.item_start)])
        return address, items

    def _rows_of(self, addresses: np.ndarray) -> np.ndarray:
        """Item rows of *addresses*; an item the rmap_lists did not reach
        becomes a row of its own, appended (rows already handed out stay)."""
        walked = self._rmap_lists[2]
        order = self._walked_order
        pos = np.searchsorted(walked[order], addresses) if len(walked) else np.zeros(len(addresses), int)
        pos[pos >= len(walked)] = 0
        rows = order[pos] if len(walked) else np.zeros(len(addresses), np.int64)
        found = walked[rows] == addresses if len(walked) else np.zeros(len(addresses), bool)
        rows = rows.astype(np.int64)
        for i in np.nonzero(~found)[0]:
            a = int(addresses[i])
            row = self._extra_rows.get(a)
            if row is None:
                row = self._extra_rows[a] = len(walked) + len(self._extra)
                self._extra.append(a)
            rows[i] = row
        if "_items_all" in self.__dict__ and self._gathered_extra != len(self._extra):
            for column in ("_items_all", "state", "seqnr"):
                self.__dict__.pop(column, None)  # gathered again, with the new rows
        return rows

    @cached_property
    def _walked_order(self) -> np.ndarray:
        """The walked rows in address order: to find a pointer's row."""
        walked = self._rmap_lists[2]
        return np.argsort(walked, kind="stable").astype(row_type(len(walked)))

    @cached_property
    def walked_twice(self) -> bool:
        """Some item is on the rmap_lists twice (damage: lists that cross)."""
        walked = self._rmap_lists[2][self._walked_order]
        return bool(np.any(walked[1:] == walked[:-1]))

    @cached_property
    def state(self) -> np.ndarray:
        """Each item row's flag bits: NONE, UNSTABLE, STABLE or BOTH."""
        raw = self.items["raw_address"]
        return in_pieces(len(raw), np.uint8, lambda rows: item_flags(raw[rows]))

    def page_address(self, rows) -> np.ndarray:
        """The page address of each of *rows* (an index, slice or mask)."""
        return self.items["raw_address"][rows] & np.uint64(self.layout.page_mask)

    @cached_property
    def seqnr(self) -> np.ndarray:
        """Each item row's seqnr: the low byte of its address."""
        raw = self.items["raw_address"]
        return in_pieces(len(raw), np.uint8, lambda rows: raw[rows] & np.uint64(SEQNR_MASK))

    # -- stable trees ----------------------------------------------------

    @cached_property
    def _stable(self) -> "_StableTrees":
        nodes = _StableTrees(self)
        trim_heap()
        return nodes

    @property
    def nodes(self) -> "_StableTrees":
        """Every stable node met, with the rows of the items on its hlist."""
        return self._stable

    # -- unstable trees --------------------------------------------------

    @cached_property
    def unstable(self) -> tuple[np.ndarray, np.ndarray]:
        """``(item rows, nid of the tree)`` of every unstable tree node, in
        tree order."""
        w = self.w
        addresses: array[int] = array("Q")
        nids: array[int] = array("l")
        member = self.layout.rmap_item.node
        size = self.layout.rmap_item.size
        for nid, root in w.unstable_tree_roots():
            try:
                for item, _, _ in w.rbtree_inorder("unstable_tree", root, member, size):
                    addresses.append(item)
                    nids.append(nid)
            except WalkDamage as e:
                self.tree_damage.append(e.damage)
        return (self._rows_of(np.array(addresses, np.uint64)), np.array(nids, np.int64))


def in_pieces(n: int, dtype: type, column: Callable[[slice], np.ndarray]) -> np.ndarray:
    """A column of *n* rows made a piece of rows at a time: the temporaries
    of a million rows never exist at once."""
    out = np.empty(n, dtype)
    for lo in range(0, n, 1 << 16):
        out[lo:lo + (1 << 16)] = column(slice(lo, lo + (1 << 16)))
    return out


def row_type(n: int) -> type:
    """The narrowest index type for *n* rows: a million rows of int32 are 4 MB."""
    return np.int32 if n < 2**31 else np.int64


class _StableTrees:
    """The stable nodes as columns: ``address``, ``rows`` (structured),
    ``kind`` (TREE, CHAIN, DUP, MIGRATE), ``nid`` (tree; -1 on
    migrate_nodes), ``chain`` (a dup's chain, else 0); and each page node's
    hlist as ``hlist_start``/``hlist_stop`` into ``hlist_rows``."""

    def __init__(self, c: Collection):
        w, lay = c.w, c.layout
        # node index -> why the walk of its hlist (a chain's: its dups) stopped early
        self.damage_of: dict[int, Damage] = {}
        self.walk_damage: list[Damage] = []  # of the trees themselves and migrate_nodes
        tree: list[tuple[int, int]] = []  # (node, nid), in tree order
        for nid, root in w.stable_tree_roots():
            try:
                for node, _, _ in w.rbtree_inorder("stable_tree", root, lay.stable_node.node,
                                                   lay.stable_node.size):
                    tree.append((node, nid))
            except WalkDamage as e:
                c.tree_damage.append(e.damage)
                self.walk_damage.append(e.damage)
        rows = w.memory.gather(np.array([t[0] for t in tree], np.uint64), c.node_dtype)
        first = rows["hlist_first"].tolist()
        chains = np.nonzero(rows["rmap_hlist_len"] == STABLE_NODE_CHAIN)[0] \
            if "rmap_hlist_len" in rows.dtype.names else np.zeros(0, np.int64)
        # each chain's dups: hlist_for_each_entry(dup, &chain->hlist, hlist_dup)
        dups: array[int] = array("Q")
        dup_stops: array[int] = array("q")
        member = lay.stable_node.hlist_dup or 0
        for i, damage in w.follow_each("chain", [(first[i], tree[i][0]) for i in chains], member,
                                       member, c.node_dtype.itemsize, dups, dup_stops):
            c.tree_damage.append(damage)
            self.damage_of[int(chains[i])] = damage
        per_chain = np.diff(np.concatenate([[0], np.array(dup_stops, np.int64)]))
        migrate: array[int] = array("Q")
        try:
            for node in w.for_each_migrate_node():
                migrate.append(node.address)
        except WalkDamage as e:
            c.tree_damage.append(e.damage)
            self.walk_damage.append(e.damage)
        self.address = np.concatenate([np.array([t[0] for t in tree], np.uint64),
                                       np.array(dups, np.uint64), np.array(migrate, np.uint64)])
        n_tree, n_dup = len(tree), len(dups)
        self.kind = np.full(len(self.address), TREE, np.int8)
        self.kind[chains] = CHAIN
        self.kind[n_tree:n_tree + n_dup] = DUP
        self.kind[n_tree + n_dup:] = MIGRATE
        self.nid = np.concatenate([np.array([t[1] for t in tree], np.int64),
                                   np.repeat(np.array([tree[i][1] for i in chains], np.int64), per_chain),
                                   np.full(len(migrate), -1, np.int64)])
        self.chain = np.zeros(len(self.address), np.uint64)
        self.chain[n_tree:n_tree + n_dup] = np.repeat(self.address[chains], per_chain)
        # every node at once; the chunks they were read from are then let go
        self.rows = w.memory.gather(self.address, c.node_dtype, consume=True)
        self._c = c
        self._dup_pprev_links(self.address[n_tree:n_tree + n_dup],
                              self.rows[n_tree:n_tree + n_dup], per_chain, chains)
        # each page node's rmap_items: hlist_for_each_entry(item, &node->hlist, hlist)
        holds = np.nonzero(self.holds_page)[0]
        self.hlist_len = np.zeros(len(self.address), np.int64)
        ranked = _rank_hlists(c, self.rows["hlist_first"][holds])
        if ranked is not None:
            self.hlist_len[holds], self.hlist_rows = ranked
        else:  # something is odd: walk each hlist through memory, as the kernel would
            items: array[int] = array("Q")
            stops: array[int] = array("q")
            member = lay.rmap_item.hlist
            firsts = self.rows["hlist_first"][holds].tolist()
            for i, damage in w.follow_each("stable_node_hlist", list(zip(firsts, self.address[holds].tolist())),
                                           member, member, lay.rmap_item.size, items, stops):
                c.tree_damage.append(damage)
                self.damage_of[int(holds[i])] = damage
            self.hlist_len[holds] = np.diff(np.concatenate([[0], np.array(stops, np.int64)]))
            self.hlist_rows = c._rows_of(np.array(items, np.uint64)).astype(row_type(len(c.item_address)))
        self.hlist_stop = np.cumsum(self.hlist_len)
        self.hlist_start = self.hlist_stop - self.hlist_len
        # which node each hlist entry is on
        self.hlist_node = np.repeat(np.arange(len(self.address), dtype=row_type(len(self.address))),
                                    self.hlist_len)

    @property
    def hlist_address(self) -> np.ndarray:
        """The address of each hlist entry's item."""
        return self._c.item_address[self.hlist_rows]

    def _dup_pprev_links(self, dups: np.ndarray, rows: np.ndarray, per_chain: np.ndarray,
                         chains: np.ndarray) -> None:
        """Each dup's hlist_dup.pprev points where the walk came from."""
        lay = self._c.layout
        if not len(dups):
            return
        member = lay.stable_node.hlist_dup
        pprev = rows["hlist_dup_pprev"]
        expected = np.zeros(len(dups), np.uint64)
        expected[1:] = dups[:-1] + np.uint64(member)
        starts = np.cumsum(per_chain) - per_chain
        has = per_chain > 0
        expected[starts[has]] = self.address[chains[has]] + np.uint64(lay.stable_node.hlist)
        for i in np.nonzero(pprev != expected)[0]:
            self._c.w._bad_link(BadLink("chain", int(dups[i]), "hlist_node.pprev", int(pprev[i]),
                                  int(expected[i])))

    def hlist_pprev_expected(self) -> np.ndarray:
        """For each hlist entry, what its item's ``hlist.pprev`` must hold:
        where the walk came from (the node's hlist head, or the item before)."""
        lay = self._c.layout
        expected = np.zeros(len(self.hlist_rows), np.uint64)
        expected[1:] = self.hlist_address[:-1] + np.uint64(lay.rmap_item.hlist)
        has = self.hlist_len > 0
        expected[self.hlist_start[has]] = self.address[has] + np.uint64(lay.stable_node.hlist)
        return expected

    def __len__(self) -> int:
        return len(self.address)

    @cached_property
    def is_chain(self) -> np.ndarray:
        """rmap_hlist_len == STABLE_NODE_CHAIN (a dup can say so too: damage)."""
        if "rmap_hlist_len" not in self.rows.dtype.names:
            return np.zeros(len(self), bool)
        return self.rows["rmap_hlist_len"] == STABLE_NODE_CHAIN

    @cached_property
    def holds_page(self) -> np.ndarray:
        """The nodes that hold a KSM page: all but chains."""
        return ~self.is_chain


def _rank_hlists(c: Collection, firsts: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The stable nodes' hlists (``firsts``: each node's ``hlist.first``)
    from the columns the rmap_list walk gathered, without reading memory
    again: ``(length of each hlist, item rows in hlist order)``.

    Valid only where the hlists are plain: each leads through walked,
    STABLE_FLAG items to NULL, and no item is pointed at twice. Anything else
    (damage, an item on no rmap_list) returns None, and the caller walks the
    hlists one by one (Walker.follow_each), meeting what a walk meets."""
    _, _, walked, items = c._rmap_lists
    member = np.uint64(c.layout.rmap_item.hlist)
    order = c._walked_order
    ordered = walked[order]
    stable = c.state[:len(walked)] == STABLE
    index = row_type(len(walked))

    def rows_of(pointers: np.ndarray) -> np.ndarray:
        """Walked STABLE rows at pointer - member; -1 for NULL, -2 for none."""
        out = np.full(len(pointers), -1, index)
        live = pointers != 0
        if not len(walked):
            out[live] = -2
            return out
        target = pointers[live] - member
        row = order[np.minimum(np.searchsorted(ordered, target), len(walked) - 1)]
        ok = (walked[row] == target) & stable[row]
        out[np.nonzero(live)[0]] = np.where(ok, row, -2)
        return out

    first = rows_of(firsts.astype(np.uint64))
    nxt = items["hlist_next"]
    # each STABLE item's successor on its hlist (-1: none, or not STABLE)
    succ = in_pieces(len(walked), index, lambda rows: rows_of(np.where(stable[rows], nxt[rows], 0)))
    if np.any(first == -2) or np.any(succ == -2):
        return None
    targets = np.sort(np.concatenate([first[first >= 0], succ[succ >= 0]]))
    if np.any(targets[1:] == targets[:-1]):  # an item pointed at twice
        return None
    del targets
    # No item is pointed at twice, so no hlist can run into a cycle or into
    # another: follow each from its first item, in the columns.
    follow = memoryview(succ)  # indexed without a Python int per row made in advance
    typecode = "i" if index is np.int32 else "q"
    rows: array[int] = array(typecode)
    append = rows.append
    length = np.zeros(len(first), np.int64)
    for i, r in enumerate(first.tolist()):
        n = len(rows)
        while r >= 0:
            append(r)
            r = follow[r]
        length[i] = len(rows) - n
    return length, np.frombuffer(rows, index) if rows else np.zeros(0, index)


def walked_counts(c: Collection, chains: bool) -> dict[str, int]:
    """What the kernel's global counters count, recounted from the walks
    (the rmap_lists and both kinds of tree): the one place pages_shared and
    pages_sharing are derived from the stable trees. *chains*: the kernel
    counts stable_node_chains and stable_node_dups (v4.13)."""
    nodes = c.nodes
    sharers = nodes.hlist_len[nodes.holds_page]
    state = c.state[:c.walked]
    out = {"rmap_items": c.walked,
           "pages_shared": int(np.count_nonzero(sharers)),
           "pages_sharing": int(np.sum(np.maximum(sharers - 1, 0))),
           "pages_unshared": int(np.count_nonzero(state == UNSTABLE))}
    if chains:
        out["stable_node_chains"] = int(np.count_nonzero(nodes.kind == CHAIN))
        out["stable_node_dups"] = int(np.count_nonzero(nodes.kind == DUP))
    return out
