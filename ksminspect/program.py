"""Opening the target: a live kernel through /proc/kcore or a vmcore, with its
debug info. Compressed dumps and debug files are decompressed once into a
cache directory."""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Sequence

import drgn

from ksminspect import dumpfile
from ksminspect.cache import cache_dir, cache_key, cached_copy, reading
from ksminspect.errors import TargetError

COMPRESSED_SUFFIXES = (".zst", ".xz", ".gz")


def _decompress_to(src: str, dst: str) -> None:
    if src.endswith(".zst"):
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            zstandard = None
        if zstandard is not None:
            with reading(src) as fi, open(dst, "wb") as fo:
                zstandard.ZstdDecompressor().copy_stream(fi, fo)
            return
        if shutil.which("zstd") is None:
            raise TargetError(f"{src} is zstd-compressed; install zstd (Debian: apt install zstd) "
                              f"or the Python package zstandard, or decompress it yourself")
        # zstd shows its own progress on a terminal
        tty = sys.stderr.isatty()
        res = subprocess.run(["zstd"] + ([] if tty else ["-q"]) + ["-d", "-f", "-o", dst, src],
                             stderr=None if tty else subprocess.PIPE, text=True)
        if res.returncode:
            raise TargetError(f"{src} could not be decompressed: "
                              f"{(res.stderr or '').strip() or 'zstd failed'}")
        return
    opener = lzma.open if src.endswith(".xz") else gzip.open
    try:
        with reading(src) as raw, opener(raw, "rb") as fi, open(dst, "wb") as fo:
            shutil.copyfileobj(fi, fo, 1 << 20)
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise TargetError(f"{src} could not be decompressed: {e}") from None


def decompressed(path: str) -> str:
    """*path* itself, or its decompressed copy in the cache if it ends in
    .zst, .xz or .gz. The copy is keyed by path, size and mtime."""
    if not path.endswith(COMPRESSED_SUFFIXES):
        return path
    return cached_copy(path, os.path.basename(path).rsplit(".", 1)[0], _decompress_to, "decompressing")


PT_LOAD = 1


class ProgramHeader(NamedTuple):
    type: int  # p_type
    vaddr: int  # p_vaddr: 0 in a dump of physical memory only
    paddr: int  # p_paddr
    offset: int  # p_offset
    filesz: int  # p_filesz


# ELF class -> (e_phoff format and offset, e_phentsize offset, one program
# header's format with its fields in ProgramHeader's order).
_PHDR = {
    1: ("I", 0x1C, 0x2A, "I4xIIII"),  # Elf32_Phdr: type, offset, vaddr, paddr, filesz
    2: ("Q", 0x20, 0x36, "I4xQQQQ"),  # Elf64_Phdr: type, flags, offset, vaddr, paddr, filesz
}


def elf_program_headers(path: str) -> Optional[list[ProgramHeader]]:
    """The program headers of an ELF core (ELF32 or ELF64); None if it is not
    ELF. Raises EOFError if the file ends inside its headers."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in _PHDR:
            return None
        word, phoff_at, phentsize_at, phdr = _PHDR[head[4]]
        end = "<" if head[5] == 1 else ">"
        phoff, = struct.unpack_from(end + word, head, phoff_at)
        phentsize, phnum = struct.unpack_from(end + "HH", head, phentsize_at)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    if len(table) < phentsize * phnum:
        raise EOFError("the file ends inside its program headers")
    out = []
    for i in range(phnum):
        p_type, offset, vaddr, paddr, filesz = struct.unpack_from(end + phdr, table, i * phentsize)
        out.append(ProgramHeader(p_type, vaddr, paddr, offset, filesz))
    return out


def truncation(path: str) -> Optional[str]:
    """Why an ELF core is shorter than its program headers say, or None."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "it is empty"
        if size < 64:
            return f"it has only {size} bytes"
        headers = elf_program_headers(path)
    except EOFError:
        return f"it is truncated inside its program headers ({size} bytes)"
    except OSError:
        return None
    if headers is None:
        return None
    need = max((h.offset + h.filesz for h in headers), default=0)
    if need > size:
        return f"it is truncated: {size} bytes of the {need} its program headers describe"
    return None


