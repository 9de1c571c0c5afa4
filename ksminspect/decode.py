"""Decoders: the bytes of a KSM object in, a plain record out.

Nothing here touches a drgn Program: a decoder needs only a
:class:`~ksminspect.layout.KsmLayout` and bytes, so every layout can be tested
with bytes alone. Records hold ints, strings and enums.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple, Optional

from ksminspect.layout import SEQNR_MASK, STABLE_NODE_CHAIN, KsmLayout, item_flags


class ItemState(str, enum.Enum):
    """Where an rmap_item is, by its flag bits in ``address``: the one
    vocabulary of item states. Its :attr:`number` is what
    :func:`~ksminspect.layout.item_flags` makes of the bits."""

    NONE = "none"  # neither: scanned, but in no tree
    UNSTABLE = "unstable"  # UNSTABLE_FLAG: a node of the unstable tree
    STABLE = "stable"  # STABLE_FLAG: listed from a stable node
    BOTH = "both"  # both flags: never valid

    @property
    def number(self) -> int:
        return ITEM_STATES.index(self)

    @property
    def words(self) -> str:
        """The state in prose ("none" is a word for tables and JSON)."""
        return "in no tree" if self is ItemState.NONE else self.value


# item_flags() -> state: 0 in no tree, 1 unstable, 2 stable, 3 both
ITEM_STATES = (ItemState.NONE, ItemState.UNSTABLE, ItemState.STABLE, ItemState.BOTH)
NONE, UNSTABLE, STABLE, BOTH = range(4)
STATE_NAMES = tuple(s.value for s in ITEM_STATES)
STATE_WORDS = tuple(s.words for s in ITEM_STATES)


class NodeKind(str, enum.Enum):
    """What a ``struct ksm_stable_node`` is."""

    NODE = "node"  # a plain stable node in a tree, holding a KSM page
    CHAIN = "chain"  # rmap_hlist_len == STABLE_NODE_CHAIN: holds dups
    DUP = "dup"  # head == STABLE_NODE_DUP_HEAD: a page of a chain
    MIGRATE = "migrate"  # on migrate_nodes, pending placement


class RmapItem(NamedTuple):
    """A decoded ``struct ksm_rmap_item``.

    Every field holds what the bytes say; which of them the kernel means
    depends on :attr:`state` (see :meth:`meaningful`).
    """

    address: int  # of the rmap_item itself
    rmap_list: int  # next item of the same mm
    anon_vma: int  # the anon_vma/nid slot read as a pointer
    mm: int
    raw_address: int  # the address member with its flag bits
    oldchecksum: int
    age: Optional[int]  # smart scan (v6.7)
    remaining_skips: Optional[int]
    head: int  # stable: struct ksm_stable_node *; unstable: node.__rb_parent_color
    hlist_next: int  # stable: hlist.next; unstable: node.rb_right
    hlist_pprev: int  # stable: hlist.pprev; unstable: node.rb_left
    nid: Optional[int]  # the anon_vma slot read as int (CONFIG_NUMA)
    offset: Optional[int]  # the seed's page offset word (kernels with the member)
    page_address: int  # raw_address & PAGE_MASK

    @property
    def state(self) -> ItemState:
        return ITEM_STATES[item_flags(self.raw_address)]

    @property
    def seqnr(self) -> int:
        """raw_address & SEQNR_MASK: the unstable tree seqnr when unstable."""
        return self.raw_address & SEQNR_MASK

    @property
    def rb_parent(self) -> int:
        return self.head & ~3

    @property
    def rb_right(self) -> int:
        return self.hlist_next

    @property
    def rb_left(self) -> int:
        return self.hlist_pprev

    def other(self, layout_has_offset: bool) -> dict[str, Any]:
        """The union members under the interpretations the state does not
        mean: where stale values hide."""
        meant = self.meaningful(layout_has_offset)
        out: dict[str, Any] = {}
        for name in ("anon_vma", "nid", "offset", "oldchecksum", "age", "remaining_skips",
                     "head", "hlist_next", "hlist_pprev", "rb_parent", "rb_left", "rb_right"):
            value = getattr(self, name)
            if name not in meant and value is not None:
                out[name] = value
        if not layout_has_offset:
            out.pop("offset", None)
        return out

    def meaningful(self, layout_has_offset: bool) -> dict[str, Any]:
        """The union members the kernel means in this item's state."""
        return {name: getattr(self, name) for name in
                meant_fields(self.state, layout_has_offset, self.nid is not None, self.age is not None)}


