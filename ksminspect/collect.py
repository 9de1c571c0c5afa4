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
from functools import cached_property, lru_cache
from typing import Any, Callable, Optional

import numpy as np

from ksminspect.decode import (BOTH, NONE, STABLE, UNSTABLE, RmapItem, mm_struct_fields,
                               record_dtype, rmap_item_fields, rmap_items, span_dtype,
                               stable_node_fields)
from ksminspect.layout import SEQNR_MASK, STABLE_NODE_CHAIN, KsmLayout, item_flags
from ksminspect.memory import KeptMemory, trim_heap
from ksminspect.walk import BadLink, Damage, Walker, WalkDamage

__all__ = ["BOTH", "CHAIN", "DUP", "MIGRATE", "NONE", "STABLE", "TREE", "UNSTABLE", "Collection",
           "MmRun", "ObjectRows", "walked_counts"]

# Where a stable node was met (Collection.node_kind).
TREE, CHAIN, DUP, MIGRATE = 0, 1, 2, 3

# What a collection walks, by the names its damage carries (Damage.walk).
WALK_PARTS = {
    "rmap_lists": ("ksm_mm_head", "rmap_list"),
    "stable_trees": ("tree_roots", "stable_tree", "chain", "stable_node_hlist", "migrate_nodes"),
    "unstable_trees": ("tree_roots", "unstable_tree"),
}


@dataclass(frozen=True)
class MmRun:
    """One mm's rmap_list: rows ``start:stop`` of the item columns."""

    slot: int  # struct ksm_mm_slot *
    mm: int
    start: int
    stop: int
    cut: Optional[Damage]  # why the walk of this rmap_list stopped early


class ObjectRows:
    """How one kind of kernel object becomes a row: the structured dtype over
    its bytes ``start:`` and the gather that reads it. A collection reads
    every object of the kind through :meth:`gather`; a finding's objects are
    read again the same way, from fresh memory."""

    def __init__(self, kind: str, dtype: Any, start: int = 0):
        self.kind, self.dtype, self.start = kind, dtype, start

    def gather(self, memory: KeptMemory, addresses: np.ndarray, consume: bool = False) -> np.ndarray:
        return memory.gather(addresses, self.dtype, consume=consume, at=self.start)

    def read_one(self, read: Callable[[int, int], bytes], address: int) -> np.ndarray:
        """The row of the one object at *address*, read now; raises what
        *read* raises (drgn.FaultError) where it cannot be read."""
        return np.frombuffer(read(address + self.start, self.dtype.itemsize), self.dtype)[0]

    def read_again(self, read: Callable[[int, int], bytes], layout: KsmLayout,
                   addresses: np.ndarray) -> np.ndarray:
        """The rows of *addresses* as the kernel holds them now."""
        fresh = KeptMemory(read, layout.pointer_size, layout.little_endian)
        return self.gather(fresh, addresses.astype(np.uint64))


@lru_cache(maxsize=8)
def object_rows(layout: KsmLayout) -> dict[str, ObjectRows]:
    """The row of each kind of object a collection gathers (made once per
    layout: the layout is frozen)."""
    fields = rmap_item_fields(layout)
    # rmap_list, first in every layout, is what the walk followed: not kept
    item_start = min(off for name, (off, _, _) in fields.items()
                     if off is not None and name != "rmap_list")
    node_fields = stable_node_fields(layout)
    if layout.stable_node.hlist_dup is not None:  # v4.13: a dup's back link
        node_fields["hlist_dup_pprev"] = (layout.stable_node.hlist_dup + layout.pointer_size,
                                          layout.pointer_size, False)
    mm_dtype, mm_start = span_dtype(layout, mm_struct_fields(layout))
    return {
        "rmap_item": ObjectRows("rmap_item", record_dtype(layout, fields, layout.rmap_item.size,
                                                          item_start), item_start),
        "stable_node": ObjectRows("stable_node", record_dtype(layout, node_fields,
                                                              layout.stable_node.size)),
        "mm_struct": ObjectRows("mm_struct", mm_dtype, mm_start),
    }


@dataclass
class _RmapLists:
    runs: list[MmRun]
    head_damage: Optional[Damage]
    address: np.ndarray  # of each walked item, in walk order
    items: np.ndarray  # their rows
    mms: np.ndarray  # each run's mm_struct row, gathered with its items


