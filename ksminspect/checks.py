"""Checks: what a healthy KSM never holds, as findings.

One pass over ksm_mm_head and the rmap_lists, one over the stable trees and
migrate_nodes, one over the unstable trees, then cross-checks of what the
passes saw against each other and against the kernel's counters. Each
finding names its check, a severity, the object, and says in one sentence
what is wrong.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field
from typing import Any, Collection, Iterator, Optional

import drgn

from ksminspect.counters import nothing_found, read_counters, read_tunables
from ksminspect.decode import ItemState, RmapItem, StableNode
from ksminspect.errors import HELPER_LIMITS
from ksminspect.layout import (MAX_REMAINING_SKIPS, PAGE_MAPPING_FLAGS, PAGE_MAPPING_KSM,
                               SEQNR_MASK, KsmLayout)
from ksminspect.mm import MmOwner, mm_counters, mm_owner
from ksminspect.scan import unstable_tree_seqnr
from ksminspect.session import begin_session
from ksminspect.walk import Damage, RmapLists, WalkDamage, Walker, walker


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    check: str  # one of CHECKS
    severity: Severity
    address: Optional[int]  # the object the finding is about
    message: str
    mm: Optional[int] = None
    pid: Optional[int] = None
    page_address: Optional[int] = None
    rule: Optional[str] = None  # for the stale-offset checks: which rule fired
    transient: bool = False  # live kernel: seen on every walk, but KSM was moving

    @property
    def key(self) -> tuple:
        return (self.check, self.address, self.rule)


@dataclass(frozen=True)
class Rule:
    """One check: its id, what a healthy KSM keeps, and the walks it needs."""

    id: str
    keeps: str
    passes: frozenset[str]  # of "rmap_lists", "stable_trees", "unstable_trees", "slab"


def _rule(id: str, keeps: str, *passes: str) -> Rule:
    return Rule(id, keeps, frozenset(("rmap_lists",) + passes))  # every walk rests on the rmap_lists


# The registry: CHECKS, --only and its completion, and the README's table
# (tests/test_check.py compares them) come from here.
RULES: tuple[Rule, ...] = (
    _rule("walk-damage", "every list and tree can be walked: no cycle, no unreadable or misaligned pointer",
          "stable_trees", "unstable_trees"),
    _rule("rmap-owner", "every rmap_item on an mm's rmap_list has item->mm == that mm"),
    _rule("rmap-order", "addresses ascend along each rmap_list"),
    _rule("rmap-flags", "no rmap_item carries both STABLE_FLAG and UNSTABLE_FLAG"),
    _rule("mm-counters", "mm->ksm_rmap_items and mm->ksm_merging_pages equal the mm's walked items"),
    _rule("global-counters", "ksm_rmap_items, pages_shared, pages_sharing, pages_unshared, chains and dups "
          "equal the walk", "stable_trees", "unstable_trees"),
    _rule("unstable-seqnr", "an UNSTABLE_FLAG item's seqnr is ksm_scan.seqnr or one behind"),
    _rule("unstable-tree", "unstable tree nodes have UNSTABLE_FLAG and the trees' seqnr; every such item "
          "is in a tree", "unstable_trees"),
    _rule("stable-membership", "a stable node's items have STABLE_FLAG and head pointing back; every "
          "STABLE_FLAG item is on a node", "stable_trees"),
    _rule("hlist-len", "rmap_hlist_len equals the length of a stable node's hlist", "stable_trees"),
    _rule("chain", "a chain holds dups only, each with head == STABLE_NODE_DUP_HEAD and at most "
          "max_page_sharing sharers", "stable_trees"),
    _rule("kpfn", "the page at a stable node's kpfn is a KSM page whose mapping points back at the node",
          "stable_trees"),
    _rule("anon-vma", "a stable item's anon_vma is a live anon_vma"),
    _rule("vma-mergeable", "a stable item's address lies in a VMA that KSM may merge"),
    _rule("stale-offset", "no item outside the stable tree still holds a page offset (kernels with the "
          "seed's member)"),
    _rule("wrong-offset", "a stable item's page offset is its linear page index or its VMA's vm_pgoff"),
    _rule("overlay-garbage", "age and remaining_skips are values the smart scan can produce"),
    _rule("stale-anon-vma", "what an item outside the stable tree keeps in its anon_vma slot"),
    _rule("links", "every back link points where the walk came from: list_head.prev on ksm_mm_head and "
          "migrate_nodes, hlist_node.pprev on a stable node's items and a chain's dups, the rb_node "
          "parent in the stable and unstable trees", "stable_trees", "unstable_trees"),
    _rule("orphans", "every allocated object of the KSM slab caches is reached by a walk",
          "stable_trees", "unstable_trees", "slab"),
)
# check id -> what a healthy KSM keeps
CHECKS: dict[str, str] = {r.id: r.keeps for r in RULES}


_UNKNOWN = object()  # not looked up yet
_NO_ANSWER = object()  # looked up, but the lookup cannot run on this target


@dataclass
class _Vma:
    start: int
    end: int
    pgoff: int
    flags: int
    anon_vma: int


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    # check id -> why it could not run (wholly or for some objects) on this
    # target: a tool's limit, never a finding about the kernel
    cannot_tell: dict[str, str] = field(default_factory=dict)


class _Checker:
    def __init__(self, prog: drgn.Program, live: bool, fast: bool = True):
        self.prog = prog
        self.live = live
        # fast=False: every object read exactly and every check run in full;
        # the tests compare both paths.
        self.fast = fast
        self.w: Walker = walker(prog) if fast else Walker(prog, chunked=False)
        self.layout: KsmLayout = self.w.layout
        self.report = CheckReport()
        # mm -> (its VMAs, their starts); None where they cannot be read
        self.vmas: dict[int, Optional[tuple[list[_Vma], list[int]]]] = {}
        # (mm, VMA, whether KSM may merge in it) of the last lookup
        self.last_vma: Optional[tuple[int, _Vma, bool]] = None
        self.counters = read_counters(prog)
        self.seqnr = self.counters["full_scans"]
        self.tree_seqnr = unstable_tree_seqnr(prog)
        # what the rmap_list walk saw
        self.stable_items: dict[int, RmapItem] = {}
        self.unstable_current: set[int] = set()
        self.walked_items: set[int] = set()
        self.n_items = 0
        self.n_unstable = 0
        # what the stable tree walk saw
        self.items_on_nodes: set[int] = set()
        self.stable_nodes: set[int] = set()
        self.pages_shared = 0
        self.pages_sharing = 0
        self.chains = 0
        self.dups = 0
        self.mm_slots: set[int] = set()
        self.chain_nodes: set[int] = set()
        self.damaged_mms: Collection[int] = ()  # mms whose rmap_list walk was cut short
        self.anon_vma_live: dict[int, Optional[str]] = {}
        self._vmemmap: Optional[tuple[int, int, int, bool]] = None
        tunables = read_tunables(prog)
        self.merge_across_nodes = tunables.get("merge_across_nodes", 1)
        self.max_page_sharing = tunables.get("max_page_sharing", 0)

    # -- helpers -------------------------------------------------------

    def add(self, check: str, severity: Severity, address: Optional[int], message: str,
            item: Optional[RmapItem] = None, rule: Optional[str] = None) -> None:
        mm = pid = page = None
        if item is not None:
            mm, page = item.mm, item.page_address
            pid = self.owner(mm).pid
        self.report.findings.append(Finding(check, severity, address, message, mm, pid, page, rule))

    def cannot_tell(self, checks: tuple[str, ...], why: str) -> None:
        """*checks* could not judge some objects, because *why*."""
        for check in checks:
            self.report.cannot_tell.setdefault(check, why)

    def damage(self, d: Damage) -> None:
        self.add("walk-damage", Severity.ERROR, d.address, d.sentence())

    def owner(self, mm: int) -> MmOwner:
        return mm_owner(self.prog, mm)

    def vma_at(self, mm: int, address: int) -> Optional[_Vma]:
        last = self.last_vma
        if last is not None and last[0] == mm and last[1].start <= address < last[1].end:
            return last[1]  # items come in address order: mostly the same VMA
        if mm not in self.vmas:
            vmas = self._read_vmas(mm)
            self.vmas[mm] = None if vmas is None else (vmas, [v.start for v in vmas])
        entry = self.vmas[mm]
        if entry is None:
            return None  # unknown: see vmas_known()
        vmas, starts = entry
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0 and vmas[i].start <= address < vmas[i].end:
            vma = vmas[i]
            self.last_vma = (mm, vma, bool(vma.flags & self.vm_mergeable) or self.merges_any(mm))
            return vma
        return None

    def _read_vmas(self, mm: int) -> Optional[list[_Vma]]:
        """The VMAs of *mm* in address order; None where they cannot be read
        whole."""
        from drgn.helpers.linux.mm import for_each_vma

        out = []
        try:
            for vma in for_each_vma(drgn.Object(self.prog, "struct mm_struct *", mm)):
                out.append(_Vma(vma.vm_start.value_(), vma.vm_end.value_(), vma.vm_pgoff.value_(),
                                _vm_flags(vma), vma.anon_vma.value_()))
        except (drgn.FaultError, ValueError) as e:
            why = f"the VMAs of mm {mm:#x} cannot be read ({e})"
        except HELPER_LIMITS as e:
            why = f"drgn's for_each_vma() cannot run on this kernel ({e})"
        else:
            return sorted(out, key=lambda v: v.start)
        self.cannot_tell(("vma-mergeable", "wrong-offset"), why)
        return None

    def anon_vma_state(self, address: int) -> Any:
        """None if *address* is a live anon_vma, else why not (a sentence),
        or _NO_ANSWER where slab objects cannot be looked up here."""
        if address in self.anon_vma_live:
            return self.anon_vma_live[address]
        from drgn.helpers.linux.slab import slab_object_info

        why: Any
        try:
            info = slab_object_info(self.prog, address)
        except (drgn.FaultError, ValueError):
            info = None
        except HELPER_LIMITS as e:
            self.cannot_tell(("anon-vma", "stale-anon-vma"),
                             f"drgn's slab_object_info() cannot run on this kernel ({e})")
            self.anon_vma_live[address] = _NO_ANSWER
            return _NO_ANSWER
        if info is None:
            why = "is not in a slab object"
        elif info.address != address:
            why = "points into the middle of a slab object"
        else:
            name = info.slab_cache.name.string_().decode(errors="replace")
            if not info.allocated:
                why = f"is a free object of slab cache {name}"
            elif name != "anon_vma":
                why = f"is an object of slab cache {name}, not anon_vma"
            else:
                try:
                    refcount = drgn.Object(self.prog, "struct anon_vma *", address).refcount.counter.value_()
                except (drgn.FaultError, LookupError):
                    refcount = 1
                why = None if refcount > 0 else "is an anon_vma whose refcount is 0"
        self.anon_vma_live[address] = why
        return why

    # -- pass 1: ksm_mm_head and the rmap_lists -------------------------

    def walk_mm_slots(self) -> None:
        w = self.w
        # remove_rmap_item_from_tree() BUG()s beyond one behind ksm_scan.seqnr
        allowed = {self.seqnr & SEQNR_MASK, (self.seqnr - 1) & SEQNR_MASK}
        lists = RmapLists(w)
        for slot, mm, items in lists:
            self.mm_slots.add(slot)
            self.check_rmap_list(mm, items, allowed, lists)
        self.damaged_mms = lists.cut.keys()
        if lists.mm_head_damage:
            self.damage(lists.mm_head_damage)

    def check_rmap_list(self, mm: int, items: Iterator[RmapItem], allowed: set[int],
                        lists: RmapLists) -> None:
        stable = unstable = count = 0
        last = -1
        cur = self.tree_seqnr
        # the hot loop of check: locals, and methods called only when needed
        walked, stable_items, unstable_current = self.walked_items, self.stable_items, self.unstable_current
        STABLE, UNSTABLE, BOTH = ItemState.STABLE, ItemState.UNSTABLE, ItemState.BOTH
        overlay = self.layout.rmap_item.age is not None
        age_limit = self.seqnr + 1
        anon_live = self.anon_vma_live
        has_offset = self.layout.rmap_item.offset is not None
        numa = self.layout.numa
        page_shift = self.layout.page_shift
        fast = self.fast
        for item in items:
            count += 1
            address = item.address
            walked.add(address)
            if item.mm != mm:
                self.add("rmap-owner", Severity.ERROR, address,
                         f"rmap_item {address:#x} is on the rmap_list of mm {mm:#x} "
                         f"but its mm is {item.mm:#x}", item)
            page = item.page_address
            if page <= last:
                self.add("rmap-order", Severity.ERROR, address,
                         f"rmap_item {address:#x} at {page:#x} does not come "
                         f"after {last:#x} on its rmap_list", item)
            last = page
            state = item.state
            if state is STABLE:
                stable += 1
                stable_items[address] = item
                # Fast path: a known live anon_vma, in the VMA of the item
                # before, mergeable, and (with the seed) a right offset.
                last_vma = self.last_vma
                if not fast or (anon_live.get(item.anon_vma, _UNKNOWN) is not None or last_vma is None
                        or last_vma[0] != mm or not last_vma[2]
                        or not last_vma[1].start <= page < last_vma[1].end
                        or (has_offset and item.offset != page >> page_shift
                            and item.offset != last_vma[1].pgoff)):
                    self.check_stable_item(item)
            elif state is BOTH:
                self.add("rmap-flags", Severity.ERROR, address,
                         f"rmap_item {address:#x} has both STABLE_FLAG and UNSTABLE_FLAG "
                         f"(address {item.raw_address:#x})", item)
            else:
                if state is UNSTABLE:
                    unstable += 1
                    seqnr = item.seqnr
                    if seqnr == cur:
                        unstable_current.add(address)
                    if seqnr not in allowed:
                        self.add("unstable-seqnr", Severity.ERROR, address,
                                 f"unstable rmap_item {address:#x} has seqnr {seqnr}, "
                                 f"but ksm_scan.seqnr is {self.seqnr} ({self.seqnr & SEQNR_MASK} in "
                                 f"the low bits): it is neither that nor one behind", item)
                if not fast or has_offset or (item.anon_vma and not (numa and state is UNSTABLE)):
                    self.check_unstable_or_none_item(item)
            if overlay and (not fast or item.age > age_limit
                            or item.remaining_skips > MAX_REMAINING_SKIPS):
                self.check_overlay(item)
        self.n_items += count
        self.n_unstable += unstable
        cut = lists.cut.get(mm)
        if cut is not None:
            self.damage(cut)
            return
        own = mm_counters(self.prog, mm)
        for key, walked in (("ksm_rmap_items", count), ("ksm_merging_pages", stable)):
            if key in own and own[key] != walked:
                who = self.owner(mm)
                self.add("mm-counters", Severity.ERROR, mm,
                         f"mm {mm:#x} (pid {who.pid}) has {key} {own[key]} but its rmap_list "
                         f"holds {walked} such items")

    # -- item checks ---------------------------------------------------

    def linear_page_index(self, item: RmapItem) -> int:
        return item.page_address >> self.layout.page_shift

    def check_stable_item(self, item: RmapItem) -> None:
        why = self.anon_vma_live.get(item.anon_vma, _UNKNOWN)
        if why is _UNKNOWN:
            why = self.anon_vma_state(item.anon_vma) if item.anon_vma else "is NULL"
        if why and why is not _NO_ANSWER:
            self.add("anon-vma", Severity.ERROR, item.address,
                     f"stable rmap_item {item.address:#x}: its anon_vma {item.anon_vma:#x} {why}", item)
        vma = self.vma_at(item.mm, item.page_address)
        vmas_known = self.vmas.get(item.mm) is not None  # vma_at() just looked them up
        if vma is None:
            if vmas_known and not self.owner(item.mm).exited:
                self.add("vma-mergeable", Severity.ERROR, item.address,
                         f"stable rmap_item {item.address:#x}: no VMA maps {item.page_address:#x}", item)
        elif not (vma.flags & self.vm_mergeable or self.merges_any(item.mm)):
            self.add("vma-mergeable", Severity.ERROR, item.address,
                     f"stable rmap_item {item.address:#x}: the VMA {vma.start:#x}-{vma.end:#x} is not "
                     f"VM_MERGEABLE and the mm does not merge everything", item)
        if self.layout.rmap_item.offset is not None:
            index = self.linear_page_index(item)
            allowed = {index} | ({vma.pgoff} if vma else set())
            if item.offset not in allowed and vmas_known:
                self.add("wrong-offset", Severity.ERROR, item.address,
                         f"stable rmap_item {item.address:#x} at {item.page_address:#x}: its "
                         f"{self.layout.rmap_item.offset_member} is {item.offset:#x}, neither its linear page "
                         f"index {index:#x}" + (f" nor its VMA's vm_pgoff {vma.pgoff:#x}" if vma else ""),
                         item)

    def check_unstable_or_none_item(self, item: RmapItem) -> None:
        lay = self.layout.rmap_item
        if lay.offset is not None:
            index = self.linear_page_index(item)
            vma = self.vma_at(item.mm, item.page_address)
            matches = []
            if item.offset == index:
                matches.append(f"its linear page index {index:#x}")
            if vma is not None and item.offset == vma.pgoff and vma.pgoff != index:
                matches.append(f"its VMA's vm_pgoff {vma.pgoff:#x}")
            if matches and item.offset:
                self.add("stale-offset", Severity.ERROR, item.address,
                         f"{item.state.value} rmap_item {item.address:#x} at {item.page_address:#x} still "
                         f"holds {lay.offset_member} {item.offset:#x}, exactly "
                         f"{' and '.join(matches)}: the offset was not reset when it left the stable tree",
                         item, rule="exact overlay match")
        # anon_vma slot of an item outside the stable tree
        slot = item.anon_vma
        if item.state is ItemState.UNSTABLE and self.layout.numa:
            return  # the slot holds nid
        if not slot:
            return
        if self.layout.numa and (slot & 0xFFFFFFFF) < 1024 and self.anon_vma_state(slot):
            return  # a nid left from an unstable period, under old high bytes
        why = self.anon_vma_state(slot)
        if why is _NO_ANSWER:
            return
        if why is None:
            self.add("stale-anon-vma", Severity.INFO, item.address,
                     f"{item.state.value} rmap_item {item.address:#x} keeps the anon_vma {slot:#x} "
                     f"from when it was stable; it is still a live anon_vma (put_anon_vma() "
                     f"leaves the pointer)", item)
        else:
            self.add("stale-anon-vma", Severity.WARNING, item.address,
                     f"{item.state.value} rmap_item {item.address:#x} keeps {slot:#x} in its anon_vma "
                     f"slot, which {why}: a dangling pointer", item)

    def check_overlay(self, item: RmapItem) -> None:
        """age and remaining_skips against what smart scan can produce."""
        if item.age is None:
            return
        covered = self.layout.rmap_item.offset_covers_age
        if item.state is ItemState.STABLE and covered:
            return  # the bytes belong to the offset
        # On 32-bit the offset covers oldchecksum only: age and
        # remaining_skips stay smart scan's, and garbage there is not the seed's.
        cause = f"a leftover {self.layout.rmap_item.offset_member}" if covered else "corruption"
        if item.remaining_skips > MAX_REMAINING_SKIPS:
            self.add("overlay-garbage", Severity.ERROR, item.address,
                     f"rmap_item {item.address:#x} has remaining_skips {item.remaining_skips}, above the "
                     f"{MAX_REMAINING_SKIPS} that skip_age() allows: its bytes are {cause}", item,
                     rule="remaining_skips above 8")
        if item.age != 255 and item.age > self.seqnr + 1:
            self.add("overlay-garbage", Severity.ERROR, item.address,
                     f"rmap_item {item.address:#x} has age {item.age}, but only {self.seqnr} full scans "
                     f"have completed (age grows by one per scan): its bytes are {cause}", item,
                     rule="age beyond scan history")

    @property
    def vm_mergeable(self) -> int:
        return self.layout.vm_mergeable

    def merges_any(self, mm: int) -> bool:
        bit = self.layout.mmf_vm_merge_any
        if bit is None:
            return False
        try:
            flags = self.w.read_word("mm_struct", mm, mm + self.layout.mm_struct.flags)
        except WalkDamage:
            return False
        return bool(flags >> bit & 1)

    # -- pass 2: stable trees and migrate_nodes --------------------------

    def walk_stable_trees(self) -> None:
        w = self.w
        for nid, root in w.stable_tree_roots():
            try:
                for node in w.for_each_stable_node(root):
                    self.check_tree_node(node, nid)
            except WalkDamage as e:
                self.damage(e.damage)
        try:
            for node in w.for_each_migrate_node():
                if node.head != self.layout.migrate_nodes:
                    self.add("stable-membership", Severity.ERROR, node.address,
                             f"stable node {node.address:#x} is on migrate_nodes but its head is "
                             f"{node.head:#x}, not &migrate_nodes")
                self.check_page_node(node, node.address)
        except WalkDamage as e:
            self.damage(e.damage)

    def check_node_nid(self, node: StableNode, nid: int) -> None:
        """A page's node is in the tree of the page's NUMA node. (A chain's own
        nid is never set: alloc_stable_node_chain() leaves it.)"""
        if self.layout.numa and self.merge_across_nodes == 0 and node.nid is not None \
                and node.nid != nid:
            self.add("stable-membership", Severity.ERROR, node.address,
                     f"stable node {node.address:#x} has nid {node.nid} but hangs in "
                     f"root_stable_tree[{nid}]")

    def check_tree_node(self, node: StableNode, nid: int) -> None:
        if not node.is_chain:
            self.check_node_nid(node, nid)
            self.check_page_node(node, node.address)
            return
        self.chains += 1
        self.chain_nodes.add(node.address)
        dup_head = self.layout.stable_node_dup_head
        limit = self.max_page_sharing
        try:
            for dup in self.w.for_each_stable_node_dup(node):
                self.dups += 1
                if dup.is_chain:
                    self.add("chain", Severity.ERROR, dup.address,
                             f"chain {node.address:#x} holds {dup.address:#x}, itself a chain")
                    continue
                if dup.head != dup_head:
                    self.add("chain", Severity.ERROR, dup.address,
                             f"dup {dup.address:#x} of chain {node.address:#x} has head {dup.head:#x}, "
                             f"not STABLE_NODE_DUP_HEAD {dup_head:#x}")
                self.check_node_nid(dup, nid)
                n = self.check_page_node(dup, dup.address)
                if limit and n > limit:
                    self.add("chain", Severity.WARNING, dup.address,
                             f"dup {dup.address:#x} of chain {node.address:#x} has {n} sharers, above "
                             f"max_page_sharing {limit}")
        except WalkDamage as e:
            self.damage(e.damage)

    def check_page_node(self, node: StableNode, head: int) -> int:
        """A node holding a page: its hlist, its length and its kpfn. Returns
        the number of sharers."""
        self.stable_nodes.add(node.address)
        n = 0
        on_nodes, walked, STABLE = self.items_on_nodes, self.walked_items, ItemState.STABLE
        try:
            known = self.stable_items if self.fast else None
            for item in self.w.for_each_stable_node_rmap_item(node, known):
                n += 1
                on_nodes.add(item.address)
                if self.fast and item.head == head and item.address in walked \
                        and item.state is STABLE:
                    continue  # all is well
                if item.state is not ItemState.STABLE:
                    self.add("stable-membership", Severity.ERROR, item.address,
                             f"rmap_item {item.address:#x} is on the hlist of stable node "
                             f"{node.address:#x} but is {item.state.value}, not stable", item)
                elif item.head != head:
                    self.add("stable-membership", Severity.ERROR, item.address,
                             f"rmap_item {item.address:#x} is on the hlist of stable node "
                             f"{node.address:#x} but its head is {item.head:#x}", item)
                if item.address not in self.walked_items and item.mm not in self.damaged_mms:
                    self.add("stable-membership", Severity.ERROR, item.address,
                             f"rmap_item {item.address:#x} of stable node {node.address:#x} is on no "
                             f"mm's rmap_list", item)
        except WalkDamage as e:
            self.damage(e.damage)
        if n:
            self.pages_shared += 1
            self.pages_sharing += n - 1
        if node.rmap_hlist_len is not None and node.rmap_hlist_len != n:
            self.add("hlist-len", Severity.ERROR, node.address,
                     f"stable node {node.address:#x} has rmap_hlist_len {node.rmap_hlist_len} but "
                     f"{n} rmap_items on its hlist")
        self.check_kpfn(node)
        return n

    def check_kpfn(self, node: StableNode) -> None:
        try:
            mapping = self.page_mapping(node.kpfn)
        except HELPER_LIMITS as e:
            self.cannot_tell(("kpfn",), f"drgn's pfn_to_page() cannot run on this kernel ({e})")
            return
        except (drgn.FaultError, OverflowError, ValueError, WalkDamage):
            self.add("kpfn", Severity.ERROR, node.address,
                     f"stable node {node.address:#x} has kpfn {node.kpfn:#x}, which has no readable "
                     f"struct page")
            return
        if mapping != node.address | PAGE_MAPPING_KSM:
            # a KSM page freed while its node waits to be pruned is normal
            sev = Severity.INFO if mapping & PAGE_MAPPING_FLAGS != PAGE_MAPPING_KSM else Severity.ERROR
            self.add("kpfn", sev, node.address,
                     f"stable node {node.address:#x}: the page at kpfn {node.kpfn:#x} has mapping "
                     f"{mapping:#x}, not this node | PAGE_MAPPING_KSM"
                     + (" (stale node: the KSM page is gone; ksmd prunes it at its next lookup)"
                        if sev == Severity.INFO else ""))

    def page_mapping(self, pfn: int) -> int:
        """``pfn_to_page(pfn)->mapping``, read from the vmemmap array directly
        (SPARSEMEM_VMEMMAP: struct pages sit at vmemmap + pfn * sizeof)."""
        if self._vmemmap is None:
            from drgn.helpers.linux.mm import pfn_to_page

            page_type = self.prog.type("struct page")
            base = pfn_to_page(self.prog, 0).value_()
            size = page_type.size
            linear = pfn_to_page(self.prog, 1 << 20).value_() == base + (size << 20)
            self._vmemmap = (base, size, drgn.offsetof(page_type, "mapping"), linear)
        base, size, mapping, linear = self._vmemmap
        if not linear:
            from drgn.helpers.linux.mm import pfn_to_page

            return pfn_to_page(self.prog, pfn).mapping.value_()
        return self.w.read_word("struct page", 0, base + pfn * size + mapping)

    # -- pass 3: unstable trees ------------------------------------------

    def walk_unstable_trees(self) -> None:
        cur = self.tree_seqnr
        in_tree: set[int] = set()
        for nid, root in self.w.unstable_tree_roots():
            try:
                for item in self.w.for_each_unstable_item(root):
                    in_tree.add(item.address)
                    if item.state is not ItemState.UNSTABLE or item.seqnr != cur:
                        self.add("unstable-tree", Severity.ERROR, item.address,
                                 f"rmap_item {item.address:#x} is a node of root_unstable_tree[{nid}] "
                                 f"but is {item.state.value} with seqnr {item.seqnr} (the trees': {cur})",
                                 item)
                    elif self.layout.numa and self.merge_across_nodes == 0 \
                            and item.nid is not None and item.nid != nid:
                        self.add("unstable-tree", Severity.ERROR, item.address,
                                 f"rmap_item {item.address:#x} has nid {item.nid} but is in "
                                 f"root_unstable_tree[{nid}]", item)
            except WalkDamage as e:
                self.damage(e.damage)
        for address in self.unstable_current - in_tree:
            item = self.w.rmap_item(address)
            self.add("unstable-tree", Severity.ERROR, address,
                     f"rmap_item {address:#x} has UNSTABLE_FLAG with the unstable trees' seqnr "
                     f"{cur} but is in no unstable tree", item)

    # -- cross-checks ----------------------------------------------------

    def cross_check(self, counters: bool = True) -> None:
        """STABLE_FLAG items on no node; with *counters* (every walk ran), the
        kernel's counters against the walks."""
        for address in self.stable_items.keys() - self.items_on_nodes:
            item = self.stable_items[address]
            self.add("stable-membership", Severity.ERROR, address,
                     f"rmap_item {address:#x} has STABLE_FLAG but is on the hlist of no stable node "
                     f"(its head is {item.head:#x})", item)
        if not counters:
            return
        c = self.counters
        walked = {"rmap_items": self.n_items, "pages_shared": self.pages_shared,
                  "pages_sharing": self.pages_sharing, "pages_unshared": self.n_unstable}
        if "stable_node_chains" in c:
            walked["stable_node_chains"] = self.chains
            walked["stable_node_dups"] = self.dups
        damaged = any(f.check == "walk-damage" for f in self.report.findings)
        for name, value in walked.items():
            if c.get(name) != value:
                self.add("global-counters", Severity.ERROR, None,
                         nothing_found(name, c.get(name), value)
                         or f"{name} is {c.get(name)} in the kernel but the walk counts {value}"
                         + (" (a walk was cut short by damage)" if damaged else ""))
        self.report.stats.update(walked)
        self.report.stats["stable_items"] = len(self.stable_items)


    def check_links(self) -> None:
        for bad in self.w.bad_links.values():
            self.add("links", Severity.ERROR, bad.address, bad.sentence())

    # -- orphans ---------------------------------------------------------

    def check_orphans(self) -> None:
        from ksminspect.slab import allocated_objects

        reached = {
            self.layout.rmap_item.type_name: self.walked_items | self.items_on_nodes,
            self.layout.stable_node.type_name: self.stable_nodes_all,
            self.layout.mm_slot.type_name: self.mm_slots,
        }
        rmap_type = self.layout.rmap_item.type_name
        try:
            caches = list(allocated_objects(self.prog, self.layout))
        except HELPER_LIMITS as e:
            self.cannot_tell(("orphans",), f"drgn's slab helpers cannot run on this kernel ({e})")
            return
        for cache_name, type_name, found in caches:
            if found is None:
                self.cannot_tell(("orphans",),
                                 f"struct {type_name} objects share the merged slab cache {cache_name} "
                                 f"with other types (boot with slab_nomerge to keep them apart)")
                continue
            for address in sorted(set(found) - reached.get(type_name, set())):
                if type_name == rmap_type and self.damaged_mms and self._item_mm(address) in self.damaged_mms:
                    continue  # beyond where its mm's walk was cut short: not a leak
                sev = Severity.WARNING if self.live else Severity.ERROR
                where = ("possibly in flight on a live kernel" if self.live else "a leak")
                self.add("orphans", sev, address,
                         f"{type_name} {address:#x} is allocated in slab cache {cache_name} but no "
                         f"walk reaches it ({where})")

    def _item_mm(self, address: int) -> Optional[int]:
        try:
            return self.w.rmap_item(address).mm
        except WalkDamage:
            return None

    @property
    def stable_nodes_all(self) -> set[int]:
        return self.stable_nodes | self.chain_nodes


