"""Rules about the whole: the kernel's global counters against the walks,
and every allocated KSM object reached by some walk."""

from __future__ import annotations

import numpy as np

from ksminspect.checks.engine import Context, RuleOut, Severity, rule
from ksminspect.collect import walked_counts
from ksminspect.counters import nothing_found
from ksminspect.errors import HELPER_LIMITS


@rule("global-counters", "ksm_rmap_items, pages_shared, pages_sharing, pages_unshared, chains and dups "
      "equal the walk", "stable_trees", "unstable_trees")
def global_counters(ctx: Context, out: RuleOut) -> None:
    c, kernel = ctx.c, ctx.counters
    walked = walked_counts(c, "stable_node_chains" in kernel)
    damage = c.rmap_list_damage + c.tree_damage
    damaged = bool(damage)
    for name, value in walked.items():
        if kernel.get(name) != value and any(d.problem == "excluded" for d in damage):
            out.cannot_tell(ctx.left_out())  # the walks stopped where the dump has no memory
        elif kernel.get(name) != value:
            out.add(Severity.ERROR, None,
                    nothing_found(name, kernel.get(name), value)
                    or f"{name} is {kernel.get(name)} in the kernel but the walk counts {value}"
                    + (" (a walk was cut short by damage)" if damaged else ""),
                    reads=[("ksm_counters", 0)], rests_on=["rmap_lists", "stable_trees", "unstable_trees"])


@rule("orphans", "every allocated object of the KSM slab caches is reached by a walk",
      "stable_trees", "unstable_trees", "slab")
def orphans(ctx: Context, out: RuleOut) -> None:
    from ksminspect.slab import allocated_objects

    c, lay = ctx.c, ctx.layout
    reached = {
        lay.rmap_item.type_name: c.item_address,  # rmap_lists, hlists and unstable trees
        lay.stable_node.type_name: c.nodes.address,
        lay.mm_slot.type_name: np.array([r.slot for r in c.runs], np.uint64),
    }
    kinds = {lay.rmap_item.type_name: "rmap_item", lay.stable_node.type_name: "stable_node"}
    try:
        caches = list(allocated_objects(ctx.prog, lay))
    except HELPER_LIMITS as e:
        out.cannot_tell(f"drgn's slab helpers cannot run on this kernel ({e})")
        return
    for cache_name, type_name, found in caches:
        if found is None:
            out.cannot_tell(f"struct {type_name} objects share the merged slab cache {cache_name} "
                            f"with other types (boot with slab_nomerge to keep them apart)")
            continue
        allocated = np.unique(np.array(found, np.uint64))
        unreached = allocated[~np.isin(allocated, reached.get(type_name, []))]
        kind = kinds.get(type_name, "word")
        if kind == "rmap_item" and c.cut_mms and len(unreached):
            # beyond where its mm's walk was cut short: not a leak
            mms = c.rows["rmap_item"].gather(c.w.memory, unreached)["mm"]
            unreached = unreached[~np.isin(mms, np.array(sorted(c.cut_mms), np.uint64))]
        sev = Severity.WARNING if ctx.live else Severity.ERROR
        where = "possibly in flight on a live kernel" if ctx.live else "a leak"
        for address in unreached.tolist():
            out.add(sev, address, f"{type_name} {address:#x} is allocated in slab cache {cache_name} but "
                                  f"no walk reaches it ({where})", reads=[(kind, address)],
                    rests_on=["rmap_lists", "stable_trees", "unstable_trees"])