def open_program(core: Optional[str] = None, symbols: Iterable[str] = ()) -> drgn.Program:
    """A :class:`drgn.Program` for the vmcore *core* (compressed is fine), or
    for the running kernel when *core* is None, with debug info loaded from
    *symbols* or by drgn's default search."""
    given = list(symbols)
    files = [decompressed(s) for s in given]
    if core is None:
        prog = drgn.Program()
        _open_live(prog)
        detail = _load_debug_info(prog, files)
    else:
        path = decompressed(core)
        described = dumpfile.describe(path)
        if described["flattened"]:  # makedumpfile -F, QEMU's kdump-*: as -R makes it
            path = cached_copy(path, os.path.basename(path) + ".kdump", dumpfile.reassemble,
                               "reassembling (makedumpfile -R)")
        cut = truncation(path)
        info: Optional[bytes] = None  # VMCOREINFO taken from the dump's memory
        try:
            prog = _open_core(path)
        except Exception as e:  # drgn reports libelf errors as plain Exception
            info = None if cut else vmcoreinfo_in_memory(path, [b for b in map(elf_build_id, files) if b])
            opened = _open_core(path, info) if info else None
            if opened is None:
                raise TargetError(f"{core} cannot be read as a kernel core dump: "
                                  f"{cut or e}") from None
            prog = opened
        detail = _load_debug_info(prog, files)
        fixed = _with_kernel_offset(prog, info or elf_vmcoreinfo_note(path))
        reopened = _open_core(path, fixed) if fixed else None
        if reopened is not None:  # x86-32: again, with the KASLR offset drgn lacked
            prog = reopened
            detail = _load_debug_info(prog, files)
        if info:
            prog.cache["ksminspect_vmcoreinfo_note"] = (
                f"{core} has no VMCOREINFO note (a QEMU dump without -device vmcoreinfo, or "
                f"whose guest had not loaded qemu_fw_cfg); using the copy in its memory")
        if cut:
            prog.cache["ksminspect_truncated"] = f"{core}: {cut}"
        prog.cache["ksminspect_dump"] = described
    if not _has_kernel_types(prog):
        raise TargetError(_missing_debug_info_message(prog, dict(zip(given, files)), detail))
    if core is not None and not cut:
        _check_translation(prog, core, path)
    return prog


def _check_translation(prog: drgn.Program, core: str, path: str) -> None:
    """Refuse, saying how to take a readable one, a dump that holds physical
    memory only (QEMU's dump-guest-memory without paging writes each segment
    at its physical address) of a kernel whose virtual addresses drgn cannot
    translate (no page-table walker for the architecture, e.g. i386)."""
    try:
        headers = elf_program_headers(path)
        address = prog.symbol("init_uts_ns").address
    except (OSError, EOFError, LookupError):
        return
    loads = [h for h in headers or [] if h.type == PT_LOAD]
    if not loads or any(h.vaddr not in (0, h.paddr) for h in loads):
        return  # a dump with virtual addresses, or not ELF
    try:
        prog.read(address, 1)
        return
    except drgn.FaultError:
        pass
    from drgn.helpers.linux.mm import follow_phys

    try:  # an mm made up of a null pgd: asks drgn for a walker, reads nothing first
        follow_phys(drgn.Object(prog, "struct mm_struct", value={"pgd": 0}), address)
    except NotImplementedError:
        arch = prog.platform.arch.name.lower() if prog.platform else "this architecture"
        raise TargetError(
            f"{core} holds physical memory only, and drgn cannot translate this kernel's virtual "
            f"addresses on {arch}: take the dump with the guest's page tables applied (QMP "
            f"dump-guest-memory with \"paging\": true, or HMP dump-guest-memory -p FILE; for "
            f"libvirt: virsh qemu-monitor-command DOMAIN --hmp 'dump-guest-memory -p FILE'), "
            f"or a kdump capture") from None
    except Exception:  # drgn has a walker (FaultError at pgd 0, most likely):
        pass  # the memory is missing for another reason, said where it is read


def check_kernel_addresses(prog: drgn.Program) -> None:
    """Refuse a program that reads the kernel's variables at the wrong
    addresses: the release in init_uts_ns must be the one VMCOREINFO names.
    drgn alone opens an x86-32 dump that way (KASLR moved the kernel, and the
    VMCOREINFO of x86-32 has no KERNELOFFSET); :func:`open_program` does not.
    Checked once per program."""
    if prog.cache.get("ksminspect_addresses_checked"):
        return
    try:
        expected = prog["UTS_RELEASE"].string_()  # drgn has it from VMCOREINFO
        found = prog["init_uts_ns"].name.release.string_()
    except (KeyError, LookupError, drgn.ObjectAbsentError):
        found = expected = b""  # nothing to compare: trust it
    except drgn.FaultError:
        found = None
    if found != expected:
        raise TargetError(
            f"this program reads the kernel's variables at the wrong addresses: init_uts_ns does "
            f"not hold the release {expected.decode(errors='replace')} that VMCOREINFO names, so "
            f"drgn did not learn where KASLR placed the kernel. x86-32 writes no KERNELOFFSET: "
            f"open such a dump with ksminspect -c, or in Python with ksminspect.open_program(); "
            f"elsewhere a newer drgn may know the architecture's way")
    prog.cache["ksminspect_addresses_checked"] = True


