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
    once, in one sentence, which pages the dump lacks and why; nothing is
    called damage."""
    from conftest import run_cli, run_json

    for command in (["summary"], ["mm"], ["stable-tree"], ["unstable-tree"], ["rmap"],
                    ["check"], ["snapshot", "-"]):
        result = run_cli(*partial.args, *command)
        assert result.exit_code in (0, 1), (command, result.output)
        assert result.output.strip(), command
        assert "walk damage" not in result.stderr, command
        assert "points at memory that cannot be read" not in result.stderr, command
    summary = run_cli(*partial.args, "summary")
    said = [line for line in summary.stderr.splitlines() if "the dump lacks" in line]
    walked = run_json(*partial.args, "summary")["walked"]
    if any(walked[k] != int(v) for k, v in partial.sysfs.items() if walked.get(k) is not None):
        assert len(said) == 1, summary.stderr  # the walks stopped where the dump has no memory
        assert said[0].startswith("ksminspect: partial results: the dump lacks ")
        assert "dump level 31" in said[0] and "older than the kernel" in said[0]
    else:
        assert not said, summary.stderr
    report = run_json(*partial.args, "check")
    twin = elf_twin(partial)
    alarms = {(f["check"], f["address"]) for f in report["findings"] if f["severity"] in ("error", "warning")}
    if twin is None:
        assert not alarms
    else:  # what it finds, QEMU's dump of the same state finds too
        assert alarms <= {(f["check"], f["address"]) for f in run_json(*twin.args, "check")["findings"]}
    assert report["cannot_tell"]
    assert any("dump level 31" in why for why in report["cannot_tell"].values()), report["cannot_tell"]


def elf_twin(capture):
    """QEMU's ELF dump of the state *capture* was taken of, if one was made
    (vmcores/dumps.tsv: also)."""
    from conftest import ALL_DUMPS

    return next((d for d in ALL_DUMPS if d.truth["dump"].get("before_crash_of") == capture.name), None)


@pytest.mark.parametrize("capture", [d for d in __import__("conftest").ALL_DUMPS
                                     if d.truth["dump"].get("makedumpfile") and elf_twin(d)],
                         ids=lambda d: d.name)
def test_capture_finds_what_qemu_dump_of_the_same_state_finds(capture) -> None:
    """A crash-kernel capture and QEMU's ELF dump of the same guest state,
    taken just before the crash: the same rules fire on the same objects,
    but for the objects the capture says it cannot tell about (on the
    seed's kernel with the resets skipped: the stale offsets, exit 1)."""
    from conftest import run_cli, run_json

    twin = elf_twin(capture)
    got, want = run_json(*capture.args, "check"), run_json(*twin.args, "check")

    def alarms(report, checks=None):
        return {(f["check"], f["rule"], f["address"]) for f in report["findings"]
                if f["severity"] in ("error", "warning") and (checks is None or f["check"] in checks)}

    judged = {f["check"] for f in want["findings"]} - set(got["cannot_tell"])
    assert alarms(got) <= alarms(want)
    assert alarms(got, judged) == alarms(want, judged)  # the same rules, on the same objects
    if alarms(want, judged):
        assert run_cli(*capture.args, "check").exit_code == 1


def leaves_out_user_pages(d) -> bool:
    """The dump is a kdump-compressed file filtered by a makedumpfile -d
    level with user pages (8). (Its -E ELF output keeps short runs of
    excluded pages: whether a given page is in it is not known beforehand.)"""
    options = d.truth["dump"].get("makedumpfile", "").split()
    return ("-d" in options and "-E" not in options
            and int(options[options.index("-d") + 1]) & 8 != 0)


@pytest.mark.parametrize("filtered", [d for d in __import__("conftest").DUMPS if leaves_out_user_pages(d)],
                         ids=lambda d: d.name)
def test_page_the_dump_left_out(filtered) -> None:
    """A dump level that leaves out user pages leaves out KSM's pages too:
    `page --pid` on one says so, and still answers from the struct page and
    KSM's objects, which the dump keeps."""
    from conftest import run_cli, run_json

    from conftest import cannot_tell_or_json

    item = next(i for i in run_json(*filtered.args, "rmap")["items"] if i["state"] == "stable")
    got = cannot_tell_or_json(filtered, "page", "--pid", str(item["pid"]), item["page_address"])
    if got is None:
        pytest.skip("drgn cannot find a page frame's struct page on this kernel")
    assert got["ksm"] is True and got["in_dump"] is False
    table = run_cli(*filtered.args, "page", "--pid", str(item["pid"]), item["page_address"])
    assert table.exit_code == 0
    assert "the page's own memory is not in the dump: dump level " in table.stdout
    assert "user pages" in table.stdout


def one_dump_per_format() -> list:
    """The first committed dump of each file format: QEMU's ELF, QEMU's
    flattened kdump-zlib, a makedumpfile capture (by its options)."""
    from conftest import DUMPS

    seen: dict[str, object] = {}
    for d in DUMPS:
        dump = d.truth.get("dump", {})
        seen.setdefault(dump.get("makedumpfile") or dump.get("format", "elf"), d)
    return list(seen.values())


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
@pytest.mark.parametrize("sample", one_dump_per_format(), ids=lambda d: d.name)
def test_compressed_copies_of_each_format(sample, suffix, tmp_path, monkeypatch) -> None:
    """A .gz or .zst copy of a dump (the committed ones are .xz, the extra
    ones raw) reads the same: decompressed, reassembled where flattened, in
    the cache."""
    import gzip
    import shutil
    import subprocess

    from conftest import run_json

    from ksminspect.program import decompressed

    raw = decompressed(str(sample.vmcore)) if sample.vmcore.name.endswith(".xz") else str(sample.vmcore)
    copy = tmp_path / f"vmcore{suffix}"
    if suffix == ".gz":
        with open(raw, "rb") as f, gzip.open(copy, "wb", compresslevel=1) as g:
            shutil.copyfileobj(f, g)
    elif shutil.which("zstd"):
        subprocess.run(["zstd", "-q", "-1", "-T2", "-o", str(copy), raw], check=True)
    else:
        pytest.skip("no zstd here")
    monkeypatch.setenv("KSMINSPECT_CACHE", str(tmp_path / "cache"))  # its copies go with tmp_path
    got = run_json("-c", str(copy), "-s", str(sample.debug), "summary")
    want = run_json(*sample.args, "summary")
    assert got["counters"] == want["counters"] and got["walked"] == want["walked"]
    assert got["dump"] == want["dump"]
    assert got["walked"]["pages_shared"] == int(sample.sysfs["pages_shared"])
