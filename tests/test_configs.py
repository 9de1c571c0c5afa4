"""Kernel configurations beyond NUMA x86-64, each on a real dump: no
CONFIG_NUMA (x86-64 and arm64), 64K pages (arm64), a 32-bit kernel (i386,
whose QEMU core is ELF64), and what ksminspect says where a drgn helper
cannot run for the configuration."""

from __future__ import annotations

import json

import drgn
import pytest

from conftest import DUMPS, REFUSED_DUMPS, Dump, program_of, run_cli
from test_errors import run_main

from ksminspect.layout import get_layout, read_variable

BY_NAME = {d.name: d for d in DUMPS}


def machine(dump: Dump) -> str:
    return dump.truth.get("machine", "x86_64")


def test_every_configuration_has_a_dump() -> None:
    layouts = {d.name: get_layout(program_of(d)) for d in DUMPS}
    assert any(not lay.numa and machine(d) == "x86_64" for d, lay in zip(DUMPS, layouts.values()))
    assert any(lay.page_size == 65536 and machine(d) == "aarch64" for d, lay in zip(DUMPS, layouts.values()))
    assert any(lay.pointer_size == 4 and lay.rmap_item.offset is not None for lay in layouts.values())


def test_tree_roots(dump: Dump) -> None:
    """Without CONFIG_NUMA root_stable_tree has no location: the roots are
    one_stable_tree itself. With it, the pointer is read."""
    prog = program_of(dump)
    layout = get_layout(prog)
    for where, name, single in ((layout.root_stable_tree, "root_stable_tree", "one_stable_tree"),
                                (layout.root_unstable_tree, "root_unstable_tree", "one_unstable_tree")):
        if read_variable(prog, name) is None:
            assert not layout.numa
            assert where.pointer is None and where.roots == prog[single].address_
        else:
            assert where.pointer == prog[name].address_


def test_page_size_and_word_from_the_kernel(dump: Dump) -> None:
    """The page size the guest's sysconf() saw, and the word size of the
    kernel's own pointers, whatever the core file's class says."""
    prog = program_of(dump)
    layout = get_layout(prog)
    if "page_size" in dump.truth:
        assert layout.page_size == dump.truth["page_size"]
    assert layout.pointer_size == (4 if machine(dump) in ("i686", "i386") else 8)
    data = json.loads(run_cli(*dump.args, "stable-tree", "--format", "json").stdout)
    pages = [s["page_address"] for t in data["trees"] for n in t["nodes"]
             for s in n["sharers"] + [x for d in n["dups"] for x in d["sharers"]]]
    assert pages and all(int(p, 16) % layout.page_size == 0 for p in pages)


def i386_dumps() -> list[Dump]:
    return [d for d in DUMPS if machine(d) in ("i686", "i386")]


@pytest.mark.parametrize("dump32", i386_dumps(), ids=lambda d: d.name)
def test_i386_core_is_elf64_but_the_kernel_is_32_bit(dump32: Dump) -> None:
    prog = program_of(dump32)
    assert prog.platform.arch == drgn.Architecture.I386
    assert get_layout(prog).pointer_size == 4
    assert get_layout(prog).rmap_item.offset_size == 4
    assert not get_layout(prog).rmap_item.offset_covers_age


