"""Rules about each rmap_item's own fields, read by its flag bits: what a
stable item points at, and what an item outside the stable tree still keeps
(the seed's offset, an anon_vma, smart scan's age)."""

from __future__ import annotations


import numpy as np

from ksminspect.checks.engine import Context, RuleOut, Severity, rule
from ksminspect.checks.rules.select import by_mm, left_rows, stable_rows, vma_of
from ksminspect.lookups import NO_ANSWER, AnonVmaState
from ksminspect.decode import STABLE, STATE_WORDS, UNSTABLE
from ksminspect.layout import MAX_REMAINING_SKIPS
from ksminspect.mm import mm_owner


@rule("anon-vma", "a stable item's anon_vma is a live anon_vma")
def anon_vma(ctx: Context, out: RuleOut) -> None:
    c = ctx.c
    rows = stable_rows(ctx)
    slots = c.items["anon_vma"][rows]
    why: dict[int, AnonVmaState] = {0: "is NULL"}
    for a in np.unique(slots).tolist():
        if a:
            why[a] = ctx.look.anon_vma_state(a)
    if NO_ANSWER in why.values():
        out.cannot_tell(ctx.look.why["slab"])
    bad = [a for a, w in why.items() if w and w is not NO_ANSWER]
    for row in rows[np.isin(slots, np.array(bad, np.uint64))]:
        a = int(c.items["anon_vma"][row])
        out.add(Severity.ERROR, int(c.item_address[row]),
                f"stable rmap_item {int(c.item_address[row]):#x}: its anon_vma {a:#x} {why[a]}", int(row),
                reads=[("word", a)])


@rule("vma-mergeable", "a stable item's address lies in a VMA that KSM may merge")
def vma_mergeable(ctx: Context, out: RuleOut) -> None:
    c = ctx.c
    for mm, rows in by_mm(ctx, stable_rows(ctx)):
        vmas, at = vma_of(ctx, mm, rows)
        if vmas is None:
            out.cannot_tell(ctx.look.why["vmas"])
            continue
        bad = (at < 0) | ~vmas.take("mergeable", at, False)
        if np.any(bad) and mm_owner(ctx.prog, mm).exited:
            bad &= at >= 0  # an exited owner's VMAs are gone already
        for k in np.nonzero(bad)[0]:
            row, address = int(rows[k]), int(c.item_address[rows[k]])
            if at[k] < 0:
                out.add(Severity.ERROR, address, f"stable rmap_item {address:#x}: no VMA maps "
                                                 f"{int(c.page_address(row)):#x}", row)
            else:
                out.add(Severity.ERROR, address,
                        f"stable rmap_item {address:#x}: the VMA {int(vmas.start[at[k]]):#x}-"
                        f"{int(vmas.end[at[k]]):#x} is not VM_MERGEABLE and the mm does not merge "
                        f"everything", row)


@rule("stale-offset", "no item outside the stable tree still holds a page offset (kernels with the "
      "seed's member)")
def stale_offset(ctx: Context, out: RuleOut) -> None:
    c, lay = ctx.c, ctx.layout.rmap_item
    if lay.offset is None:
        return
    shift = ctx.layout.page_shift
    state = c.state
    for mm, rows in by_mm(ctx, left_rows(ctx)):
        offset = c.items["offset"][rows].astype(np.uint64)
        page = c.page_address(rows)
        vmas, at = vma_of(ctx, mm, rows)
        if vmas is None:  # the page number can still be matched; vm_pgoff cannot
            out.cannot_tell(ctx.look.why["vmas"])
            at = np.full(len(rows), -1)
        # Where no VMA holds the page any more, its page number is the linear
        # page index its VMA had if it never moved: 8 bytes matched exactly.
        index = (np.where(at >= 0, vmas.linear_page_index(at, page, shift), page >> np.uint64(shift))
                 if vmas is not None else page >> np.uint64(shift))
        pgoff = vmas.take("pgoff", at, 0) if vmas is not None else np.zeros(len(rows), np.uint64)
        by_pgoff = (at >= 0) & (offset == pgoff) & (pgoff != index)
        for k in np.nonzero((offset != 0) & ((offset == index) | by_pgoff))[0]:
            row, address = int(rows[k]), int(c.item_address[rows[k]])
            matches = []
            if offset[k] == index[k]:
                matches.append(f"its linear page index {int(index[k]):#x}" if at[k] >= 0 else
                               f"its page number {int(index[k]):#x} (no VMA holds it now)")
            if by_pgoff[k]:
                matches.append(f"its VMA's vm_pgoff {int(pgoff[k]):#x}")
            out.add(Severity.ERROR, address,
                    f"rmap_item {address:#x} ({STATE_WORDS[state[row]]}) at {int(page[k]):#x} "
                    f"still holds {lay.offset_member} {int(offset[k]):#x}, exactly "
                    f"{' and '.join(matches)}: the offset was not reset when it left the stable tree",
                    row, rule="exact overlay match")


