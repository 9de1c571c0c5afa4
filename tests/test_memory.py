"""KeptMemory (ksminspect/memory.py) over bytes alone, numpy only: chunks
read once and kept, objects gathered into rows (in any order, across a
chunk's end, from a given byte), a consuming gather giving kept pages back,
and memory that cannot be read."""

from __future__ import annotations

import numpy as np
import pytest

from ksminspect.memory import CHUNK, KeptMemory

BASE = 0xFFFF888000000000
SIZE = 16 * CHUNK


class Memory:
    """Readable bytes at BASE, with a hole; counts the reads made."""

    def __init__(self, hole: tuple[int, int] | None = None):
        self.data = np.arange(SIZE, dtype=np.uint64).astype(np.uint8).tobytes()
        self.hole = hole
        self.reads = 0

    def read(self, address: int, size: int) -> bytes:
        self.reads += 1
        start = address - BASE
        if start < 0 or start + size > SIZE or (
                self.hole and start < self.hole[1] and start + size > self.hole[0]):
            raise OSError(f"cannot read {address:#x}")
        return self.data[start:start + size]


ROW = np.dtype({"names": ["a", "b"], "formats": ["<u4", "<u8"], "offsets": [0, 8], "itemsize": 16})


def expected(mem: Memory, addresses: list[int], at: int = 0) -> list[bytes]:
    return [mem.data[a - BASE + at:a - BASE + at + ROW.itemsize] for a in addresses]


def test_gather_reads_each_chunk_once_and_keeps_the_order() -> None:
    mem = Memory()
    kept = KeptMemory(mem.read, 8, True)
    addresses = [BASE + CHUNK * 3 + 64, BASE + 128, BASE + CHUNK * 3 + 16, BASE + CHUNK - 8]
    for a in addresses:
        kept.chunk(a)
    reads = mem.reads
    rows = kept.gather(np.array(addresses, np.uint64), ROW)
    assert [r.tobytes() for r in rows] == expected(mem, addresses)
    # the object across a chunk's end is read alone; the others come from kept chunks
    assert mem.reads == reads + 1


def test_gather_from_a_byte_on() -> None:
    """A row may start after the object's first bytes (rmap_list, which the walk followed)."""
    mem = Memory()
    kept = KeptMemory(mem.read, 8, True)
    addresses = [BASE + 256, BASE + 512]
    rows = kept.gather(np.array(addresses, np.uint64), ROW, at=8)
    assert [r.tobytes() for r in rows] == expected(mem, addresses, at=8)


def test_consuming_gather_forgets_the_chunks() -> None:
    mem = Memory()
    kept = KeptMemory(mem.read, 8, True)
    addresses = [BASE + i * CHUNK + 32 for i in range(8)]
    for a in addresses:
        kept.chunk(a)
    assert len(kept) >= 8
    rows = kept.gather(np.array(addresses, np.uint64), ROW, consume=True)
    assert [r.tobytes() for r in rows] == expected(mem, addresses)
    assert len(kept) == 0 and kept.word_chunks == {}


def test_unreadable_memory() -> None:
    mem = Memory(hole=(2 * CHUNK, 3 * CHUNK))
    kept = KeptMemory(mem.read, 8, True)
    assert kept.chunk(BASE + 2 * CHUNK + 8) is None
    assert kept.words(BASE + 2 * CHUNK) is None
    words, ok = kept.read_words(np.array([BASE + 8, BASE + 2 * CHUNK + 8, BASE + 3], np.uint64))
    assert ok.tolist() == [True, False, False]  # the last: not aligned for a word
    assert int(words[0]) == int.from_bytes(mem.data[8:16], "little")
    rows = kept.gather(np.array([BASE + 2 * CHUNK + 64], np.uint64), ROW)
    assert rows.tobytes() == bytes(ROW.itemsize)  # what cannot be read stays zero


@pytest.mark.parametrize("word_size", [4, 8])
def test_words_of_a_kept_chunk(word_size: int) -> None:
    mem = Memory()
    kept = KeptMemory(mem.read, word_size, True)
    words, first = kept.words(BASE + CHUNK + 40)
    code = "<u4" if word_size == 4 else "<u8"
    want = np.frombuffer(mem.data[CHUNK:2 * CHUNK], code)
    assert [words[first + i] for i in range(4)] == want[:4].tolist()
