"""check on every dump, the stale-offset bug on the patched kernel, and
dumps damaged on purpose: each damage yields exactly the expected finding."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from conftest import DUMPS, PARTIAL_DUMPS, Dump, program_of, run_cli
from damage import Physical, damaged_copy, u32, word

from ksminspect.decode import ItemState
from ksminspect.layout import STABLE_FLAG, UNSTABLE_FLAG, get_layout
from objects import Objects

BY_NAME = {d.name: d for d in DUMPS}


def check_json(dump: Dump, *core: str) -> tuple[int, dict]:
    args = ["-c", core[0], "-s", str(dump.debug)] if core else dump.args
    result = run_cli(*args, "check", "--format", "json")
    import json
    return result.exit_code, json.loads(result.stdout)


def problems(data: dict) -> list[dict]:
    return [f for f in data["findings"] if f["severity"] != "info"]


@pytest.mark.parametrize("healthy", [d for d in DUMPS if "noreset" not in d.name
                                     and not any(d.not_unmapped().values())], ids=lambda d: d.name)
def test_healthy_dump_has_no_error_or_warning(healthy: Dump) -> None:
    dump = healthy
    code, data = check_json(dump)
    assert problems(data) == []
    assert code == 0
    assert data["stats"]["rmap_items"] == int(dump.truth["sysfs"].get("pages_volatile", 0)) + \
        sum(int(dump.sysfs[k]) for k in ("pages_shared", "pages_sharing", "pages_unshared"))


@pytest.mark.parametrize("asked", [d for d in DUMPS if d.truth.get("after_dump")], ids=lambda d: d.name)
def test_rmap_walk_finds_the_pages_the_kernel_could_not_migrate(asked: Dump) -> None:
    """vmcores/7.2-rmap-v4 and -v8 (ksmw.rmapwalk): after the dump the
    kernel was asked to migrate every page of the mover's regions (one moved
    by mremap() before merging, one split by mprotect() after, one plain);
    it can move a KSM page only when rmap_walk_ksm() unmaps every mapping.
    The mover's pages whose mapping rmap-walk's replay cannot reach are
    exactly those the kernel could not move, page by page: v4's split-off
    half (its stored vm_pgoff is the unsplit VMA's), nothing on v8."""
    code, data = check_json(asked)
    items = {i["address"]: i for i in json.loads(run_cli(*asked.args, "rmap", "--format", "json").stdout)["items"]}
    found = [f for f in data["findings"] if f["check"] == "rmap-walk"]
    assert {(f["severity"], f["rule"]) for f in found} <= {("error", "replay")}
    pages = {int(items[f["address"]]["page_address"], 16) for f in found}
    mover = next(p["pid"] for p in asked.processes if p["role"] == "mover")
    assert {f["pid"] for f in found} <= {mover}
    missed = {int(r["start"], 16) + i * asked.truth["page_size"] for r in asked.truth["rmapwalk"]["regions"]
              for i in asked.not_unmapped()[r["name"]]}
    print(f"{asked.name}: rmap-walk finds {len(pages)} mappings the replay misses; the kernel could not "
          f"migrate {len(missed)} pages: " + ", ".join(f"{n} {len(v)}" for n, v in asked.not_unmapped().items()))
    assert pages == missed
    assert code == (1 if missed else 0)
    moved = next(r for r in asked.truth["rmapwalk"]["regions"] if r["kind"] == "moved")
    assert moved["vm_pgoff"] != int(moved["start"], 16) >> 12  # the region did move before it merged
    assert not [f for f in data["findings"] if f["check"] in ("wrong-offset", "stale-offset")
                and int(moved["start"], 16) <= int(items[f["address"]]["page_address"], 16) < int(moved["end"], 16)]


def test_stale_offset_found_where_resets_are_skipped() -> None:
    dump = BY_NAME["7.2-seed-noreset"]
    work = dump.truth["workload"]
    pairs_pid = next(p["pid"] for p in dump.processes if p["role"] == "pairs")
    share0_pid = next(p["pid"] for p in dump.processes if p["role"] == "share" and p["index"] == 0)
    code, data = check_json(dump)
    assert code == 1
    rules = Counter((f["check"], f["rule"]) for f in problems(data))
    exact = [f for f in data["findings"] if f["rule"] == "exact overlay match"]
    age = [f for f in data["findings"] if f["rule"] == "age beyond scan history"]
    # Every written pair left the stable tree holding its offset, whose high
    # bytes read as an age no scan history allows; those not rescanned
    # since (all of them, unless ksmd got to some before the dump) still
    # hold it whole: exact.
    assert sum(f["pid"] == pairs_pid for f in age) == work["pairs_written"] == 32
    assert 0 < len(exact) <= work["pairs_written"]
    assert {f["pid"] for f in exact} == {pairs_pid}
    # The COW-broken pages of sharer 0 were rescanned: checksum over bytes
    # 0-3, age 7+1 and remaining_skips 4 left in bytes 4-5.
    assert {f["pid"] for f in age} == {pairs_pid, share0_pid}
    assert sum(f["pid"] == share0_pid for f in age) == work["cow_written"] == 8
    assert set(rules) == {("stale-offset", "exact overlay match"),
                          ("overlay-garbage", "age beyond scan history")}


@pytest.mark.parametrize("skipped", [d for d in DUMPS if "ksm.fault_skip_pgoff_reset=1" in d.truth["cmdline"]],
                         ids=lambda d: d.name)
def test_every_dump_with_the_resets_skipped_shows_the_stale_offsets(skipped: Dump) -> None:
    """Whatever the dump's format (QEMU's ELF with or without paging, a
    crash-kernel capture) and word size: check finds offsets left on items
    outside the stable tree, on the pairs process, and exits 1."""
    code, data = check_json(skipped)
    pairs_pid = next(p["pid"] for p in skipped.processes if p["role"] == "pairs")
    assert code == 1
    stale = [f for f in data["findings"] if f["check"] == "stale-offset"]
    assert stale and pairs_pid in {f["pid"] for f in stale}


def test_ktap(dump: Dump) -> None:
    """check --format ktap: a test per check, "not ok" exactly where JSON
    has error-level findings, "# SKIP" where it could judge nothing; the
    same exit code."""
    from conftest import parse_ktap

    code, data = check_json(dump)
    result = run_cli(*dump.args, "check", "--format", "ktap")
    assert result.exit_code == code
    ktap = parse_ktap(result.stdout)
    assert [r[2] for r in ktap["results"]] == data["checks"]
    failing = {f["check"] for f in data["findings"] if f["severity"] == "error"}
    assert {r[2] for r in ktap["results"] if not r[0]} == failing
    judged = {f["check"] for f in data["findings"]}
    assert {r[2] for r in ktap["results"] if r[3] == "SKIP"} == set(data["cannot_tell"]) - judged
    assert f"# Totals: pass:{len(data['checks']) - len(failing) - len(set(data['cannot_tell']) - judged)}" \
        in result.stdout


def test_no_stale_offset_where_resets_run() -> None:
    dump = BY_NAME["7.2-seed"]
    code, data = check_json(dump)
    assert code == 0
    assert not [f for f in data["findings"] if f["check"] in ("stale-offset", "overlay-garbage", "wrong-offset")]
    # the same items left the stable tree, keeping only their anon_vma (where
    # this drgn can look up slab objects of this kernel)
    if "stale-anon-vma" not in data["cannot_tell"]:
        assert sum(f["check"] == "stale-anon-vma" for f in data["findings"]) == \
            dump.truth["workload"]["pairs_written"] + dump.truth["workload"]["cow_written"]


def test_strict_and_only() -> None:
    dump = BY_NAME["7.2-seed-noreset"]
    only = run_cli(*dump.args, "check", "--only", "stale-offset", "--format", "json")
    import json
    data = json.loads(only.stdout)
    assert {f["check"] for f in data["findings"]} == {"stale-offset"} and only.exit_code == 1
    bad = run_cli(*dump.args, "check", "--only", "no-such-check")
    assert bad.exit_code == 2


# -- damage ------------------------------------------------------------------

def _items(dump: Dump, state: ItemState, role: str = "share", index: int | None = None):
    """The first process of *role* (of *index*, if given) holding items in *state*."""
    from ksminspect.mm import mm_owner

    prog = program_of(dump)
    w = Objects(prog)
    pids = [p["pid"] for p in dump.processes
            if p["role"] == role and index in (None, p.get("index"))]
    for slot, mm, items in w.mm_slots():
        if mm_owner(prog, mm).pid in pids:
            chosen = [i for i in items if i.state is state]
            if chosen:
                return prog, w, slot, mm, items, chosen
    raise AssertionError(f"no {role} process with {state.value} items")


def _stable_node(dump: Dump, chain: bool = False):
    prog = program_of(dump)
    w = Objects(prog)
    for node in w.tree_nodes():
        if node.is_chain == chain:
            return prog, w, node
    raise AssertionError("no such node")


def d_rmap_list_wild(dump):
    prog, w, slot, mm, items, _ = _items(dump, ItemState.NONE)
    it = items[3]
    return [(it.address + w.layout.rmap_item.rmap_list, word(0xFFFFC90000000000 - 0x1000))], \
        {"walk-damage", "global-counters"}, it.address


def d_rmap_owner(dump):
    prog, w, slot, mm, items, none = _items(dump, ItemState.NONE)
    _, _, _, other_mm, _, _ = _items(dump, ItemState.STABLE, index=2)
    assert other_mm != mm
    it = none[0]
    return [(it.address + w.layout.rmap_item.mm, word(other_mm))], {"rmap-owner"}, it.address


def d_rmap_order(dump):
    prog, w, slot, mm, items, none = _items(dump, ItemState.NONE)
    it = none[-1]
    return [(it.address + w.layout.rmap_item.address, word(it.raw_address - 0x100000))], \
        {"rmap-order"}, it.address


def d_rmap_flags(dump):
    prog, w, slot, mm, items, none = _items(dump, ItemState.NONE)
    it = none[0]
    return [(it.address + w.layout.rmap_item.address,
             word(it.raw_address | STABLE_FLAG | UNSTABLE_FLAG))], {"rmap-flags"}, it.address


def d_mm_counter(dump):
    prog, w, slot, mm, items, _ = _items(dump, ItemState.NONE)
    off = get_layout(prog).mm_struct.ksm_rmap_items
    return [(mm + off, word(len(items) + 1))], {"mm-counters"}, mm


def d_global_counter(dump):
    prog = program_of(dump)
    addr = prog["ksm_pages_shared"].address_
    return [(addr, word(int(dump.sysfs["pages_shared"]) + 1))], {"global-counters"}, None


def d_unstable_seqnr(dump):
    prog, w, slot, mm, items, unstable = _items(dump, ItemState.UNSTABLE)
    it = unstable[0]
    bad = (it.raw_address & ~0xFF) | ((it.seqnr + 7) & 0xFF)
    return [(it.address + w.layout.rmap_item.address, word(bad))], \
        {"unstable-seqnr", "unstable-tree"}, it.address


def d_stable_head(dump):
    prog, w, slot, mm, items, stable = _items(dump, ItemState.STABLE)
    it, other = stable[0], stable[5]
    return [(it.address + w.layout.rmap_item.head, word(other.head))], {"stable-membership"}, it.address


def d_hlist_len(dump):
    prog, w, node = _stable_node(dump)
    off = w.layout.stable_node.rmap_hlist_len
    return [(node.address + off, u32(node.rmap_hlist_len + 1))], {"hlist-len"}, node.address


def d_chain_dup_head(dump):
    prog, w, chain = _stable_node(dump, chain=True)
    dup = w.dups(chain.address)[0]
    return [(dup.address + w.layout.stable_node.head, word(w.layout.migrate_nodes))], {"chain"}, dup.address


def d_kpfn(dump):
    prog, w, node = _stable_node(dump)
    other = next(n for n in w.tree_nodes() if not n.is_chain and n.address != node.address)
    return [(node.address + w.layout.stable_node.kpfn, word(other.kpfn))], {"kpfn"}, node.address


def d_anon_vma(dump):
    prog, w, slot, mm, items, stable = _items(dump, ItemState.STABLE)
    it = stable[2]
    return [(it.address + w.layout.rmap_item.anon_vma, word(mm))], {"anon-vma"}, it.address


def d_stale_anon_vma(dump):
    prog, w, slot, mm, items, none = _items(dump, ItemState.NONE, role="pairs", index=0)
    it = none[0]
    return [(it.address + w.layout.rmap_item.anon_vma, word(mm + 8))], {"stale-anon-vma"}, it.address


def d_overlay_skips(dump):
    prog, w, slot, mm, items, unstable = _items(dump, ItemState.UNSTABLE)
    it = unstable[0]
    return [(it.address + w.layout.rmap_item.remaining_skips, bytes([200]))], {"overlay-garbage"}, it.address


def d_stale_offset(dump):
    prog, w, slot, mm, items, none = _items(dump, ItemState.NONE)
    it = none[0]
    return [(it.address + w.layout.rmap_item.offset, word(it.page_address >> 12))], \
        {"stale-offset", "overlay-garbage"}, it.address


def d_wrong_offset(dump):
    prog, w, slot, mm, items, stable = _items(dump, ItemState.STABLE)
    it = stable[1]
    return [(it.address + w.layout.rmap_item.offset, word(it.offset + 3))], {"wrong-offset"}, it.address


def d_vma_not_mergeable(dump):
    """Clear VM_MERGEABLE on the VMA of a sharer's stable items."""
    from drgn import Object
    from drgn.helpers.linux.mm import for_each_vma

    prog, w, slot, mm, items, stable = _items(dump, ItemState.STABLE)
    address = stable[0].page_address
    vma = next(v for v in for_each_vma(Object(prog, "struct mm_struct *", mm))
               if v.vm_start.value_() <= address < v.vm_end.value_())
    flags = vma.vm_flags.value_() & ~get_layout(prog).vm_mergeable
    return [(vma.vm_flags.address_, word(flags))], {"vma-mergeable"}, stable[0].address


def d_orphan(dump):
    prog, w, slot, mm, items, none = _items(dump, ItemState.NONE)
    it = none[1]
    prev = items[items.index(it) - 1]
    return [(prev.address + w.layout.rmap_item.rmap_list, word(it.rmap_list))], \
        {"orphans", "mm-counters", "global-counters"}, it.address


def d_mm_slot_prev(dump):
    prog = program_of(dump)
    w = Objects(prog)
    slot = w.mm_slots()[1][0]
    mm_node = slot + w.layout.mm_slot.mm_node
    return [(mm_node + w.layout.pointer_size, word(mm_node))], {"links"}, slot


def d_item_pprev(dump):
    prog, w, node = _stable_node(dump)
    item = w.hlist_items(node.address)[0]
    return [(item.address + w.layout.rmap_item.hlist + w.layout.pointer_size, word(item.address))], \
        {"links"}, item.address


def d_rb_parent(dump):
    prog, w, node = _stable_node(dump)
    wrong = node.address + 0x40  # colour bits kept
    return [(node.address + w.layout.stable_node.node, word(wrong | (node.rb_parent_color & 3)))], \
        {"links"}, node.address


def d_unstable_rb_parent(dump):
    prog = program_of(dump)
    w = Objects(prog)
    item = w.unstable_items()[0]
    return [(item.address + w.layout.rmap_item.node, word((item.head & ~3) + 0x40 | (item.head & 3)))], \
        {"links"}, item.address


def d_anon_vma_of_another(dump):
    """A sharer's stable item given the anon_vma of another process's item:
    a live anon_vma, whose interval tree links no VMA of the sharer."""
    prog, w, slot, mm, items, stable = _items(dump, ItemState.STABLE, index=0)
    _, _, _, other_mm, _, others = _items(dump, ItemState.STABLE, index=1)
    assert others[0].anon_vma != stable[0].anon_vma
    return [(stable[0].address + w.layout.rmap_item.anon_vma, word(others[0].anon_vma))], \
        {"rmap-walk"}, stable[0].address


def d_empty_anon_vma_tree(dump):
    """A stable item's anon_vma with an empty interval tree (rb_root NULL):
    rmap_walk_ksm() would reach none of its VMA's pages."""
    from ksminspect.layout import rmap_walk_layout

    prog, w, slot, mm, items, stable = _items(dump, ItemState.STABLE)
    root = stable[0].anon_vma + rmap_walk_layout(prog).anon_vma_rb_root
    return [(root, word(0))], {"rmap-walk"}, stable[0].address


def d_pte_of_a_foreign_ksm_page(dump):
    """A sharer's page table entry pointed at another KSM page, one whose
    stable node has no item of the sharer there."""
    from ksminspect.pagetable import page_tables

    prog, w, slot, mm, items, stable = _items(dump, ItemState.STABLE, index=0)
    it = stable[0]
    mine = {n.address for n in w.tree_nodes() if any(i.mm == mm and i.page_address == it.page_address
                                                     for i in w.hlist_items(n.address))}
    other = next(n for n in w.tree_nodes() if not n.is_chain and n.address not in mine)
    tables = page_tables(prog)
    entry = tables.entry_at(mm, it.page_address)
    old = int.from_bytes(prog.read(entry, 8, True), "little")
    new = (old & ~tables.fmt.low_mask) | (other.kpfn << 12)
    return [(Physical(entry), word(new))], {"rmap-walk"}, other.address


def d_offset_outside_the_vma(dump):
    """A stable item's vm_pgoff beyond its VMA's page offsets: the series'
    interval lookup at it misses the VMA."""
    prog, w, slot, mm, items, stable = _items(dump, ItemState.STABLE)
    it = stable[0]
    vma = Objects_vma(prog, mm, it.page_address)
    beyond = vma.vm_pgoff.value_() + ((vma.vm_end.value_() - vma.vm_start.value_()) >> 12) + 5
    return [(it.address + w.layout.rmap_item.offset, word(beyond))], {"rmap-walk", "wrong-offset"}, it.address


def Objects_vma(prog, mm: int, address: int):
    from drgn import Object
    from drgn.helpers.linux.mm import for_each_vma

    return next(v for v in for_each_vma(Object(prog, "struct mm_struct *", mm))
                if v.vm_start.value_() <= address < v.vm_end.value_())


def d_moved_vma_with_linear_offsets(dump):
    """What a kernel that stores the linear page index (the series' v8)
    holds after mremap() moved a VMA before its pages merged: vm_pgoff no
    longer vm_start >> PAGE_SHIFT, each stable item's offset vm_pgoff plus
    its page's place in the VMA. No finding: neither wrong-offset (which
    took address >> PAGE_SHIFT for the linear page index) nor rmap-walk."""
    prog, w, slot, mm, items, stable = _items(dump, ItemState.STABLE)
    vma = Objects_vma(prog, mm, stable[0].page_address)
    start, end = vma.vm_start.value_(), vma.vm_end.value_()
    moved = (start >> 12) + 0x12345
    patches = [(vma.vm_pgoff.address_, word(moved))]
    for it in stable:
        if start <= it.page_address < end:
            patches.append((it.address + w.layout.rmap_item.offset, word(moved + ((it.page_address - start) >> 12))))
    assert len(patches) > 2
    return patches, set(), None


DAMAGE: list[tuple[str, Callable]] = [
    ("6.12-numa", d_rmap_list_wild), ("6.12-numa", d_rmap_owner), ("6.12-numa", d_rmap_order),
    ("6.12-numa", d_rmap_flags), ("6.12-numa", d_mm_counter), ("6.12-numa", d_global_counter),
    ("6.12-numa", d_unstable_seqnr), ("6.12-numa", d_stable_head), ("6.12-numa", d_hlist_len),
    ("6.12-numa", d_chain_dup_head), ("6.12-numa", d_kpfn), ("6.12-numa", d_anon_vma),
    ("6.12-numa", d_stale_anon_vma), ("6.12-numa", d_overlay_skips), ("6.12-numa", d_orphan),
    ("6.12-numa", d_vma_not_mergeable),
    ("7.2-seed", d_stale_offset), ("7.2-seed", d_wrong_offset), ("5.10-chains", d_rmap_order),
    ("6.12-numa", d_mm_slot_prev), ("6.12-numa", d_item_pprev), ("6.12-numa", d_rb_parent),
    ("6.12-nonuma", d_unstable_rb_parent),
    ("6.12-numa", d_anon_vma_of_another), ("6.12-numa", d_pte_of_a_foreign_ksm_page),
    ("5.10-chains", d_pte_of_a_foreign_ksm_page), ("7.2-seed", d_offset_outside_the_vma),
    ("7.2-seed", d_moved_vma_with_linear_offsets), ("7.2-seed", d_empty_anon_vma_tree),
    ("6.12-numa", d_empty_anon_vma_tree),
]


@pytest.mark.parametrize("name,damage", DAMAGE, ids=[f"{n}-{d.__name__[2:]}" for n, d in DAMAGE])
def test_damage_gives_expected_finding(name: str, damage: Callable, tmp_path: Path) -> None:
    dump = BY_NAME[name]
    patches, expected, address = damage(dump)
    copy = damaged_copy(program_of(dump), dump.vmcore, tmp_path / "vmcore", patches)
    code, data = check_json(dump, str(copy))
    found = problems(data)
    assert {f["check"] for f in found} == expected, [f["message"] for f in found]
    assert code == (1 if any(f["severity"] == "error" for f in found) else 0)
    if address is not None:
        primary = sorted(expected)[0] if len(expected) == 1 else next(
            c for c in ("walk-damage", "rmap-owner", "unstable-seqnr", "stale-offset", "orphans", "rmap-walk")
            if c in expected)
        assert f"{address:#x}" in {f["address"] for f in found if f["check"] == primary}


# -- the registry ----------------------------------------------------------

def test_readme_table_is_the_registry() -> None:
    import re

    from ksminspect.checks import CHECKS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## What `check` verifies", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z-]+)` \| (.+?) \|$", section, re.M)
    assert rows == list(CHECKS.items())


def test_only_runs_the_walks_its_checks_need(monkeypatch) -> None:
    """--only rmap-order walks the rmap_lists alone, and finds there what
    the full run finds for it; every rule alone finds what it finds in the
    full run (on the dump with the seed's bug)."""
    import ksminspect.collect
    import ksminspect.slab
    from ksminspect.checks import RULES, run_checks

    dump = BY_NAME["7.2-seed-noreset"]
    prog = program_of(dump)
    full = run_checks(prog)
    for rule in RULES:
        alone = run_checks(prog, only=[rule.id])
        assert alone.findings == [f for f in full.findings if f.check == rule.id], rule.id

    def forbidden(*args, **kwargs):
        raise AssertionError("a walk --only rmap-order does not need")

    monkeypatch.setattr(ksminspect.collect, "_StableTrees", forbidden)
    monkeypatch.setattr(ksminspect.collect.Collection, "unstable", property(forbidden))
    monkeypatch.setattr(ksminspect.slab, "allocated_objects", forbidden)
    assert run_checks(prog, only=["rmap-order", "stale-offset"]).findings == \
        [f for f in full.findings if f.check in ("rmap-order", "stale-offset")]


@pytest.mark.parametrize("any_dump", DUMPS + PARTIAL_DUMPS, ids=lambda d: d.name)
def test_live_path_lists_what_the_dump_path_lists(any_dump: Dump) -> None:
    """The live path on a dump, where nothing moves: every finding the dump
    path lists, check by check and object by object, with its severity;
    nothing counted as changed while read."""
    from ksminspect.checks import check_live, run_checks
    from ksminspect.session import begin_session

    prog = program_of(any_dump)
    begin_session(prog)
    dump_path = run_checks(prog)
    begin_session(prog)
    live = check_live(prog)

    def key(f) -> tuple:
        return (f.check, f.severity.value, f.rule or "", f.address or 0)

    assert sorted(map(key, live.findings)) == sorted(map(key, dump_path.findings))
    assert live.stats["changed_while_read"] == 0
    assert live.cannot_tell == dump_path.cannot_tell


@pytest.mark.parametrize("moving", [True, False], ids=["read-wrong-once", "wrong-every-time"])
def test_live_a_back_link_read_wrong_once_is_motion(moving: bool, monkeypatch) -> None:
    """Live: an item's hlist pprev that the first walk reads as LIST_POISON2
    (it was unlinked between the reads of its predecessor and of itself, and
    the predecessor left behind: 6.12 churn-check-10's four false errors)
    but a walk taken again does not, is counted as changed while read, not
    listed; read so by every walk, it is a links error."""
    import ksminspect.collect
    from ksminspect.checks import check_live
    from ksminspect.program import open_program

    dump = BY_NAME["6.12-numa"]
    _, w, node = _stable_node(dump)
    item = w.hlist_items(node.address)[-1]
    pprev = item.address + w.layout.rmap_item.hlist + w.layout.pointer_size
    prog = open_program(str(dump.vmcore), [str(dump.debug)])  # its own: the overlay stays here
    page = pprev & ~0xFFF
    memory = bytes(prog.read(page, 0x1000))
    damaged = memory[:pprev - page] + word(0xDEAD000000000122) + memory[pprev - page + 8:]
    collections = []
    real_init = ksminspect.collect.Collection.__init__

    def counted(self, *args, **kwargs) -> None:
        collections.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(ksminspect.collect.Collection, "__init__", counted)

    def read(address: int, count: int, offset: int, physical: bool) -> bytes:
        then = damaged if len(collections) <= 1 or not moving else memory
        return then[offset:offset + count]

    prog.add_memory_segment(page, 0x1000, read)
    report = check_live(prog, only=["links"])
    links = [f for f in report.findings if f.check == "links"]
    if moving:
        assert links == [] and report.stats["changed_while_read"] == 1, (len(collections), report.stats)
    else:
        assert [(f.severity.value, f.address) for f in links] == [("error", item.address)]
        assert "0xdead000000000122" in links[0].message
    assert len(collections) == (2 if moving else 3)  # taken again until the walks agree, or 3 times


def test_a_rule_that_fails_is_cannot_tell_alone(monkeypatch) -> None:
    """A rule that raises: "cannot tell: internal error in RULE" for that
    rule alone; every other rule runs and reports as before."""
    import dataclasses

    from ksminspect.checks import engine, run_checks
    from ksminspect.session import begin_session

    prog = program_of(BY_NAME["7.2-seed-noreset"])
    begin_session(prog)
    before = run_checks(prog)

    def broken(ctx, out) -> None:
        out.add(engine.Severity.ERROR, 1, "half done")
        raise IndexError("index 0 is out of bounds for axis 0 with size 0")

    monkeypatch.setattr(engine, "RULES", [dataclasses.replace(r, run=broken) if r.id == "stale-offset" else r
                                          for r in engine.RULES])
    begin_session(prog)
    after = run_checks(prog)
    assert after.cannot_tell["stale-offset"] == ("internal error in stale-offset: IndexError: index 0 is "
                                                 "out of bounds for axis 0 with size 0")
    assert [f for f in after.findings if f.check == "stale-offset"] == []
    assert [f.key for f in after.findings] == [f.key for f in before.findings if f.check != "stale-offset"]


def test_vmas_of_an_mm_that_has_none() -> None:
    """An mm whose owner has exited keeps its rmap_items, but its VMAs are
    gone: every address is in no VMA (the live churn's IndexError)."""
    import numpy as np

    from ksminspect.lookups import Vmas

    empty = np.zeros(0, np.uint64)
    vmas = Vmas(empty, empty, empty, empty, empty, empty, np.zeros(0, bool))
    at = vmas.at(np.array([0x7F0000001000, 0x1000], np.uint64))
    assert at.tolist() == [-1, -1]
    assert vmas.take("pgoff", at, 0).tolist() == [0, 0]
    assert vmas.take("mergeable", at, False).tolist() == [False, False]


# -- what a reader sees first ---------------------------------------------

def _check_table(dump: Dump, *more: str, columns: int = 80) -> tuple[int, str]:
    import os
    import subprocess

    from test_errors import KSMINSPECT

    r = subprocess.run([KSMINSPECT, *dump.args, "check", *more], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, COLUMNS=str(columns)))
    assert "Traceback" not in r.stderr
    return r.returncode, r.stdout


