"""Walkers over KSM's structures, named after the kernel's own iterators.

The bounded primitives every collection is made of: a circular list
(``list_for_each``), a NULL-terminated singly linked chain or hlist
(``follow``), an rbtree in order (``rbtree_inorder``). They read raw memory
through the session's kept chunks and yield addresses, never drgn Objects.
Every walk is bounded: a cycle, a pointer into unmapped memory, a
misaligned pointer or a walk longer than any KSM structure ends it with
:class:`WalkDamage` (or returns its :class:`Damage`), after the good objects;
a back link that does not point where the walk came from is a
:class:`BadLink`, kept in :attr:`Walker.bad_links`, and the walk goes on.
Decoding the objects found is :mod:`ksminspect.collect`'s (rows) and
:mod:`ksminspect.decode`'s (records).
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import drgn
import numpy as np

from ksminspect.layout import KsmLayout, TreeRootsLayout, get_layout
from ksminspect.memory import CHUNK, KeptMemory
from ksminspect.program import is_gap

# No sane KSM structure is longer; a walk beyond it is reading garbage.
MAX_WALK = 1 << 28
# As many chains or more are walked a round at a time (the dups of every
# chain, say), for at most as many rounds
MANY_CHAINS, MANY_ROUNDS = 1024, 64


@dataclass(frozen=True)
class Damage:
    """Where a walk could not go on."""

    walk: str  # which structure: "ksm_mm_head", "rmap_list", ...
    address: int  # the object whose pointer was bad (0 if the head)
    pointer: int  # the bad pointer
    problem: str  # "cycle", "fault", "excluded", "misaligned", "limit"

    def sentence(self) -> str:
        what = {
            "cycle": "points back into the walk (a cycle)",
            "fault": "points at memory that cannot be read",
            "excluded": "points at memory the dump lacks (left out by its dump level or a "
                        "makedumpfile older than the kernel, or cut short)",
            "misaligned": "is not aligned for the object it should point at",
            "limit": "leads past the longest walk this structure can have",
        }[self.problem]
        return (f"{self.walk}: the pointer {self.pointer:#x} read from {self.address:#x} "
                f"{what}; the walk stopped there")


def fault(prog: drgn.Program, e: drgn.FaultError) -> str:
    """A read's failure as a walk's problem: "excluded" where it is the
    dump's doing (:func:`~ksminspect.program.is_gap`: a page left out, or
    a filtered or cut short dump), no evidence about the kernel; else
    "fault"."""
    return "excluded" if is_gap(prog, e) else "fault"


def excluded_pages(damage: Iterable[Damage], page_mask: int) -> list[int]:
    """The pages the dump left out that walks met, each once."""
    return sorted({d.pointer & page_mask for d in damage if d.problem == "excluded"})


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
    at: int  # the address of the back link itself
    # the words the judgement rests on, as the walk read them: (address,
    # value) of the back link and of the forward pointer that led here
    saw: tuple[tuple[int, int], ...] = ()

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.walk, self.address, self.link)

    @property
    def as_met(self) -> tuple[str, int, str, int, int]:
        """What makes two walks' bad links the same one (not the words they saw)."""
        return (self.walk, self.address, self.link, self.found, self.expected)

    def sentence(self) -> str:
        return (f"{self.walk}: the {self.link} of {self.address:#x} is {self.found:#x}, "
                f"not {self.expected:#x} where the walk came from")


class WalkDamage(Exception):
    def __init__(self, damage: Damage):
        super().__init__(damage.sentence())
        self.damage = damage


