"""ksminspect explain on every dump: each process's pages by state add up to
what its page tables hold, by the kernel's own counters (MM_ANONPAGES,
ksm_merging_pages, ksm_zero_pages); cgroups sum their processes."""

from __future__ import annotations

import json

import pytest

from conftest import Dump, program_of, run_on

STATES = ("merged", "zero", "unstable", "volatile", "skipped", "never_scanned")


def explain_json(dump: Dump, *args: str):
    """explain's document, or None where it says it cannot tell (exit 2)."""
    result = run_on(dump, "explain", *args, "-f", "json")
    if result.exit_code == 2:
        assert result.stderr.startswith("ksminspect: cannot tell: ") and not result.stdout
        return None
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_pages_by_state_add_up_to_the_kernels_counters(dump: Dump) -> None:
    from drgn.helpers.linux.pid import find_task

    data = explain_json(dump)
    if data is None:
        pytest.skip("explain cannot tell on this dump (said in one sentence)")
    prog = program_of(dump)
    try:
        from drgn.helpers.linux.mm import task_rss
    except ImportError:
        task_rss = None  # drgn before 0.0.26
    told = [p for p in data["processes"] if p["cannot_tell"] is None]
    assert told, data
    # KSM's own objects, as the kernel counts them
    from ksminspect.counters import read_counters

    counted = read_counters(program_of(dump)).get("rmap_items")
    assert counted is None or data["metadata"]["rmap_items"] == counted
    nodes = int(dump.sysfs["pages_shared"]) + int(dump.sysfs.get("stable_node_chains", 0))
    assert data["metadata"]["stable_nodes"] >= nodes
    for p in told:
        pages = {k: v["pages"] for k, v in p["pages"].items()}
        assert sum(pages.values()) == p["total"]
        assert abs(sum(v["share"] for v in p["pages"].values()) - 1) < 0.01 or p["total"] == 0
        stat = p["ksm_stat"]
        if "ksm_merging_pages" in stat:  # the kernel counts stable rmap_items, page or not
            assert pages["merged"] + p["rmap_items_without_page"].get("stable", 0) == \
                stat["ksm_merging_pages"], p
        if "ksm_zero_pages" in stat:  # the workload writes every page it maps
            assert pages["zero"] == stat["ksm_zero_pages"], p
        if task_rss is not None and p["pid"] is not None:
            # counted independently: the kernel's own MM_ANONPAGES holds every
            # resident anonymous page, KSM's and not, and never the zero page
            rss = task_rss(find_task(prog, p["pid"]))
            assert p["total"] - pages["zero"] - p["hugetlb_pages"] == rss.anon, (p["pid"], p["pages"], rss)
        assert p["merged_in_chain"] <= pages["merged"] and p["merged_written"] <= pages["merged"]


def test_by_vma_adds_up_to_the_process_and_by_cgroup_to_its_processes(dump: Dump) -> None:
    by_vma = explain_json(dump, "--by", "vma")
    if by_vma is None:
        pytest.skip("explain cannot tell on this dump")
    for p in by_vma["processes"]:
        if p["cannot_tell"]:
            continue
        for state in STATES:
            assert sum(v["pages"][state] for v in p["vmas"]) == p["pages"][state]["pages"]
        assert sum(v["resident"] + v["hugetlb"] for v in p["vmas"] if not v["mergeable"]) == \
            p["pages"]["not_mergeable"]["pages"]
        assert all(v["why_not"] for v in p["vmas"] if not v["mergeable"])
        assert all(v["why_not"] is None for v in p["vmas"] if v["mergeable"])
    groups = explain_json(dump, "--by", "cgroup")
    told = [p for p in groups["processes"] if not p["cannot_tell"]]
    for g in groups["cgroups"]:
        mine = [p for p in told if (p["cgroup"] or "?") == g["cgroup"]]
        assert g["processes"] == len([p for p in groups["processes"] if (p["cgroup"] or "?") == g["cgroup"]])
        for state in STATES + ("not_mergeable",):
            assert g["pages"].get(state, 0) == sum(p["pages"][state]["pages"] for p in mine)


def test_advice_is_tied_to_the_numbers() -> None:
    """Pure logic: a line per notable share, each naming its numbers."""
    from collections import Counter

    from ksminspect.explain import ProcessPages, ScanPace, VmaPages, advice

    p = ProcessPages(pid=7, comm="qemu", mm=0x1000, cgroup="/vm-a")
    p.vmas = [VmaPages(0x1000, 0x7d000, 0x80100073, "", True, None, resident=120,
                       pages=Counter(merged=20, never_scanned=62, volatile=38)),
              VmaPages(0x80000, 0x90000, 0x100073, "[heap]", False, "not MADV_MERGEABLE", resident=10)]
    p.pages.update(p.vmas[0].pages)
    pace = ScanPace(run=1, pages_to_scan=100, sleep_millisecs=20, pages=240000)
    lines = advice(p, pace, 256)
    assert lines[0] == ("52% of its mergeable pages were never scanned: a full scan of 240000 "
                        "pages takes about 48 s at pages_to_scan=100, sleep_millisecs=20")
    assert lines[1] == "32% of its mergeable pages are volatile: their content changed between " \
                       "two scans, faster than a full scan (about 48 s)"
    assert len(lines) == 2


