"""Would the kernel's reverse map of each KSM page reach every mapping of it?
Replays rmap_walk_ksm() (:mod:`ksminspect.rmapwalk`) against the page tables
(:mod:`ksminspect.pagetable`): what the seed's offset is for."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ksminspect.checks.engine import Context, RuleOut, Severity, rule
from ksminspect.checks.rules.select import by_mm, stable_rows
from ksminspect.errors import HELPER_LIMITS, CannotTell
from ksminspect.layout import PAGE_MAPPING_KSM
from ksminspect.pagetable import page_tables
from ksminspect.rmapwalk import RmapWalk


@rule("rmap-walk", "rmap_walk_ksm() reaches every mapping of a KSM page: each stable item's VMA through its "
      "anon_vma's interval tree (at its stored page offset, on kernels with the seed's member), and "
      "each mapping of a KSM page from an item on the page's stable node", "stable_trees")
def rmap_walk(ctx: Context, out: RuleOut) -> None:
    replay = RmapWalk(ctx.prog, ctx.layout)
    mapped = _mergeable_mappings(ctx, out)
    _items_reach_their_mappings(ctx, out, replay, mapped)
    _mappings_have_items(ctx, out, replay, mapped)


# What an mm's mergeable VMAs map: (page addresses ascending, pfns, the VMA of each)
Mapped = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]


def _mergeable_mappings(ctx: Context, out: RuleOut) -> Mapped:
    """The page tables of every mergeable VMA of every mm on ksm_mm_head,
    read once for both directions; an mm whose VMAs or tables cannot be read
    is left out (cannot tell)."""
    tables = page_tables(ctx.prog)
    mapped: Mapped = {}
    for run in ctx.c.runs:
        vmas = ctx.look.vmas(run.mm)
        if vmas is None:
            out.cannot_tell(ctx.look.why.get("vmas", f"the VMAs of mm {run.mm:#x} cannot be read"))
            continue
        parts = []
        try:
            for i in np.nonzero(vmas.mergeable)[0].tolist():
                addresses, pfns = tables.mapped(run.mm, int(vmas.start[i]), int(vmas.end[i]))
                parts.append((addresses, pfns, np.full(len(pfns), int(vmas.address[i]), np.uint64)))
        except CannotTell as e:
            out.cannot_tell(e.reason)
            continue
        if parts:
            mapped[run.mm] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                              np.concatenate([p[2] for p in parts]))
    return mapped


def _pfns_at(ctx: Context, mapped: Mapped, mm: int, pages: np.ndarray) -> np.ndarray:
    """The pfn each page of *mm* maps (-1: none): from its mergeable VMAs'
    tables as read, the page tables asked again only for pages outside them."""
    out = np.full(len(pages), -1, np.int64)
    vmas = ctx.look.vmas(mm)
    inside = np.zeros(len(pages), bool)
    if mm in mapped and vmas is not None:
        addresses, pfns, _ = mapped[mm]
        at = vmas.at(pages)
        inside = (at >= 0) & vmas.take("mergeable", at, False)
        k = np.minimum(np.searchsorted(addresses, pages), max(len(addresses) - 1, 0))
        hit = inside & (addresses[k] == pages) if len(addresses) else np.zeros(len(pages), bool)
        out[hit] = pfns[k[hit]].astype(np.int64)
    if np.any(~inside):
        out[~inside] = page_tables(ctx.prog).pfns_at(mm, pages[~inside])
    return out


def _offsets(ctx: Context, rows: np.ndarray) -> Optional[np.ndarray]:
    """The stored page offsets where the kernel has the seed's member."""
    if ctx.layout.rmap_item.offset is None:
        return None
    return ctx.c.items["offset"][rows].astype(np.uint64)


def _items_reach_their_mappings(ctx: Context, out: RuleOut, replay: RmapWalk, mapped: Mapped) -> None:
    """Each stable item whose address maps its node's kpfn: the first pass
    of rmap_walk_ksm() reaches that mapping's VMA. An item whose address maps
    nothing or another page (written since the last scan) is no finding."""
    c, nodes, tables = ctx.c, ctx.c.nodes, page_tables(ctx.prog)
    member = ctx.layout.rmap_item.offset_member
    for mm, rows in by_mm(ctx, stable_rows(ctx)):
        pages = c.page_address(rows)
        try:
            pfns = _pfns_at(ctx, mapped, mm, pages)
        except CannotTell as e:
            out.cannot_tell(e.reason)
            continue
        at = nodes.index_of(c.items["head"][rows])
        kpfn = np.where(at >= 0, nodes.rows["kpfn"][np.maximum(at, 0)].astype(np.int64), -2)
        hits = np.nonzero(pfns == kpfn)[0]
        offsets = _offsets(ctx, rows)
        anon = c.items["anon_vma"][rows]
        missed = []
        for a in np.unique(anon[hits]).tolist():
            group = hits[anon[hits] == np.uint64(a)]
            got = replay.first_pass(a, mm, pages[group], offsets[group] if offsets is not None else None)
            if isinstance(got, str):
                out.cannot_tell(got)
                continue
            missed += group[~got[1]].tolist()
        for k in sorted(missed):
            offset = int(offsets[k]) if offsets is not None else None
            reach = replay.reach(int(anon[k]), mm, int(pages[k]), offset, int(pfns[k]), int(kpfn[k]), member)
            item, head = int(c.item_address[rows[k]]), int(c.items["head"][rows[k]])
            reads: list = [("rmap_item", item), ("stable_node", head), ("anon_vma_tree", int(anon[k]))]
            entry = tables.entry_at(mm, int(pages[k]))
            if entry is not None:
                reads.append(("pte", entry))
            out.add(Severity.ERROR, item,
                    f"rmap_walk_ksm would not find this mapping of KSM page {int(pfns[k]):#x}: stable "
                    f"rmap_item {item:#x} of mm {mm:#x} at {int(pages[k]):#x}: {reach.why}",
                    int(rows[k]), rule="replay", reads=reads)


