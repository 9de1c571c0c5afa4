"""Where each process's memory stands with KSM, and why the rest is not
merged: its resident anonymous pages in mergeable VMAs by state (from its
page tables and its rmap_items), the VMAs KSM will not touch, and what the
numbers suggest.

A page of a mergeable VMA is in one state:

- ``merged``: its rmap_item is stable (a sharer of a KSM page; the kernel's
  ``ksm_merging_pages`` counts these), of which ``in_chain`` hang from a dup
  of a stable node chain (``max_page_sharing`` reached) and ``written`` were
  written since (copy-on-write: they leave the stable tree at the next scan);
- ``zero``: mapped to the zero page: merged with it (``use_zero_pages``), or
  never written (a read fault maps it too; the page tables do not tell the
  two apart to drgn, the kernel's ``ksm_zero_pages`` counts the first);
- ``unstable``: in the unstable tree, waiting for a partner (``ages``: for
  how many scans, on smart-scan kernels);
- ``volatile``: scanned, in no tree: its content changed since the last scan;
- ``skipped``: in no tree, and the smart scan skips it (``remaining_skips``);
- ``never_scanned``: present, but no rmap_item yet (``ahead``: the scan
  cursor has yet to reach it in this pass).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import drgn
import numpy as np

from ksminspect.decode import STABLE, STATE_NAMES, UNSTABLE
from ksminspect.errors import HELPER_LIMITS, CannotTell
from ksminspect.layout import PAGE_MAPPING_ANON, PAGE_MAPPING_FLAGS, PAGE_MAPPING_KSM, get_layout, zero_pfn
from ksminspect.pagetable import page_tables

if TYPE_CHECKING:  # for annotations only: explain() imports collect and lookups where used
    from ksminspect.collect import Collection
    from ksminspect.layout import KsmLayout
    from ksminspect.lookups import Lookups

STATES = ("merged", "zero", "unstable", "volatile", "skipped", "never_scanned")


@dataclass
class VmaPages:
    """One VMA of a process: KSM's view of it and its resident pages."""

    start: int
    end: int
    flags: int
    name: str  # the file mapped, [heap], [stack], or "" for anonymous memory
    mergeable: bool
    why_not: Optional[str]  # why KSM will not touch it, where it will not
    resident: int = 0  # resident anonymous pages (the zero page not counted)
    hugetlb: int = 0  # resident hugetlb memory, in base pages (not anonymous memory to the kernel)
    pages: Counter = field(default_factory=Counter)  # STATES, of a mergeable VMA


@dataclass
class ProcessPages:
    """One mm on ksm_mm_head: its pages by state, VMA by VMA."""

    pid: Optional[int]
    comm: Optional[str]
    mm: int
    cgroup: Optional[str]  # the memory cgroup's path, where the kernel has memcg
    vmas: list[VmaPages] = field(default_factory=list)
    pages: Counter = field(default_factory=Counter)  # STATES over the mergeable VMAs
    in_chain: int = 0
    written: int = 0
    ahead: int = 0  # never scanned, and the cursor has yet to reach them this pass
    ages: Counter = field(default_factory=Counter)  # unstable pages by age
    items_without_page: Counter = field(default_factory=Counter)  # rmap_items by state
    ksm_stat: dict[str, int] = field(default_factory=dict)  # the kernel's own counters
    rmap_items: int = 0
    cannot_tell: Optional[str] = None  # why the page tables or VMAs cannot be read

    @property
    def hugetlb(self) -> int:
        """Resident hugetlb memory, in base pages."""
        return sum(v.hugetlb for v in self.vmas)

    @property
    def not_mergeable(self) -> int:
        """Resident anonymous pages and hugetlb memory in VMAs KSM will not touch."""
        return sum(v.resident + v.hugetlb for v in self.vmas if not v.mergeable)

    @property
    def total(self) -> int:
        """The whole the shares are of: every state, and what KSM cannot touch."""
        return sum(self.pages.values()) + self.not_mergeable