def meant_fields(state: ItemState, has_offset: bool, has_nid: bool, has_age: bool) -> tuple[str, ...]:
    """The union members the kernel means for an item in *state*, in the
    order they are shown; *has_offset*: the layout has the seed's member,
    *has_nid*: CONFIG_NUMA, *has_age*: smart scan (v6.7)."""
    out: list[str] = []
    if state == ItemState.STABLE:
        out += ["anon_vma"] + (["offset"] if has_offset else []) + ["head", "hlist_next", "hlist_pprev"]
    elif state == ItemState.UNSTABLE:
        out += (["nid"] if has_nid else []) + ["seqnr", "rb_parent", "rb_left", "rb_right"]
    if state != ItemState.STABLE or not has_offset:
        out += ["oldchecksum"] + (["age", "remaining_skips"] if has_age else [])
    return tuple(out)


def item_column(rows: Any, name: str) -> Any:
    """An :class:`RmapItem` field of every row, as a column: what the
    record's properties make of the members (seqnr, rb_parent, rb_left,
    rb_right) made for all rows at once."""
    if name == "seqnr":
        return rows["raw_address"] & rows["raw_address"].dtype.type(SEQNR_MASK)
    if name == "rb_parent":
        return rows["head"] & rows["head"].dtype.type(~3 & (2 ** (8 * rows["head"].itemsize) - 1))
    return rows[{"rb_left": "hlist_pprev", "rb_right": "hlist_next"}.get(name, name)]


# RmapItem fields that hold kernel pointers (shown in hex).
POINTER_FIELDS = frozenset({"anon_vma", "head", "hlist_next", "hlist_pprev", "rb_parent",
                            "rb_left", "rb_right", "mm", "rmap_list"})

def rmap_item_fields(layout: KsmLayout) -> dict[str, tuple[Optional[int], int, bool]]:
    """``struct ksm_rmap_item``'s members as ``name -> (offset, size,
    signed)``; offset None where the layout lacks the member. Union members
    overlap."""
    r = layout.rmap_item
    p = layout.pointer_size
    return {
        "rmap_list": (r.rmap_list, p, False),
        "anon_vma": (r.anon_vma, p, False),
        "mm": (r.mm, p, False),
        "raw_address": (r.address, p, False),
        "oldchecksum": (r.oldchecksum, 4, False),
        "age": (r.age, 1, False),
        "remaining_skips": (r.remaining_skips, 1, False),
        "head": (r.head, p, False),
        "hlist_next": (r.hlist, p, False),
        "hlist_pprev": (r.hlist + p, p, False),
        "nid": (r.nid, 4, True),
        "offset": (r.offset, r.offset_size or p, False),
    }


def stable_node_fields(layout: KsmLayout) -> dict[str, tuple[Optional[int], int, bool]]:
    """``struct ksm_stable_node``'s members, as :func:`rmap_item_fields`."""
    s = layout.stable_node
    p = layout.pointer_size
    return {
        "rb_parent_color": (s.node, p, False),
        "rb_right": (s.node + p, p, False),
        "rb_left": (s.node + 2 * p, p, False),
        "list_next": (s.list, p, False),
        "list_prev": (s.list + p, p, False),
        "hlist_first": (s.hlist, p, False),
        "kpfn": (s.kpfn, p, False),
        "rmap_hlist_len": (s.rmap_hlist_len, 4, True),
        "nid": (s.nid, 4, True),
    }


def record_dtype(layout: KsmLayout, fields: dict[str, tuple[Optional[int], int, bool]],
                 size: int, start: int = 0) -> Any:
    """A numpy structured dtype over bytes *start*:*size* of each object: the
    same fields as the decoders (those from *start* on), overlapping where
    the kernel's unions do."""
    import numpy as np

    order = "<" if layout.little_endian else ">"
    present = {n: (off, size_, signed) for n, (off, size_, signed) in fields.items()
               if off is not None and off >= start}
    return np.dtype({"names": list(present),
                     "formats": [f"{order}{'i' if signed else 'u'}{size_}"
                                 for _, size_, signed in present.values()],
                     "offsets": [off - start for off, _, _ in present.values()],
                     "itemsize": size - start})