def _mappings_have_items(ctx: Context, out: RuleOut, replay: RmapWalk, mapped: Mapped) -> None:
    """Each page table entry of a mergeable VMA of an mm on ksm_mm_head that
    maps a KSM page is known to the page's stable node: an item of that mm at
    that address on its hlist, or one of another mm at that address whose
    anon_vma's tree links the VMA (the kernel's second pass: a fork)."""
    c, nodes = ctx.c, ctx.c.nodes
    if not mapped:
        return
    # The KSM pages: the kpfn of each node whose page's mapping points back
    # at it (the kpfn rule's judgement; a stale node's page may be anything now)
    holds = np.nonzero(nodes.holds_page)[0]
    kpfns = nodes.rows["kpfn"][holds].astype(np.uint64)
    try:
        mapping, readable, _ = ctx.look.page_mappings(kpfns)
    except HELPER_LIMITS as e:
        out.cannot_tell(f"which pages are KSM pages cannot be read ({e})")
        return
    live = readable & (mapping == (nodes.address[holds] | np.uint64(PAGE_MAPPING_KSM)))
    holds, kpfns = holds[live], kpfns[live]
    order = np.argsort(kpfns, kind="stable")
    holds, kpfns = holds[order], kpfns[order]
    if not len(kpfns):
        return
    # which hlist each item row is on (-1: none)
    on = np.full(len(c.items), -1, np.int64)
    on[nodes.hlist_rows] = nodes.hlist_node
    for run in c.runs:
        if run.mm not in mapped:
            continue
        addresses, pfns, vma_of = mapped[run.mm]
        k = np.minimum(np.searchsorted(kpfns, pfns), len(kpfns) - 1)
        which = np.nonzero(kpfns[k] == pfns)[0]
        node_of = holds[k[which]]
        # the mm's item at each address, by its rmap_list (ascending: rmap-order's side)
        pages = c.page_address(np.arange(run.start, run.stop))
        j = np.minimum(np.searchsorted(pages, addresses[which]), max(len(pages) - 1, 0))
        item_rows = run.start + j
        known = (pages[j] == addresses[which]) & (on[item_rows] == node_of) if len(pages) else \
            np.zeros(len(which), bool)
        for i in np.nonzero(~known)[0].tolist():
            _unknown_mapping(ctx, out, replay, int(node_of[i]), run.mm, int(addresses[which[i]]),
                             int(pfns[which[i]]), int(vma_of[which[i]]))


def _unknown_mapping(ctx: Context, out: RuleOut, replay: RmapWalk, at: int, mm: int, address: int,
                     pfn: int, vma: int) -> None:
    """A mapping of the KSM page of node *at* that no item of *mm* at
    *address* on its rmap_list knows: an error, unless an item on the node's
    hlist does after all, or the second pass reaches it."""
    c, nodes, tables = ctx.c, ctx.c.nodes, page_tables(ctx.prog)
    rows = nodes.hlist_rows[nodes.hlist_start[at]:nodes.hlist_stop[at]]
    if np.any((c.items["mm"][rows] == np.uint64(mm)) & (c.page_address(rows) == np.uint64(address))):
        return
    node = int(nodes.address[at])
    if _forked(ctx, replay, at, mm, address, vma):
        return
    reads: list = [("stable_node_hlist", node)]
    entry = tables.entry_at(mm, address)
    if entry is not None:
        reads.append(("pte", entry))
    out.add(Severity.ERROR, node,
            f"mm {mm:#x} maps KSM page {pfn:#x} (stable node {node:#x}) at {address:#x}, but no "
            f"rmap_item on the node's hlist knows this mapping: rmap_walk_ksm would not find it",
            rule="every mapping known", reads=reads)


def _forked(ctx: Context, replay: RmapWalk, node: int, mm: int, address: int, vma: int) -> bool:
    """The kernel's second pass reaches the mapping: an item of another mm
    on the node at the same address whose anon_vma's tree links the VMA."""
    c, nodes = ctx.c, ctx.c.nodes
    rows = nodes.hlist_rows[nodes.hlist_start[node]:nodes.hlist_stop[node]]
    pages = c.page_address(rows)
    offsets = _offsets(ctx, rows)
    for j in np.nonzero(pages == np.uint64(address))[0].tolist():
        offset = int(offsets[j]) if offsets is not None else None
        if replay.second_pass_reaches(int(c.items["anon_vma"][rows[j]]), mm, address, vma, offset):
            return True
    return False
