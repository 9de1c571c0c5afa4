"""Damaged copies of real dumps: the same vmcore with bytes changed at kernel
virtual addresses, placed through the dump's own address translation
(page tables -> physical address -> the ELF segment that holds it)."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import drgn
from drgn.helpers.linux.list import list_for_each_entry
from drgn.helpers.linux.mm import follow_phys, virt_to_pfn

from ksminspect.program import PT_LOAD, decompressed, elf_program_headers

if TYPE_CHECKING:
    import numpy as np


def file_offset(core: Path, paddr: int) -> int:
    """Where physical address *paddr* lies in the ELF core file."""
    for p_type, _, start, offset, size in elf_program_headers(str(core)) or []:
        if p_type == PT_LOAD and start <= paddr < start + size:
            return offset + paddr - start
    raise ValueError(f"physical address {paddr:#x} is in no PT_LOAD segment")


def physical(prog: drgn.Program, address: int) -> int:
    return follow_phys(prog["init_mm"].address_of_(), address).value_()


class Physical(int):
    """A patch address that is physical already (a page table entry)."""


def damaged_copy(prog: drgn.Program, vmcore_xz: Path, out: Path,
                 patches: Iterable[tuple[int, bytes]]) -> Path:
    """A copy of the dump at *out* with each ``(kernel address, bytes)``
    written (a :class:`Physical` address as it is)."""
    core = Path(decompressed(str(vmcore_xz)))
    shutil.copyfile(core, out)
    with open(out, "r+b") as f:
        for address, data in patches:
            f.seek(file_offset(core, address if isinstance(address, Physical) else physical(prog, address)))
            f.write(data)
    return out


def word(value: int) -> bytes:
    return struct.pack("<Q", value & (2**64 - 1))


def u32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


# -- gaps: pages a kdump-compressed dump leaves out --------------------------
#
# A kdump-compressed file (makedumpfile's diskdump_mod.h): block 0 the
# disk_dump_header, then sub_hdr_size blocks of kdump_sub_header, then
# bitmap_blocks blocks of bitmaps: the 1st half marks the pages that exist,
# the 2nd (the dump bitmap) those the file holds, a bit per pfn, lowest bit
# first. Then the page_desc table, one 24-byte descriptor per set bit of the
# dump bitmap in pfn order (a reader finds a pfn's descriptor by counting
# the set bits before it), then the page data the descriptors point at.

# page_desc: off_t offset, unsigned int size, unsigned int flags,
# unsigned long long page_flags (the same on 32- and 64-bit kernels)
PAGE_DESC_SIZE = 24
STABLE_FLAG = 0x200  # mm/ksm.c: rmap_item->address of an item on a stable node
# utsname.machine of the big-endian and of the 32-bit kernels
_BIG_ENDIAN = ("s390x", "ppc64")
_WORD_4 = ("i386", "i486", "i586", "i686", "arm", "armv7l", "ppc", "s390")


class KdumpLayout(NamedTuple):
    """Where a kdump-compressed file keeps its dump bitmap and page_desc table."""

    block_size: int  # the page size
    dump_bitmap: int  # file offset of the 2nd bitmap
    bitmap_size: int  # its size in bytes
    descs: int  # file offset of the page_desc table


def kdump_layout(path: Path) -> KdumpLayout:
    """The layout of the (not flattened) kdump-compressed file *path*."""
    from ksminspect import dumpfile

    header = dumpfile.kdump_header(str(path))
    if header is None or dumpfile.kind(str(path)) != "kdump":
        raise ValueError(f"{path} is not a kdump-compressed file (flattened ones: reassemble first)")
    word = 4 if header.machine in _WORD_4 else 8
    order = ">" if header.machine in _BIG_ENDIAN else "<"
    # signature[8], int header_version, new_utsname (6 x 65), struct timeval
    # (two longs, long-aligned), then unsigned int status, int block_size,
    # int sub_hdr_size, unsigned int bitmap_blocks
    at = -(-(12 + 6 * 65) // word) * word + 2 * word
    with open(path, "rb") as f:
        f.seek(at)
        _, block_size, sub_hdr_size, bitmap_blocks = struct.unpack(order + "IiiI", f.read(16))
    half = bitmap_blocks * block_size // 2
    bitmaps = block_size * (1 + sub_hdr_size)
    return KdumpLayout(block_size, bitmaps + half, half, bitmaps + 2 * half)


def dumped_pfns(path: Path) -> np.ndarray:
    """The pfns the kdump-compressed file *path* holds (its dump bitmap's
    set bits), in order: the i-th has the i-th page_desc."""
    import numpy as np

    lay = kdump_layout(path)
    with open(path, "rb") as f:
        f.seek(lay.dump_bitmap)
        bitmap = np.frombuffer(f.read(lay.bitmap_size), dtype=np.uint8)
    return np.flatnonzero(np.unpackbits(bitmap, bitorder="little"))


def excluded_copy(src_kdump: Path, out: Path, pfns: Iterable[int]) -> Path:
    """A copy at *out* of the kdump-compressed dump *src_kdump* (.xz and the
    like, and flattened files, are fine) that leaves out the pages *pfns*,
    as a makedumpfile that misreads the kernel's page flags leaves pages
    out: each one's bit cleared in the dump bitmap and its page_desc taken
    out of the table, the later ones moved up by one so that every other
    page still finds its own (their data stays where it is; the table keeps
    its place, zeros after its new end). Each pfn must be in the dump."""
    import numpy as np

    from ksminspect import dumpfile

    src = Path(decompressed(str(src_kdump)))
    if dumpfile.kind(str(src)) == "flattened":
        dumpfile.reassemble(str(src), str(out))  # what makedumpfile -R does
    else:
        shutil.copyfile(src, out)
    lay = kdump_layout(out)
    dumped = dumped_pfns(out)
    gone = sorted({int(p) for p in pfns})
    rows = np.searchsorted(dumped, gone)
    missing = [p for p, r in zip(gone, rows) if r >= len(dumped) or dumped[r] != p]
    if missing:
        raise ValueError(f"{src_kdump} does not hold pfn {', '.join(f'{p:#x}' for p in missing)}")
    with open(out, "r+b") as f:
        f.seek(lay.dump_bitmap)
        bitmap = bytearray(f.read(lay.bitmap_size))
        for p in gone:
            bitmap[p >> 3] &= ~(1 << (p & 7)) & 0xFF
        f.seek(lay.dump_bitmap)
        f.write(bitmap)
        f.seek(lay.descs)
        table = np.frombuffer(f.read(len(dumped) * PAGE_DESC_SIZE), dtype=np.uint8)
        table = np.delete(table.reshape(-1, PAGE_DESC_SIZE), rows, axis=0)
        f.seek(lay.descs)
        f.write(table.tobytes() + bytes(len(gone) * PAGE_DESC_SIZE))
    return out


def _mm_slots(prog: drgn.Program) -> Iterator[drgn.Object]:
    """The mm slots on ksm_mm_head (struct mm_slot before v6.4, then struct
    ksm_mm_slot around the generic struct mm_slot)."""
    head = prog["ksm_mm_head"]
    try:
        head.member_("slot")
        member = "slot.mm_node"
    except LookupError:
        member = "mm_list"
    return list_for_each_entry(head.type_, head.subobject_(member).address_of_(), member)


def _rmap_items(slot: drgn.Object) -> Iterator[drgn.Object]:
    item = slot.rmap_list.read_()
    while item:
        yield item
        item = item.rmap_list.read_()


def stable_node_pages(prog: drgn.Program, limit: int = 2) -> list[int]:
    """Up to *limit* pfns of pages (direct map) that hold the stable nodes
    STABLE rmap_items point at (``rmap_item->head``) but hold no rmap_item
    and no mm slot: what a dump may lack while the items that point into
    it stay. Those pointed at by the most items come first."""
    from collections import Counter

    busy: set[int] = set()  # pages holding items or slots
    heads: Counter[int] = Counter()  # node page -> STABLE items pointing into it
    straddling: set[int] = set()
    for slot in _mm_slots(prog):
        size = slot.type_.type.size
        busy.update((virt_to_pfn(prog, slot.value_()).value_(),
                     virt_to_pfn(prog, slot.value_() + size - 1).value_()))
        for item in _rmap_items(slot):
            at, size = item.value_(), item.type_.type.size
            busy.update((virt_to_pfn(prog, at).value_(), virt_to_pfn(prog, at + size - 1).value_()))
            if item.address.value_() & STABLE_FLAG:
                node, node_size = item.head.value_(), item.head.type_.type.size
                first = virt_to_pfn(prog, node).value_()
                if first != virt_to_pfn(prog, node + node_size - 1).value_():
                    straddling.add(first)
                heads[first] += 1
    return [pfn for pfn, _ in heads.most_common() if pfn not in busy | straddling][:limit]

