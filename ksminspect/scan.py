"""The scan cursor, ``ksm_scan``: where ksmd will go on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import drgn



@dataclass(frozen=True)
class ScanCursor:
    """``struct ksm_scan``."""

    mm_slot: int  # the slot being scanned (&ksm_mm_head between passes)
    address: int  # the next address to scan in that mm
    rmap_list: int  # struct ksm_rmap_item **: where the next item hangs
    next_item: Optional[int]  # *rmap_list, if readable
    seqnr: int  # completed full scans (full_scans)

    def at_head(self, prog: drgn.Program) -> bool:
        """Between two passes: the cursor is on ksm_mm_head itself."""
        return self.mm_slot == prog["ksm_mm_head"].address_


def read_scan_cursor(prog: drgn.Program) -> ScanCursor:
    scan = prog["ksm_scan"]
    rmap_list = scan.rmap_list.value_()
    try:
        next_item = scan.rmap_list[0].value_() if rmap_list else None
    except drgn.FaultError:
        next_item = None
    return ScanCursor(mm_slot=scan.mm_slot.value_(), address=scan.address.value_(),
                      rmap_list=rmap_list, next_item=next_item, seqnr=scan.seqnr.value_())


def unstable_tree_seqnr(prog: drgn.Program, cursor: "ScanCursor | None" = None) -> int:
    """The seqnr (low bits) of the items the unstable trees hold now.

    ksmd increments ksm_scan.seqnr when a pass ends but resets the trees only
    when the next pass starts: between passes (cursor on ksm_mm_head) the
    trees still hold the last pass's items.
    """
    from ksminspect.layout import SEQNR_MASK

    cursor = cursor or read_scan_cursor(prog)
    return (cursor.seqnr - (1 if cursor.at_head(prog) else 0)) & SEQNR_MASK
