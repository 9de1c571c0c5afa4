"""The collection (ksminspect/collect.py) on every dump, against the
kernel's own counters recorded when it was taken: the rmap_lists' items,
each mm's counters as gathered rows, the stable trees' pages and sharers,
the unstable trees; and the row lookups the checks' evidence uses."""

from __future__ import annotations

import numpy as np

from conftest import Dump, program_of

from ksminspect.collect import UNSTABLE, walked_counts
from ksminspect.mm import mm_owner
from ksminspect.session import begin_session


def collection(dump: Dump):
    prog = program_of(dump)
    return prog, begin_session(prog).collect("stable_trees", "unstable_trees")


def test_walks_equal_the_kernel_counters(dump: Dump) -> None:
    _, c = collection(dump)
    counts = walked_counts(c, "stable_node_chains" in dump.sysfs)
    for name in ("pages_shared", "pages_sharing", "pages_unshared", "stable_node_chains",
                 "stable_node_dups"):
        if name in dump.sysfs:
            assert counts[name] == int(dump.sysfs[name]), name
    assert c.rmap_list_damage == [] and c.tree_damage == []
    assert len(c.unstable[0]) == int(dump.sysfs["pages_unshared"])
    assert np.all(c.state[c.unstable[0]] == UNSTABLE)


def test_mm_rows_are_each_process_ksm_stat(dump: Dump) -> None:
    prog, c = collection(dump)
    names = c.mm_rows.dtype.names
    stat = {p["pid"]: p.get("ksm_stat", {}) for p in dump.processes}
    checked = 0
    for i, run in enumerate(c.runs):
        pid = mm_owner(prog, run.mm).pid
        for key, value in stat.get(pid, {}).items():
            if key in names:
                assert int(c.mm_rows[key][i]) == int(value), (pid, key)
                checked += 1
        if "ksm_rmap_items" in names:
            assert int(c.mm_rows["ksm_rmap_items"][i]) == run.stop - run.start
    assert checked or not any(stat.values())


def test_rows_of_addresses(dump: Dump) -> None:
    _, c = collection(dump)
    if not c.walked:
        return
    rows = np.array([0, c.walked - 1, c.walked // 2])
    assert c.item_rows(c.item_address[rows]).tolist() == rows.tolist()
    assert c.item_rows(np.array([1], np.uint64)).tolist() == [-1]
    nodes = c.nodes
    if len(nodes):
        assert nodes.index_of(nodes.address[:3]).tolist() == list(range(min(3, len(nodes))))
    records = c.item_records(rows)
    assert [r.address for r in records] == c.item_address[rows].tolist()
    assert [r.state.number for r in records] == c.state[rows].tolist()


def test_hlists_hold_what_the_kernel_says(dump: Dump) -> None:
    _, c = collection(dump)
    nodes = c.nodes
    lens = nodes.rows["rmap_hlist_len"] if "rmap_hlist_len" in nodes.rows.dtype.names else None
    if lens is not None:
        holds = nodes.holds_page
        assert (nodes.hlist_len[holds] == lens[holds]).all()
    assert c.bad_links == []
