"""mm, rmap, stable-tree, unstable-tree and page on every dump, against the
counters each dump's guest recorded."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import Dump, cannot_tell_or_json, program_of, run_cli, run_json


def test_mm_equals_ksm_stat(dump: Dump) -> None:
    data = run_json(*dump.args, "mm")
    by_pid = {s["pid"]: s for s in data["mm_slots"]}
    live = [p for p in dump.processes if not p["exited"]]
    assert live
    for p in live:
        slot = by_pid.get(p["pid"])
        if slot is None:
            # a process whose pages all became zero pages: no slot holds items
            assert p.get("ksm_stat", {}).get("ksm_rmap_items", "0") == "0" or p["role"] == "zero"
            continue
        assert slot["comm"] == p["comm"]
        assert slot["exited"] is False
        if "ksm_merging_pages" in p and p["ksm_merging_pages"] >= 0:
            assert slot["ksm_stat"]["ksm_merging_pages"] == p["ksm_merging_pages"]
            assert slot["items"]["stable"] == p["ksm_merging_pages"]
        for key, value in p.get("ksm_stat", {}).items():
            if key in slot["ksm_stat"]:
                assert slot["ksm_stat"][key] == int(value), (p["pid"], key)
        if "ksm_rmap_items" in p.get("ksm_stat", {}):
            assert sum(slot["items"].values()) == int(p["ksm_stat"]["ksm_rmap_items"])
    exited = {p["pid"] for p in dump.processes if p["exited"]}
    assert not exited & {s["pid"] for s in data["mm_slots"] if not s["exited"]}


def test_stable_tree_equals_counters(dump: Dump) -> None:
    data = run_json(*dump.args, "stable-tree")
    totals = data["totals"]
    assert totals["pages_shared"] == int(dump.sysfs["pages_shared"])
    assert totals["pages_sharing"] == int(dump.sysfs["pages_sharing"])
    assert totals["chains"] == int(dump.sysfs["stable_node_chains"])
    assert totals["dups"] == int(dump.sysfs["stable_node_dups"])
    assert data["damage"] == []
    for tree in data["trees"]:
        for node in tree["nodes"]:
            for entry in node["dups"] or [node]:
                assert all(s["state"] == "stable" for s in entry["sharers"])


def test_stable_tree_has_chain_beyond_max_page_sharing(dump: Dump) -> None:
    """The workload shares sharers*chain copies of one page; beyond
    max_page_sharing that is a chain whose dups hold at most that many."""
    work = dump.truth["workload"]
    limit = int(dump.sysfs["max_page_sharing"])
    copies = work["sharers"] * work["chain"]
    if copies <= limit:
        pytest.skip("this workload makes no chain")
    data = run_json(*dump.args, "stable-tree")
    chains = [n for t in data["trees"] for n in t["nodes"] if n["kind"] == "chain"]
    assert chains
    for chain in chains:
        assert chain["rmap_hlist_len"] == -1024
        for dup in chain["dups"]:
            assert 0 < len(dup["sharers"]) <= limit


def test_stable_tree_filters(dump: Dump) -> None:
    share1 = dump.sharer(1)
    pid = share1["pid"]
    data = run_json(*dump.args, "stable-tree", "--pid", str(pid))
    pages = [e for t in data["trees"] for n in t["nodes"] for e in (n["dups"] or [n])]
    assert all(any(s["pid"] == pid for s in e["sharers"]) for e in pages)
    if share1["ksm_merging_pages"] >= 0:  # 5.19+
        mine = sum(1 for e in pages for s in e["sharers"] if s["pid"] == pid)
        assert mine == share1["ksm_merging_pages"]
    many = run_json(*dump.args, "stable-tree", "--min-sharers", "1000")
    assert many["totals"]["pages_shared"] == 0


def test_rmap_states_match_counters(dump: Dump) -> None:
    data = run_json(*dump.args, "rmap")
    states = Counter(i["state"] for i in data["items"])
    assert len(data["items"]) == sum(1 for _ in data["items"])
    assert states["stable"] == int(dump.sysfs["pages_shared"]) + int(dump.sysfs["pages_sharing"])
    assert states["unstable"] == int(dump.sysfs["pages_unshared"])
    assert states["both"] == 0
    for item in data["items"]:
        if item["state"] == "stable":
            assert {"anon_vma", "head", "hlist_next"} <= set(item["fields"])
        if item["state"] == "unstable":
            assert item["fields"]["seqnr"] is not None


def test_rmap_filters(dump: Dump) -> None:
    pid = dump.sharer()["pid"]
    data = run_json(*dump.args, "rmap", "--pid", str(pid), "--state", "stable", "--all-fields")
    assert data["items"]
    assert {i["pid"] for i in data["items"]} == {pid}
    assert {i["state"] for i in data["items"]} == {"stable"}
    assert all("other" in i for i in data["items"])
    mm = data["items"][0]["mm"]
    by_mm = run_json(*dump.args, "rmap", "--mm", mm, "--state", "stable")
    assert by_mm["items"] == [{k: v for k, v in i.items() if k != "other"} for i in data["items"]]


def test_unstable_tree_equals_pages_unshared(dump: Dump) -> None:
    data = run_json(*dump.args, "unstable-tree")
    seqnr = data["tree_seqnr"]
    at_head = run_json(*dump.args, "mm")["cursor"]["at_head"]
    assert seqnr == (data["seqnr"] - at_head) & 0xFF
    items = [i for t in data["trees"] for i in t["items"]]
    # Every unstable item with the trees' seqnr is in a tree; older ones are
    # only flagged until ksmd revisits them (the trees were reset).
    current = [i for i in run_json(*dump.args, "rmap", "--state", "unstable")["items"]
               if i["fields"]["seqnr"] == seqnr]
    assert len(items) == len(current)
    assert all(i["state"] == "unstable" and i["fields"]["seqnr"] == seqnr for i in items)
    if dump.truth["workload"].get("numa") and dump.sysfs.get("merge_across_nodes") == "0":
        assert len(data["trees"]) >= 2


def test_page_of_ksm_page_and_of_cow_broken_page(dump: Dump) -> None:
    """From a KSM page to its node and sharers, by pfn and by address; where
    the drgn helper it needs cannot run on the kernel (tests/test_configs.py
    names those dumps), a "cannot tell" refusal and nothing else."""
    tree = run_json(*dump.args, "stable-tree")
    node = next(e for t in tree["trees"] for n in t["nodes"] for e in (n["dups"] or [n]))
    sharer = node["sharers"][0]
    by_pfn = cannot_tell_or_json(dump, "page", node["kpfn"][2:])  # hex without 0x, as crash prints PFNs
    if by_pfn is not None:
        assert by_pfn["ksm"] is True
        assert by_pfn["node"]["address"] == node["address"]
        assert "is a KSM page" in run_cli(*dump.args, "page", node["kpfn"]).output
        dup = next((d for t in tree["trees"] for n in t["nodes"] for d in n["dups"] or []), None)
        if dup is not None:  # a dup drawn alone is counted as what it is
            table = run_cli(*dump.args, "page", dup["kpfn"]).output
            assert "it is a dup of chain" in table and "nodes 0, chains 0, dups 1, pages_shared 1" in table
        by_struct_page = run_json(*dump.args, "page", by_pfn["page"])  # as crash's kmem -p takes it
        assert by_struct_page["pfn"] == node["kpfn"] and by_struct_page["ksm"] is True
    by_address = cannot_tell_or_json(dump, "page", "--pid", str(sharer["pid"]), sharer["page_address"])
    if by_address is not None:
        assert by_address["ksm"] is True and by_address["pfn"] == node["kpfn"]
        assert [i["address"] for i in by_address["items"]] == [sharer["address"]]




def test_every_command_has_help() -> None:
    from ksminspect.commands.main import cli

    for name in cli.commands:
        result = run_cli(name, "--help")
        assert result.exit_code == 0
        assert "Example" in result.output, name


def test_snapshot_and_diff(dump: Dump, tmp_path) -> None:
    """A snapshot holds every item and stable page the kernel counts, written
    as json.dumps() would; two of the same dump differ in nothing."""
    import json

    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        assert run_cli(*dump.args, "snapshot", str(path)).exit_code == 0
    text = paths[0].read_text()
    data = json.loads(text)
    assert json.dumps(data) + "\n" == text
    assert len(data["items"]) == int(dump.sysfs["rmap_items"] if "rmap_items" in dump.sysfs
                                      else len(data["items"]))
    states = Counter(i["state"] for i in data["items"])
    assert states["unstable"] == int(dump.sysfs["pages_unshared"])
    shared = [p for p in data["stable_pages"] if p["sharers"]]
    assert len(shared) == int(dump.sysfs["pages_shared"])
    diff = run_json("diff", *map(str, paths))
    assert diff["new_findings"] == [] and diff["leaked"]["orphans"] == []
    # the dump's own time: the kernel's clock when it was dumped, not this run's
    from ksminspect.layout import wall_clock

    import time
    clock = wall_clock(program_of(dump))
    if clock is not None:
        assert data["clock"] == "kernel"
        assert data["taken"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock))


def test_diff_across_kernels_warns_and_shows_missing_counters(tmp_path) -> None:
    from conftest import DUMPS

    old = next(d for d in DUMPS if d.name == "5.10-chains")
    new = next(d for d in DUMPS if d.name == "7.2-seed")
    paths = [tmp_path / "old.json", tmp_path / "new.json"]
    for d, path in zip((old, new), paths):
        assert run_cli(*d.args, "snapshot", str(path)).exit_code == 0
    result = run_cli("diff", *map(str, paths))
    assert result.exit_code == 0
    assert ("ksminspect: warning: the snapshots are of different kernels (5.10.223 and 7.2.13): "
            "objects and counters do not carry over") in result.stderr
    counters = run_json("diff", *map(str, paths))["counters"]
    assert counters["general_profit"]["before"] is None and counters["general_profit"]["delta"] is None
    assert "(not in this kernel)" in result.stdout


def test_json_texts_keep_what_json_dumps_keeps() -> None:
    """The JSON that stable-tree and snapshot write from columns is what
    json.dumps() writes, whatever a process calls itself (pure rendering,
    beside the per-dump tests above)."""
    import json

    from ksminspect.commands.records import item_template, node_text
    from ksminspect.decode import NodeKind
    from ksminspect.stable import Sharers, StableTreeNode

    comm = 'a "50%s" \\ \u00e9'
    item = json.loads(item_template(7, comm) % (0xFFFF888100000040, 0xFFFF888100001000,
                                                0x7F0000001000, "stable"))
    assert item == {"address": "0xffff888100000040", "pid": 7, "comm": comm,
                    "mm": "0xffff888100001000", "page_address": "0x7f0000001000", "state": "stable"}
    assert json.loads(item_template(None, None) % (1, 2, 3, "none"))["comm"] is None
    columns = ([0xFFFF888100000040], [0xFFFF888100001000], [7], [comm], [0x7F0000001000], ["stable"])
    node = StableTreeNode(node=0xFFFF888100002000, kind=NodeKind.NODE, tree_nid=0, nid=None, kpfn=0x1234,
                          chain_prune_time=None, rmap_hlist_len=1, sharers=Sharers(columns, 0, 1))
    text = node_text(node)
    data = json.loads(text)
    assert json.dumps(data) == text
    assert data["sharers"] == [{"address": "0xffff888100000040", "mm": "0xffff888100001000", "pid": 7,
                                "comm": comm, "page_address": "0x7f0000001000", "state": "stable"}]
    assert list(node.sharers)[0].comm == comm and node.sharers[-1].pid == 7


def test_item_texts_are_item_json(dump: Dump) -> None:
    """rmap's and unstable-tree's JSON made from the columns is, text for
    text, json.dumps() of the record each rmap_item's view makes."""
    import json as json_

    import numpy as np

    from ksminspect.commands.records import item_json, item_texts, owner_json
    from ksminspect.mm import mm_owner
    from ksminspect.session import begin_session

    prog = program_of(dump)
    c = begin_session(prog).collect("unstable_trees")
    has_offset = c.layout.rmap_item.offset is not None
    rows = np.arange(len(c.item_address))
    owners = [mm_owner(prog, mm) for mm in c.items["mm"].tolist()]
    texts = item_texts(c, rows, [owner_json(o) for o in owners], has_offset)
    assert texts == [json_.dumps(item_json(i, o, has_offset)) for i, o in zip(c.item_records(rows), owners)]