def _open_core(path: str, vmcoreinfo: Optional[bytes] = None) -> Optional[drgn.Program]:
    """*path* opened, with *vmcoreinfo* in place of whatever note it has;
    without one, failing as drgn fails."""
    platform = dumpfile.dump_platform(path)  # where libkdumpfile cannot name it
    prog = drgn.Program(platform, vmcoreinfo=vmcoreinfo) if vmcoreinfo else drgn.Program(platform)
    try:
        prog.set_core_dump(path)
    except Exception:
        if vmcoreinfo is None:
            raise
        return None
    return prog


def _load_debug_info(prog: drgn.Program, files: list[str]) -> str:
    """Load *files*, or drgn's default debug info; what drgn said was missing."""
    try:
        if files:
            prog.load_debug_info(files, main=True)
        else:
            prog.load_default_debug_info()
    except drgn.MissingDebugInfoError as e:
        return str(e)
    return ""


def _with_kernel_offset(prog: drgn.Program, info: Optional[bytes]) -> Optional[bytes]:
    """*info* (VMCOREINFO) with the KASLR offset added, where the kernel
    moved itself but wrote no KERNELOFFSET line (x86-32's
    arch_crash_save_vmcoreinfo() has none), so drgn would read every
    variable at its link-time address; None where nothing is missing. The
    offset is how far SYMBOL(_stext) lies from the debug info's _stext."""
    if not info or b"\nKERNELOFFSET=" in info:
        return None
    m = re.search(rb"\nSYMBOL\(_stext\)=([0-9a-fA-F]+)\n", info)
    if m is None:
        return None
    try:
        linked = prog.symbol("_stext").address
    except LookupError:
        return None
    offset = int(m.group(1), 16) - linked
    if offset <= 0:
        return None
    return info.rstrip(b"\0") + b"KERNELOFFSET=%x\n" % offset


PT_NOTE = 4


def elf_vmcoreinfo_note(path: str) -> Optional[bytes]:
    """The text of the VMCOREINFO note of an ELF core, or None."""
    try:
        headers = elf_program_headers(path) or []
        with open(path, "rb") as f:
            head = f.read(6)
            for h in headers:
                if h.type != PT_NOTE:
                    continue
                f.seek(h.offset)
                notes = f.read(min(h.filesz, 1 << 20))
                for name, _, desc in _elf_notes(notes, "<" if head[5:6] == b"\x01" else ">"):
                    if name == b"VMCOREINFO":
                        return desc
    except (OSError, EOFError, struct.error):
        return None
    return None


def _elf_notes(notes: bytes, end: str) -> Iterator[tuple[bytes, int, bytes]]:
    """``(name, type, desc)`` of each note in a note segment or section."""
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from(end + "III", notes, pos)
        name = notes[pos + 12:pos + 12 + namesz].rstrip(b"\0")
        desc_at = pos + 12 + ((namesz + 3) & ~3)
        yield name, ntype, notes[desc_at:desc_at + descsz]
        pos = desc_at + ((descsz + 3) & ~3)


# The text the kernel writes into vmcoreinfo_data at boot (kernel/vmcore_info.c,
# crash_save_vmcoreinfo_init()): at most a page, NUL-terminated.
VMCOREINFO_BYTES = 4096


def vmcoreinfo_in_memory(path: str, build_ids: Iterable[str] = ()) -> Optional[bytes]:
    """The VMCOREINFO text that the kernel in the core *path* keeps in its
    own memory, or None. A dump whose notes lack it (QEMU's dump-guest-memory
    without a vmcoreinfo device) still holds the page the kernel filled at
    boot, KERNELOFFSET (KASLR) included on x86-64. Of several copies (a
    kernel before a kexec leaves its own), the one whose BUILD-ID is in
    *build_ids* wins, then the first on a page boundary.

    Finding it means reading the whole dump (seconds for gigabytes), so
    the answer is kept in the cache, keyed by the dump's path, size and
    mtime, and by the build IDs."""
    wanted = {b"BUILD-ID=" + b.encode() + b"\n" for b in build_ids}
    try:
        # "2": kdump-compressed files are searched too (an answer of nothing,
        # kept by an older ksminspect, is not believed)
        kept = os.path.join(cache_dir(), f"{cache_key(path, '2', str(sorted(wanted)))}-vmcoreinfo")
        with open(kept, "rb") as f:
            return f.read() or None
    except OSError:
        pass
    found = []
    for copy, aligned in _vmcoreinfo_copies(path):
        if any(w in copy for w in wanted):
            found = [(copy, True)]
            break  # the kernel the debug info is of: no need to read on
        found.append((copy, aligned))
    text = next((t for t, aligned in found if aligned), found[0][0] if found else None)
    try:
        with open(kept, "wb") as f:
            f.write(text or b"")
    except (OSError, NameError):
        pass  # no cache: found again next time
    return text


