"""The page tables read in bulk (ksminspect/pagetable.py) answer what drgn's
follow_pfn() answers, address by address, for every VMA of every mm KSM
scans, on every dump: 4- and 5-level x86-64 (vmcores/7.2-rmap-la57 ran with
LA57), arm64 with 64K pages, huge pages (6.12-explain's THP)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DUMPS, Dump, program_of
from ksminspect.errors import CannotTell


def _mms_and_vmas(prog):
    from ksminspect.lookups import Lookups
    from ksminspect.session import begin_session

    c = begin_session(prog).collect()
    look = Lookups(prog, c.w)
    for run in c.runs:
        vmas = look.vmas(run.mm)
        if vmas is not None:
            yield run.mm, list(zip(vmas.start.tolist(), vmas.end.tolist()))


def test_bulk_page_tables_answer_what_follow_pfn_answers(dump: Dump) -> None:
    from ksminspect.pagetable import PageTables

    prog = program_of(dump)  # (DUMPS: every dump ksminspect reads; refused ones are apart)
    tables = PageTables(prog)
    if tables.fmt is None:
        pytest.skip(f"no page table format for {prog.platform.arch.name}: follow_pfn() is asked")
    compared = pages = 0
    for mm, vmas in _mms_and_vmas(prog):
        for start, end in vmas:
            bulk = tables.mapped(mm, start, end)
            try:
                one = tables._one_by_one(mm, start, end)
            except CannotTell:  # this drgn cannot follow the page tables: nothing to compare with
                continue
            assert np.array_equal(bulk[0], one[0]) and np.array_equal(bulk[1], one[1]), hex(start)
            compared += 1
            pages += len(bulk[0])
    if not compared:
        pytest.skip("drgn's follow_pfn() cannot follow these page tables")
    assert pages > 0
    print(f"{dump.name}: {tables.fmt.levels} levels, {compared} VMAs, {pages} pages the same")


def test_levels_follow_the_kernel() -> None:
    """5 levels exactly where the kernel ran with pgtable_l5_enabled (its
    VMCOREINFO says), and one committed dump that did."""
    from ksminspect.layout import _vmcoreinfo, page_table_format

    levels = {}
    for dump in DUMPS:
        prog = program_of(dump)
        fmt = page_table_format(prog)
        if fmt is None or fmt.arch != "x86_64":
            continue
        l5 = int(_vmcoreinfo(prog).get("NUMBER(pgtable_l5_enabled)", "0"))
        assert fmt.levels == (5 if l5 else 4), dump.name
        levels[dump.name] = fmt.levels
    assert 5 in levels.values() and 4 in levels.values(), levels


def test_struct_pages_both_ways(dump: Dump) -> None:
    """Each stable node's kpfn leads to its struct page, the one whose
    mapping is the node | PAGE_MAPPING_KSM (on a healthy dump: by drgn's
    pfn_to_page(), or classic SPARSEMEM's mem_section where drgn has none,
    6.12-nonuma), and that struct page back to the kpfn (page_to_pfn(), what
    `page` does with the address of a struct page)."""
    from drgn.helpers.linux.mm import pfn_to_page

    from ksminspect.layout import PAGE_MAPPING_KSM
    from ksminspect.lookups import Lookups
    from ksminspect.session import begin_session

    prog = program_of(dump)
    c = begin_session(prog).collect("stable_trees")
    look = Lookups(prog, c.w)
    nodes = c.nodes
    kpfns, address = nodes.rows["kpfn"][nodes.holds_page], nodes.address[nodes.holds_page]
    if not len(kpfns):
        pytest.skip("no stable node holds a page")
    try:
        pages, known = look.page_addresses(kpfns)
    except NotImplementedError as e:
        pytest.skip(str(e))
    assert known.all(), dump.name
    mapping, ok = c.w.memory.read_words(pages + np.uint64(c.w.layout.page_mapping))
    assert ok.all() and (mapping == address + np.uint64(PAGE_MAPPING_KSM)).all(), dump.name
    try:
        drgn_pages = [pfn_to_page(prog, pfn).value_() for pfn in kpfns.tolist()[:64]]
    except (NotImplementedError, LookupError, ValueError):
        drgn_pages = None  # classic SPARSEMEM: drgn's helper cannot
    if drgn_pages is not None:
        assert pages.tolist()[:64] == drgn_pages, dump.name
    for pfn, page in list(zip(kpfns.tolist(), pages.tolist()))[:64]:
        assert look.pfn_of_page(page) == pfn, (dump.name, hex(page))
        assert look.pfn_of_page(page + 1) is None  # inside a struct page: no pfn's
