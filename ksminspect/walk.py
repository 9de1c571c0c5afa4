"""Walkers over KSM's structures, named after the kernel's own iterators.

Walkers read raw memory once per object and yield ``(address, bytes)`` or
decoded records; they never build drgn Objects on the hot path. Every walk is
bounded: a cycle, a pointer into unmapped memory or a misaligned pointer ends
it with :class:`WalkDamage`, after the good objects were yielded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator, Optional

import drgn

from ksminspect.decode import (
    RmapItem,
    RmapItemDecoder,
    StableNode,
    StableNodeDecoder,
)
from ksminspect.layout import KsmLayout, TreeRootsLayout, get_layout

# No sane KSM structure is longer; a walk beyond it is reading garbage.
MAX_WALK = 1 << 28
# Memory is read and kept in chunks of this many bytes (see object_bytes()).
CHUNK = 4096


@dataclass(frozen=True)
class Damage:
    """Where a walk could not go on."""

    walk: str  # which structure: "ksm_mm_head", "rmap_list", ...
    address: int  # the object whose pointer was bad (0 if the head)
    pointer: int  # the bad pointer
    problem: str  # "cycle", "fault", "misaligned", "limit"

    def sentence(self) -> str:
        what = {
            "cycle": "points back into the walk (a cycle)",
            "fault": "points at memory that cannot be read",
            "misaligned": "is not aligned for the object it should point at",
            "limit": "leads past the longest walk this structure can have",
        }[self.problem]
        return (f"{self.walk}: the pointer {self.pointer:#x} read from {self.address:#x} "
                f"{what}; the walk stopped there")


@dataclass(frozen=True)
class BadLink:
    """A back link that does not point where the walk came from: what
    drgn's ``validate_*`` helpers check (``list_head.prev``,
    ``hlist_node.pprev``, the ``rb_node`` parent). The walk goes on."""

    walk: str
    address: int  # the object whose back link is wrong
    link: str  # "list_head.prev", "hlist_node.pprev", "rb_node parent"
    found: int
    expected: int

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.walk, self.address, self.link)

    def sentence(self) -> str:
        return (f"{self.walk}: the {self.link} of {self.address:#x} is {self.found:#x}, "
                f"not {self.expected:#x} where the walk came from")


class WalkDamage(Exception):
    def __init__(self, damage: Damage):
        super().__init__(damage.sentence())
        self.damage = damage


class Walker:
    """Reads KSM objects of one program; one per program (see :func:`walker`)."""

    def __init__(self, prog: drgn.Program, layout: Optional[KsmLayout] = None,
                 chunked: bool = True):
        """*chunked*: read memory a CHUNK at a time and keep it (the fast
        path); False reads every object exactly, once per visit."""
        self.prog = prog
        self.layout = layout or get_layout(prog)
        self.decode_rmap_item = RmapItemDecoder(self.layout)
        self.decode_stable_node = StableNodeDecoder(self.layout)
        self._read = prog.read
        self._word = self.layout.word
        self._unpack_word = struct.Struct(self._word).unpack_from
        self.ptr = self.layout.pointer_size
        self._chunks: dict[int, bytes] = {}
        self._chunked = chunked
        # back links the walks found wrong, once each however often walked
        self.bad_links: dict[tuple[str, int, str], BadLink] = {}

    # -- raw reading ---------------------------------------------------

    def object_bytes(self, walk: str, owner: int, address: int, size: int) -> tuple[bytes, int]:
        """``(buffer, offset)`` holding *size* bytes at *address*, a pointer
        found in *owner*. Memory is read a CHUNK at a time and kept: KSM's
        objects sit many to a slab page, so one read serves them all."""
        if address % self.ptr:
            raise WalkDamage(Damage(walk, owner, address, "misaligned"))
        base = address & ~(CHUNK - 1)
        off = address - base
        if off + size <= CHUNK and self._chunked:
            buf = self._chunks.get(base)
            if buf is not None:
                return buf, off
            try:
                buf = self._chunks[base] = self._read(base, CHUNK)
                return buf, off
            except drgn.FaultError:
                pass  # part of the chunk is not in the dump: read just the object
        try:
            return self._read(address, size), 0
        except drgn.FaultError:
            raise WalkDamage(Damage(walk, owner, address, "fault")) from None

    def _bad_link(self, bad: BadLink) -> None:
        self.bad_links.setdefault(bad.key, bad)

    def read_word(self, walk: str, owner: int, address: int) -> int:
        buf, off = self.object_bytes(walk, owner, address, self.ptr)
        return self._unpack_word(buf, off)[0]

    # -- ksm_mm_head -----------------------------------------------------

    def for_each_mm_slot(self) -> Iterator[int]:
        """Addresses of the ``struct ksm_mm_slot``s on ``ksm_mm_head``, in scan
        order (``list_for_each_entry(slot, &ksm_mm_head.slot.mm_node, ...)``)."""
        head = self.layout.ksm_mm_head
        off = self.layout.mm_slot.mm_node
        seen: set[int] = set()
        pos = self.read_word("ksm_mm_head", head, head)
        prev = head
        while pos != head:
            if pos in seen or len(seen) > MAX_WALK:
                raise WalkDamage(Damage("ksm_mm_head", prev, pos, "cycle"))
            seen.add(pos)
            slot = pos - off
            nxt = self.read_word("ksm_mm_head", prev - off if prev != head else head, pos)
            back = self.read_word("ksm_mm_head", slot, pos + self.ptr)
            if back != prev:
                self._bad_link(BadLink("ksm_mm_head", slot, "list_head.prev", back, prev))
            yield slot
            prev, pos = pos, nxt

    def mm_slot(self, slot: int) -> tuple[int, int]:
        """``(slot->mm, slot->rmap_list)`` of an mm slot."""
        m = self.layout.mm_slot
        return (self.read_word("ksm_mm_head", slot, slot + m.mm),
                self.read_word("ksm_mm_head", slot, slot + m.rmap_list))

    # -- rmap_list -----------------------------------------------------

    def for_each_rmap_item(self, first: int, owner: int = 0) -> Iterator[RmapItem]:
        """The rmap_items of one mm, following ``rmap_list`` from *first*.

        Cycles are found with Brent's method, in constant memory.
        """
        size = self.decode_rmap_item.size
        decode = self.decode_rmap_item
        object_bytes = self.object_bytes
        saved, power, steps = 0, 1, 0
        prev = owner
        pos = first
        base, buf, limit = -1, b"", CHUNK - size  # the chunk of the last item
        ptr = self.ptr
        while pos:
            off = pos - base
            if not 0 <= off <= limit or pos % ptr:
                buf, off = object_bytes("rmap_list", prev, pos, size)
                base = pos - off if len(buf) == CHUNK and self._chunked else -1
            item = decode(pos, buf, off)
            yield item
            steps += 1
            if steps == power:
                saved, power = pos, power * 2
                if power > MAX_WALK:
                    raise WalkDamage(Damage("rmap_list", pos, item.rmap_list, "limit"))
            prev, pos = pos, item.rmap_list
            if pos == saved:
                owner, pointer = self._cycle_link(first, lambda a: self.rmap_item(a).rmap_list)
                raise WalkDamage(Damage("rmap_list", owner, pointer, "cycle"))

    @staticmethod
    def _cycle_link(first: int, next_of, owner_of=lambda a: a) -> tuple[int, int]:
        """Brent's method saw a cycle: walk again, remembering, to name the
        object whose pointer closes it. Returns (that object, the pointer)."""
        seen = set()
        pos = first
        while pos not in seen:
            seen.add(pos)
            nxt = next_of(pos)
            if nxt in seen:
                return owner_of(pos), nxt
            pos = nxt
        return owner_of(pos), pos

    def rmap_item(self, address: int) -> RmapItem:
        buf, off = self.object_bytes("rmap_item", address, address, self.decode_rmap_item.size)
        return self.decode_rmap_item(address, buf, off)

    # -- stable and unstable trees -------------------------------------

    def _tree_roots(self, where: TreeRootsLayout) -> list[tuple[int, int]]:
        """``(nid, address of struct rb_root)`` for each tree of one kind."""
        if where.pointer is None:
            return [(0, where.roots)]
        base = self.read_word("tree_roots", where.pointer, where.pointer)
        count = 1
        if where.nr_node_ids is not None:
            try:
                raw = self._read(where.nr_node_ids, 4)  # int ksm_nr_node_ids
            except drgn.FaultError:
                raise WalkDamage(Damage("tree_roots", 0, where.nr_node_ids, "fault")) from None
            count = int.from_bytes(raw, "little" if self.layout.little_endian else "big", signed=True)
        return [(nid, base + nid * self.ptr) for nid in range(max(count, 0))]

    def stable_tree_roots(self) -> list[tuple[int, int]]:
        """``root_stable_tree[nid]`` for nid below ``ksm_nr_node_ids``."""
        return self._tree_roots(self.layout.root_stable_tree)

    def unstable_tree_roots(self) -> list[tuple[int, int]]:
        """``root_unstable_tree[nid]`` for nid below ``ksm_nr_node_ids``."""
        return self._tree_roots(self.layout.root_unstable_tree)

    def rbtree_inorder(self, walk: str, root: int, node_offset: int,
                       size: int) -> Iterator[tuple[int, bytes, int]]:
        """In-order ``(container, buffer, offset)`` of an rbtree whose
        ``struct rb_node`` sits at *node_offset* in containers of *size* bytes.

        Each container is read once; one met twice is a loop.
        """
        unpack = struct.Struct(self._word[0] + 3 * self._word[1]).unpack_from
        seen: set[int] = set()
        stack: list[tuple[int, bytes, int, int]] = []
        node = self.read_word(walk, root, root)
        owner = root
        while stack or node:
            while node:
                if node in seen:
                    raise WalkDamage(Damage(walk, owner, node, "cycle"))
                if len(seen) >= MAX_WALK:
                    raise WalkDamage(Damage(walk, owner, node, "limit"))
                seen.add(node)
                buf, off = self.object_bytes(walk, owner, node - node_offset, size)
                parent_color, right, left = unpack(buf, off + node_offset)
                parent = 0 if owner == root else owner
                if parent_color & ~3 != parent:
                    self._bad_link(BadLink(walk, node - node_offset, "rb_node parent",
                                           parent_color & ~3, parent))
                stack.append((node, buf, off, right))
                owner, node = node, left
            node, buf, off, right = stack.pop()
            yield node - node_offset, buf, off
            owner, node = node, right

    def for_each_stable_node(self, root: int) -> Iterator[StableNode]:
        """The ``struct ksm_stable_node``s of one stable tree, in order."""
        decode = self.decode_stable_node
        for node, buf, off in self.rbtree_inorder("stable_tree", root, self.layout.stable_node.node,
                                                  decode.size):
            yield decode(node, buf, off)

    def for_each_unstable_item(self, root: int) -> Iterator[RmapItem]:
        """The rmap_items of one unstable tree, in order."""
        decode = self.decode_rmap_item
        for item, buf, off in self.rbtree_inorder("unstable_tree", root, self.layout.rmap_item.node,
                                                  decode.size):
            yield decode(item, buf, off)

    def stable_node(self, address: int) -> StableNode:
        buf, off = self.object_bytes("stable_node", address, address, self.decode_stable_node.size)
        return self.decode_stable_node(address, buf, off)

    def _hlist(self, walk: str, owner: int, head: int, member: int) -> Iterator[int]:
        """Containers on the hlist whose ``struct hlist_head`` is at *head* (in
        *owner*), its nodes at *member* in each container."""
        seen: set[int] = set()
        pos = self.read_word(walk, owner, head)
        prev, link = owner, head  # link: where the pointer to pos was read
        while pos:
            if pos in seen or len(seen) > MAX_WALK:
                raise WalkDamage(Damage(walk, prev, pos, "cycle"))
            seen.add(pos)
            nxt = self.read_word(walk, prev, pos)
            pprev = self.read_word(walk, pos - member, pos + self.ptr)
            if pprev != link:
                self._bad_link(BadLink(walk, pos - member, "hlist_node.pprev", pprev, link))
            yield pos - member
            prev, link, pos = pos - member, pos, nxt

    def for_each_stable_node_dup(self, chain: StableNode) -> Iterator[StableNode]:
        """The dups of a chain (``hlist_for_each_entry(dup, &chain->hlist, hlist_dup)``)."""
        off = self.layout.stable_node.hlist_dup
        if off is None:
            return
        for dup in self._hlist("chain", chain.address, chain.address + self.layout.stable_node.hlist,
                               off):
            yield self.stable_node(dup)

    def for_each_stable_node_rmap_item(self, node: StableNode,
                                       known: Optional[dict[int, RmapItem]] = None
                                       ) -> Iterator[RmapItem]:
        """The rmap_items of a stable node (``hlist_for_each_entry(item, &node->hlist, hlist)``).

        Each item is read once, its ``hlist.next`` leading on; items already
        decoded (*known*: address -> item, e.g. from the rmap_list walk) are
        not decoded again. Cycles are found with Brent's method."""
        known = known or {}
        decode = self.decode_rmap_item
        size = decode.size
        member = self.layout.rmap_item.hlist
        saved, power, steps = 0, 1, 0
        prev, pos = node.address, node.hlist_first
        link = node.address + self.layout.stable_node.hlist  # where the pointer to pos was read
        while pos:
            item = known.get(pos - member)
            if item is None:
                buf, off = self.object_bytes("stable_node_hlist", prev, pos - member, size)
                item = decode(pos - member, buf, off)
            if item.hlist_pprev != link:
                self._bad_link(BadLink("stable_node_hlist", item.address, "hlist_node.pprev",
                                       item.hlist_pprev, link))
            link = pos
            yield item
            steps += 1
            if steps == power:
                saved, power = pos, power * 2
                if power > MAX_WALK:
                    raise WalkDamage(Damage("stable_node_hlist", item.address, item.hlist_next, "limit"))
            prev, pos = item.address, item.hlist_next
            if pos == saved:
                owner, pointer = self._cycle_link(
                    node.hlist_first, lambda a: self.rmap_item(a - member).hlist_next,
                    lambda a: a - member)
                raise WalkDamage(Damage("stable_node_hlist", owner, pointer, "cycle"))

    def for_each_migrate_node(self) -> Iterator[StableNode]:
        """The stable nodes on ``migrate_nodes`` (v3.9)."""
        head = self.layout.migrate_nodes
        if head is None:
            return
        off = self.layout.stable_node.list
        seen: set[int] = set()
        prev, pos = head, self.read_word("migrate_nodes", head, head)
        while pos != head:
            if pos in seen or len(seen) > MAX_WALK:
                raise WalkDamage(Damage("migrate_nodes", prev, pos, "cycle"))
            seen.add(pos)
            node = self.stable_node(pos - off)
            back = prev + off if prev != head else head
            if node.list_prev != back:
                self._bad_link(BadLink("migrate_nodes", node.address, "list_head.prev",
                                       node.list_prev, back))
            yield node
            prev, pos = pos - off, node.list_next