def _vm_flags(vma: drgn.Object) -> int:
    flags = vma.vm_flags
    if flags.type_.unaliased().kind == drgn.TypeKind.STRUCT:  # vma_flags_t bitmap (v7.x)
        return int.from_bytes(flags.to_bytes_()[:8], "little")
    return flags.value_()


def run_checks(prog: drgn.Program, live: bool = False, fast: bool = True,
               only: Optional[Collection[str]] = None) -> CheckReport:
    """The checks *only* names (every one by default) on *prog*, running only
    the walks they need; *live* softens what a moving kernel explains. *fast*
    False takes the slow reference path (same findings, by test)."""
    chosen = {r.id for r in RULES if only is None or r.id in only}
    need = {p for r in RULES if r.id in chosen for p in r.passes}
    c = _Checker(prog, live, fast)
    c.walk_mm_slots()
    if "stable_trees" in need:
        c.walk_stable_trees()
    if "unstable_trees" in need:
        c.walk_unstable_trees()
    if "stable_trees" in need:
        c.cross_check(counters="unstable_trees" in need)
    if "links" in chosen:
        c.check_links()
    if "slab" in need:
        c.check_orphans()
    report = c.report
    if only is not None:
        report.findings = [f for f in report.findings if f.check in chosen]
        report.cannot_tell = {k: v for k, v in report.cannot_tell.items() if k in chosen}
    return report


def check_live(prog: drgn.Program, attempts: int = 3,
               only: Optional[Collection[str]] = None) -> CheckReport:
    """Checks on a live kernel: KSM moves while we read, so the walk is
    repeated and only what every attempt saw is reported, as transient unless
    it is informational. Each attempt is a session of its own."""
    import dataclasses

    reports = []
    for _ in range(max(attempts, 1)):
        begin_session(prog)  # read the moving kernel afresh
        reports.append(run_checks(prog, live=True, only=only))
        common = set.intersection(*({f.key for f in r.findings} for r in reports))
        if not any(f.severity != Severity.INFO for f in reports[-1].findings if f.key in common):
            break
    last = reports[-1]
    out = CheckReport(stats=dict(last.stats), cannot_tell=dict(last.cannot_tell))
    out.stats["attempts"] = len(reports)
    out.stats["dropped_as_races"] = sum(1 for f in last.findings if f.key not in common)
    for f in last.findings:
        if f.key not in common:
            continue
        if f.severity != Severity.INFO:
            f = dataclasses.replace(f, transient=True, severity=Severity.WARNING,
                                    message=f.message + " (live kernel: may be a race)")
        out.findings.append(f)
    return out