@dataclass(frozen=True)
class ScanPace:
    """How fast ksmd goes through everything it scans."""

    run: Optional[int]
    pages_to_scan: Optional[int]
    sleep_millisecs: Optional[int]
    pages: int  # pages a full scan visits: resident anonymous pages of mergeable VMAs

    @property
    def seconds(self) -> Optional[float]:
        """A full scan's time, its sleeps only (the scanning itself adds to it)."""
        if not self.pages_to_scan or self.sleep_millisecs is None:
            return None
        return -(-self.pages // self.pages_to_scan) * self.sleep_millisecs / 1000


def why_untouchable(flags: int, layout) -> Optional[str]:
    """The vm_flags that make KSM ignore a VMA, in words; None if none do."""
    words = [name for name, mask in layout.vm_untouchable if flags & mask]
    return ", ".join(words) or None


def explain(prog: drgn.Program, pid: Optional[int] = None) -> Iterator[ProcessPages]:
    """Each mm on ksm_mm_head (only process *pid*'s, with *pid*), in scan order."""
    from ksminspect.collect import DUP
    from ksminspect.lookups import Lookups
    from ksminspect.mm import mm_owner, mm_stat
    from ksminspect.scan import read_scan_cursor
    from ksminspect.session import session

    c, layout = session(prog).collect("stable_trees"), get_layout(prog)
    seen = _Seen(layout, Lookups(prog, c.w), c, set(c.nodes.address[c.nodes.kind == DUP].tolist()),
                 zero_pfn(prog), dict(layout.vm_untouchable).get("hugetlb", 0))
    cursor = read_scan_cursor(prog)
    at = next((i for i, run in enumerate(c.runs) if run.slot == cursor.mm_slot), None)
    for order, run in enumerate(c.runs):
        owner = mm_owner(prog, run.mm)
        if pid is not None and owner.pid != pid:
            continue
        p = ProcessPages(owner.pid, owner.comm, run.mm, memory_cgroup(prog, owner.pid),
                         ksm_stat=mm_stat(prog, c.mm_rows[order]), rmap_items=run.stop - run.start)
        if at is None or cursor.at_head(prog):
            ahead_from: Optional[int] = 0  # between passes (or the cursor's mm is gone): all ahead
        elif order != at:
            ahead_from = 0 if order > at else None  # the cursor has passed this mm
        else:
            ahead_from = cursor.address
        try:
            seen.mm(p, run, ahead_from)
        except CannotTell as e:
            p.cannot_tell = e.reason
        yield p


@dataclass
class _Seen:
    """What explain reads once for every mm: the layout, the lookups, the
    collection, the dups' addresses, the zero page's pfn, VM_HUGETLB."""

    layout: KsmLayout
    look: Lookups
    c: Collection
    dups: set
    zero: Optional[int]
    vm_hugetlb: int

    def mm(self, p: ProcessPages, run, ahead_from: Optional[int]) -> None:
        """*p*'s VMAs and pages: its rmap_items (rows *run* of the
        collection) matched with what its page tables map."""
        vmas = self.look.vmas(run.mm)
        if vmas is None:
            raise CannotTell(self.look.why.get("vmas", f"the VMAs of mm {run.mm:#x} cannot be read"))
        rows = np.arange(run.start, run.stop)
        item_pages = self.c.page_address(rows)
        order_of = np.argsort(item_pages, kind="stable")
        sorted_pages = item_pages[order_of]
        found = np.zeros(len(rows), bool)  # items with a page mapped where they say
        mm = drgn.Object(self.c.w.prog, "struct mm_struct *", run.mm)
        tables = page_tables(self.c.w.prog)
        for i in range(len(vmas.start)):
            v = _vma(self.c.w.prog, vmas, i, mm, self.layout)
            p.vmas.append(v)
            addresses, pfns = tables.mapped(run.mm, v.start, v.end)
            if not len(pfns):
                continue
            if v.flags & self.vm_hugetlb:
                v.hugetlb = len(pfns)  # no anonymous memory to the kernel's counters
                continue
            anon, is_zero, mapping = self._anonymous(pfns)
            v.resident = int(np.count_nonzero(anon & ~is_zero))
            if not v.mergeable:
                continue
            k = np.minimum(np.searchsorted(sorted_pages, addresses), max(len(rows) - 1, 0))
            has = (sorted_pages[k] == addresses) if len(rows) else np.zeros(len(pfns), bool)
            row = np.where(has, rows[order_of[k]] if len(rows) else 0, -1)
            found[order_of[k[has]]] = True
            _classify(self.c, v, p, row, anon, is_zero, mapping, self.dups, addresses, ahead_from)
        for state, n in zip(*np.unique(self.c.state[rows[~found]], return_counts=True)):
            p.items_without_page[STATE_NAMES[int(state)]] += int(n)
        for v in p.vmas:
            p.pages.update(v.pages)

    def _anonymous(self, pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which of *pfns* are anonymous pages, which the zero page, and
        their (head's) mapping."""
        try:
            mapping, readable, _ = self.look.page_mappings(pfns, heads=True)
        except HELPER_LIMITS as e:
            raise CannotTell(f"drgn's pfn_to_page() cannot run on this kernel ({e}): which "
                             f"pages are anonymous cannot be read") from None
        is_zero = pfns == np.uint64(self.zero) if self.zero is not None else np.zeros(len(pfns), bool)
        return readable & ((mapping & np.uint64(PAGE_MAPPING_ANON)) != 0), is_zero, mapping


def _classify(c, v: VmaPages, p: ProcessPages, row: np.ndarray, anon: np.ndarray,
              is_zero: np.ndarray, mapping: np.ndarray, dups: set, addresses: np.ndarray,
              ahead_from: Optional[int]) -> None:
    """The states of a mergeable VMA's present pages."""

    has = row >= 0
    state = np.where(has, c.state[np.maximum(row, 0)], 255)
    stable = has & (state == STABLE)
    ksm_page = (mapping & np.uint64(PAGE_MAPPING_FLAGS)) == PAGE_MAPPING_KSM
    v.pages["merged"] += int(np.count_nonzero(stable))
    p.written += int(np.count_nonzero(stable & ~ksm_page))
    if np.any(stable):
        heads = c.items["head"][row[stable]].tolist()
        p.in_chain += sum(h in dups for h in heads)
    # KSM frees a page's rmap_item when it maps the zero page there
    v.pages["zero"] += int(np.count_nonzero(is_zero & ~stable))
    unstable = has & (state == UNSTABLE) & ~is_zero
    v.pages["unstable"] += int(np.count_nonzero(unstable))
    if "age" in c.items.dtype.names and np.any(unstable):
        p.ages.update(c.items["age"][row[unstable]].tolist())
    none = has & ((state == 0) | (state == 3)) & ~is_zero
    if "remaining_skips" in c.items.dtype.names:
        skipped = none & (c.items["remaining_skips"][np.maximum(row, 0)] > 0)
    else:
        skipped = np.zeros(len(row), bool)
    v.pages["skipped"] += int(np.count_nonzero(skipped))
    v.pages["volatile"] += int(np.count_nonzero(none & ~skipped))
    never = ~has & anon & ~is_zero
    v.pages["never_scanned"] += int(np.count_nonzero(never))
    if ahead_from is not None:
        p.ahead += int(np.count_nonzero(never & (addresses >= np.uint64(ahead_from))))


def _vma(prog: drgn.Program, vmas, i: int, mm: drgn.Object, layout) -> VmaPages:
    flags = int(vmas.flags[i])
    why = why_untouchable(flags, layout)
    if why is None and not vmas.mergeable[i]:
        why = "not MADV_MERGEABLE"
    start, end = int(vmas.start[i]), int(vmas.end[i])
    return VmaPages(start, end, flags, _vma_name(prog, vmas, i, mm), mergeable=why is None,
                    why_not=why)


def _vma_name(prog: drgn.Program, vmas, i: int, mm: drgn.Object) -> str:
    """As /proc/PID/maps names a VMA: its file's path, [heap], [stack],
    [vdso]..., or "" (drgn's vma_name() where this drgn has it)."""
    vma_name: Optional[Callable[[drgn.Object], bytes]]
    try:
        from drgn.helpers.linux.mm import vma_name
    except ImportError:  # drgn before 0.3.0
        vma_name = None
    file, start, end = int(vmas.file[i]), int(vmas.start[i]), int(vmas.end[i])
    try:
        if vma_name is not None:
            return vma_name(drgn.Object(prog, "struct vm_area_struct *", int(vmas.address[i]))).decode(
                errors="replace")
        if file:
            from drgn.helpers.linux.fs import d_path

            return d_path(drgn.Object(prog, "struct file *", file).f_path.address_of_()).decode(
                errors="replace")
        if start <= mm.brk.value_() and end >= mm.start_brk.value_():
            return "[heap]"
        if start <= mm.start_stack.value_() < end:
            return "[stack]"
    except (drgn.FaultError, LookupError, ValueError):
        pass
    return ""


def memory_cgroup(prog: drgn.Program, pid: Optional[int]) -> Optional[str]:
    """The path of process *pid*'s memory cgroup; None where the kernel has
    no memcg (CONFIG_MEMCG) or the task cannot be read."""
    if pid is None:
        return None
    try:
        index = prog.constant("memory_cgrp_id").value_()
    except LookupError:
        return None
    from drgn.helpers.linux.cgroup import cgroup_path
    from drgn.helpers.linux.pid import find_task

    try:
        task = find_task(prog, pid)
        if not task:
            return None
        css = task.cgroups.subsys[index]
        return cgroup_path(css.cgroup).decode(errors="replace")
    except (drgn.FaultError, LookupError, ValueError):
        return None


def scan_pace(prog: drgn.Program, processes: list[ProcessPages]) -> ScanPace:
    """How long ksmd takes over a full scan, at its tunables, of the pages
    the shown processes hold in mergeable VMAs plus the rmap_items of the rest."""
    from ksminspect.counters import read_counters, read_tunables

    tunables = read_tunables(prog)
    shown = sum(sum(p.pages.values()) - p.pages["zero"] for p in processes)
    items = read_counters(prog).get("rmap_items", 0)
    others = max(items - sum(p.rmap_items for p in processes), 0)

    def number(name: str) -> Optional[int]:
        value = tunables.get(name)
        return value if isinstance(value, int) else None

    return ScanPace(number("run"), number("pages_to_scan"), number("sleep_millisecs"), shown + others)


def metadata(prog: drgn.Program) -> dict[str, int]:
    """What KSM's own objects take: every rmap_item on the rmap_lists and
    every stable node (chains and dups included), in bytes."""
    from ksminspect.session import session

    layout, c = get_layout(prog), session(prog).collect("stable_trees")
    return {"rmap_items": c.walked, "rmap_item_bytes": c.walked * layout.rmap_item.size,
            "stable_nodes": len(c.nodes), "stable_node_bytes": len(c.nodes) * layout.stable_node.size}


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# A share of a process's pages worth a line of advice.
NOTABLE = 0.25


def advice(p: ProcessPages, pace: ScanPace, max_page_sharing: Optional[int]) -> list[str]:
    """One line per fact the numbers support, each with the numbers."""
    out: list[str] = []
    whole, mergeable = p.total, sum(p.pages.values())
    if not whole:
        return out
    # the states are shares of the mergeable pages; what KSM cannot touch, of the whole
    share = {s: p.pages[s] / mergeable if mergeable else 0.0 for s in STATES}
    scan = ""
    if pace.seconds is not None:
        scan = (f"a full scan of {pace.pages} pages takes about {duration(pace.seconds)} at "
                f"pages_to_scan={pace.pages_to_scan}, sleep_millisecs={pace.sleep_millisecs}")
    stopped = " (ksmd is stopped: run=0)" if pace.run == 0 else ""
    if share["never_scanned"] >= NOTABLE:
        out.append(f"{share['never_scanned']:.0%} of its mergeable pages were never scanned"
                   + (f": {scan}" if scan else "") + stopped)
    if share["volatile"] >= NOTABLE:
        out.append(f"{share['volatile']:.0%} of its mergeable pages are volatile: their content "
                   f"changed between two scans"
                   + (f", faster than a full scan (about {duration(pace.seconds)})"
                      if pace.seconds is not None else ""))
    if share["unstable"] >= NOTABLE:
        oldest = max(p.ages) if p.ages else None
        out.append(f"{share['unstable']:.0%} of its mergeable pages wait in the unstable tree with "
                   f"no partner yet: their content is unique so far"
                   + (f" (for up to {oldest} scans)" if oldest else ""))
    if share["skipped"] >= NOTABLE:
        out.append(f"{share['skipped']:.0%} of its mergeable pages are skipped by the smart scan: "
                   f"unchanged and unique for several scans")
    if p.not_mergeable / whole >= NOTABLE:
        reasons: Counter[Optional[str]] = Counter()
        for v in p.vmas:
            if not v.mergeable and v.resident + v.hugetlb:
                reasons[v.why_not] += v.resident + v.hugetlb
        said = "; ".join(f"{why}: {n}" for why, n in reasons.most_common(3))
        out.append(f"{p.not_mergeable / whole:.0%} ({p.not_mergeable} pages) are in VMAs KSM will "
                   f"not touch ({said})")
    if p.in_chain:
        out.append(f"{p.in_chain} merged pages are in stable node chains: a KSM page takes at "
                   f"most max_page_sharing={max_page_sharing} sharers, more make another copy")
    if p.written:
        out.append(f"{p.written} merged pages were written since (copy-on-write): they leave "
                   f"the stable tree at the next scan")
    return out