def _is_vmcoreinfo(text: bytes) -> bool:
    """*text*, found at an "OSRELEASE=", is a VMCOREINFO, not a stray string."""
    return b"\nPAGESIZE=" in text and b"\nSYMBOL(" in text


def _vmcoreinfo_copies(path: str) -> Iterator[tuple[bytes, bool]]:
    """Each VMCOREINFO text in the memory *path* holds (an ELF core's PT_LOAD
    segments, a kdump-compressed file's pages), and whether it starts a page
    (vmcoreinfo_data is one page; vmcoreinfo_note's copy is not)."""
    import mmap

    if dumpfile.kind(path) == "kdump":
        for paddr, page in dumpfile.kdump_pages(path):
            at = page.find(b"OSRELEASE=")
            if at >= 0:
                text = page[at:].split(b"\0", 1)[0]
                if _is_vmcoreinfo(text):
                    yield text, (paddr + at) % 4096 == 0
        return
    try:
        headers = elf_program_headers(path)
        if not headers:
            return
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            for p_type, _, paddr, offset, filesz in headers:
                if p_type != PT_LOAD:
                    continue
                at, end = offset, min(offset + filesz, len(m))
                while (at := m.find(b"OSRELEASE=", at, end)) >= 0:
                    text = m[at:min(at + VMCOREINFO_BYTES, end)].split(b"\0", 1)[0]
                    if _is_vmcoreinfo(text):
                        yield text, (paddr + at - offset) % 4096 == 0
                    at += 1
    except (OSError, EOFError, ValueError):
        return


def _open_live(prog: drgn.Program) -> None:
    if not os.path.exists("/proc/kcore"):
        raise TargetError("/proc/kcore does not exist: this kernel was built without "
                          "CONFIG_PROC_KCORE; inspect a vmcore with -c instead")
    if os.geteuid() != 0:
        raise TargetError("reading the live kernel needs root (/proc/kcore is readable by root "
                          "only); run with sudo, or inspect a vmcore with -c")
    try:
        _attach_live(prog)
    except PermissionError as e:
        raise TargetError(f"/proc/kcore cannot be read ({e.strerror}); kernel lockdown or a "
                          f"security module may forbid it: inspect a vmcore with -c") from None
    except (OSError, ValueError) as e:
        raise TargetError(f"the running kernel cannot be opened: {e}") from None


def _attach_live(prog: drgn.Program) -> None:
    prog.set_kernel()


def _has_kernel_types(prog: drgn.Program) -> bool:
    try:
        prog.type("struct mm_struct")
        return True
    except LookupError:
        return False


# Where ELF32 and ELF64 keep what elf_build_id() reads: the section header
# table (e_shoff, e_shentsize/e_shnum) and a section's type, offset and size.
_ELF_CLASS: dict[int, dict[str, Any]] = {
    1: {"word": "I", "shoff": 0x20, "shnum": 0x2E, "sh_offset": 0x10},
    2: {"word": "Q", "shoff": 0x28, "shnum": 0x3A, "sh_offset": 0x18},
}