def test_i386_seed_offset_rules() -> None:
    """On 32-bit the seed's unsigned long covers oldchecksum only. Only the
    exact overlay match can see a leftover offset, and only on items not
    rescanned since they left the stable tree (the next scan's checksum
    overwrites it); age and remaining_skips stay smart scan's, so no
    overlay-garbage rule fires. With the resets on, nothing fires."""
    noreset, healthy = BY_NAME["7.2-seed-i386-noreset"], BY_NAME["7.2-seed-i386"]
    work = noreset.truth["workload"]
    pairs_pid = next(p["pid"] for p in noreset.processes if p["role"] == "pairs")
    result = run_cli(*noreset.args, "check", "--format", "json")
    data = json.loads(result.stdout)
    found = [f for f in data["findings"] if f["severity"] != "info"]
    assert result.exit_code == 1
    assert {(f["check"], f["rule"]) for f in found} == {("stale-offset", "exact overlay match")}
    assert {f["pid"] for f in found} == {pairs_pid}
    assert 0 < len(found) <= work["pairs_written"]
    # What they hold is the v4 patch's value, vma->vm_pgoff, in oldchecksum.
    items = json.loads(run_cli(*noreset.args, "rmap", "--pid", str(pairs_pid), "--format", "json").stdout)
    flagged = {f["address"] for f in found}
    held = {i["address"]: i["fields"]["oldchecksum"] for i in items["items"]}
    assert len({held[a] for a in flagged}) == 1
    assert all(held[a] != held[next(iter(flagged))] for a in held if a not in flagged)
    clean = json.loads(run_cli(*healthy.args, "check", "--format", "json").stdout)
    assert not [f for f in clean["findings"] if f["check"] in ("stale-offset", "overlay-garbage", "wrong-offset")]


def test_cannot_tell_is_never_a_finding(dump: Dump) -> None:
    """A check that cannot run for some objects says why, and reports
    nothing it could not judge. Where a helper or this kernel's
    configuration stops it, that is every object; where the dump lacks some
    pages, it is the objects in them, and the rest are judged."""
    data = json.loads(run_cli(*dump.args, "check", "--format", "json").stdout)
    for check, why in data["cannot_tell"].items():
        assert why
        if "the dump lacks" not in why:
            assert not [f for f in data["findings"] if f["check"] == check and f["severity"] != "info"]


@pytest.mark.parametrize("dump32", i386_dumps(), ids=lambda d: d.name)
def test_helpers_drgn_lacks_on_i386_are_cannot_tell(dump32: Dump) -> None:
    """drgn has no i386 page-table walker: its slab lookups and follow_pfn()
    cannot run. check says so per check; page refuses in one sentence."""
    data = json.loads(run_cli(*dump32.args, "check", "--format", "json").stdout)
    for check in ("anon-vma", "stale-anon-vma", "orphans"):
        assert "drgn's slab" in data["cannot_tell"][check]  # drgn's own words follow
    share = next(p["pid"] for p in dump32.processes if p["role"] == "share")
    r = run_main(*dump32.args, "page", "--pid", str(share), "0x8000000")
    assert r.returncode == 2 and "cannot tell" in r.stderr


def test_classic_sparsemem_struct_pages_are_found() -> None:
    """x86-64 without NUMA here is SPARSEMEM without VMEMMAP, which drgn's
    pfn_to_page() does not handle: ksminspect finds the struct pages through
    mem_section itself, so kpfn judges every node (no finding on this
    healthy dump) and page tells a node's kpfn for a KSM page."""
    dump = BY_NAME["6.12-nonuma"]
    data = json.loads(run_cli(*dump.args, "check", "--format", "json").stdout)
    assert "kpfn" not in data["cannot_tell"] and "rmap-walk" not in data["cannot_tell"]
    assert [f for f in data["findings"] if f["check"] in ("kpfn", "rmap-walk")] == []
    tree = json.loads(run_cli(*dump.args, "stable-tree", "--format", "json").stdout)
    node = next(n for t in tree["trees"] for n in t["nodes"] if n["kpfn"])
    page = json.loads(run_cli(*dump.args, "page", node["kpfn"], "--format", "json").stdout)
    assert page["ksm"] is True and page["stable_node"] == node["address"]
    assert page["rmap_walk"] and all(r["reaches"] for r in page["rmap_walk"].values())


@pytest.mark.parametrize("refused", REFUSED_DUMPS, ids=lambda d: d.name)
def test_physical_dump_drgn_cannot_translate_is_refused(refused: Dump) -> None:
    """QEMU's dump of an i386 guest without paging: physical addresses only,
    and drgn cannot walk i386 page tables. One sentence says how to take a
    dump that can be read, not that the dump is damaged."""
    r = run_main(*refused.args, "summary")
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert "holds physical memory only" in r.stderr and "on i386" in r.stderr
    assert '"paging": true' in r.stderr and "truncated or damaged" not in r.stderr
