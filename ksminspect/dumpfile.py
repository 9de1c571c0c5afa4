"""What kind of file a dump is, from its own header: ELF, kdump-compressed
(makedumpfile, QEMU's ``dump-guest-memory`` kdump formats) or makedumpfile's
flattened format; and what a kdump-compressed header tells that drgn's
readers may not (the architecture, the compression, the dump level).

Formats: makedumpfile's IMPLEMENTATION and diskdump_mod.h (the header and
sub-header below are unchanged since makedumpfile 1.3); QEMU's dump.c.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Iterator, NamedTuple, Optional

import drgn

from ksminspect.errors import TargetError

ELF_MAGIC = b"\x7fELF"
KDUMP_SIGNATURES = (b"KDUMP   ", b"DISKDUMP")
# The flattened format (makedumpfile -F, and QEMU's kdump-* output): a 4 KB
# header, then (offset, size, data) records, big-endian, offset -1 at the end.
FLAT_SIGNATURE = b"makedumpfile\0"
FLAT_HEADER_SIZE = 4096
_FLAT_RECORD = struct.Struct(">qq")

# disk_dump_header.status: how the pages are compressed
_COMPRESSION = ((0x1, "zlib"), (0x2, "lzo"), (0x4, "snappy"), (0x20, "zstd"))
# new_utsname's fields are 65 bytes; machine is the fifth, after the
# 8-byte signature and the int header_version
_UTS_LEN = 65
_MACHINE_AT = 12 + 4 * _UTS_LEN
_RELEASE_AT = 12 + 2 * _UTS_LEN

# utsname.machine -> drgn's name for it, word size and byte order
_MACHINES = {
    "x86_64": ("X86_64", 8, "little"),
    "i386": ("I386", 4, "little"), "i486": ("I386", 4, "little"),
    "i586": ("I386", 4, "little"), "i686": ("I386", 4, "little"),
    "aarch64": ("AARCH64", 8, "little"),
    "arm64": ("AARCH64", 8, "little"),
    "ppc64le": ("PPC64", 8, "little"), "ppc64": ("PPC64", 8, "big"),
    "s390x": ("S390X", 8, "big"),
    "riscv64": ("RISCV64", 8, "little"),
}


class KdumpHeader(NamedTuple):
    """What a kdump-compressed file's header says about the dump."""

    machine: str  # utsname.machine: "x86_64", ...
    release: str  # utsname.release ("" where QEMU wrote it)
    compression: Optional[str]  # "zlib", "lzo", "snappy", "zstd"; None: pages stored whole
    dump_level: Optional[int]  # makedumpfile -d: the page kinds left out (None: not said)


# makedumpfile -d: a bit per kind of page left out
DUMP_LEVEL_BITS = ((1, "zero pages"), (2, "cache pages"), (4, "private cache pages"),
                   (8, "user pages"), (16, "free pages"))


def describe(path: str) -> dict[str, object]:
    """What a dump file is, for people and scripts: ``format`` ("elf",
    "kdump" or "unknown"), ``flattened``, ``compression``, ``dump_level``
    and ``left_out`` (the kinds of page the dump level leaves out)."""
    k = kind(path)
    header = kdump_header(path) if k in ("kdump", "flattened") else None
    level = header.dump_level if header else None
    return {
        "format": "kdump" if header else k,
        "flattened": k == "flattened",
        "compression": header.compression if header else None,
        "dump_level": level,
        "left_out": [name for bit, name in DUMP_LEVEL_BITS if level and level & bit],
    }


