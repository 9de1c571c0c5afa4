"""Hostile input never hangs and never prints a traceback: damaged pointers
end in a finding naming the object (the rest is still shown); damaged,
truncated or mismatched files and a hostile live system end in one sentence
on stderr and exit code 2."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import DUMPS, Dump, program_of
from damage import damaged_copy, file_offset, physical, u32, word
from test_errors import KSMINSPECT, run_main

from objects import Objects

from ksminspect.program import decompressed

DUMP = next(d for d in DUMPS if d.name == "6.12-numa")


def slot_items(dump: Dump, index: int = 1):
    prog = program_of(dump)
    w = Objects(prog)
    lists = w.mm_slots()
    return prog, w, [slot for slot, _, _ in lists], lists[index][2]


def first_page_node(dump: Dump):
    prog = program_of(dump)
    w = Objects(prog)
    for node in w.tree_nodes():
        if not node.is_chain and node.rmap_hlist_len >= 2:
            return prog, w, node
    raise AssertionError


def rmap_cycle():
    prog, w, slots, items = slot_items(DUMP)
    return [(items[20].address + w.layout.rmap_item.rmap_list, word(items[5].address))], items[20].address


def rmap_misaligned():
    prog, w, slots, items = slot_items(DUMP)
    return [(items[7].address + w.layout.rmap_item.rmap_list, word(items[8].address + 3))], items[7].address


def rmap_unmapped():
    prog, w, slots, items = slot_items(DUMP)
    return [(items[7].address + w.layout.rmap_item.rmap_list, word(0xFFFF_EEEE_0000_0000))], items[7].address


def hlist_cycle():
    prog, w, node = first_page_node(DUMP)
    items = w.hlist_items(node.address)
    last = items[-1]
    return [(last.address + w.layout.rmap_item.hlist,
             word(items[0].address + w.layout.rmap_item.hlist))], last.address


def mm_head_cycle():
    prog, w, slots, items = slot_items(DUMP)
    off = w.layout.mm_slot.mm_node
    return [(slots[3] + off, word(slots[1] + off))], slots[3] + off


def rbtree_loop():
    prog, w, node = first_page_node(DUMP)
    roots = w.w.stable_tree_roots()
    root_node = w.w.read_word("t", 0, roots[0][1])
    # a leaf's left child back to the root node: the in-order walk meets it again
    leaf = next(n for n in w.tree_nodes() if not n.rb_left)
    return [(leaf.address + w.layout.stable_node.node + 2 * w.ptr, word(root_node))], leaf.address


POINTER_DAMAGE = [rmap_cycle, rmap_misaligned, rmap_unmapped, hlist_cycle, mm_head_cycle, rbtree_loop]


@pytest.mark.parametrize("damage", POINTER_DAMAGE, ids=lambda d: d.__name__)
def test_pointer_damage_is_a_finding(damage, tmp_path: Path) -> None:
    patches, owner = damage()
    copy = damaged_copy(program_of(DUMP), DUMP.vmcore, tmp_path / "vmcore", patches)
    start = time.monotonic()
    r = run_main("-c", str(copy), "-s", str(DUMP.debug), "check", "--format", "json")
    assert time.monotonic() - start < 30
    assert r.returncode == 1 and "Traceback" not in r.stderr
    data = json.loads(r.stdout)
    walk = [f for f in data["findings"] if f["check"] == "walk-damage"]
    assert walk and all(f["severity"] == "error" for f in walk)
    assert f"{owner:#x}" in " ".join(f["message"] for f in walk)
    assert data["stats"]["rmap_items"] > 0  # the rest was still walked
    for command in ("summary", "stable-tree", "mm"):
        r = run_main("-c", str(copy), "-s", str(DUMP.debug), command)
        assert r.returncode == 0 and "Traceback" not in r.stderr and r.stdout


def test_huge_rmap_hlist_len(tmp_path: Path) -> None:
    prog, w, node = first_page_node(DUMP)
    copy = damaged_copy(prog, DUMP.vmcore, tmp_path / "vmcore",
                        [(node.address + w.layout.stable_node.rmap_hlist_len, u32(0x7FFFFFFF))])
    r = run_main("-c", str(copy), "-s", str(DUMP.debug), "check", "--format", "json")
    found = [f for f in json.loads(r.stdout)["findings"] if f["check"] == "hlist-len"]
    assert r.returncode == 1 and found and found[0]["address"] == f"{node.address:#x}"


# -- files -----------------------------------------------------------------

def expect_refusal(*args: str, says: str) -> str:
    r = run_main(*args)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert says in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2
    return r.stderr


@pytest.mark.parametrize("length", [0, 64, 4096, 10_000_000, 150_000_000])
def test_truncated_dump(length: int, tmp_path: Path) -> None:
    core = Path(decompressed(str(DUMP.vmcore)))
    cut = tmp_path / "vmcore"
    with open(core, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(length))
    says = "it is empty" if length == 0 else "truncated"
    expect_refusal("-c", str(cut), "-s", str(DUMP.debug), "check", says=says)


def test_not_a_dump(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not a vmcore\n" * 100)
    expect_refusal("-c", str(junk), "-s", str(DUMP.debug), "summary", says="not an ELF core file")


def test_corrupt_compressed_dump(tmp_path: Path) -> None:
    data = bytearray(DUMP.vmcore.read_bytes()[:3_000_000])
    data[100_000:100_100] = b"\0" * 100
    bad = tmp_path / "vmcore.xz"
    bad.write_bytes(bytes(data))
    expect_refusal("-c", str(bad), "-s", str(DUMP.debug), "summary", says="could not be decompressed")


def test_dump_without_vmcoreinfo_note(tmp_path: Path) -> None:
    """A QEMU dump whose guest never gave QEMU its VMCOREINFO (Debian builds
    qemu_fw_cfg as a module) opens from the copy in the guest's memory, the
    copy of this kernel (by BUILD-ID) where a kexec left an older one. Here a
    copy of a real dump loses its note's name and gains a stale copy below the
    real one; vmcores/scripts/distro-dumps.sh makes such dumps for real."""
    from ksminspect.program import elf_build_id, vmcoreinfo_in_memory

    core = tmp_path / "vmcore"
    shutil.copyfile(decompressed(str(DUMP.vmcore)), core)
    real = vmcoreinfo_in_memory(str(core))
    build_id = elf_build_id(decompressed(str(DUMP.debug)))
    assert real and f"BUILD-ID={build_id}\n".encode() in real
    stale = real.replace(build_id.encode(), b"0" * len(build_id))
    with open(core, "r+b") as f:
        head = f.read(1 << 20)
        at = head.index(b"VMCOREINFO\0")  # the note's name, in the notes up front
        f.seek(at)
        f.write(b"NOCOREINFO")
        f.seek(file_offset(core, 0x1000))  # a page of low memory, before the real copy
        f.write(stale + b"\0")
    assert vmcoreinfo_in_memory(str(core)) == stale  # first on a page boundary
    assert vmcoreinfo_in_memory(str(core), [build_id]) == real
    r = run_main("-c", str(core), "-s", str(DUMP.debug), "summary", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert "has no VMCOREINFO note" in r.stderr and "using the copy in its memory" in r.stderr
    with_note = json.loads(run_main(*DUMP.args, "summary", "--format", "json").stdout)
    assert json.loads(r.stdout) == with_note
    assert with_note["counters"]["pages_sharing"] == int(DUMP.sysfs["pages_sharing"])


def test_debug_info_of_another_kernel() -> None:
    other = next(d for d in DUMPS if d.name.startswith("7.2"))
    text = expect_refusal("-c", str(DUMP.vmcore), "-s", str(other.debug), "summary",
                          says="does not belong to this kernel")
    assert text.count("build ID") == 2 and str(other.debug) in text


def test_debug_info_missing(tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path))
    r = subprocess.run([KSMINSPECT, "-c", str(DUMP.vmcore),
                        "summary"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no debug info found for kernel 6.12.117" in r.stderr
    assert "-s" in r.stderr and "linux-image-6.12.117" in r.stderr


# -- live ----------------------------------------------------------------------

def live_main(monkeypatch, capsys) -> tuple[int, str]:
    from ksminspect.commands.main import main

    with pytest.raises(SystemExit) as e:
        main(["summary"])
    return e.value.code, capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to become another user")
def test_live_not_root_for_real(tmp_path: Path) -> None:
    """As the user nobody, against this machine's own kernel: the sentence
    for a missing /proc/kcore where it is missing (as in some sandboxes),
    else the one for not being root."""
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        KSMINSPECT, "summary"], capture_output=True, text=True,
                       env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    if "Permission denied" in r.stderr and "ksminspect:" not in r.stderr:
        pytest.skip("the virtual environment is not readable by nobody")
    assert r.returncode == 2 and r.stdout == ""
    if os.path.exists("/proc/kcore"):
        assert r.stderr.strip() == ("ksminspect: reading the live kernel needs root (/proc/kcore is "
                                    "readable by root only); run with sudo, or inspect a vmcore with -c")
    else:
        assert r.stderr.strip() == ("ksminspect: /proc/kcore does not exist: this kernel was built "
                                    "without CONFIG_PROC_KCORE; inspect a vmcore with -c instead")


def test_live_not_root(monkeypatch, capsys) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os.path, "exists", lambda p: True if p == "/proc/kcore" else os.path.lexists(p))
    code, err = live_main(monkeypatch, capsys)
    assert code == 2 and "needs root" in err and len(err.splitlines()) == 1


def test_live_no_kcore(monkeypatch, capsys) -> None:
    real = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/proc/kcore" else real(p))
    code, err = live_main(monkeypatch, capsys)
    assert code == 2 and "/proc/kcore does not exist" in err and len(err.splitlines()) == 1


def test_live_lockdown(monkeypatch, capsys) -> None:
    import ksminspect.program

    def refuse(prog):
        raise PermissionError(1, "Operation not permitted", "/proc/kcore")

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: True if p == "/proc/kcore" else real(p))
    monkeypatch.setattr(ksminspect.program, "_attach_live", refuse)
    code, err = live_main(monkeypatch, capsys)
    assert code == 2 and "lockdown" in err and len(err.splitlines()) == 1


# -- randomized campaign -----------------------------------------------------

CAMPAIGN_RUNS = int(os.environ.get("KSMINSPECT_CAMPAIGN_RUNS", "200"))


def campaign_targets(dump: Dump) -> list[tuple[int, int]]:
    """(address, size) of KSM slab objects and of the struct pages of KSM pages."""
    prog = program_of(dump)
    w = Objects(prog)
    lay = w.layout
    out = []
    for slot, mm, items in w.mm_slots():
        out.append((slot, lay.mm_slot.size))
        out += [(i.address, lay.rmap_item.size) for i in items]
    from drgn.helpers.linux.mm import pfn_to_page
    page_size = prog.type("struct page").size
    for node in w.tree_nodes():
        out.append((node.address, lay.stable_node.size))
        nodes = w.dups(node.address) if node.is_chain else [node]
        for n in nodes:
            out.append((n.address, lay.stable_node.size))
            out.append((pfn_to_page(prog, n.kpfn).value_(), page_size))
    return out


def test_random_damage_campaign(tmp_path: Path) -> None:
    """Seeded: random bytes in KSM objects and page structs of a real dump."""
    dump = DUMP
    prog = program_of(dump)
    core = Path(decompressed(str(dump.vmcore)))
    targets = campaign_targets(dump)
    rng = random.Random(20261126)
    plans = []
    for run in range(CAMPAIGN_RUNS):
        patches = []
        for _ in range(rng.randint(1, 4)):
            address, size = rng.choice(targets)
            at = address + rng.randrange(size)
            data = bytes(rng.randrange(256) for _ in range(rng.choice([1, 1, 2, 8])))
            patches.append((file_offset(core, physical(prog, at)), data))
        plans.append(patches)
    copies = [tmp_path / f"vmcore{i}" for i in range(2)]
    for c in copies:
        shutil.copyfile(core, c)

    def run(worker: int) -> list[tuple[int, float, bool]]:
        results = []
        for patches in plans[worker::2]:
            copy = copies[worker]
            with open(copy, "r+b") as f:
                saved = []
                for offset, data in patches:
                    f.seek(offset)
                    saved.append((offset, f.read(len(data))))
                    f.seek(offset)
                    f.write(data)
            start = time.monotonic()
            try:
                r = subprocess.run([KSMINSPECT, "-c", str(copy),
                                    "-s", str(dump.debug), "check", "--format", "json"],
                                   capture_output=True, text=True, timeout=30)
                code, tb = r.returncode, "Traceback" in r.stderr
                if "internal error" in r.stderr:
                    internal.append(r.stderr.strip())
            except subprocess.TimeoutExpired:
                code, tb = -1, False
            results.append((code, time.monotonic() - start, tb))
            with open(copy, "r+b") as f:
                for offset, data in saved:
                    f.seek(offset)
                    f.write(data)
        return results

    internal: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        results = [r for part in pool.map(run, range(2)) for r in part]
    hangs = sum(code == -1 for code, _, _ in results)
    tracebacks = sum(tb for _, _, tb in results)
    reported = sum(code in (1, 2) for code, _, _ in results)
    print(f"campaign: {len(results)} runs, {hangs} hangs, {tracebacks} tracebacks, "
          f"{reported} reported damage (exit 1 or 2), {len(internal)} internal errors, "
          f"slowest {max(t for _, t, _ in results):.1f} s")
    for message in sorted(set(internal)):
        print("  ", message)
    assert len(results) == CAMPAIGN_RUNS >= 200 or "KSMINSPECT_CAMPAIGN_RUNS" in os.environ
    assert hangs == 0 and tracebacks == 0
    assert all(code in (0, 1, 2) for code, _, _ in results)


def test_walk_that_finds_nothing_is_an_error(tmp_path: Path) -> None:
    """ksm_mm_head emptied (next and prev back at the head) while the kernel
    counts its rmap_items: every listing says so and exits 1, never an empty
    table with exit 0; check names it in its global-counters finding."""
    prog = program_of(DUMP)
    head = Objects(prog).layout.ksm_mm_head
    copy = damaged_copy(prog, DUMP.vmcore, tmp_path / "vmcore",
                        [(head, word(head)), (head + 8, word(head))])
    expected = int(DUMP.sysfs["pages_shared"]) + int(DUMP.sysfs["pages_sharing"])
    assert expected > 0
    for command in (["summary"], ["mm"], ["rmap"], ["mm", "--format", "json"]):
        r = run_main("-c", str(copy), "-s", str(DUMP.debug), *command)
        assert r.returncode == 1, (command, r.stderr)
        assert "but the walk found no rmap_item on the rmap_lists of ksm_mm_head" in r.stderr
        assert "Traceback" not in r.stderr
    r = run_main("-c", str(copy), "-s", str(DUMP.debug), "check", "--format", "json")
    assert r.returncode == 1
    messages = [f["message"] for f in json.loads(r.stdout)["findings"] if f["check"] == "global-counters"]
    assert any("the walk found no rmap_item" in m for m in messages), messages
