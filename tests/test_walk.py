"""The bounded primitives of ksminspect/walk.py over bytes alone (a list
with a wrong back link, a chain with a cycle, a misaligned or unreadable
pointer, an rbtree in order), beside the real-dump walks of
tests/test_hostile.py and tests/test_collect.py."""

from __future__ import annotations

import struct
from array import array

import pytest

from test_decode import RMAP_5_10, PRE_4_13_NODE, make_layout

from ksminspect.walk import Walker, WalkDamage

BASE = 0xFFFF888000000000


class Memory:
    cache: dict = {}  # as drgn.Program's: no dump description, so a fault is no gap

    def __init__(self, words: dict[int, int], size: int = 1 << 16):
        self.buf = bytearray(size)
        for address, value in words.items():
            struct.pack_into("<Q", self.buf, address - BASE, value)

    def read(self, address: int, size: int, physical: bool = False) -> bytes:
        import drgn

        start = address - BASE
        if start < 0 or start + size > len(self.buf):
            raise drgn.FaultError("could not read memory", address)
        return bytes(self.buf[start:start + size])


def walker(words: dict[int, int]) -> Walker:
    return Walker(Memory(words), make_layout(8, RMAP_5_10, PRE_4_13_NODE, None))  # type: ignore[arg-type]


def test_list_for_each_and_a_wrong_back_link() -> None:
    head, a, b = BASE, BASE + 0x100, BASE + 0x200  # list_head at offset 0x10 of each
    w = walker({head: a + 0x10, head + 8: b + 0x10,
                a + 0x10: b + 0x10, a + 0x18: head,
                b + 0x10: head, b + 0x18: head})  # b's prev should be a's list_head
    assert list(w.list_for_each("t", head, 0x10)) == [a, b]
    (bad,) = w.bad_links.values()
    assert (bad.address, bad.link, bad.found, bad.expected, bad.at) == \
        (b, "list_head.prev", head, a + 0x10, b + 0x18)


def test_list_cycle_ends_the_walk() -> None:
    head, a, b = BASE, BASE + 0x100, BASE + 0x200
    w = walker({head: a, a: b, a + 8: head, b: a, b + 8: a})
    with pytest.raises(WalkDamage) as e:
        list(w.list_for_each("t", head, 0))
    assert e.value.damage.problem == "cycle"


@pytest.mark.parametrize("bad,problem", [(BASE + 0x303, "misaligned"), (BASE + (1 << 20), "fault")])
def test_follow_stops_at_a_bad_pointer(bad: int, problem: str) -> None:
    a, b = BASE + 0x100, BASE + 0x200
    w = walker({a: b, b: bad})
    out: array[int] = array("Q")
    damage = w.follow("t", a, 0, 0, 0, 64, out)
    assert list(out) == [a, b]
    assert damage is not None and (damage.problem, damage.address) == (problem, b)


def test_follow_finds_a_cycle_and_names_who_closes_it() -> None:
    nodes = [BASE + 0x100 * i for i in range(1, 6)]
    words = {n: nodes[i + 1] for i, n in enumerate(nodes[:-1])}
    words[nodes[-1]] = nodes[2]
    out: array[int] = array("Q")
    damage = walker(words).follow("t", nodes[0], 0, 0, 0, 64, out)
    assert damage is not None and damage.problem == "cycle"
    assert (damage.address, damage.pointer) == (nodes[-1], nodes[2])
    assert list(out)[:5] == nodes


def test_rbtree_inorder() -> None:
    # root 2 with children 1 and 3; rb_node {parent_color, right, left} at offset 0
    n1, n2, n3, root = BASE + 0x100, BASE + 0x200, BASE + 0x300, BASE + 0x10
    w = walker({root: n2, n2: 0, n2 + 8: n3, n2 + 16: n1, n1: n2 | 1, n3: n2 | 1})
    assert list(w.rbtree_inorder("t", root, 0, 24)) == [n1, n2, n3]
    assert w.bad_links == {}


def _chain(addresses: list[int], last: int = 0) -> dict[int, int]:
    """A chain through *addresses* (next pointer at offset 0), then *last*."""
    return {a: b for a, b in zip(addresses, addresses[1:] + [last])}


