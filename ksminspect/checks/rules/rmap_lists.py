"""Rules about ksm_mm_head and each mm's rmap_list."""

from __future__ import annotations

import numpy as np

from ksminspect.checks.engine import Context, RuleOut, Severity, rule
from ksminspect.collect import BOTH, STABLE, UNSTABLE
from ksminspect.layout import SEQNR_MASK
from ksminspect.mm import mm_owner


@rule("rmap-owner", "every rmap_item on an mm's rmap_list has item->mm == that mm")
def rmap_owner(ctx: Context, out: RuleOut) -> None:
    c = ctx.c
    list_mm = np.repeat(np.array([r.mm for r in c.runs], np.uint64), [r.stop - r.start for r in c.runs])
    for row in np.nonzero(c.items["mm"][:c.walked] != list_mm)[0]:
        out.add(Severity.ERROR, int(c.item_address[row]),
                f"rmap_item {int(c.item_address[row]):#x} is on the rmap_list of mm {int(list_mm[row]):#x} "
                f"but its mm is {int(c.items['mm'][row]):#x}", int(row))


@rule("rmap-order", "addresses ascend along each rmap_list")
def rmap_order(ctx: Context, out: RuleOut) -> None:
    c = ctx.c
    page = c.page_address(slice(0, c.walked))
    bad = np.zeros(c.walked, bool)
    bad[1:] = page[1:] <= page[:-1]
    bad[[r.start for r in c.runs if r.start < r.stop]] = False  # the first of a list follows nothing
    for row in np.nonzero(bad)[0]:
        out.add(Severity.ERROR, int(c.item_address[row]),
                f"rmap_item {int(c.item_address[row]):#x} at {int(page[row]):#x} does not come "
                f"after {int(page[row - 1]):#x} on its rmap_list", int(row),
                reads=[("rmap_item", int(c.item_address[row - 1]))])


@rule("rmap-flags", "no rmap_item carries both STABLE_FLAG and UNSTABLE_FLAG")
def rmap_flags(ctx: Context, out: RuleOut) -> None:
    c = ctx.c
    for row in np.nonzero(c.state[:c.walked] == BOTH)[0]:
        out.add(Severity.ERROR, int(c.item_address[row]),
                f"rmap_item {int(c.item_address[row]):#x} has both STABLE_FLAG and UNSTABLE_FLAG "
                f"(address {int(c.items['raw_address'][row]):#x})", int(row))


@rule("mm-counters", "mm->ksm_rmap_items and mm->ksm_merging_pages equal the mm's walked items")
def mm_counters_match(ctx: Context, out: RuleOut) -> None:
    c = ctx.c
    stable = c.state[:c.walked] == STABLE
    names = c.mm_rows.dtype.names or ()
    for i, r in enumerate(c.runs):
        if r.cut:
            continue  # the rest of its list was not seen
        for key, walked in (("ksm_rmap_items", r.stop - r.start),
                            ("ksm_merging_pages", int(np.count_nonzero(stable[r.start:r.stop])))):
            own = int(c.mm_rows[key][i]) if key in names else walked
            if own != walked:
                out.add(Severity.ERROR, r.mm,
                        f"mm {r.mm:#x} (pid {mm_owner(ctx.prog, r.mm).pid}) has {key} {own} but "
                        f"its rmap_list holds {walked} such items",
                        reads=[("mm_struct", r.mm)], rests_on=["rmap_lists"])


@rule("unstable-seqnr", "an UNSTABLE_FLAG item's seqnr is ksm_scan.seqnr or one behind")
def unstable_seqnr(ctx: Context, out: RuleOut) -> None:
    # remove_rmap_item_from_tree() BUG()s beyond one behind ksm_scan.seqnr
    c, seqnr = ctx.c, ctx.seqnr
    seq = c.seqnr[:c.walked]
    allowed = (seq == seqnr & SEQNR_MASK) | (seq == (seqnr - 1) & SEQNR_MASK)
    for row in np.nonzero((c.state[:c.walked] == UNSTABLE) & ~allowed)[0]:
        out.add(Severity.ERROR, int(c.item_address[row]),
                f"unstable rmap_item {int(c.item_address[row]):#x} has seqnr {int(seq[row])}, "
                f"but ksm_scan.seqnr is {seqnr} ({seqnr & SEQNR_MASK} in "
                f"the low bits): it is neither that nor one behind", int(row), reads=[("ksm_counters", 0)])