def kind(path: str) -> str:
    """``"elf"``, ``"kdump"``, ``"flattened"`` or ``"unknown"``."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return "unknown"
    if head.startswith(ELF_MAGIC):
        return "elf"
    if head.startswith(KDUMP_SIGNATURES):
        return "kdump"
    if head.startswith(FLAT_SIGNATURE):
        return "flattened"
    return "unknown"


def _read_at(path: str, offset: int, size: int) -> bytes:
    """*size* bytes at *offset* of the kdump-compressed file *path* holds,
    flattened or not (the header's records come first in a flattened file)."""
    with open(path, "rb") as f:
        if f.read(len(FLAT_SIGNATURE)) != FLAT_SIGNATURE:
            f.seek(offset)
            return f.read(size)
        f.seek(FLAT_HEADER_SIZE)
        for _ in range(64):
            record = f.read(_FLAT_RECORD.size)
            if len(record) < _FLAT_RECORD.size:
                break
            at, length = _FLAT_RECORD.unpack(record)
            if at < 0 or length < 0:
                break
            if at <= offset < at + length:
                f.seek(offset - at, os.SEEK_CUR)
                return f.read(min(size, at + length - offset))
            f.seek(length, os.SEEK_CUR)
    return b""


def _status_at(word: int) -> int:
    """Where disk_dump_header.status is: after utsname, a struct timeval (two
    longs, aligned to a long); int block_size, sub_hdr_size, bitmap_blocks follow."""
    return -(-(_MACHINE_AT + 2 * _UTS_LEN) // word) * word + 2 * word


def kdump_header(path: str) -> Optional[KdumpHeader]:
    """The header of a kdump-compressed file, flattened or not; None for
    other files."""
    head = _read_at(path, 0, 4096)
    if not head.startswith(KDUMP_SIGNATURES) or len(head) < _MACHINE_AT + 2 * _UTS_LEN:
        return None

    def text(at: int) -> str:
        return head[at:at + _UTS_LEN].split(b"\0", 1)[0].decode(errors="replace")

    machine = text(_MACHINE_AT)
    word, order = _MACHINES.get(machine, ("", 8, "little"))[1:]
    little = order == "little"
    at = _status_at(word)
    status, block_size = struct.unpack_from(("<" if little else ">") + "ii", head, at) \
        if len(head) >= at + 8 else (0, 0)
    compression = next((name for bit, name in _COMPRESSION if status & bit), None)
    dump_level = None
    if 0 < block_size <= 1 << 20:
        # the kdump sub-header is the next block: unsigned long phys_base, int dump_level
        raw = _read_at(path, block_size + word, 4)
        if len(raw) == 4:
            dump_level = struct.unpack(("<" if little else ">") + "i", raw)[0]
            if not 0 <= dump_level <= 31:
                dump_level = None
    return KdumpHeader(machine, text(_RELEASE_AT), compression, dump_level)


def dump_platform(path: str) -> Optional[drgn.Platform]:
    """The platform a kdump-compressed *path* (flattened or not) names in its header, for
    ``drgn.Program(platform)``: libkdumpfile cannot always name it itself
    (QEMU's files: "KDUMP_ATTR_ARCH_NAME: Key has no value"). None for other
    files, and where drgn does not know the architecture."""
    header = kdump_header(path) if kind(path) in ("kdump", "flattened") else None
    return platform(header) if header else None


def platform(header: KdumpHeader) -> Optional[drgn.Platform]:
    """The drgn Platform that *header* names, where drgn knows it."""
    known = _MACHINES.get(header.machine)
    arch = getattr(drgn.Architecture, known[0], None) if known else None
    if known is None or arch is None:
        return None
    flags = drgn.PlatformFlags(0)
    if known[1] == 8:
        flags |= drgn.PlatformFlags.IS_64_BIT
    if known[2] == "little":
        flags |= drgn.PlatformFlags.IS_LITTLE_ENDIAN
    return drgn.Platform(arch, flags)


def reassemble(path: str, out: str) -> None:
    """Write the kdump-compressed file that the flattened *path* holds to
    *out*, as ``makedumpfile -R out < path`` would."""
    with open(path, "rb") as f, open(out, "wb") as o:
        if f.read(FLAT_HEADER_SIZE)[:len(FLAT_SIGNATURE)] != FLAT_SIGNATURE:
            raise TargetError(f"{path} is not in makedumpfile's flattened format")
        while True:
            record = f.read(_FLAT_RECORD.size)
            if len(record) < _FLAT_RECORD.size:
                raise TargetError(f"{path} ends before its end marker (a flattened dump cut short)")
            offset, size = _FLAT_RECORD.unpack(record)
            if offset == -1:
                return
            if offset < 0 or size < 0:
                raise TargetError(f"{path}: a flattened record at {f.tell() - _FLAT_RECORD.size:#x} "
                                  f"says offset {offset}, size {size}: the file is damaged")
            while size:
                data = f.read(min(size, 1 << 20))
                if not data:
                    raise TargetError(f"{path} ends inside a flattened record (a dump cut short)")
                os.pwrite(o.fileno(), data, offset)
                offset += len(data)
                size -= len(data)


def kdump_pages(path: str) -> Iterator[tuple[int, bytes]]:
    """``(physical address, contents)`` of each page a kdump-compressed file
    (not flattened) holds, in address order: what a scan of a dump's memory
    needs where drgn cannot open the file (no VMCOREINFO in it). Pages
    compressed with what Python cannot decompress here (lzo, snappy) are
    left out; a page stored once for many (zero pages) is given once."""
    header = kdump_header(path)
    if header is None:
        return
    word, order = _MACHINES.get(header.machine, ("", 8, "little"))[1:]
    e = "<" if order == "little" else ">"
    with open(path, "rb") as f:
        head = f.read(4096)
        at = _status_at(word)
        status, block_size, sub_hdr_size, bitmap_blocks = struct.unpack_from(e + "iiiI", head, at)
        if block_size <= 0 or sub_hdr_size < 0:
            return
        # the second bitmap (its second half) marks the pages that were dumped
        f.seek(block_size * (1 + sub_hdr_size) + bitmap_blocks * block_size // 2)
        bitmap = f.read(bitmap_blocks * block_size // 2)
        descs = block_size * (1 + sub_hdr_size + bitmap_blocks)
        desc = struct.Struct(e + "qIIQ")  # page_desc: offset, size, flags, page_flags
        decompress = {0x1: zlib.decompress, 0x20: _zstd()}
        seen: set[int] = set()
        index = 0
        for byte_at, byte in enumerate(bitmap):
            for bit in range(8):
                if not byte >> bit & 1:
                    continue
                f.seek(descs + index * desc.size)
                index += 1
                offset, size, flags, _ = desc.unpack(f.read(desc.size))
                if offset in seen or size <= 0 or size > block_size:
                    continue
                seen.add(offset)
                f.seek(offset)
                data = f.read(size)
                if flags & 0x27:
                    unpack = decompress.get(flags & 0x27)
                    if unpack is None:
                        continue
                    try:
                        data = unpack(data)
                    except Exception:  # a damaged page: not this scan's business
                        continue
                yield (byte_at * 8 + bit) * block_size, data


def _zstd():
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        return None
    return zstandard.ZstdDecompressor().decompress