class StableNode(NamedTuple):
    """A decoded ``struct ksm_stable_node``."""

    address: int
    rb_parent_color: int  # node.__rb_parent_color, overlays head
    rb_right: int  # overlays hlist_dup.next
    rb_left: int  # overlays hlist_dup.pprev
    list_next: int  # list, on migrate_nodes
    list_prev: int
    hlist_first: int  # first rmap_item's hlist (or first dup's hlist_dup)
    kpfn: int  # overlays chain_prune_time
    rmap_hlist_len: Optional[int]
    nid: Optional[int]

    @property
    def head(self) -> int:
        """As ``struct list_head *``: &migrate_nodes or STABLE_NODE_DUP_HEAD."""
        return self.rb_parent_color

    @property
    def is_chain(self) -> bool:
        return self.rmap_hlist_len == STABLE_NODE_CHAIN


def mm_struct_fields(layout: KsmLayout) -> dict[str, tuple[Optional[int], int, bool]]:
    """What KSM keeps in ``struct mm_struct``, as :func:`rmap_item_fields`:
    its counters (unsigned long, or atomic_long_t: the same bytes), mm_users
    (atomic_t) and the first word of its flags."""
    m = layout.mm_struct
    p = layout.pointer_size
    return {
        "ksm_rmap_items": (m.ksm_rmap_items, p, False),
        "ksm_merging_pages": (m.ksm_merging_pages, p, False),
        "ksm_zero_pages": (m.ksm_zero_pages, p, False),
        "mm_users": (m.mm_users, 4, True),
        "flags": (m.flags, p, False),
    }


def span_dtype(layout: KsmLayout, fields: dict[str, tuple[Optional[int], int, bool]]) -> tuple[Any, int]:
    """``(dtype, start)``: :func:`record_dtype` over only the bytes *fields*
    span (an mm_struct is a kilobyte, its KSM fields a few words)."""
    present = [(off, size) for off, size, _ in fields.values() if off is not None]
    start = min(off for off, _ in present)
    return record_dtype(layout, fields, max(off + size for off, size in present), start), start


def _column(rows: Any, name: str) -> list:
    return rows[name].tolist() if name in rows.dtype.names else [None] * len(rows)


def rmap_items(layout: KsmLayout, addresses: Any, rows: Any,
               rmap_list: Optional[Any] = None) -> list[RmapItem]:
    """The :class:`RmapItem` of each row (a structured array of
    :func:`record_dtype` over :func:`rmap_item_fields`, from any start) at
    *addresses*; *rmap_list*: each item's successor, where the rows do not
    hold it (the walk that found them followed it)."""
    n = len(rows)
    if rmap_list is not None:
        successors = list(rmap_list)
    else:
        successors = _column(rows, "rmap_list") if "rmap_list" in rows.dtype.names else [0] * n
    raw = rows["raw_address"]
    columns = [list(addresses), successors] + [_column(rows, name) for name in RmapItem._fields[2:-1]]
    columns.append((raw & raw.dtype.type(layout.page_mask)).tolist())
    return [_new(RmapItem, values) for values in zip(*columns)]


def stable_nodes(addresses: Any, rows: Any) -> list["StableNode"]:
    """The :class:`StableNode` of each row (of :func:`stable_node_fields`)."""
    columns = [list(addresses)] + [_column(rows, name) for name in StableNode._fields[1:]]
    return [_new(StableNode, values) for values in zip(*columns)]


class RmapItemDecoder:
    """Decodes the bytes of one ``struct ksm_rmap_item`` for one layout,
    through the same rows as a collection's columns."""

    def __init__(self, layout: KsmLayout):
        self.layout = layout
        self.size = layout.rmap_item.size
        self.dtype = record_dtype(layout, rmap_item_fields(layout), self.size)

    def __call__(self, address: int, buf: bytes, off: int = 0) -> RmapItem:
        import numpy as np

        rows = np.frombuffer(buf, self.dtype, 1, off)
        return rmap_items(self.layout, [address], rows)[0]


class StableNodeDecoder:
    """Decodes the bytes of one ``struct ksm_stable_node`` for one layout."""

    def __init__(self, layout: KsmLayout):
        self.size = layout.stable_node.size
        self.dtype = record_dtype(layout, stable_node_fields(layout), self.size)

    def __call__(self, address: int, buf: bytes, off: int = 0) -> "StableNode":
        import numpy as np

        return stable_nodes([address], np.frombuffer(buf, self.dtype, 1, off))[0]


_new = tuple.__new__
