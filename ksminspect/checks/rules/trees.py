"""Rules about the stable trees (nodes, chains, dups, migrate_nodes) and the
unstable trees."""

from __future__ import annotations

import numpy as np

from ksminspect.checks.engine import Context, RuleOut, Severity, rule
from ksminspect.collect import DUP, MIGRATE, STABLE, TREE, UNSTABLE
from ksminspect.decode import STATE_NAMES
from ksminspect.errors import HELPER_LIMITS
from ksminspect.layout import PAGE_MAPPING_FLAGS, PAGE_MAPPING_KSM


@rule("stable-membership", "a stable node's items have STABLE_FLAG and head pointing back; every "
      "STABLE_FLAG item is on a node", "stable_trees")
def stable_membership(ctx: Context, out: RuleOut) -> None:
    c, nodes = ctx.c, ctx.c.nodes
    if ctx.layout.migrate_nodes is not None:
        for i in np.nonzero((nodes.kind == MIGRATE)
                            & (nodes.rows["rb_parent_color"] != np.uint64(ctx.layout.migrate_nodes)))[0]:
            out.add(Severity.ERROR, int(nodes.address[i]),
                    f"stable node {int(nodes.address[i]):#x} is on migrate_nodes but its head is "
                    f"{int(nodes.rows['rb_parent_color'][i]):#x}, not &migrate_nodes",
                    reads=[("stable_node", int(nodes.address[i]))])
    if ctx.by_nid and "nid" in (nodes.rows.dtype.names or ()):
        # A page's node is in the tree of the page's NUMA node (a chain's own
        # nid is never set: alloc_stable_node_chain() leaves it).
        placed = ((nodes.kind == TREE) | (nodes.kind == DUP)) & nodes.holds_page
        for i in np.nonzero(placed & (nodes.rows["nid"] != nodes.nid))[0]:
            out.add(Severity.ERROR, int(nodes.address[i]),
                    f"stable node {int(nodes.address[i]):#x} has nid {int(nodes.rows['nid'][i])} but "
                    f"hangs in root_stable_tree[{int(nodes.nid[i])}]",
                    reads=[("stable_node", int(nodes.address[i]))])
    rows, on = nodes.hlist_rows, nodes.hlist_node
    state, head = c.state[rows], c.items["head"][rows]
    for k in np.nonzero((state != STABLE) | (head != nodes.address[on]))[0]:
        row, node = int(rows[k]), int(nodes.address[on[k]])
        if state[k] != STABLE:
            out.add(Severity.ERROR, int(c.item_address[row]),
                    f"rmap_item {int(c.item_address[row]):#x} is on the hlist of stable node "
                    f"{node:#x} but is {STATE_NAMES[state[k]]}, not stable", row,
                    reads=[("stable_node_hlist", node)])
        else:
            out.add(Severity.ERROR, int(c.item_address[row]),
                    f"rmap_item {int(c.item_address[row]):#x} is on the hlist of stable node "
                    f"{node:#x} but its head is {int(head[k]):#x}", row,
                    reads=[("stable_node_hlist", node)])
    unlisted = rows >= c.walked
    if c.cut_mms and np.any(unlisted):
        unlisted &= ~np.isin(c.items["mm"][rows], np.array(sorted(c.cut_mms), np.uint64))
    for k in np.nonzero(unlisted)[0]:
        row = int(rows[k])
        out.add(Severity.ERROR, int(c.item_address[row]),
                f"rmap_item {int(c.item_address[row]):#x} of stable node {int(nodes.address[on[k]]):#x} "
                f"is on no mm's rmap_list", row, reads=[("stable_node_hlist", int(nodes.address[on[k]]))],
                rests_on=["rmap_lists"])
    listed = np.zeros(len(c.item_address), bool)
    listed[rows] = True
    seen: set[int] = set()
    for row in np.nonzero((c.state[:c.walked] == STABLE) & ~listed[:c.walked])[0].tolist():
        address = int(c.item_address[row])
        if address not in seen:
            seen.add(address)
            head_ = int(c.items["head"][row])
            out.add(Severity.ERROR, address,
                    f"rmap_item {address:#x} has STABLE_FLAG but is on the hlist of no stable node "
                    f"(its head is {head_:#x})", row,
                    reads=[("stable_node", head_), ("stable_node_hlist", head_)], rests_on=["stable_trees"])


@rule("hlist-len", "rmap_hlist_len equals the length of a stable node's hlist", "stable_trees")
def hlist_len(ctx: Context, out: RuleOut) -> None:
    nodes = ctx.c.nodes
    if "rmap_hlist_len" not in (nodes.rows.dtype.names or ()):
        return
    said = nodes.rows["rmap_hlist_len"]
    for i in np.nonzero(nodes.holds_page & (said != nodes.hlist_len))[0]:
        out.add(Severity.ERROR, int(nodes.address[i]),
                f"stable node {int(nodes.address[i]):#x} has rmap_hlist_len {int(said[i])} but "
                f"{int(nodes.hlist_len[i])} rmap_items on its hlist",
                reads=[("stable_node", int(nodes.address[i])), ("stable_node_hlist", int(nodes.address[i]))])


