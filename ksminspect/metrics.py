"""What ``explain`` and ``check`` know, as metric families for Prometheus.

One session reads KSM once (the checks' walks, then each process's page
tables through :func:`ksminspect.explain.explain`), and the families are
plain records: a name, a type, a help text and samples of labels and a
value. ``commands/metrics.py`` renders them in the text format node_exporter's
textfile collector reads.

Cardinality is bounded: series per process only for the *max_processes*
processes with the most mergeable memory (the rest summed as one), per memory
cgroup, per check and severity; never per rmap_item or page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import drgn
import numpy as np

from ksminspect.explain import STATES, ProcessPages, explain, scan_pace
from ksminspect.layout import get_layout

if TYPE_CHECKING:
    from ksminspect.checks import CheckReport

# explain's states, and memory KSM will not touch: the values of label "state"
MEMORY_STATES = STATES + ("not_mergeable",)
SEVERITIES = ("error", "warning", "info")
OTHERS = "(others)"  # the comm of the one series summing the processes left out


@dataclass
class Family:
    """One metric family: ``name`` in base units (``_bytes``, ``_seconds``,
    a counter's ``_total``), with HELP and TYPE."""

    name: str
    type: str  # "gauge" or "counter"
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: object) -> None:
        self.samples.append(({k: "" if v is None else str(v) for k, v in labels.items()}, float(value)))


def _pages(p: ProcessPages, state: str) -> int:
    """A process's pages in one of MEMORY_STATES."""
    return p.not_mergeable if state == "not_mergeable" else p.pages[state]


def _node_shares(prog: drgn.Program) -> dict[int, float]:
    """mm -> bytes of stable nodes its stable rmap_items hang on, each node
    split evenly among the items on its hlist."""
    from ksminspect.collect import STABLE
    from ksminspect.session import session

    c = session(prog).collect("stable_trees")
    size = get_layout(prog).stable_node.size
    stable = np.nonzero(c.state[:c.walked] == STABLE)[0]
    if not len(stable):
        return {}
    heads = c.items["head"][stable]
    _, inverse, counts = np.unique(heads, return_inverse=True, return_counts=True)
    share = size / counts[inverse]
    run_of = np.searchsorted(np.array([r.start for r in c.runs]), stable, side="right") - 1
    out: dict[int, float] = {}
    for run_index, part in zip(run_of.tolist(), share.tolist()):
        mm = c.runs[run_index].mm
        out[mm] = out.get(mm, 0.0) + part
    return out


@dataclass
class _Read:
    """What one run read of KSM: the checks' report, explain's processes,
    the kernel's counters and tunables, and sizes from the layout."""

    prog: drgn.Program
    live: bool
    report: "CheckReport"
    processes: list[ProcessPages]
    counters: dict
    tunables: dict
    page: int  # PAGE_SIZE
    item_size: int  # sizeof(struct ksm_rmap_item)
    nodes: dict[int, float]  # mm -> its share of stable nodes, in bytes

    def profit(self, p: ProcessPages) -> int:
        """Memory KSM saves *p*, its own objects taken off: as the kernel's
        ksm_process_profit() counts it (merged and zero pages, minus
        rmap_items), from the page tables, minus its share of the stable
        nodes its pages hang on."""
        return round((p.pages["merged"] + p.pages["zero"]) * self.page - p.rmap_items * self.item_size
                     - self.nodes.get(p.mm, 0.0))


def gather(prog: drgn.Program, live: bool, max_processes: int = 500) -> list[Family]:
    """Every family, from one read of KSM: run_checks, then explain, in one
    session."""
    from ksminspect.checks import run_checks
    from ksminspect.counters import read_counters, read_tunables

    started = time.monotonic()
    layout = get_layout(prog)
    report = run_checks(prog, live)
    r = _Read(prog, live, report, list(explain(prog)), read_counters(prog), read_tunables(prog),
              layout.page_size, layout.rmap_item.size, _node_shares(prog))
    out = (_kernel(r) + _per_process(r, max_processes) + _per_cgroup(r) + _metadata(r) + _scan(r)
           + _checks(r))
    ran = Family("ksminspect_run_duration_seconds", "gauge", "Seconds this run took to read KSM.")
    ran.add(round(time.monotonic() - started, 3))
    when = Family("ksminspect_last_run_timestamp_seconds", "gauge", "When this run ended (host clock, Unix time).")
    when.add(round(time.time(), 3))
    return out + [ran, when]


