"""From a page to KSM: is it a KSM page, which stable node, which sharers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import drgn
import numpy as np
from drgn.helpers.linux.mm import follow_pfn

from ksminspect.decode import RmapItem
from ksminspect.errors import HELPER_LIMITS, CannotTell, KsmInspectError
from ksminspect.layout import PAGE_MAPPING_ANON, PAGE_MAPPING_FLAGS, PAGE_MAPPING_KSM, get_layout
from ksminspect.program import dump_description
from ksminspect.rmapwalk import Reach
from ksminspect.session import session
from ksminspect.stable import StableTreeNode, for_each_stable_tree_node
from ksminspect.walk import WalkDamage


def _drgn_helper(helper, *args):
    """*helper*(*args), or a "cannot tell" refusal where the helper cannot
    run on this kernel (e.g. no page-table walker for the architecture)."""
    try:
        return helper(*args)
    except HELPER_LIMITS as e:
        raise CannotTell(f"drgn's {helper.__name__}() cannot run on this kernel ({e})") from None


@dataclass
class PageReport:
    pfn: int
    page: int  # struct page *
    mapping: int
    stable_node: Optional[int]  # the node page->mapping points at, for a KSM page
    entry: Optional[StableTreeNode]  # that node as found in a tree (a dup: its chain)
    chain: Optional[StableTreeNode]
    items: list[RmapItem]  # rmap_items covering the page when it is not KSM
    pid: Optional[int] = None
    address: Optional[int] = None
    in_dump: Optional[bool] = None  # the page frame's own memory (False: the dump left it out)
    # a KSM page: whether rmap_walk_ksm() reaches each sharer's mapping, by item
    reach: dict[int, Reach] = field(default_factory=dict)

    @property
    def is_ksm(self) -> bool:
        return self.stable_node is not None


def follow_page_frame(mm: drgn.Object, address: int) -> Optional[int]:
    """The pfn *address* maps to in *mm*, None where it maps none. A fault
    at another address than *address* is a page table the dump does not
    hold (or this drgn cannot find): CannotTell, not "unmapped"."""
    try:
        return _drgn_helper(follow_pfn, mm, address).value_()
    except drgn.FaultError as e:
        if e.address == address:
            return None
        raise CannotTell(f"the page tables that would say whether {address:#x} is mapped cannot "
                         f"be read ({e})") from None
    except ValueError:
        return None


def page_frame(prog: drgn.Program, target: int) -> int:
    """*target* as a page frame number: a pfn below max_pfn as given, else
    the pfn of the struct page at that address (crash's ``kmem -p`` takes
    either)."""

    try:
        max_pfn = prog["max_pfn"].value_()
    except (LookupError, drgn.FaultError, drgn.ObjectAbsentError):
        return target  # cannot tell the two apart: a pfn, as documented
    if target < max_pfn:
        return target
    from ksminspect.lookups import Lookups

    try:
        pfn = Lookups(prog, session(prog).walker).pfn_of_page(target)
        if pfn is not None and pfn < max_pfn:
            return pfn
    except HELPER_LIMITS + (drgn.FaultError, ValueError, OverflowError):
        pass
    raise KsmInspectError(f"{target:#x} is neither a page frame number of this kernel (max_pfn "
                          f"{max_pfn:#x}) nor the address of a struct page; for an address in "
                          f"a process, add --pid")


def struct_page(prog: drgn.Program, pfn: int) -> drgn.Object:
    """The ``struct page *`` of *pfn*, by the kernel's memory model
    (:meth:`~ksminspect.lookups.Lookups.page_addresses`)."""
    from ksminspect.lookups import Lookups

    try:
        pages, known = Lookups(prog, session(prog).walker).page_addresses(np.array([pfn], np.uint64))
    except NotImplementedError as e:
        raise CannotTell(f"the struct page of pfn {pfn:#x} cannot be found ({e})") from None
    if not known[0]:
        raise KsmInspectError(f"pfn {pfn:#x} has no struct page")
    return drgn.Object(prog, "struct page *", int(pages[0]))


def page_mapping(prog: drgn.Program, pfn: int) -> tuple[int, int]:
    """``(struct page *, page->mapping)`` of *pfn*."""
    page = struct_page(prog, pfn)
    try:
        return page.value_(), page.mapping.value_()
    except drgn.FaultError:
        raise KsmInspectError(f"pfn {pfn:#x} has no readable struct page") from None


def page_in_dump(prog: drgn.Program, pfn: int) -> Optional[bool]:
    """Whether the dump holds page frame *pfn*'s own memory (a frame with a
    struct page: RAM): False where the dump left it out (a dump level
    leaves out user pages, KSM's among them; a filtered ELF file simply
    has no segment for it); None on a live kernel."""
    if dump_description(prog) is None:
        return None
    try:
        prog.read(pfn << get_layout(prog).page_shift, 1, True)
        return True
    except drgn.FaultError:
        return False


def _find_node(prog: drgn.Program, node: int) -> tuple[Optional[StableTreeNode], Optional[StableTreeNode]]:
    """The tree entry for stable node *node*, and the chain if it is a dup."""
    try:
        for e in for_each_stable_tree_node(prog):
            if e.node == node:
                return e, None
            for d in e.dups:
                if d.node == node:
                    return d, e
    except WalkDamage:
        pass
    return None, None


def _items_at(prog: drgn.Program, address: int, mm: Optional[int] = None) -> list[RmapItem]:
    """The rmap_items on the rmap_lists at page *address* (of *mm* only)."""
    c = session(prog).collect()
    rows = np.nonzero(c.page_address(slice(0, c.walked)) == np.uint64(address))[0]
    if mm is not None:
        rows = rows[c.items["mm"][rows] == np.uint64(mm)]
    return c.item_records(rows)


def _items_for_anon_page(prog: drgn.Program, pfn: int, index: int) -> list[RmapItem]:
    """rmap_items whose address maps *pfn*: candidates by the page's linear
    index (anonymous pages keep index == address >> PAGE_SHIFT unless moved by
    mremap), each confirmed through the page tables."""
    from ksminspect.pagetable import page_tables

    address = index << get_layout(prog).page_shift
    return [item for item in _items_at(prog, address) if page_tables(prog).pfn_at(item.mm, address) == pfn]


def _reach(prog: drgn.Program, pfn: int, entry: StableTreeNode) -> dict[int, Reach]:
    """Whether rmap_walk_ksm() reaches each sharer of KSM page *pfn*'s node."""
    from ksminspect.errors import CannotTell
    from ksminspect.pagetable import page_tables
    from ksminspect.rmapwalk import RmapWalk

    items, mms, _, _, pages, _ = entry.sharers.columns()
    if not items:
        return {}
    layout = get_layout(prog)
    c = session(prog).collect()
    rows = c.item_rows(np.array(items, np.uint64))
    replay, tables = RmapWalk(prog, layout), page_tables(prog)
    out = {}
    for item, mm, page, row in zip(items, mms, pages, rows.tolist()):
        offset = int(c.items["offset"][row]) if layout.rmap_item.offset is not None and row >= 0 else None
        try:
            mapped = tables.pfn_at(mm, page)
        except CannotTell as e:
            out[item] = Reach(None, e.reason)
            continue
        anon = int(c.items["anon_vma"][row]) if row >= 0 else 0
        out[item] = replay.reach(anon, mm, page, offset, -1 if mapped is None else mapped, pfn,
                                 layout.rmap_item.offset_member)
    return out