class Collection:
    """The rmap_lists, stable trees (with chains, dups and migrate_nodes) and
    unstable trees of one program, each collected on first use.

    Item rows ``0:walked`` are the rmap_lists' items in walk order; rows
    after them are items reached only from a stable node or an unstable tree.
    """

    def __init__(self, w: Walker):
        self.w = w
        self.layout = w.layout
        self.rows = object_rows(self.layout)
        self.item_dtype = self.rows["rmap_item"].dtype
        self.item_start = self.rows["rmap_item"].start
        self.node_dtype = self.rows["stable_node"].dtype
        self._tree_damage: list[Damage] = []  # met by the tree walks, in walk order
        # live kernel: damage one walk met and another of the same lists did
        # not (see set_aside()): motion, not evidence
        self._set_aside: set[Damage] = set()
        self._links_aside: set[tuple] = set()  # BadLink.as_met of back links set aside
        self._extra: array[int] = array("Q")  # items found beyond the rmap_lists
        self._extra_rows: dict[int, int] = {}
        self._extra_parts: list[np.ndarray] = []  # their rows, gathered as they were found
        self._columns: Optional[tuple[int, np.ndarray, np.ndarray]] = None
        self._flags_of: Optional[tuple[np.ndarray, np.ndarray]] = None
        # KSM's counters and scan cursor as they stood before the walks (counters.scan_state)
        self.counters_before: Optional[tuple] = None

    # -- rmap_lists ----------------------------------------------------

    @cached_property
    def _lists(self) -> _RmapLists:
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
        items = self.rows["rmap_item"].gather(w.memory, address, consume=True)
        mms = self.rows["mm_struct"].gather(w.memory, np.array([r.mm for r in runs], np.uint64))
        trim_heap()
        return _RmapLists(runs, head_damage, address, items, mms)

    @property
    def runs(self) -> list[MmRun]:
        """Each mm slot on ksm_mm_head with its rmap_list's rows."""
        runs = self._lists.runs
        if not self._set_aside:
            return runs
        return [r if r.cut not in self._set_aside else MmRun(r.slot, r.mm, r.start, r.stop, None)
                for r in runs]

    @property
    def mm_rows(self) -> np.ndarray:
        """Each run's ``struct mm_struct`` row (:func:`~ksminspect.decode.mm_struct_fields`)."""
        return self._lists.mms

    @property
    def mm_head_damage(self) -> Optional[Damage]:
        d = self._lists.head_damage
        return None if d in self._set_aside else d

    @property
    def walked(self) -> int:
        """How many items the rmap_lists hold (rows 0:walked)."""
        return len(self._lists.address)

    @property
    def rmap_list_damage(self) -> list[Damage]:
        """Every damage met on ksm_mm_head and the rmap_lists, as walked."""
        out = [r.cut for r in self.runs if r.cut]
        return out + ([self.mm_head_damage] if self.mm_head_damage else [])

    @property
    def tree_damage(self) -> list[Damage]:
        """Every damage met by the walks of the stable and unstable trees."""
        return [d for d in self._tree_damage if d not in self._set_aside]

    def damage_of(self, *walks: str) -> list[Damage]:
        """The damage met by *walks* ("rmap_lists", "stable_trees", "unstable_trees")."""
        parts = {p for w in walks for p in WALK_PARTS[w]}
        return [d for d in self.rmap_list_damage + self.tree_damage if d.walk in parts]

    @property
    def changed_while_read(self) -> int:
        """Live kernel: walks that met their lists changing under them."""
        return len(self._set_aside) + len(self._links_aside)

    def set_aside(self, damage: set[Damage], links: set[tuple] = set()) -> None:
        """Live kernel: *damage* (and back *links*, as :attr:`BadLink.as_met`)
        was met by one walk but not by another of the same lists: they
        changed while they were read, which is no evidence of anything. It
        is counted in :attr:`changed_while_read`, not kept."""
        self._set_aside |= damage
        self._links_aside |= links

    @property
    def cut_mms(self) -> frozenset[int]:
        """mms whose rmap_list walk was cut short: what follows was not seen."""
        return frozenset(r.mm for r in self.runs if r.cut)

    def _all_columns(self) -> tuple[int, np.ndarray, np.ndarray]:
        """``(extra rows, address, rows)`` of every item row, made again only
        where items were found beyond the rmap_lists since."""
        if self._columns is None or self._columns[0] != len(self._extra):
            lists = self._lists
            address, items = lists.address, lists.items
            if self._extra:
                address = np.concatenate([address, np.frombuffer(self._extra, np.uint64).copy()])
                items = np.concatenate([items] + self._extra_parts)
            self._columns = (len(self._extra), address, items)
            self._flags_of = None
        return self._columns

    @property
    def item_address(self) -> np.ndarray:
        """The address of each item row."""
        return self._all_columns()[1]

    @property
    def items(self) -> np.ndarray:
        """The item rows: a structured array of ``struct ksm_rmap_item``."""
        return self._all_columns()[2]

    def _rows_of(self, addresses: np.ndarray) -> np.ndarray:
        """Item rows of *addresses*; an item the rmap_lists did not reach
        becomes a row of its own, appended (rows already handed out stay)."""
        rows = self.item_rows(addresses)
        new: list[int] = []
        for i in np.nonzero(rows < 0)[0].tolist():
            a = int(addresses[i])
            row = self._extra_rows.get(a)
            if row is None:
                row = self._extra_rows[a] = self.walked + len(self._extra) + len(new)
                new.append(a)
            rows[i] = row
        if new:
            found = np.array(new, np.uint64)
            self._extra_parts.append(self.rows["rmap_item"].gather(self.w.memory, found))
            self._extra.extend(new)
        return rows

    def item_rows(self, addresses: np.ndarray) -> np.ndarray:
        """The item row of each of *addresses*, -1 where no walk reached it."""
        walked = self._lists.address
        rows = np.full(len(addresses), -1, np.int64)
        if len(walked) and len(addresses):
            order = self._walked_order
            pos = np.minimum(np.searchsorted(walked[order], addresses), len(walked) - 1)
            hit = walked[order[pos]] == addresses
            rows[hit] = order[pos[hit]]
        for i in np.nonzero(rows < 0)[0].tolist():
            rows[i] = self._extra_rows.get(int(addresses[i]), -1)
        return rows

    @cached_property
    def _walked_order(self) -> np.ndarray:
        """The walked rows in address order: to find a pointer's row."""
        walked = self._lists.address
        return np.argsort(walked, kind="stable").astype(row_type(len(walked)))

    @cached_property
    def walked_twice(self) -> bool:
        """Some item is on the rmap_lists twice (damage: lists that cross)."""
        walked = self._lists.address[self._walked_order]
        return bool(np.any(walked[1:] == walked[:-1]))

    @property
    def state(self) -> np.ndarray:
        """Each item row's flag bits: NONE, UNSTABLE, STABLE or BOTH."""
        return self._flags()[0]

    @property
    def seqnr(self) -> np.ndarray:
        """Each item row's seqnr: the low byte of its address."""
        return self._flags()[1]

    def _flags(self) -> tuple[np.ndarray, np.ndarray]:
        raw = self.items["raw_address"]  # first: rows found since are gathered in
        if self._flags_of is None:
            self._flags_of = (
                in_pieces(len(raw), np.uint8, lambda rows: item_flags(raw[rows])),
                in_pieces(len(raw), np.uint8, lambda rows: raw[rows] & raw.dtype.type(SEQNR_MASK)))
        return self._flags_of

    @property
    def bad_links(self) -> list[BadLink]:
        """Every back link the walks found not pointing where they came
        from (drgn's ``validate_*``): on the lists and trees as walked, each
        chain's dups, each stable node's hlist."""
        out = list(self.w.bad_links.values())
        if self.has_nodes:
            out += self.nodes.bad_links + self.nodes.hlist_bad_links()
        return [b for b in out if b.as_met not in self._links_aside] if self._links_aside else out

    def item_records(self, rows: np.ndarray) -> list[RmapItem]:
        """The :class:`~ksminspect.decode.RmapItem` of each item row: the
        record is a view of the row."""
        return rmap_items(self.layout, self.item_address[rows].tolist(), self.items[rows])

    def page_address(self, rows) -> np.ndarray:
        """The page address of each of *rows* (an index, slice or mask)."""
        return self.items["raw_address"][rows] & np.uint64(self.layout.page_mask)

    # -- stable trees ----------------------------------------------------

    @cached_property
    def nodes(self) -> "_StableTrees":
        """Every stable node met, with the rows of the items on its hlist."""
        nodes = _StableTrees(self)
        trim_heap()
        return nodes

    @property
    def has_nodes(self) -> bool:
        """The stable trees were collected."""
        return "nodes" in self.__dict__

    # -- unstable trees --------------------------------------------------

    @cached_property
    def unstable(self) -> tuple[np.ndarray, np.ndarray]:
        """``(item rows, nid of the tree)`` of every unstable tree node, in
        tree order."""
        addresses, nids, damage = unstable_tree_items(self.w)
        self._tree_damage += damage
        return (self._rows_of(np.array(addresses, np.uint64)), np.array(nids, np.int64))

    @property
    def has_unstable(self) -> bool:
        return "unstable" in self.__dict__


