"""Kernel memory read by one session, kept in chunks that many objects share.

KSM's objects sit many to a slab page, so memory is read a CHUNK at a time
and kept in large numpy blocks: a walk follows pointers through the chunks
one word at a time (:meth:`KeptMemory.words`), and the fields of a million
objects are then gathered from the same blocks at once
(:meth:`KeptMemory.gather`), without a Python object per field.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import numpy as np

CHUNK = 4096  # bytes read at a time and kept
_BLOCK = 2048  # chunks per kept block (8 MB)
READAHEAD = 16  # chunks read at once where they follow a kept one


class KeptMemory:
    """The chunks of kernel memory a session has read."""

    def __init__(self, read: Callable[[int, int], bytes], word_size: int, little_endian: bool):
        self._read = read
        self.word_size = word_size
        self._word_code = "Q" if word_size == 8 else "I"
        # Words are read through native memoryview casts where the target's
        # byte order is the host's (every target seen); else not at all.
        self.little_endian = little_endian
        self.native = little_endian == (sys.byteorder == "little")
        self._slot: dict[int, int] = {}  # chunk base -> slot (block * _BLOCK + index)
        self._unreadable: set[int] = set()  # chunk bases not wholly in the target
        self._blocks: list[np.ndarray] = []
        self._bytes: list[memoryview] = []
        self._words: list[memoryview] = []
        # chunk base -> (words of its block, index of its first word): what
        # a walk looks up at every step to another chunk
        self.word_chunks: dict[int, tuple[memoryview, int]] = {}

    def __len__(self) -> int:
        return len(self._slot)

    def _load(self, base: int) -> Optional[int]:
        slot = self._slot.get(base)
        if slot is not None or base in self._unreadable:
            return slot
        # A slab's pages mostly follow each other (rmap_items: 15,624 of
        # 15,630 kept chunks next to another, on a 1M-item dump): where the
        # chunk before is kept, read the next READAHEAD at once.
        span = READAHEAD if base - CHUNK in self._slot else 1
        try:
            data = self._read(base, span * CHUNK)
        except Exception:  # drgn.FaultError: part of it is not in the dump
            span = 1
            try:
                data = self._read(base, CHUNK)
            except Exception:
                self._unreadable.add(base)
                return None
        for k in range(span):
            if base + k * CHUNK not in self._slot:
                self._store(base + k * CHUNK, np.frombuffer(data, np.uint8, CHUNK, k * CHUNK))
        return self._slot[base]

    def _store(self, base: int, data: np.ndarray) -> None:
        slot = len(self._slot)
        block, index = divmod(slot, _BLOCK)
        if block == len(self._blocks):
            self._blocks.append(np.empty(_BLOCK * CHUNK, np.uint8))
            view = memoryview(self._blocks[-1])
            self._bytes.append(view)
            self._words.append(view.cast(self._word_code))
        self._blocks[block][index * CHUNK:(index + 1) * CHUNK] = data
        self._slot[base] = slot
        if self.native:
            self.word_chunks[base] = (self._words[block], index * (CHUNK // self.word_size))

    def chunk(self, address: int) -> Optional[tuple[memoryview, int]]:
        """``(bytes of the kept block, offset of address in it)``, or None
        where the chunk holding *address* cannot be read whole."""
        base = address & ~(CHUNK - 1)
        slot = self._load(base)
        if slot is None:
            return None
        block, index = divmod(slot, _BLOCK)
        return self._bytes[block], index * CHUNK + address - base

    def words(self, address: int) -> Optional[tuple[memoryview, int]]:
        """``(words of the kept block, index of the word at the chunk's
        start)`` for the chunk holding *address*; None where it cannot be read
        whole or words cannot be cast natively."""
        base = address & ~(CHUNK - 1)
        return self.word_chunks.get(base) if self._load(base) is not None else None

    def forget(self) -> None:
        """Drop every kept chunk (what was gathered is copied out): memory
        read again later is read afresh."""
        self._slot.clear()
        self._unreadable.clear()
        self.word_chunks.clear()
        self._blocks, self._bytes, self._words = [], [], []

    def read_words(self, addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(word at each address, whether it could be read)``: the chunks
        are read once each, however many of the addresses they hold, and
        not kept (a struct page each, say: no walk comes back to them)."""
        scratch = KeptMemory(self._read, self.word_size, self.little_endian)
        ok = (addresses % np.uint64(self.word_size)) == 0
        bases = np.unique(addresses[ok] & np.uint64(~(CHUNK - 1) & (2**64 - 1)))
        for base in bases.tolist():
            scratch._load(base)
        kept = np.array(sorted(scratch._slot), np.uint64)
        base = addresses & np.uint64(~(CHUNK - 1) & (2**64 - 1))
        in_kept = ok & np.isin(base, kept)
        order = "<" if self.little_endian else ">"
        dtype = np.dtype({"names": ["word"], "formats": [f"{order}u{self.word_size}"], "offsets": [0],
                          "itemsize": self.word_size})
        words = np.zeros(len(addresses), np.uint64)
        words[in_kept] = scratch.gather(addresses[in_kept], dtype, consume=True)["word"]
        for i in np.nonzero(ok & ~in_kept)[0]:  # in a chunk not wholly in the dump: the word alone
            try:
                words[i] = int.from_bytes(self._read(int(addresses[i]), self.word_size),
                                          "little" if self.little_endian else "big")
            except Exception:
                ok[i] = False
        return words, ok

    def gather(self, addresses: np.ndarray, dtype: Any, consume: bool = False, at: int = 0) -> np.ndarray:
        """The objects of *dtype* at *addresses* (already walked, so their
        chunks are kept) as one structured array, in the same order; *at*:
        the dtype covers each object from that byte on. With *consume*, every
        kept chunk is forgotten, and each block freed as soon as its objects
        are copied out: the objects are never held twice."""
        out = np.zeros(len(addresses), dtype)  # pages of zeros cost nothing until written
        bases = np.fromiter(self._slot.keys(), np.uint64, len(self._slot))
        slots = np.fromiter(self._slot.values(), np.int64, len(self._slot))
        order = np.argsort(bases)
        bases, slots = bases[order], slots[order]
        blocks = list(self._blocks)
        if consume:
            self.forget()  # the blocks are now *blocks*' alone
        # where each object is: its chunk's slot (-1: read it alone) and offset
        index = np.int32 if len(slots) < 2**31 else np.int64
        slot = np.full(len(addresses), -1, index)
        offset = np.zeros(len(addresses), np.uint16)
        step = 1 << 14  # bounded temporaries, however many objects
        low_bits = 0  # of any address: how wide a unit each copy can take
        for lo in range(0, len(addresses), step):
            addr = addresses[lo:lo + step].astype(np.uint64) + np.uint64(at)
            low_bits |= int(np.bitwise_or.reduce(addr & np.uint64(7))) if len(addr) else 0
            base = addr & np.uint64(~(CHUNK - 1) & (2**64 - 1))
            off = (addr - base).astype(np.int64)
            if len(bases):
                pos = np.minimum(np.searchsorted(bases, base), len(bases) - 1)
                kept = (bases[pos] == base) & (off + dtype.itemsize <= CHUNK)
                slot[lo:lo + step] = np.where(kept, slots[pos], -1)
            offset[lo:lo + step] = off
        size = dtype.itemsize
        # copy in the widest unit that every object's size and place allow
        unit = next(u for u in (8, 4, 1) if size % u == 0 and low_bits % u == 0)
        utype = {8: np.uint64, 4: np.uint32, 1: np.uint8}[unit]
        raw = out.view(utype).reshape(len(addresses), size // unit)
        block = np.where(slot >= 0, slot // _BLOCK, len(blocks)).astype(index)
        rows = np.argsort(block, kind="stable").astype(index)
        bounds = np.searchsorted(block[rows], np.arange(len(blocks) + 1))
        del block
        for b in range(len(blocks)):  # each block's objects, then the block is done
            flat = blocks[b].view(utype)
            for lo in range(bounds[b], bounds[b + 1], step):
                these = rows[lo:min(lo + step, bounds[b + 1])]
                start = ((slot[these] % _BLOCK).astype(np.int64) * CHUNK + offset[these]) // unit
                for k in range(size // unit):
                    raw[these, k] = flat[start + k]
            if consume:
                blocks[b] = flat = None
        raw = out.view(np.uint8).reshape(len(addresses), size)
        for row in rows[bounds[-1]:]:  # across a chunk's end, or in a chunk not whole
            try:
                raw[row] = np.frombuffer(self._read(int(addresses[row]) + at, size), np.uint8)
            except Exception:
                pass  # walked, so readable; a moving live kernel may differ: zeros
        return out