class Walker:
    """Reads KSM's lists and trees in one program; one per session (see :func:`walker`)."""

    def __init__(self, prog: drgn.Program, layout: Optional[KsmLayout] = None):
        self.prog = prog
        self.layout = layout or get_layout(prog)
        self._read = prog.read
        self._word = self.layout.word
        self._unpack_word = struct.Struct(self._word).unpack_from
        self.ptr = self.layout.pointer_size
        self.memory = KeptMemory(prog.read, self.ptr, self.layout.little_endian)
        # back links the walks found wrong, once each however often walked
        self.bad_links: dict[tuple[str, int, str], BadLink] = {}

    # -- raw reading ---------------------------------------------------

    def object_bytes(self, walk: str, owner: int, address: int, size: int) -> tuple[memoryview, int]:
        """``(buffer, offset)`` holding *size* bytes at *address*, a pointer
        found in *owner*, from the session's kept memory where it can."""
        if address % self.ptr:
            raise WalkDamage(Damage(walk, owner, address, "misaligned"))
        if (address & (CHUNK - 1)) + size <= CHUNK:
            got = self.memory.chunk(address)
            if got is not None:
                return got
        try:
            return memoryview(self._read(address, size)), 0
        except drgn.FaultError as e:
            raise WalkDamage(Damage(walk, owner, address, fault(self.prog, e))) from None

    def read_word(self, walk: str, owner: int, address: int) -> int:
        buf, off = self.object_bytes(walk, owner, address, self.ptr)
        return self._unpack_word(buf, off)[0]

    def read_int(self, walk: str, address: int) -> int:
        """The C ``int`` at *address* (``ksm_nr_node_ids``, say)."""
        buf, off = self.object_bytes(walk, 0, address & ~(self.ptr - 1), self.ptr)
        return struct.unpack_from(self._word[0] + "i", buf, off + address % self.ptr)[0]

    # -- the primitives ------------------------------------------------

    def follow(self, walk: str, first: int, owner: int, member: int, next_at: int, size: int,
               out: "array[int]") -> Optional[Damage]:
        """The one bounded walk of a NULL-terminated singly linked chain:
        *first* points at *member* of a container of *size* bytes whose next
        pointer is at *next_at*. Appends each container's address to *out*
        and returns the damage that ended the walk early, if any."""
        stops: array[int] = array("q")
        damage = self.follow_each(walk, [(first, owner)], member, next_at, size, out, stops)
        return damage[0][1] if damage else None

    def follow_each(self, walk: str, chains: list[tuple[int, int]], member: int, next_at: int,
                    size: int, out: "array[int]", stops: "array[int]") -> list[tuple[int, Damage]]:
        """:meth:`follow` for each ``(first, owner)`` of *chains* in one loop:
        appends each chain's containers to *out* and where it ends to
        *stops*; returns ``(chain index, damage)`` for the chains cut short.
        Cycles are found with Brent's method, in constant memory."""
        out_from, stops_from = len(out), len(stops)
        damaged: list[tuple[int, Damage]] = []
        if len(chains) < MANY_CHAINS:
            damaged = self._follow_chains(walk, chains, member, next_at, size, out, stops, set())
        else:  # fifty thousand chains of dups, say: all at once
            met, lengths, alone = self._follow_rounds(chains, member, next_at, size)
            ends = np.cumsum(lengths)
            if not alone.any():
                out.extend(met)
                stops.extend((ends + out_from).tolist())
            else:  # those the rounds could not finish, each walked on its own
                starts = (ends - lengths).tolist()
                for i, chain in enumerate(chains):
                    if alone[i]:
                        damaged += [(i, d) for _, d in self._follow_chains(walk, [chain], member, next_at, size,
                                                                        out, stops, set())]
                    else:
                        out.extend(met[starts[i]:starts[i] + lengths[i]])
                        stops.append(len(out))
        # The fast path read a misaligned container as the aligned one below
        # it: found here, once for all, and those chains walked step by step.
        walked: np.ndarray = np.frombuffer(out, np.uint64 if out.itemsize == 8 else np.uint32)[out_from:]
        odd = np.nonzero(walked & (self.ptr - 1))[0]
        del walked  # (a view: out cannot be resized while it lives)
        if len(odd):
            ends = np.array(stops[stops_from:], np.int64) - out_from
            exact = set(np.searchsorted(ends, odd, side="right").tolist())
            del out[out_from:], stops[stops_from:]
            damaged = self._follow_chains(walk, chains, member, next_at, size, out, stops, exact)
        return damaged

    def _follow_rounds(self, chains: list[tuple[int, int]], member: int, next_at: int,
                       size: int) -> tuple["array[int]", np.ndarray, np.ndarray]:
        """Every chain one container a round, the rounds in numpy (many short
        chains cost a Python step per round, not per container): the
        containers in chain order, each chain's length, and the chains it
        could not finish (a misaligned or unreadable pointer, a container
        across a chunk's end, or still going after MANY_ROUNDS rounds: long,
        or a cycle), for a walk of their own."""
        pos = np.array([first for first, _ in chains], np.uint64)
        odd = np.zeros(len(chains), bool)
        live = np.nonzero(pos)[0]
        met_chain, met_at = [], []
        amask, chunk_end = np.uint64(self.ptr - 1), np.uint64(CHUNK - size)
        for _ in range(MANY_ROUNDS):
            if not len(live):
                break
            c = pos[live] - np.uint64(member)
            ok = ((c & amask) == 0) & ((c & np.uint64(CHUNK - 1)) <= chunk_end)
            ok[ok] = self.memory.keep(c[ok])
            odd[live[~ok]] = True
            live, c = live[ok], c[ok]
            met_chain.append(live)
            met_at.append(c)
            pos[live] = self.memory.words_at(c + np.uint64(next_at))
            live = live[pos[live] != 0]
        odd[live] = True
        chain_of = np.concatenate(met_chain) if met_chain else np.zeros(0, np.int64)
        order = np.argsort(chain_of, kind="stable")  # rounds in order within each chain
        met: array[int] = array("Q")
        met.frombytes((np.concatenate(met_at)[order] if met_at else np.zeros(0, np.uint64)).tobytes())
        return met, np.bincount(chain_of, minlength=len(chains)), odd

    def _follow_chains(self, walk: str, chains: list[tuple[int, int]], member: int, next_at: int, size: int,
                       out: "array[int]", stops: "array[int]", exact: set[int]) -> list[tuple[int, Damage]]:
        """:meth:`follow_each`'s loop. A chain (a million rmap_items, or one
        of fifty thousand chains of dups) is walked first with no check per
        step but that it stays in its chunk; anything odd there (an
        unreadable pointer, a container across a chunk's end, a chunk entered
        twice at one place by Brent's method, more steps in one chunk than it
        holds) drops what it appended, and :meth:`_follow_exact` walks the
        chain step by step, as it does the chains in *exact*."""
        kept = self.memory.word_chunks  # chunk base -> (words, index of its first word)
        load = self.memory.words
        shift = 3 if self.ptr == 8 else 2
        cmask = ~(CHUNK - 1)
        append = out.append
        spin = range(CHUNK // self.ptr + 1)  # more steps in one chunk than it holds: a cycle
        damaged: list[tuple[int, Damage]] = []
        for index, (first, owner) in enumerate(chains):
            start = len(out)
            pos, c = first, first - member
            saved, power, entries = -1, 1, 0  # Brent's, over where the walk enters a chunk
            while pos:
                base = c & cmask
                if c == saved or c - base + size > CHUNK:
                    break
                entries += 1
                if entries == power:
                    saved, power = c, power * 2
                got = kept.get(base) or load(c)
                if got is None:
                    break
                words, wbase = got
                lo, hi = base, base + CHUNK - size
                delta = wbase + ((next_at - lo) >> shift)
                for _ in spin:  # containers lo..hi lie whole in this chunk
                    append(c)
                    pos = words[(c >> shift) + delta]
                    c = pos - member
                    if not lo <= c <= hi:  # another chunk, or NULL (below any chunk)
                        break
                else:
                    break
                if entries > MAX_WALK:
                    break
            if pos or index in exact:  # odd: walk it again, every step checked
                del out[start:]
                damage = self._follow_exact(walk, first, owner, member, next_at, size, out)
                if damage:
                    damaged.append((index, damage))
            stops.append(len(out))
        return damaged

    def _follow_exact(self, walk: str, first: int, owner: int, member: int, next_at: int, size: int,
                      out: "array[int]") -> Optional[Damage]:
        """One chain step by step, every step checked: appends its containers
        to *out* and returns the damage that ended it early, if any."""
        kept = self.memory.word_chunks
        load = self.memory.words
        unpack = self._unpack_word
        amask = self.ptr - 1
        shift = 3 if self.ptr == 8 else 2
        cmask = ~(CHUNK - 1)
        append = out.append
        # containers lo..hi lie whole in the current chunk, whose words are
        # words[(c >> shift) + delta] for the next pointer of container c
        # (none yet: lo > hi, so the empty words are never indexed)
        lo, hi, delta = 1, 0, 0
        words: memoryview = memoryview(b"")
        start = len(out)
        saved, power, steps = -1, 1, 0
        pos = first
        while pos:
            c = pos - member
            if c & amask:
                return Damage(walk, out[-1] if len(out) > start else owner, c, "misaligned")
            if lo <= c <= hi:
                nxt = words[(c >> shift) + delta]
            else:
                base = c & cmask
                got = kept.get(base) or (load(c) if c - base + size <= CHUNK else None)
                if got is not None:
                    words, wbase = got
                    lo, hi = base, base + CHUNK - size
                    delta = wbase + ((next_at - lo) >> shift)
                    nxt = words[(c >> shift) + delta]
                else:  # not whole in one readable chunk: read the object alone
                    lo, hi = 1, 0
                    try:
                        nxt = unpack(self._read(c, size), next_at)[0]
                    except drgn.FaultError as e:
                        return Damage(walk, out[-1] if len(out) > start else owner, c, fault(self.prog, e))
            append(c)
            steps += 1
            if steps == power:
                saved, power = c + member, power * 2
                if power > MAX_WALK:
                    return Damage(walk, c, nxt, "limit")
            pos = nxt
            if pos == saved:
                return self._cycle(walk, out, start, first, member, pos)
        return None

    @staticmethod
    def _cycle(walk: str, out: "array[int]", start: int, first: int, member: int,
               last: int) -> Damage:
        """Brent's method saw a cycle: name the container whose pointer closes
        it, from the containers walked (*last*: the pointer after them)."""
        seen = {first}
        for i in range(start, len(out)):
            nxt = out[i + 1] + member if i + 1 < len(out) else last
            if nxt in seen:
                return Damage(walk, out[i], nxt, "cycle")
            seen.add(nxt)
        return Damage(walk, out[-1], last, "cycle")

    def rbtree_inorder(self, walk: str, root: int, node_offset: int, size: int) -> Iterator[int]:
        """The containers of an rbtree in order, whose ``struct rb_node``
        sits at *node_offset* in containers of *size* bytes.

        Each node is read once, through the kept chunks' words where the
        container lies whole in one; a node met twice is a loop.
        """
        unpack = struct.Struct(self._word[0] + 3 * self._word[1]).unpack_from
        kept, load = self.memory.word_chunks, self.memory.words
        shift = 3 if self.ptr == 8 else 2
        seen: set[int] = set()
        stack: list[tuple[int, int]] = []
        node = self.read_word(walk, root, root)
        owner, via = root, root  # via: where the pointer to node was read
        while stack or node:
            while node:
                if node in seen:
                    raise WalkDamage(Damage(walk, owner, node, "cycle"))
                if len(seen) >= MAX_WALK:
                    raise WalkDamage(Damage(walk, owner, node, "limit"))
                seen.add(node)
                container = node - node_offset
                base = container & ~(CHUNK - 1)
                got = None
                if not node % self.ptr and container - base + size <= CHUNK:
                    got = kept.get(base) or load(container)
                if got is not None:  # __rb_parent_color, rb_right, rb_left
                    words, first = got
                    at = first + ((node - base) >> shift)
                    parent_color, right, left = words[at], words[at + 1], words[at + 2]
                else:
                    buf, off = self.object_bytes(walk, owner, container, size)
                    parent_color, right, left = unpack(buf, off + node_offset)
                parent = 0 if owner == root else owner
                if parent_color & ~3 != parent:
                    self._bad_link(BadLink(walk, node - node_offset, "rb_node parent",
                                           parent_color & ~3, parent, node,
                                           saw=((node, parent_color), (via, node))))
                stack.append((node, right))
                owner, via, node = node, node + 2 * self.ptr, left  # rb_left
            node, right = stack.pop()
            yield node - node_offset
            owner, via, node = node, node + self.ptr, right  # rb_right

    def list_for_each(self, walk: str, head: int, member: int) -> Iterator[int]:
        """The containers of the circular ``struct list_head`` *head*, whose
        list_head sits at *member* (``list_for_each_entry``), each
        ``list_head.prev`` checked against where the walk came from."""
        seen: set[int] = set()
        prev, pos = head, self.read_word(walk, head, head)
        while pos != head:
            if pos in seen or len(seen) > MAX_WALK:
                raise WalkDamage(Damage(walk, prev, pos, "cycle"))  # prev: the list_head before
            seen.add(pos)
            container = pos - member
            nxt = self.read_word(walk, prev - member if prev != head else head, pos)
            back = self.read_word(walk, container, pos + self.ptr)
            if back != prev:
                self._bad_link(BadLink(walk, container, "list_head.prev", back, prev, pos + self.ptr,
                                       saw=((pos + self.ptr, back), (prev, pos))))
            yield container
            prev, pos = pos, nxt

    def _bad_link(self, bad: BadLink) -> None:
        self.bad_links.setdefault(bad.key, bad)

    # -- KSM's lists and trees -----------------------------------------

    def for_each_mm_slot(self) -> Iterator[int]:
        """Addresses of the ``struct ksm_mm_slot``s on ``ksm_mm_head``, in scan
        order (``list_for_each_entry(slot, &ksm_mm_head.slot.mm_node, ...)``)."""
        return self.list_for_each("ksm_mm_head", self.layout.ksm_mm_head, self.layout.mm_slot.mm_node)

    def mm_slot(self, slot: int) -> tuple[int, int]:
        """``(slot->mm, slot->rmap_list)`` of an mm slot."""
        m = self.layout.mm_slot
        return (self.read_word("ksm_mm_head", slot, slot + m.mm),
                self.read_word("ksm_mm_head", slot, slot + m.rmap_list))

    def rmap_list(self, first: int, owner: int, out: "array[int]") -> Optional[Damage]:
        """Appends the addresses of one mm's rmap_items to *out*, following
        ``rmap_list`` from *first*; returns the damage that cut it short."""
        return self.follow("rmap_list", first, owner, 0, self.layout.rmap_item.rmap_list,
                           self.layout.rmap_item.size, out)

    def stable_node_hlist(self, node: int, out: "array[int]") -> Optional[Damage]:
        """Appends the addresses of stable node *node*'s rmap_items to *out*
        (``hlist_for_each_entry(item, &node->hlist, hlist)``); returns the
        damage that cut the walk short."""
        member = self.layout.rmap_item.hlist
        first = self.read_word("stable_node_hlist", node, node + self.layout.stable_node.hlist)
        return self.follow("stable_node_hlist", first, node, member, member,
                           self.layout.rmap_item.size, out)

    def for_each_migrate_node(self) -> Iterator[int]:
        """The stable nodes on ``migrate_nodes`` (v3.9)."""
        head = self.layout.migrate_nodes
        if head is None:
            return iter(())
        return self.list_for_each("migrate_nodes", head, self.layout.stable_node.list)

    def _tree_roots(self, where: TreeRootsLayout) -> list[tuple[int, int]]:
        """``(nid, address of struct rb_root)`` for each tree of one kind."""
        if where.pointer is None:
            return [(0, where.roots)]
        base = self.read_word("tree_roots", where.pointer, where.pointer)
        count = 1
        if where.nr_node_ids is not None:
            count = self.read_int("tree_roots", where.nr_node_ids)  # int ksm_nr_node_ids
        return [(nid, base + nid * self.ptr) for nid in range(max(count, 0))]

    def stable_tree_roots(self) -> list[tuple[int, int]]:
        """``root_stable_tree[nid]`` for nid below ``ksm_nr_node_ids``."""
        return self._tree_roots(self.layout.root_stable_tree)

    def unstable_tree_roots(self) -> list[tuple[int, int]]:
        """``root_unstable_tree[nid]`` for nid below ``ksm_nr_node_ids``."""
        return self._tree_roots(self.layout.root_unstable_tree)


def walker(prog: drgn.Program) -> Walker:
    """The :class:`Walker` of the session under way on *prog*."""
    from ksminspect.session import session

    return session(prog).walker