def inspect_pfn(prog: drgn.Program, pfn: int) -> PageReport:
    page, mapping = page_mapping(prog, pfn)
    if mapping & PAGE_MAPPING_FLAGS == PAGE_MAPPING_KSM:
        node = mapping & ~PAGE_MAPPING_FLAGS
        entry, chain = _find_node(prog, node)
        return PageReport(pfn, page, mapping, node, entry, chain, [], in_dump=page_in_dump(prog, pfn),
                          reach=_reach(prog, pfn, entry) if entry is not None else {})
    try:
        index = struct_page(prog, pfn).index.value_()
    except (drgn.FaultError, AttributeError, LookupError):
        index = None
    anon = mapping & PAGE_MAPPING_ANON
    items = _items_for_anon_page(prog, pfn, index) if index is not None and anon else []
    return PageReport(pfn, page, mapping, None, None, None, items, in_dump=page_in_dump(prog, pfn))


def inspect_address(prog: drgn.Program, pid: int, address: int) -> PageReport:
    from ksminspect.mm import find_process

    task = find_process(prog, pid)
    mm = task.mm.value_()
    if not mm:
        raise KsmInspectError(f"pid {pid} has no mm (a kernel thread, or exiting)")
    page_address = address & get_layout(prog).page_mask
    items = _items_at(prog, page_address, mm)
    from ksminspect.pagetable import page_tables

    pfn = page_tables(prog).pfn_at(mm, page_address)
    if pfn is None:
        report = PageReport(-1, 0, 0, None, None, None, items)
    else:
        report = inspect_pfn(prog, pfn)
        report.items = items
    report.pid, report.address = pid, page_address
    return report