def unstable_tree_items(w: Walker) -> tuple["array[int]", "array[int]", list[Damage]]:
    """The items of every ``root_unstable_tree[nid]`` in tree order, the nid
    of each one's tree, and the damage the walks met."""
    addresses: array[int] = array("Q")
    nids: array[int] = array("l")
    damage = []
    member = w.layout.rmap_item.node
    size = w.layout.rmap_item.size
    for nid, root in w.unstable_tree_roots():
        try:
            for item in w.rbtree_inorder("unstable_tree", root, member, size):
                addresses.append(item)
                nids.append(nid)
        except WalkDamage as e:
            damage.append(e.damage)
    return addresses, nids, damage


def in_pieces(n: int, dtype: type, column: Callable[[slice], np.ndarray]) -> np.ndarray:
    """A column of *n* rows made a piece of rows at a time: the temporaries
    of a million rows never exist at once."""
    out: np.ndarray = np.empty(n, dtype)
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
        self._c = c
        # node index -> why the walk of its hlist (a chain's: its dups) stopped early
        self._damage_of: dict[int, Damage] = {}
        self._walk_damage: list[Damage] = []  # of the trees themselves and migrate_nodes
        self.bad_links: list[BadLink] = []  # dups whose hlist_dup.pprev is wrong
        tree: list[tuple[int, int]] = []  # (node, nid), in tree order
        for nid, root in w.stable_tree_roots():
            try:
                for node in w.rbtree_inorder("stable_tree", root, lay.stable_node.node,
                                                   lay.stable_node.size):
                    tree.append((node, nid))
            except WalkDamage as e:
                c._tree_damage.append(e.damage)
                self._walk_damage.append(e.damage)
        node_rows = c.rows["stable_node"]
        rows = node_rows.gather(w.memory, np.array([t[0] for t in tree], np.uint64))
        first = rows["hlist_first"].tolist()
        chains = np.nonzero(rows["rmap_hlist_len"] == STABLE_NODE_CHAIN)[0] \
            if "rmap_hlist_len" in (rows.dtype.names or ()) else np.zeros(0, np.int64)
        # each chain's dups: hlist_for_each_entry(dup, &chain->hlist, hlist_dup)
        dups: array[int] = array("Q")
        dup_stops: array[int] = array("q")
        member = lay.stable_node.hlist_dup or 0
        for i, damage in w.follow_each("chain", [(first[i], tree[i][0]) for i in chains], member,
                                       member, c.node_dtype.itemsize, dups, dup_stops):
            c._tree_damage.append(damage)
            self._damage_of[int(chains[i])] = damage
        per_chain = np.diff(np.concatenate([[0], np.array(dup_stops, np.int64)]))
        migrate: array[int] = array("Q")
        try:
            for node in w.for_each_migrate_node():
                migrate.append(node)
        except WalkDamage as e:
            c._tree_damage.append(e.damage)
            self._walk_damage.append(e.damage)
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
        self.rows = node_rows.gather(w.memory, self.address, consume=True)
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
                c._tree_damage.append(damage)
                self._damage_of[int(holds[i])] = damage
            self.hlist_len[holds] = np.diff(np.concatenate([[0], np.array(stops, np.int64)]))
            self.hlist_rows = c._rows_of(np.array(items, np.uint64)).astype(row_type(len(c.item_address)))
        self.hlist_stop = np.cumsum(self.hlist_len)
        self.hlist_start = self.hlist_stop - self.hlist_len
        # which node each hlist entry is on
        self.hlist_node: np.ndarray = np.repeat(np.arange(len(self.address), dtype=row_type(len(self.address))),
                                    self.hlist_len)

    @property
    def damage_of(self) -> dict[int, Damage]:
        """Node index -> why the walk of its hlist (a chain's: its dups) stopped early."""
        aside = self._c._set_aside
        return {i: d for i, d in self._damage_of.items() if d not in aside}

    @property
    def walk_damage(self) -> list[Damage]:
        """Damage to the trees themselves and to migrate_nodes."""
        return [d for d in self._walk_damage if d not in self._c._set_aside]

    def index_of(self, addresses: np.ndarray) -> np.ndarray:
        """The node index of each of *addresses*, -1 where no walk met it."""
        order = self._order
        out = np.full(len(addresses), -1, np.int64)
        if len(order) and len(addresses):
            pos = np.minimum(np.searchsorted(self.address[order], addresses), len(order) - 1)
            hit = self.address[order[pos]] == addresses
            out[hit] = order[pos[hit]]
        return out

    @cached_property
    def _order(self) -> np.ndarray:
        return np.argsort(self.address, kind="stable")

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
        assert member is not None  # dups are met only on chains: v4.13 on, as hlist_dup is
        pprev = rows["hlist_dup_pprev"]
        expected = np.zeros(len(dups), np.uint64)
        expected[1:] = dups[:-1] + np.uint64(member)
        starts = np.cumsum(per_chain) - per_chain
        has = per_chain > 0
        expected[starts[has]] = self.address[chains[has]] + np.uint64(lay.stable_node.hlist)
        for i in np.nonzero(pprev != expected)[0].tolist():
            dup, at = int(dups[i]), int(dups[i]) + member + lay.pointer_size
            self.bad_links.append(BadLink("chain", dup, "hlist_node.pprev", int(pprev[i]), int(expected[i]),
                                          at, saw=((at, int(pprev[i])), (int(expected[i]), dup + member))))

    def hlist_bad_links(self) -> list[BadLink]:
        """The items whose ``hlist.pprev`` does not point where the walk came
        from (the node's hlist head, or the item before)."""
        c, lay = self._c, self._c.layout
        expected = np.zeros(len(self.hlist_rows), np.uint64)
        expected[1:] = self.hlist_address[:-1] + np.uint64(lay.rmap_item.hlist)
        has = self.hlist_len > 0
        expected[self.hlist_start[has]] = self.address[has] + np.uint64(lay.stable_node.hlist)
        found = c.items["hlist_pprev"][self.hlist_rows]
        hlist, at = lay.rmap_item.hlist, lay.rmap_item.hlist + lay.pointer_size
        out = []
        for i in np.nonzero(found != expected)[0].tolist():
            item = int(c.item_address[self.hlist_rows[i]])
            out.append(BadLink("stable_node_hlist", item, "hlist_node.pprev", int(found[i]), int(expected[i]),
                               item + at, saw=((item + at, int(found[i])), (int(expected[i]), item + hlist))))
        return out

    def __len__(self) -> int:
        return len(self.address)

    @cached_property
    def is_chain(self) -> np.ndarray:
        """rmap_hlist_len == STABLE_NODE_CHAIN (a dup can say so too: damage)."""
        if "rmap_hlist_len" not in (self.rows.dtype.names or ()):
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
    walked, items = c._lists.address, c._lists.items
    member = np.uint64(c.layout.rmap_item.hlist)
    order = c._walked_order
    ordered = walked[order]
    stable = c.state[:len(walked)] == STABLE
    index = row_type(len(walked))

    def rows_of(pointers: np.ndarray) -> np.ndarray:
        """Walked STABLE rows at pointer - member; -1 for NULL, -2 for none."""
        out: np.ndarray = np.full(len(pointers), -1, index)
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
    # indexed without a Python int per row made in advance; numpy's stubs
    # give ndarray __buffer__ only on Python >= 3.12
    follow = memoryview(succ)  # type: ignore[arg-type]
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
