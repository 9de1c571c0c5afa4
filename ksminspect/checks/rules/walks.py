"""Rules about the walks themselves: every list and tree can be followed,
and every back link points where the walk came from."""

from __future__ import annotations

import numpy as np

from ksminspect.checks.engine import Context, RuleOut, Severity, rule
from ksminspect.walk import BadLink


@rule("walk-damage", "every list and tree can be walked: no cycle, no unreadable or misaligned pointer",
      "stable_trees", "unstable_trees")
def walk_damage(ctx: Context, out: RuleOut) -> None:
    for d in ctx.c.rmap_list_damage + ctx.c.tree_damage:
        if d.problem == "excluded":  # the dump's doing, not the kernel's
            out.cannot_tell(ctx.left_out())
        else:
            out.add(Severity.ERROR, d.address, d.sentence())


@rule("links", "every back link points where the walk came from: list_head.prev on ksm_mm_head and "
      "migrate_nodes, hlist_node.pprev on a stable node's items and a chain's dups, the rb_node "
      "parent in the stable and unstable trees", "stable_trees", "unstable_trees")
def links(ctx: Context, out: RuleOut) -> None:
    c, w = ctx.c, ctx.c.w
    nodes = c.nodes
    expected = nodes.hlist_pprev_expected()
    found = c.items["hlist_pprev"][nodes.hlist_rows]
    for i in np.nonzero(found != expected)[0]:
        w._bad_link(BadLink("stable_node_hlist", int(c.item_address[nodes.hlist_rows[i]]), "hlist_node.pprev",
                            int(found[i]), int(expected[i])))
    for bad in w.bad_links.values():
        out.add(Severity.ERROR, bad.address, bad.sentence())