def test_explain_shows_each_share_as_the_workload_made_it() -> None:
    """vmcores/6.12-explain: ksm-explain0 has one mergeable VMA of four
    regions (merged, unique, volatile, and one ksmd stopped in the middle
    of), a mergeable VMA of a transparent huge page (unique content: its 512
    pages unstable, 511 of them tail pages), an anonymous VMA never
    madvised, and a hugetlb VMA; sharers in two memory cgroups. explain
    shows each as the workload recorded it."""
    from conftest import DUMPS

    dump = next((d for d in DUMPS if d.name == "6.12-explain"), None)
    if dump is None:
        pytest.skip("vmcores/6.12-explain is not here")
    made = next(p for p in dump.processes if p["role"] == "explain")
    regions = made["explain"]["regions"]
    n = {name: r["pages"] for name, r in regions.items()}
    reached = made["explain"]["unscanned_pages_with_rmap_items"]
    data = explain_json(dump, "--by", "vma", "--pid", str(made["pid"]))
    if data is None:
        pytest.skip("explain cannot tell with this drgn (said in one sentence)")
    p = data["processes"][0]
    vma = {v["start"]: v for v in p["vmas"]}
    mergeable = vma[regions["merged"]["start"]]
    assert mergeable["end"] == regions["unscanned"]["end"] and mergeable["mergeable"]
    # the pages ksmd reached before it stopped were seen once: in no tree (volatile)
    assert mergeable["pages"] == {"merged": n["merged"], "zero": 0, "unstable": n["unique"],
                                  "volatile": n["volatile"] + reached, "skipped": 0,
                                  "never_scanned": n["unscanned"] - reached}
    assert p["never_scanned_ahead"] == n["unscanned"] - reached  # the cursor stopped before them
    plain = vma[regions["unmergeable"]["start"]]
    assert not plain["mergeable"] and plain["why_not"] == "not MADV_MERGEABLE"
    assert plain["resident"] == n["unmergeable"]
    huge = vma[regions["hugetlb"]["start"]]
    assert not huge["mergeable"] and "hugetlb" in huge["why_not"]
    assert huge["hugetlb"] == n["hugetlb"] * regions["hugetlb"]["page_size"] // dump.truth["page_size"]
    assert p["hugetlb_pages"] == huge["hugetlb"]
    thp = vma[regions["thp"]["start"]]  # tail pages are anonymous: their head says so
    assert thp["mergeable"] and thp["pages"]["unstable"] == n["thp"] == 512
    assert p["cgroup"] == made["cgroup"]
    shares = {k: v["pages"] for k, v in p["pages"].items()}
    assert shares["never_scanned"] == n["unscanned"] - reached and shares["merged"] == n["merged"]
    mergeable = n["merged"] + n["unique"] + n["volatile"] + n["unscanned"] + n["thp"]
    assert sum(shares[s] for s in STATES) == mergeable
    waiting = (n["unique"] + n["thp"]) / mergeable
    assert f"{waiting:.0%} of its mergeable pages wait in the unstable tree with no partner yet: " \
        "their content is unique so far" in p["advice"]
    untouched = shares["not_mergeable"]
    assert any(line.startswith(f"{untouched / p['total']:.0%} ({untouched} pages) are in VMAs KSM "
                               f"will not touch (hugetlb, do not expand: {huge['hugetlb']}")
               for line in p["advice"]), p["advice"]
    groups = explain_json(dump, "--by", "cgroup")
    by_name = {g["cgroup"]: g for g in groups["cgroups"]}
    for cgroup in {pr["cgroup"] for pr in dump.processes if pr.get("cgroup")}:
        pids = {pr["pid"] for pr in dump.processes if pr.get("cgroup") == cgroup}
        shown = [q for q in groups["processes"] if q["pid"] in pids]
        assert by_name[cgroup]["processes"] == len(shown) > 0


def test_explain_filters_by_cgroup_and_says_when_nothing_matched() -> None:
    from conftest import DUMPS

    dump = next((d for d in DUMPS if d.name == "6.12-explain"), None)
    if dump is None:
        pytest.skip("vmcores/6.12-explain is not here")
    for cgroup in ("/vm-a", "/vm-b"):
        want = {p["pid"] for p in dump.processes if p.get("cgroup") == cgroup}
        shown = explain_json(dump, "--cgroup", cgroup)
        if shown is not None:  # None: this drgn cannot walk the page tables (said)
            assert {p["pid"] for p in shown["processes"]} == want and want
    for args, sentence in ((["--cgroup", "/vm"], "no process of ksm_mm_head in cgroup /vm"),
                           (["--pid", "1"], "process 1: not on ksm_mm_head (KSM does not scan it)")):
        result = run_on(dump, "explain", *args)
        assert result.exit_code == 0 and result.stderr == f"ksminspect: nothing matched: {sentence}\n"