def elf_build_id(path: str) -> Optional[str]:
    """The GNU build ID note of an ELF file, in hex, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] not in _ELF_CLASS:
                return None
            c = _ELF_CLASS[head[4]]
            end = "<" if head[5] == 1 else ">"
            shoff, = struct.unpack_from(end + c["word"], head, c["shoff"])
            shentsize, shnum = struct.unpack_from(end + "HH", head, c["shnum"])
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            for i in range(shnum):
                sh = i * shentsize
                sh_type, = struct.unpack_from(end + "I", table, sh + 4)
                if sh_type != 7:  # SHT_NOTE
                    continue
                offset, size = struct.unpack_from(end + 2 * c["word"], table, sh + c["sh_offset"])
                f.seek(offset)
                notes = f.read(min(size, 1 << 16))
                for name, ntype, desc in _elf_notes(notes, end):
                    if ntype == 3 and name == b"GNU":  # NT_GNU_BUILD_ID
                        return desc.hex()
    except (OSError, struct.error):
        return None
    return None


def _kernel_build_id(prog: drgn.Program) -> Optional[str]:
    try:
        build_id = prog.main_module().build_id
    except (LookupError, AttributeError, ValueError):
        return None
    return build_id.hex() if build_id else None


def _missing_debug_info_message(prog: drgn.Program, symbols: dict[str, str], detail: str) -> str:
    """*symbols*: each -s path given -> the file read (its decompressed copy)."""
    release = kernel_release(prog)
    if symbols:
        not_elf = [s for s, f in symbols.items() if not _is_elf(f)]
        if not_elf:
            return (f"{', '.join(not_elf)} {'is not an ELF file' if len(not_elf) == 1 else 'are not ELF files'}"
                    f": -s takes the kernel's vmlinux or its debug file (for kernel {release}, e.g. "
                    f"{_debug_package_hint(release)})")
        want = _kernel_build_id(prog)
        have = {s: elf_build_id(f) for s, f in symbols.items()}
        other = {s: b for s, b in have.items() if b and want and b != want}
        if other and len(other) == len(symbols):
            named = ", ".join(f"{s} (build ID {b})" for s, b in other.items())
            return (f"the debug info does not belong to this kernel: the dump is of kernel "
                    f"{release} with build ID {want}, but -s gave {named}")
        return (f"no usable debug info for kernel {release} in {', '.join(symbols)}"
                f"{': ' + detail.splitlines()[0] if detail else ''}")
    return (f"no debug info found for kernel {release}; pass the vmlinux with -s, "
            f"or install it ({_debug_package_hint(release)})")


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def dump_description(prog: drgn.Program) -> Optional[dict[str, object]]:
    """What the dump file *prog* was opened from is (dumpfile.describe());
    None for the live kernel and for a Program ksminspect did not open."""
    return prog.cache.get("ksminspect_dump")


def is_gap(prog: drgn.Program, e: drgn.FaultError) -> bool:
    """Whether a failed read is the dump's doing, no evidence about the
    kernel: a page it left out on purpose (libkdumpfile's "Excluded page"),
    or any page of a dump that was filtered (a dump level) or cut short. In
    a complete dump, and on a live kernel, a read that fails is a pointer
    into nothing."""
    if "Excluded page" in str(e):
        return True
    dump = dump_description(prog)
    return dump is not None and (dump.get("dump_level") is not None or "ksminspect_truncated" in prog.cache)


def lacks_memory(prog: drgn.Program, pages: Sequence[int] = (), of: str = "KSM's objects") -> str:
    """One sentence: the dump left out memory of *of* (*pages*, where
    known), and the likely cause. No dump level leaves out kernel objects,
    so where one was given the makedumpfile that applied it most likely did
    not know this kernel's page flags."""
    dump = dump_description(prog) or {}
    level = dump.get("dump_level")
    shown = ", ".join(f"{p:#x}" for p in pages[:4]) + (", ..." if len(pages) > 4 else "")
    what = (f"the dump lacks {len(pages)} page{'s' if len(pages) != 1 else ''} of {of} ({shown})"
            if pages else f"the dump lacks memory of {of}")
    if level is None:
        return f"{what}: it was filtered or cut short"
    return (f"{what}: it was filtered at dump level {level}, which keeps kernel objects, so the "
            f"makedumpfile that wrote it is likely older than the kernel ({kernel_release(prog)})")


def kernel_release(prog: drgn.Program) -> str:
    """The kernel's release string (UTS_RELEASE, or OSRELEASE of vmcoreinfo)."""
    try:
        return prog["UTS_RELEASE"].string_().decode()
    except (KeyError, LookupError, drgn.FaultError, drgn.ObjectAbsentError, ValueError):
        pass
    try:
        info = prog.vmcoreinfo.decode(errors="replace") if hasattr(prog, "vmcoreinfo") else ""
        for line in info.splitlines():
            if line.startswith("OSRELEASE="):
                return line.split("=", 1)[1]
    except Exception:  # vmcoreinfo is optional
        pass
    return "(unknown release)"


def _debug_package_hint(release: str) -> str:
    try:
        with open("/etc/os-release") as f:
            ids = f.read()
    except OSError:
        ids = ""
    if "debian" in ids or "ubuntu" in ids:
        return f"Debian/Ubuntu: linux-image-{release}-dbg or linux-image-{release}-dbgsym"
    if "fedora" in ids or "rhel" in ids or "centos" in ids:
        return f"Fedora/RHEL: dnf debuginfo-install kernel-{release}"
    if "suse" in ids:
        return "SUSE: kernel-default-debuginfo"
    return "your distribution's kernel debug info package"