def _kernel(r: _Read) -> list[Family]:
    """What was read, and the kernel's own counters (node_exporter's ksmd
    collector has the rest)."""
    from ksminspect import __version__
    from ksminspect.program import kernel_release

    info = Family("ksminspect_info", "gauge", "The kernel ksminspect read (value 1).")
    info.add(1, kernel_release=kernel_release(r.prog), target="live" if r.live else "dump", version=__version__)
    scans = Family("ksminspect_ksm_full_scans_total", "counter", "Full scans ksmd has completed (full_scans).")
    scans.add(r.counters.get("full_scans", 0))
    items = Family("ksminspect_ksm_rmap_items", "gauge", "rmap_items the kernel counts (ksm_rmap_items).")
    items.add(r.counters.get("rmap_items", 0))
    out = [info, scans, items]
    if "general_profit" in r.counters:
        profit = Family("ksminspect_ksm_general_profit_bytes", "gauge",
                        "The kernel's general_profit: memory KSM saves minus its rmap_items.")
        profit.add(r.counters["general_profit"])
        out.append(profit)
    return out


def _per_process(r: _Read, max_processes: int) -> list[Family]:
    """The *max_processes* with most mergeable memory, the rest as one."""
    memory = Family("ksminspect_process_memory_bytes", "gauge",
                    "Resident anonymous memory of each process (scanned by KSM) by what KSM made of it: "
                    "merged, zero (merged with the zero page), unstable (waits for a partner), volatile "
                    "(changed since its last scan), skipped (smart scan), never_scanned, not_mergeable "
                    "(in VMAs KSM will not touch, hugetlb memory included).")
    merging = Family("ksminspect_process_ksm_merging_pages", "gauge",
                     "The kernel's mm->ksm_merging_pages: pages of the process KSM merged.")
    profit = Family("ksminspect_process_ksm_profit_bytes", "gauge",
                    "Memory KSM saves the process minus what its KSM objects take: source=kernel is "
                    "ksm_process_profit (rmap_items only); source=ksminspect also counts its share of "
                    "stable nodes, and merged pages from its page tables.")
    items = Family("ksminspect_process_rmap_items", "gauge", "rmap_items on the process's rmap_list.")
    item_bytes = Family("ksminspect_process_rmap_item_bytes", "gauge", "Memory the process's rmap_items take.")
    cannot = Family("ksminspect_process_cannot_tell", "gauge",
                    "1 where the process's page tables or VMAs could not be read: its memory series are "
                    "missing, not zero.")

    def add(group: list[ProcessPages], who: dict[str, object]) -> None:
        if any(not p.cannot_tell for p in group):
            _add_memory(r, group, memory, profit, who, source="ksminspect")
        stat = [p.ksm_stat for p in group]
        if all("ksm_merging_pages" in s for s in stat):
            merging.add(sum(s["ksm_merging_pages"] for s in stat), **who)
        if all("ksm_process_profit" in s for s in stat):
            profit.add(sum(s["ksm_process_profit"] for s in stat), **who, source="kernel")
        items.add(sum(p.rmap_items for p in group), **who)
        item_bytes.add(sum(p.rmap_items for p in group) * r.item_size, **who)
        cannot.add(sum(1 for p in group if p.cannot_tell), **who)

    shown = sorted(r.processes, key=lambda p: sum(p.pages.values()), reverse=True)
    for p in shown[:max_processes]:
        add([p], {"pid": "" if p.pid is None else p.pid, "comm": p.comm or "", "cgroup": p.cgroup or ""})
    if shown[max_processes:]:
        add(shown[max_processes:], {"pid": "", "comm": OTHERS, "cgroup": ""})
    return [memory, merging, profit, items, item_bytes, cannot]


def _add_memory(r: _Read, group: list[ProcessPages], memory: Family, profit: Family, who: dict[str, object],
                **profit_labels: object) -> None:
    """*group*'s memory by state and its profit, summed over the processes
    whose page tables could be read."""
    told = [p for p in group if not p.cannot_tell]
    for state in MEMORY_STATES:
        memory.add(sum(_pages(p, state) for p in told) * r.page, **who, state=state)
    profit.add(sum(map(r.profit, told)), **who, **profit_labels)


