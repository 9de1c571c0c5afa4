"""Kernel memory read by one session, kept in chunks that many objects share.

KSM's objects sit many to a slab page, so memory is read a CHUNK at a time
and kept in large numpy blocks: a walk follows pointers through the chunks
one word at a time (:meth:`KeptMemory.words`), and the fields of a million
objects are then gathered from the same blocks at once
(:meth:`KeptMemory.gather`), without a Python object per field.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from functools import lru_cache
from typing import Any, Callable, Literal, Optional

import numpy as np

CHUNK = 4096  # bytes read at a time and kept
_BLOCK = 2048  # chunks per kept block (8 MB)
READAHEAD = 16  # chunks read at once where they follow a kept one


class KeptMemory:
    """The chunks of kernel memory a session has read."""

    def __init__(self, read: Callable[[int, int], bytes], word_size: int, little_endian: bool):
        self._read = read
        self.word_size = word_size
        self._word_code: Literal["Q", "I"] = "Q" if word_size == 8 else "I"
        # Words are read through native memoryview casts where the target's
        # byte order is the host's (every target seen); else not at all.
        self.little_endian = little_endian
        self.native = little_endian == (sys.byteorder == "little")
        self._slot: dict[int, int] = {}  # chunk base -> slot (block * _BLOCK + index)
        self._unreadable: set[int] = set()  # chunk bases not wholly in the target
        # Blocks are anonymous maps, so that a gather can give each chunk's
        # pages back as soon as its objects are copied out.
        self._maps: list[mmap.mmap] = []
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
        bytes_read = np.frombuffer(data, np.uint8, span * CHUNK)
        k = 0
        while k < span:  # each run of chunks not yet kept, copied at once
            if base + k * CHUNK in self._slot:
                k += 1
                continue
            n = 1
            while k + n < span and base + (k + n) * CHUNK not in self._slot:
                n += 1
            self._store(base + k * CHUNK, bytes_read[k * CHUNK:(k + n) * CHUNK])
            k += n
        return self._slot[base]

    def _store(self, base: int, data: np.ndarray) -> None:
        """Keep the chunks from *base* on whose bytes are *data*, in the
        next free slots."""
        count, done = len(data) // CHUNK, 0
        while done < count:
            slot = len(self._slot)
            block, index = divmod(slot, _BLOCK)
            if block == len(self._blocks):
                self._maps.append(mmap.mmap(-1, _BLOCK * CHUNK))
                self._blocks.append(np.frombuffer(self._maps[-1], np.uint8))
                # numpy's stubs give ndarray __buffer__ only on Python >= 3.12
                view = memoryview(self._blocks[-1])  # type: ignore[arg-type]
                self._bytes.append(view)
                self._words.append(view.cast(self._word_code))
            n = min(count - done, _BLOCK - index)  # as many as the block has room for
            self._blocks[block][index * CHUNK:(index + n) * CHUNK] = data[done * CHUNK:(done + n) * CHUNK]
            words = self._words[block]
            for k in range(n):
                at = base + (done + k) * CHUNK
                self._slot[at] = slot + k
                if self.native:
                    self.word_chunks[at] = (words, (index + k) * (CHUNK // self.word_size))
            done += n

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

    def keep(self, addresses: np.ndarray) -> np.ndarray:
        """Read and keep the chunks holding *addresses*, each once: whether
        each address's chunk could be read whole."""
        bases = addresses & np.uint64(~(CHUNK - 1) & (2**64 - 1))
        unique, where = np.unique(bases, return_inverse=True)
        readable = np.array([self._load(b) is not None for b in unique.tolist()], bool)
        return readable[where] if len(unique) else np.zeros(len(addresses), bool)

    def words_at(self, addresses: np.ndarray) -> np.ndarray:
        """The word at each of *addresses*, aligned and in kept chunks
        (:meth:`keep`), as uint64."""
        order = "<" if self.little_endian else ">"
        dtype = np.dtype({"names": ["word"], "formats": [f"{order}u{self.word_size}"], "offsets": [0],
                          "itemsize": self.word_size})
        return self.gather(addresses, dtype)["word"].astype(np.uint64)

    def forget(self) -> None:
        """Drop every kept chunk (what was gathered is copied out): memory
        read again later is read afresh."""
        self._slot.clear()
        self._unreadable.clear()
        self.word_chunks.clear()
        self._maps, self._blocks, self._bytes, self._words = [], [], [], []

    def read_words(self, addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(word at each address, whether it could be read)``: the chunks
        are read once each, however many of the addresses they hold, and
        not kept (a struct page each, say: no walk comes back to them)."""
        ok = (addresses % np.uint64(self.word_size)) == 0
        base = addresses & np.uint64(~(CHUNK - 1) & (2**64 - 1))
        bases = np.unique(base[ok])
        order = "<" if self.little_endian else ">"
        dtype = np.dtype({"names": ["word"], "formats": [f"{order}u{self.word_size}"], "offsets": [0],
                          "itemsize": self.word_size})
        words = np.zeros(len(addresses), np.uint64)
        in_kept = np.zeros(len(addresses), bool)
        for lo in range(0, len(bases), _BLOCK):  # a block of chunks at a time
            scratch = KeptMemory(self._read, self.word_size, self.little_endian)
            for b in bases[lo:lo + _BLOCK].tolist():
                scratch._load(b)
            here = ok & np.isin(base, np.array(sorted(scratch._slot), np.uint64))
            words[here] = scratch.gather(addresses[here], dtype, consume=True)["word"]
            in_kept |= here
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
        kept chunk is forgotten, and its pages given back as soon as its
        objects are copied out."""
        out = np.zeros(len(addresses), dtype)  # pages of zeros cost nothing until written
        bases = np.fromiter(self._slot.keys(), np.uint64, len(self._slot))
        slots = np.fromiter(self._slot.values(), np.int64, len(self._slot))
        order = np.argsort(bases)
        bases, slots = bases[order], slots[order]
        blocks, maps = list(self._blocks), list(self._maps)
        if consume:
            self.forget()  # the blocks are now *blocks*' alone
        # where each object is: its chunk's slot (-1: read it alone) and offset
        index = np.int32 if len(slots) < 2**31 else np.int64
        slot: np.ndarray = np.full(len(addresses), -1, index)
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
        units = np.arange(size // unit)  # an object's units, from its first
        flats = [b.view(utype) for b in blocks]
        # With consume, a chunk's pages are given back once its last object is
        # copied: where the walk met objects in address order (as a slab fills)
        # the chunks and the rows are never both held whole.
        left = np.bincount(slot[slot >= 0], minlength=len(slots)) if consume else None
        done = np.zeros(len(slots), bool)
        alone = []
        for lo in range(0, len(addresses), step):
            rows = np.arange(lo, min(lo + step, len(addresses)))
            here = slot[lo:lo + step]
            alone.append(rows[here < 0])
            rows, here = rows[here >= 0], here[here >= 0]
            block = here // _BLOCK
            by_block = np.argsort(block, kind="stable")
            rows, here, block = rows[by_block], here[by_block], block[by_block]
            bounds = np.searchsorted(block, np.arange(len(blocks) + 1))
            for b in np.nonzero(np.diff(bounds))[0].tolist():
                these = rows[bounds[b]:bounds[b + 1]]
                start = ((here[bounds[b]:bounds[b + 1]] % _BLOCK).astype(np.int64) * CHUNK
                         + offset[these]) // unit
                raw[these] = flats[b][start[:, None] + units]
            if left is not None:
                left -= np.bincount(here, minlength=len(slots))
                free = np.nonzero((left == 0) & ~done)[0]
                done[free] = True
                _give_back(maps, free)
        del flats, blocks, maps
        rows = np.concatenate(alone) if alone else np.zeros(0, np.int64)
        raw = out.view(np.uint8).reshape(len(addresses), size)
        for row in rows:  # across a chunk's end, or in a chunk not whole
            try:
                raw[row] = np.frombuffer(self._read(int(addresses[row]) + at, size), np.uint8)
            except Exception:
                pass  # walked, so readable; a moving live kernel may differ: zeros
        return out


def _give_back(maps: list[mmap.mmap], slots: np.ndarray) -> None:
    """Give the pages of the chunks in *slots* (ascending) back to the system."""
    if not len(slots) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    # runs of consecutive slots in one block, each given back at once
    breaks = np.nonzero((np.diff(slots) != 1) | (np.diff(slots // _BLOCK) != 0))[0] + 1
    for run in np.split(slots, breaks):
        block, first = divmod(int(run[0]), _BLOCK)
        start = -(-first * CHUNK // mmap.PAGESIZE) * mmap.PAGESIZE  # whole host pages only
        stop = (first + len(run)) * CHUNK // mmap.PAGESIZE * mmap.PAGESIZE
        if start < stop:
            maps[block].madvise(mmap.MADV_DONTNEED, start, stop - start)


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's
    malloc_trim). numpy's temporaries of a million rows come from the heap
    once drgn's loading of debug info has raised glibc's mmap threshold, and
    the heap keeps what they freed: a collection step ends with this."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@lru_cache(maxsize=None)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
