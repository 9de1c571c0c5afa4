"""summary against the kernel's own counters, recorded in each dump."""

from __future__ import annotations

from conftest import Dump, run_json

# Counters that ksmd changes only while it runs; the guest stopped it first.
WALKABLE = ("rmap_items", "pages_shared", "pages_sharing", "pages_unshared",
            "pages_volatile", "stable_node_chains", "stable_node_dups",
            "ksm_zero_pages", "general_profit")


def test_counters_equal_sysfs(dump: Dump) -> None:
    data = run_json(*dump.args, "summary")
    counters = data["counters"]
    compared = 0
    for name, value in dump.sysfs.items():
        if name in counters:
            assert counters[name] == int(value), name
            compared += 1
    assert compared >= 7  # every counter a kernel of 5.10 or later has


def test_tunables_equal_sysfs(dump: Dump) -> None:
    data = run_json(*dump.args, "summary")
    for name, value in data["tunables"].items():
        assert str(value) == dump.sysfs[name], name


def test_walk_equals_counters(dump: Dump) -> None:
    data = run_json(*dump.args, "summary")
    assert data["walked"]["rmap_items"] == data["counters"]["rmap_items"]
    for name in WALKABLE:
        if name in data["counters"]:
            assert data["walked"][name] == data["counters"][name], name
    assert data["damage"] == []


def test_rmap_items_equal_per_process_sum(dump: Dump) -> None:
    """ksm_rmap_items is the sum of the live processes' ksm_stat (v6.1+)."""
    stats = [p["ksm_stat"] for p in dump.processes if not p["exited"] and "ksm_stat" in p]
    if not stats:
        return
    data = run_json(*dump.args, "summary")
    assert data["counters"]["rmap_items"] == sum(int(s["ksm_rmap_items"]) for s in stats)