def _per_cgroup(r: _Read) -> list[Family]:
    """Every process (those left out per process too), per memory cgroup."""
    memory = Family("ksminspect_cgroup_memory_bytes", "gauge",
                    "ksminspect_process_memory_bytes summed per memory cgroup (cgroup=\"\": no memcg).")
    profit = Family("ksminspect_cgroup_ksm_profit_bytes", "gauge",
                    "ksminspect_process_ksm_profit_bytes (source=ksminspect) summed per memory cgroup.")
    processes = Family("ksminspect_cgroup_processes", "gauge", "Processes KSM scans in the memory cgroup.")
    groups: dict[str, list[ProcessPages]] = {}
    for p in r.processes:
        groups.setdefault(p.cgroup or "", []).append(p)
    for name, group in sorted(groups.items()):
        _add_memory(r, group, memory, profit, {"cgroup": name})
        processes.add(len(group), cgroup=name)
    return [memory, profit, processes]


def _metadata(r: _Read) -> list[Family]:
    from ksminspect.explain import metadata

    meta = metadata(r.prog)
    objects = Family("ksminspect_metadata_objects", "gauge", "KSM's own objects: rmap_items and stable nodes.")
    size = Family("ksminspect_metadata_bytes", "gauge", "Memory KSM's own objects take.")
    for kind, name in (("rmap_item", "rmap_items"), ("stable_node", "stable_nodes")):
        objects.add(meta[name], object=kind)
        size.add(meta[f"{kind}_bytes"], object=kind)
    return [objects, size]


def _scan(r: _Read) -> list[Family]:
    """The scan's pace, and how far it has converged."""
    pace = scan_pace(r.prog, r.processes)
    running = Family("ksminspect_ksmd_running", "gauge", "1 while ksmd runs (run=1).")
    running.add(1 if r.tunables.get("run") == 1 else 0)
    pages = Family("ksminspect_scan_pages", "gauge", "Pages a full scan visits: resident anonymous pages of "
                   "mergeable VMAs, and the rmap_items of what explain could not read.")
    pages.add(pace.pages)
    out = [running, pages]
    if pace.seconds is not None:
        seconds = Family("ksminspect_scan_full_scan_seconds", "gauge", "Seconds a full scan takes at the "
                         "current pages_to_scan and sleep_millisecs (sleeps only).")
        seconds.add(pace.seconds)
        out.append(seconds)
    told = [p for p in r.processes if not p.cannot_tell]
    settled = sum(p.pages[s] for p in told for s in ("merged", "zero", "unstable", "skipped"))
    unsettled = sum(p.pages[s] for p in told for s in ("volatile", "never_scanned"))
    ratio = Family("ksminspect_convergence_ratio", "gauge",
                   "Share of mergeable pages KSM has settled (merged, zero, unstable or skipped) against those "
                   "changed since their last scan (volatile) or never scanned: 1 when a full scan would meet "
                   "nothing it has not judged.")
    ratio.add(settled / (settled + unsettled) if settled + unsettled else 1.0)
    return out + [ratio]


def _checks(r: _Read) -> list[Family]:
    """check's findings by check and severity (zeros written, so that an
    alert can fire on one), and where it cannot tell."""
    from ksminspect.checks import CHECKS

    findings = Family("ksminspect_check_findings", "gauge",
                      "Findings of ksminspect check: what a healthy KSM never holds (error, warning) or "
                      "worth knowing (info), by check.")
    counts = {(c, s): 0 for c in CHECKS for s in SEVERITIES}
    for f in r.report.findings:
        counts[(f.check, f.severity.value)] += 1
    for (check, severity), n in counts.items():
        findings.add(n, check=check, severity=severity)
    cannot_tell = Family("ksminspect_check_cannot_tell", "gauge",
                         "1 where a check could not judge some objects (a helper that cannot run, memory the "
                         "dump lacks): its findings are not the whole answer.")
    for check in CHECKS:
        cannot_tell.add(1 if check in r.report.cannot_tell else 0, check=check)
    moved = Family("ksminspect_check_changed_while_read", "gauge",
                   "Live kernel: findings not counted because what they name changed while it was read.")
    moved.add(r.report.stats.get("changed_while_read", 0))
    return [findings, cannot_tell, moved]