class RmapLists:
    """``ksm_mm_head`` and each mm's ``rmap_list``, walked once, damage kept.

    Iterating yields ``(slot, mm, items)`` for each ``struct ksm_mm_slot`` in
    scan order, *items* an iterator over that mm's rmap_items. A walk cut
    short does not raise: its :class:`Damage` is kept in :attr:`mm_head_damage`
    (the list of slots) or in :attr:`cut` under the mm whose rmap_list it was
    (what follows there was not seen, which is no evidence of anything).
    """

    def __init__(self, w: Walker):
        self.w = w
        self.mm_head_damage: Optional[Damage] = None
        self.cut: dict[int, Damage] = {}  # mm -> why its rmap_list walk stopped early

    @property
    def damage(self) -> list[Damage]:
        """Every damage met, rmap_lists first."""
        return list(self.cut.values()) + ([self.mm_head_damage] if self.mm_head_damage else [])

    def __iter__(self) -> Iterator[tuple[int, int, Iterator[RmapItem]]]:
        w = self.w
        try:
            for slot in w.for_each_mm_slot():
                mm, first = w.mm_slot(slot)
                yield slot, mm, self._items(first, slot, mm)
        except WalkDamage as e:
            self.mm_head_damage = e.damage

    def _items(self, first: int, slot: int, mm: int) -> Iterator[RmapItem]:
        try:
            yield from self.w.for_each_rmap_item(first, slot)
        except WalkDamage as e:
            self.cut[mm] = e.damage


def walker(prog: drgn.Program) -> Walker:
    """The :class:`Walker` of the session under way on *prog*."""
    from ksminspect.session import session

    return session(prog).walker