@rule("chain", "a chain holds dups only, each with head == STABLE_NODE_DUP_HEAD and at most "
      "max_page_sharing sharers", "stable_trees")
def chain(ctx: Context, out: RuleOut) -> None:
    nodes = ctx.c.nodes
    dup_head = ctx.layout.stable_node_dup_head
    limit = ctx.max_page_sharing
    dup = nodes.kind == DUP
    head = nodes.rows["rb_parent_color"]
    over = nodes.hlist_len > limit if limit else np.zeros(len(nodes), bool)
    for i in np.nonzero(dup & (nodes.is_chain | (head != np.uint64(dup_head or 0)) | over))[0]:
        address, chain_ = int(nodes.address[i]), int(nodes.chain[i])
        reads = [("stable_node", address), ("stable_node", chain_)]
        if nodes.is_chain[i]:
            out.add(Severity.ERROR, address, f"chain {chain_:#x} holds {address:#x}, itself a chain",
                    reads=reads)
            continue
        if head[i] != dup_head:
            out.add(Severity.ERROR, address, f"dup {address:#x} of chain {chain_:#x} has head "
                                             f"{int(head[i]):#x}, not STABLE_NODE_DUP_HEAD {dup_head:#x}",
                    reads=reads)
        if over[i]:
            out.add(Severity.WARNING, address, f"dup {address:#x} of chain {chain_:#x} has "
                                               f"{int(nodes.hlist_len[i])} sharers, above "
                                               f"max_page_sharing {limit}",
                    reads=reads + [("stable_node_hlist", address)])


@rule("kpfn", "the page at a stable node's kpfn is a KSM page whose mapping points back at the node",
      "stable_trees")
def kpfn(ctx: Context, out: RuleOut) -> None:
    nodes = ctx.c.nodes
    which = np.nonzero(nodes.holds_page)[0]
    pfns = nodes.rows["kpfn"][which]
    try:
        mapping, readable, at = ctx.look.page_mappings(pfns)
    except HELPER_LIMITS as e:
        out.cannot_tell(f"drgn's pfn_to_page() cannot run on this kernel ({e})")
        return
    expected = nodes.address[which] | np.uint64(PAGE_MAPPING_KSM)
    for k in np.nonzero(~readable | (mapping != expected))[0]:
        node, pfn, got = int(nodes.address[which[k]]), int(pfns[k]), int(mapping[k])
        reads = [("stable_node", node), ("word", int(at[k]))]
        if not readable[k]:
            out.add(Severity.ERROR, node, f"stable node {node:#x} has kpfn {pfn:#x}, which has no readable "
                                          f"struct page", reads=reads)
            continue
        # a KSM page freed while its node waits to be pruned is normal
        sev = Severity.INFO if got & PAGE_MAPPING_FLAGS != PAGE_MAPPING_KSM else Severity.ERROR
        out.add(sev, node, f"stable node {node:#x}: the page at kpfn {pfn:#x} has mapping "
                           f"{got:#x}, not this node | PAGE_MAPPING_KSM"
                           + (" (stale node: the KSM page is gone; ksmd prunes it at its next lookup)"
                              if sev == Severity.INFO else ""), reads=reads)


@rule("unstable-tree", "unstable tree nodes have UNSTABLE_FLAG and the trees' seqnr; every such item "
      "is in a tree", "unstable_trees")
def unstable_tree(ctx: Context, out: RuleOut) -> None:
    c, cur = ctx.c, ctx.tree_seqnr
    rows, tree_nid = c.unstable
    state, seqnr = c.state[rows], c.seqnr[rows]
    item_nid = c.items["nid"][rows] if "nid" in (c.items.dtype.names or ()) else None
    wrong = (state != UNSTABLE) | (seqnr != cur)
    misplaced = ~wrong & (item_nid != tree_nid) if ctx.by_nid and item_nid is not None else wrong & False
    for k in np.nonzero(wrong | misplaced)[0]:
        row = int(rows[k])
        address = int(c.item_address[row])
        if wrong[k]:
            out.add(Severity.ERROR, address,
                    f"rmap_item {address:#x} is a node of root_unstable_tree[{int(tree_nid[k])}] "
                    f"but is {STATE_NAMES[state[k]]} with seqnr {int(seqnr[k])} (the trees': {cur})", row,
                    reads=[("ksm_counters", 0)])
        else:
            assert item_nid is not None  # misplaced: none without the items' nid
            out.add(Severity.ERROR, address,
                    f"rmap_item {address:#x} has nid {int(item_nid[k])} but is in "
                    f"root_unstable_tree[{int(tree_nid[k])}]", row)
    current = np.nonzero((c.state[:c.walked] == UNSTABLE) & (c.seqnr[:c.walked] == cur))[0]
    for row in current[~np.isin(c.item_address[current], c.item_address[rows])]:
        out.add(Severity.ERROR, int(c.item_address[row]),
                f"rmap_item {int(c.item_address[row]):#x} has UNSTABLE_FLAG with the unstable trees' "
                f"seqnr {cur} but is in no unstable tree", int(row),
                reads=[("ksm_counters", 0), ("unstable_trees", 0)], rests_on=["unstable_trees"])
