"""Rules about the walks themselves: every list and tree can be followed,
and every back link points where the walk came from."""

from __future__ import annotations

from ksminspect.checks.engine import Context, RuleOut, Severity, rule


@rule("walk-damage", "every list and tree can be walked: no cycle, no unreadable or misaligned pointer",
      "stable_trees", "unstable_trees")
def walk_damage(ctx: Context, out: RuleOut) -> None:
    for d in ctx.c.rmap_list_damage + ctx.c.tree_damage:
        if d.problem == "excluded":  # the dump's doing, not the kernel's
            out.cannot_tell(ctx.left_out())
        else:  # a pointer that cannot be read rests on the memory it points at
            out.add(Severity.ERROR, d.address, d.sentence(),
                    reads=[("word", d.pointer)] if d.problem == "fault" else [])


@rule("links", "every back link points where the walk came from: list_head.prev on ksm_mm_head and "
      "migrate_nodes, hlist_node.pprev on a stable node's items and a chain's dups, the rb_node "
      "parent in the stable and unstable trees", "stable_trees", "unstable_trees")
def links(ctx: Context, out: RuleOut) -> None:
    for bad in ctx.c.bad_links:  # the back link, and the forward one it should mirror, as read
        out.add(Severity.ERROR, bad.address, bad.sentence(),
                reads=[("word", address) for address, _ in bad.saw], saw=bad.saw)