def test_check_leads_with_the_verdict_on_one_screen() -> None:
    """7.2-seed-noreset: the first line is the verdict with the counts, the
    next the failing checks, worst first, with how sure; the whole default
    output fits 80 columns by 50 lines; alike findings are one line each."""
    dump = BY_NAME["7.2-seed-noreset"]
    code, text = _check_table(dump)
    lines = text.splitlines()
    # stale-anon-vma's 40 info findings where this drgn can look up this
    # kernel's slab objects (drgn 0.1.0 cannot on 7.2: "cannot tell")
    slab = "cannot tell (stale-anon-vma)" not in text
    assert code == 1
    assert lines[0] == f"KSM is not healthy: 2 of 21 checks fail: 56 errors, 0 warnings, {40 if slab else 0} info"
    table = "\n".join(lines[1:9])
    assert table.index("overlay-garbage") < table.index("stale-offset")
    assert not slab or table.index("stale-offset") < table.index("stale-anon-vma")
    assert "certain (the dump)" in table and "exact" in table
    assert len(lines) <= 50 and max(map(len, lines)) <= 80, text
    # the evidence: 40 overlay-garbage errors in 3 lines, 16 stale-offset in 1, no info listed
    assert text.count("[8 alike: ") == 1 and text.count("[16 alike: ") == 3
    assert "keeps the anon_vma" not in text
    assert not slab or "not listed: 40 findings below --severity warning (stale-anon-vma 40)" in " ".join(text.split())


