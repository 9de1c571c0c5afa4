"""Damaged copies of real dumps: the same vmcore with bytes changed at kernel
virtual addresses, placed through the dump's own address translation
(page tables -> physical address -> the ELF segment that holds it)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Iterable

import drgn
from drgn.helpers.linux.mm import follow_phys

from ksminspect.program import PT_LOAD, decompressed, elf_program_headers


def file_offset(core: Path, paddr: int) -> int:
    """Where physical address *paddr* lies in the ELF core file."""
    for p_type, _, start, offset, size in elf_program_headers(str(core)) or []:
        if p_type == PT_LOAD and start <= paddr < start + size:
            return offset + paddr - start
    raise ValueError(f"physical address {paddr:#x} is in no PT_LOAD segment")


def physical(prog: drgn.Program, address: int) -> int:
    return follow_phys(prog["init_mm"].address_of_(), address).value_()


def damaged_copy(prog: drgn.Program, vmcore_xz: Path, out: Path,
                 patches: Iterable[tuple[int, bytes]]) -> Path:
    """A copy of the dump at *out* with each ``(kernel address, bytes)`` written."""
    core = Path(decompressed(str(vmcore_xz)))
    shutil.copyfile(core, out)
    with open(out, "r+b") as f:
        for address, data in patches:
            f.seek(file_offset(core, physical(prog, address)))
            f.write(data)
    return out


def word(value: int) -> bytes:
    return struct.pack("<Q", value & (2**64 - 1))


def u32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)