@pytest.mark.parametrize("shape,words,first", [
    ("clean, across chunks", _chain([BASE + 0x40 * i for i in range(300)]), BASE),
    ("clean, chunks out of order", _chain([BASE + 0x3000, BASE + 0x40, BASE + 0x2040, BASE + 0x80]), BASE + 0x3000),
    ("cycle across chunks", _chain([BASE + 0x1000 * i for i in range(5)], BASE + 0x2000), BASE),
    ("cycle in one chunk", _chain([BASE + 0x100, BASE + 0x140], BASE + 0x100), BASE + 0x100),
    ("points at itself", {BASE + 0x100: BASE + 0x100}, BASE + 0x100),
    ("misaligned in the same chunk", _chain([BASE + 0x100, BASE + 0x200], BASE + 0x304), BASE + 0x100),
    ("across a chunk's end", _chain([BASE + 0x100, BASE + 0xfe0]), BASE + 0x100),
    ("into unreadable memory", _chain([BASE + 0x100, BASE + 0x2000], BASE + (1 << 20)), BASE + 0x100),
])
def test_follow_each_fast_path_walks_as_every_step_checked(shape: str, words: dict[int, int], first: int) -> None:
    """follow_each's path without a check per step gives what the walk
    that checks every step gives, damage and all, whatever the chain."""
    fast, fast_stops = array("Q"), array("q")
    damaged = walker(words).follow_each("t", [(first, BASE)], 0, 0, 64, fast, fast_stops)
    exact: array[int] = array("Q")
    damage = walker(words)._follow_exact("t", first, BASE, 0, 0, 64, exact)
    assert (list(fast), list(fast_stops)) == (list(exact), [len(exact)]), shape
    assert damaged == ([(0, damage)] if damage else []), shape


def test_follow_each_many_chains_in_rounds_walks_as_every_step_checked() -> None:
    """Chains enough to be walked a round at a time (the dups of every
    chain), among them each odd shape above and one longer than the rounds
    go: what each chain walked alone, step by step, gives."""
    from ksminspect.walk import MANY_CHAINS, MANY_ROUNDS

    words: dict[int, int] = {}
    firsts = []
    for i in range(MANY_CHAINS + 8):  # two containers each, 64 bytes apart
        a = BASE + 0x10000 + i * 0x80
        words.update(_chain([a, a + 0x40]))
        firsts.append(a)
    odd = BASE + 0x80000
    shapes = [
        _chain([odd + 0x1000 * i for i in range(5)], odd + 0x2000),  # a cycle across chunks
        {odd + 0x6100: odd + 0x6100},  # points at itself
        _chain([odd + 0x7100, odd + 0x7200], odd + 0x7304),  # misaligned
        _chain([odd + 0x8100, odd + 0x8fe0]),  # across a chunk's end
        _chain([odd + 0x9100], BASE + (1 << 23)),  # into unreadable memory
        _chain([odd + 0xa000 + 0x40 * i for i in range(MANY_ROUNDS + 10)]),  # longer than the rounds
    ]
    for k, shape in enumerate(shapes):
        words.update(shape)
        firsts.insert(100 * k + 3, min(shape))
    chains = [(f, BASE) for f in firsts]
    memory = Memory(words, 1 << 22)
    out, stops = array("Q"), array("q")
    damaged = Walker(memory, walker({}).layout).follow_each("t", chains, 0, 0, 64, out, stops)  # type: ignore[arg-type]
    exact: array[int] = array("Q")
    exact_stops, exact_damage = [], []
    for i, (first, owner) in enumerate(chains):
        damage = Walker(memory, walker({}).layout)._follow_exact("t", first, owner, 0, 0, 64, exact)  # type: ignore[arg-type]
        exact_stops.append(len(exact))
        if damage:
            exact_damage.append((i, damage))
    assert list(out) == list(exact) and list(stops) == exact_stops
    assert damaged == exact_damage and [d.problem for _, d in damaged] == ["cycle", "cycle", "misaligned", "fault"]