@rule("wrong-offset", "a stable item's page offset is its linear page index or its VMA's vm_pgoff")
def wrong_offset(ctx: Context, out: RuleOut) -> None:
    c, lay = ctx.c, ctx.layout.rmap_item
    if lay.offset is None:
        return
    for mm, rows in by_mm(ctx, stable_rows(ctx)):
        vmas, at = vma_of(ctx, mm, rows)
        if vmas is None:
            out.cannot_tell(ctx.look.why["vmas"])
            continue
        offset = c.items["offset"][rows].astype(np.uint64)
        page = c.page_address(rows)
        index = vmas.linear_page_index(at, page, ctx.layout.page_shift)
        pgoff = vmas.take("pgoff", at, 0)
        # no VMA holds the page: vma-mergeable says so; nothing to compare with
        for k in np.nonzero((at >= 0) & (offset != index) & (offset != pgoff))[0]:
            row, address = int(rows[k]), int(c.item_address[rows[k]])
            out.add(Severity.ERROR, address,
                    f"stable rmap_item {address:#x} at {int(page[k]):#x}: its "
                    f"{lay.offset_member} is {int(offset[k]):#x}, neither its linear page "
                    f"index {int(index[k]):#x} nor its VMA's vm_pgoff {int(pgoff[k]):#x}", row)


@rule("overlay-garbage", "age and remaining_skips are values the smart scan can produce")
def overlay_garbage(ctx: Context, out: RuleOut) -> None:
    c, lay = ctx.c, ctx.layout.rmap_item
    if lay.age is None:
        return
    covered = lay.offset_covers_age
    # On 32-bit the offset covers oldchecksum only: age and remaining_skips
    # stay smart scan's, and garbage there is not the seed's.
    cause = f"a leftover {lay.offset_member}" if covered else "corruption"
    age = c.items["age"][:c.walked]  # u8: any limit above 255 is 255
    skips = c.items["remaining_skips"][:c.walked]
    judged = ~(c.state[:c.walked] == STABLE) if covered else np.ones(c.walked, bool)
    too_many = judged & (skips > MAX_REMAINING_SKIPS)
    too_old = judged & (age != 255) & (age > min(ctx.seqnr + 1, 255))
    for row in np.nonzero(too_many | too_old)[0]:
        address = int(c.item_address[row])
        if too_many[row]:
            out.add(Severity.ERROR, address,
                    f"rmap_item {address:#x} has remaining_skips {int(skips[row])}, above the "
                    f"{MAX_REMAINING_SKIPS} that skip_age() allows: its bytes are {cause}", int(row),
                    rule="remaining_skips above 8")
        if too_old[row]:
            out.add(Severity.ERROR, address,
                    f"rmap_item {address:#x} has age {int(age[row])}, but only {ctx.seqnr} full scans "
                    f"have completed (age grows by one per scan): its bytes are {cause}", int(row),
                    rule="age beyond scan history", reads=[("ksm_counters", 0)])


@rule("stale-anon-vma", "what an item outside the stable tree keeps in its anon_vma slot")
def stale_anon_vma(ctx: Context, out: RuleOut) -> None:
    c, numa = ctx.c, ctx.layout.numa
    rows = left_rows(ctx)
    if numa:
        rows = rows[c.state[rows] != UNSTABLE]  # an unstable item's slot holds its nid
    rows = rows[c.items["anon_vma"][rows] != 0]
    look = ctx.look
    for row in rows:
        slot = int(c.items["anon_vma"][row])
        if numa and (slot & 0xFFFFFFFF) < ctx.layout.max_numnodes and look.anon_vma_state(slot):
            continue  # a nid left from an unstable period, under old high bytes
        why = look.anon_vma_state(slot)
        address, state = int(c.item_address[row]), STATE_WORDS[c.state[row]]
        if why is NO_ANSWER:
            out.cannot_tell(look.why["slab"])
        elif why is None:
            out.add(Severity.INFO, address,
                    f"rmap_item {address:#x} ({state}) keeps the anon_vma {slot:#x} "
                    f"from when it was stable; it is still a live anon_vma (put_anon_vma() "
                    f"leaves the pointer)", int(row))
        else:
            out.add(Severity.WARNING, address,
                    f"rmap_item {address:#x} ({state}) keeps {slot:#x} in its anon_vma "
                    f"slot, which {why}: a dangling pointer", int(row), reads=[("word", slot)])