def test_check_unfolds_every_finding_with_v() -> None:
    dump = BY_NAME["7.2-seed-noreset"]
    _, data = check_json(dump)
    code, text = _check_table(dump, "-v", columns=400)
    assert code == 1 and "alike" not in text
    for f in data["findings"]:
        assert f["message"] in text
    assert "KSM is not healthy" in text.splitlines()[0]


def test_a_healthy_verdict_and_limit_in_ktap() -> None:
    dump = BY_NAME["6.12-numa"]
    code, text = _check_table(dump)
    assert code == 0 and text.splitlines()[0].startswith("KSM is healthy: 0 errors, 0 warnings, ")
    from conftest import parse_ktap

    bad = BY_NAME["7.2-seed-noreset"]
    for limit, shown in ((None, 3), ("1", 1)):
        result = run_cli(*bad.args, "check", "-f", "ktap", *(["--limit", limit] if limit else []))
        parse_ktap(result.stdout)
        block = result.stdout.split("# overlay-garbage:")[1].split("not ok")[0]
        assert block.count("# error: ") == shown, block
        assert result.stdout.splitlines()[2].startswith("# KSM is not healthy")


def test_the_certain_fail_first() -> None:
    """Ordering logic alone (beside the real-dump tests above): on a live
    kernel a check whose findings a race may explain comes after one whose
    findings were read again unchanged, however many it has."""
    from ksminspect.checks import CheckReport, Finding, Severity
    from ksminspect.commands.check import certainty, verdict

    racy = [Finding("links", Severity.ERROR, a, "m", transient=True) for a in (1, 2, 3)]
    sure = [Finding("stale-offset", Severity.ERROR, 4, "m", rule="exact overlay match")]
    head, failing = verdict(CheckReport(findings=racy + sure), ["links", "stale-offset"], False, True)
    assert failing == ["stale-offset", "links"]
    assert head == "KSM is not healthy (live kernel): 2 of 2 checks fail: 4 errors, 0 warnings, 0 info"
    assert certainty(sure, True) == "certain (read again); rule: exact overlay match"
    assert certainty(racy, True) == "likely (read again; a race with KSM still possible)"
    assert certainty(sure, False) == "certain (the dump); rule: exact overlay match"
