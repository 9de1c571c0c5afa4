"""Dump file formats: makedumpfile's flattened format and the kdump header
(pure decoding, beside the per-dump tests that open real QEMU kdump files)."""

from __future__ import annotations

import struct

import pytest

from ksminspect import dumpfile
from ksminspect.errors import TargetError


def flattened(records: list[tuple[int, bytes]], end: bool = True) -> bytes:
    head = dumpfile.FLAT_SIGNATURE.ljust(16, b"\0") + struct.pack(">qq", 1, 1)
    out = head.ljust(dumpfile.FLAT_HEADER_SIZE, b"\0")
    for offset, data in records:
        out += struct.pack(">qq", offset, len(data)) + data
    return out + (struct.pack(">qq", -1, 0) if end else b"")


def test_flattened_records_land_at_their_offsets(tmp_path) -> None:
    flat = tmp_path / "flat"
    # records out of order and overlapping, as makedumpfile -F writes the
    # bitmaps after the pages they describe
    flat.write_bytes(flattened([(8192, b"C" * 10), (0, b"KDUMP   " + b"A" * 8), (4, b"BB")]))
    assert dumpfile.kind(str(flat)) == "flattened"
    out = tmp_path / "out"
    dumpfile.reassemble(str(flat), str(out))
    data = out.read_bytes()
    assert data[:16] == b"KDUMBB  " + b"A" * 8
    assert data[8192:] == b"C" * 10 and data[16:8192] == bytes(8192 - 16)


def test_flattened_cut_short_says_so(tmp_path) -> None:
    flat = tmp_path / "flat"
    flat.write_bytes(flattened([(0, b"x" * 100)], end=False))
    with pytest.raises(TargetError, match="ends before its end marker"):
        dumpfile.reassemble(str(flat), str(tmp_path / "out"))
    flat.write_bytes(flattened([(0, b"x" * 100)])[:-40])
    with pytest.raises(TargetError, match="ends inside a flattened record"):
        dumpfile.reassemble(str(flat), str(tmp_path / "out"))


def test_kdump_header(tmp_path) -> None:
    head = bytearray(8192)
    head[:8] = b"KDUMP   "
    struct.pack_into("<i", head, 8, 6)
    head[12 + 2 * 65:12 + 2 * 65 + 6] = b"6.1.0-"
    head[12 + 4 * 65:12 + 4 * 65 + 6] = b"x86_64"
    struct.pack_into("<ii", head, 424, 0x1, 4096)  # status: zlib; block_size
    struct.pack_into("<Qi", head, 4096, 0x1000000, 31)  # sub-header: phys_base, dump_level
    path = tmp_path / "kdump"
    path.write_bytes(bytes(head))
    assert dumpfile.kind(str(path)) == "kdump"
    h = dumpfile.kdump_header(str(path))
    assert h == dumpfile.KdumpHeader("x86_64", "6.1.0-", "zlib", 31)
    platform = dumpfile.platform(h)
    assert platform is not None and platform.arch.name == "X86_64"


def test_kdump_header_of_a_flattened_file(tmp_path) -> None:
    head = bytearray(4096)
    head[:8] = b"KDUMP   "
    head[12 + 4 * 65:12 + 4 * 65 + 7] = b"aarch64"
    struct.pack_into("<ii", head, 424, 0x20, 4096)
    sub = struct.pack("<Qi", 0, 1)
    flat = tmp_path / "flat"
    flat.write_bytes(flattened([(0, bytes(head)), (4096, sub)]))
    h = dumpfile.kdump_header(str(flat))
    assert h == dumpfile.KdumpHeader("aarch64", "", "zstd", 1)
    assert dumpfile.dump_platform(str(flat)).arch.name == "AARCH64"


def test_summary_names_the_dump_format() -> None:
    """summary says what a dump file is: QEMU's kdump-zlib (flattened, dump
    level 1), makedumpfile's captures (their compression and dump level),
    the ELF dumps (no dump level)."""
    from conftest import DUMPS, run_json

    for dump in DUMPS:
        made = dump.truth.get("dump", {})
        got = run_json(*dump.args, "summary")["dump"]
        if made.get("format") == "kdump-zlib":
            assert got == {"format": "kdump", "flattened": True, "compression": "zlib",
                           "dump_level": 1, "left_out": ["zero pages"]}
        elif made.get("format") == "makedumpfile":  # a crash-kernel capture (crash-capture.sh)
            options = made["makedumpfile"].split()
            level = int(options[options.index("-d") + 1])
            if "-E" in options:  # ELF: no header says the level
                assert got["format"] == "elf" and got["dump_level"] is None
            else:
                compression = {"-c": "zlib", "-l": "lzo", "-p": "snappy", "-z": "zstd"}
                assert got == {"format": "kdump", "flattened": False,
                               "compression": next(compression[o] for o in options if o in compression),
                               "dump_level": level, "left_out": got["left_out"]}
                assert len(got["left_out"]) == bin(level).count("1")
        else:
            assert got["format"] == "elf" and got["dump_level"] is None


@pytest.mark.parametrize("partial", __import__("conftest").PARTIAL_DUMPS, ids=lambda d: d.name)
def test_dump_that_lacks_ksm_memory_gives_partial_results(partial) -> None:
    """A crash-kernel capture by a makedumpfile older than the kernel
    (Debian 12's 1.7.2 on a 6.12 kernel) leaves out some of KSM's slab
    pages: every command shows what it could read, exits 0 or 1, and says
    that the dump left the rest out; nothing is called damage."""
    from conftest import run_cli, run_json

    for command in (["summary"], ["mm"], ["stable-tree"], ["unstable-tree"], ["rmap"],
                    ["check"], ["snapshot", "-"]):
        result = run_cli(*partial.args, *command)
        assert result.exit_code in (0, 1), (command, result.output)
        assert result.output.strip(), command
        assert "points at memory that cannot be read" not in result.stderr, command
    summary = run_cli(*partial.args, "summary")
    assert "points at memory the dump left out" in summary.stderr
    report = run_json(*partial.args, "check")
    assert not [f for f in report["findings"] if f["severity"] in ("error", "warning")]
    assert any("the dump left out memory" in why for why in report["cannot_tell"].values())


def test_compressed_copies_of_a_kdump_file(tmp_path, monkeypatch) -> None:
    """A .gz copy of QEMU's flattened kdump-zlib file (the committed one is
    .xz) reads the same: decompressed, then reassembled, in the cache."""
    import gzip
    import shutil

    from conftest import DUMPS, run_json

    from ksminspect.program import decompressed

    dump = next(d for d in DUMPS if d.truth.get("dump", {}).get("format") == "kdump-zlib"
                and d.vmcore.name.endswith(".xz"))
    copy = tmp_path / "vmcore.gz"
    with open(decompressed(str(dump.vmcore)), "rb") as f, gzip.open(copy, "wb", compresslevel=1) as g:
        shutil.copyfileobj(f, g)
    monkeypatch.setenv("KSMINSPECT_CACHE", str(tmp_path / "cache"))  # its copies go with tmp_path
    got = run_json("-c", str(copy), "-s", str(dump.debug), "summary")
    assert got["counters"] == run_json(*dump.args, "summary")["counters"]
    assert got["dump"]["format"] == "kdump" and got["dump"]["flattened"]
    assert got["walked"]["pages_shared"] == int(dump.sysfs["pages_shared"])
