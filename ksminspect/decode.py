"""Decoders: the bytes of a KSM object in, a plain record out.

Nothing here touches a drgn Program: a decoder needs only a
:class:`~ksminspect.layout.KsmLayout` and bytes, so every layout can be tested
with bytes alone. Records hold ints, strings and enums.
"""

from __future__ import annotations

import enum
import operator
import struct
from typing import Any, NamedTuple, Optional

from ksminspect.layout import SEQNR_MASK, STABLE_NODE_CHAIN, KsmLayout, item_flags


class ItemState(str, enum.Enum):
    """Where an rmap_item is, by its flag bits in ``address``."""

    STABLE = "stable"  # STABLE_FLAG: listed from a stable node
    UNSTABLE = "unstable"  # UNSTABLE_FLAG: a node of the unstable tree
    NONE = "none"  # neither: scanned, but in no tree
    BOTH = "both"  # both flags: never valid


class NodeKind(str, enum.Enum):
    """What a ``struct ksm_stable_node`` is."""

    NODE = "node"  # a plain stable node in a tree, holding a KSM page
    CHAIN = "chain"  # rmap_hlist_len == STABLE_NODE_CHAIN: holds dups
    DUP = "dup"  # head == STABLE_NODE_DUP_HEAD: a page of a chain
    MIGRATE = "migrate"  # on migrate_nodes, pending placement


class _FieldDecoder:
    """Reads named integer fields of one object layout from bytes at an
    offset, with as few ``struct`` calls as the layout allows: fields that do
    not overlap share one precompiled Struct; union members that overlap them
    (nid over anon_vma, the seed's offset over oldchecksum) take a second.
    Returns the fields in *names* order (None for a field the layout lacks).
    """

    def __init__(self, little_endian: bool, names: list[str],
                 fields: dict[str, tuple[Optional[int], int, bool]]):
        order = "<" if little_endian else ">"
        present = sorted(((off, size, signed, name) for name, (off, size, signed)
                          in fields.items() if off is not None), key=lambda f: (f[0], -f[1]))
        groups: list[list[tuple[int, int, bool, str]]] = []
        for f in present:  # first group that f does not overlap
            for g in groups:
                if g[-1][0] + g[-1][1] <= f[0]:
                    g.append(f)
                    break
            else:
                groups.append([f])
        self._unpacks = []
        got: list[str] = []
        for g in groups:
            fmt, pos = order, 0
            for off, size, signed, name in g:
                code = {1: "B", 2: "H", 4: "I", 8: "Q"}[size]
                fmt += "x" * (off - pos) + (code.lower() if signed else code)
                pos = off + size
                got.append(name)
            self._unpacks.append(struct.Struct(fmt).unpack_from)
        # Fast when the layout's order is the record's (true of every kernel
        # seen): no reordering, missing fields padded at the end.
        self._pad = tuple(None for _ in names[len(got):])
        in_order = got == names[:len(got)]
        got.append("<missing>")
        self._gather = operator.itemgetter(*(got.index(n) if n in got else len(got) - 1
                                             for n in names))
        self.end = max((off + size for off, size, _, _ in present), default=0)
        self._u0 = self._unpacks[0] if self._unpacks else None
        self._u1 = self._unpacks[1] if len(self._unpacks) > 1 else None
        self._call = {1: self._one, 2: self._two}.get(len(self._unpacks), self._many)
        if in_order and len(self._unpacks) == 2:
            self._call = self._two_in_order
        elif in_order and len(self._unpacks) == 1:
            self._call = self._one_in_order

    def __call__(self, buf: bytes, off: int) -> tuple:
        return self._call(buf, off)

    def _one(self, buf: bytes, off: int) -> tuple:
        return self._gather(self._u0(buf, off) + _NONE)

    def _two(self, buf: bytes, off: int) -> tuple:
        return self._gather(self._u0(buf, off) + self._u1(buf, off) + _NONE)

    def _one_in_order(self, buf: bytes, off: int) -> tuple:
        return self._u0(buf, off) + self._pad

    def _two_in_order(self, buf: bytes, off: int) -> tuple:
        return self._u0(buf, off) + self._u1(buf, off) + self._pad

    def _many(self, buf: bytes, off: int) -> tuple:
        values: tuple = ()
        for unpack in self._unpacks:
            values += unpack(buf, off)
        return self._gather(values + _NONE)


_NONE = (None,)
_STATES = (ItemState.NONE, ItemState.UNSTABLE, ItemState.STABLE, ItemState.BOTH)


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
        return _STATES[item_flags(self.raw_address)]

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
        out: dict[str, Any] = {}
        if self.state == ItemState.STABLE:
            out["anon_vma"] = self.anon_vma
            if layout_has_offset:
                out["offset"] = self.offset
            out["head"] = self.head
            out["hlist_next"] = self.hlist_next
            out["hlist_pprev"] = self.hlist_pprev
        elif self.state == ItemState.UNSTABLE:
            if self.nid is not None:
                out["nid"] = self.nid
            out["seqnr"] = self.seqnr
            out["rb_parent"] = self.rb_parent
            out["rb_left"] = self.rb_left
            out["rb_right"] = self.rb_right
        if self.state != ItemState.STABLE or not layout_has_offset:
            out["oldchecksum"] = self.oldchecksum
            if self.age is not None:
                out["age"] = self.age
                out["remaining_skips"] = self.remaining_skips
        return out


# RmapItem fields that hold kernel pointers (shown in hex).
POINTER_FIELDS = frozenset({"anon_vma", "head", "hlist_next", "hlist_pprev", "rb_parent",
                            "rb_left", "rb_right", "mm", "rmap_list"})

_RMAP_FIELDS = list(RmapItem._fields[1:-1])  # all but address and page_address
_new = tuple.__new__


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
    present = {n: f for n, f in fields.items() if f[0] is not None and f[0] >= start}
    return np.dtype({"names": list(present),
                     "formats": [f"{order}{'i' if signed else 'u'}{size_}"
                                 for _, size_, signed in present.values()],
                     "offsets": [off - start for off, _, _ in present.values()],
                     "itemsize": size - start})


class RmapItemDecoder:
    """Decodes ``struct ksm_rmap_item`` bytes for one layout."""

    def __init__(self, layout: KsmLayout):
        self.size = layout.rmap_item.size
        self.page_mask = layout.page_mask
        self._fields = _FieldDecoder(layout.little_endian, _RMAP_FIELDS, rmap_item_fields(layout))
        assert _RMAP_FIELDS.index("raw_address") == 3
        self._values = self._fields._call  # one call less on the hot path

    def __call__(self, address: int, buf: bytes, off: int = 0) -> RmapItem:
        values = self._values(buf, off)
        return _new(RmapItem, (address,) + values + (values[3] & self.page_mask,))


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


_NODE_FIELDS = list(StableNode._fields[1:])


class StableNodeDecoder:
    """Decodes ``struct ksm_stable_node`` bytes for one layout."""

    def __init__(self, layout: KsmLayout):
        self.size = layout.stable_node.size
        self._fields = _FieldDecoder(layout.little_endian, _NODE_FIELDS, stable_node_fields(layout))

    def __call__(self, address: int, buf: bytes, off: int = 0) -> StableNode:
        return _new(StableNode, (address,) + self._fields(buf, off))
