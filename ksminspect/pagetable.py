"""An mm's page tables read in bulk: each table read once, only the entries
a range needs, decoded with numpy; an absent upper level skips all it would
map. The formats are layout facts (:class:`~ksminspect.layout.PageTableFormat`);
where none is known, drgn's ``follow_pfn()`` answers address by address."""

from __future__ import annotations

from typing import Optional

import drgn
import numpy as np

from ksminspect.errors import CannotTell
from ksminspect.layout import PageTableFormat, page_table_format


class PageTables:
    """The user page tables of one program's mms."""

    def __init__(self, prog: drgn.Program, fmt: Optional[PageTableFormat] = None, page_shift: int = 12):
        self.prog = prog
        self.fmt = fmt if fmt is not None else page_table_format(prog)
        self.page_shift = self.fmt.page_shift if self.fmt is not None else page_shift

    def mapped(self, mm: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """``(addresses, pfns)`` of every base page of ``[start, end)`` that
        *mm*'s page tables map, ascending; pages of a huge mapping each
        with their own pfn. CannotTell where a table cannot be read."""
        if self.fmt is None:
            return self._one_by_one(mm, start, end)
        pgd = self.prog.read_word(mm + self._pgd_offset())
        addresses: list[np.ndarray] = []
        pfns: list[np.ndarray] = []
        self._walk(pgd, False, self.fmt.levels, 0, start, end, addresses, pfns)
        if not addresses:
            return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        a, p = np.concatenate(addresses), np.concatenate(pfns)
        order = np.argsort(a, kind="stable")
        return a[order], p[order]

    def pfns_at(self, mm: int, addresses: np.ndarray) -> np.ndarray:
        """The pfn each page address maps to in *mm*, -1 where none: the
        tables of each run of addresses (no two more than a last-level
        table's span apart) read once."""
        out = np.full(len(addresses), -1, np.int64)
        if not len(addresses):
            return out
        order = np.argsort(addresses, kind="stable")
        pages = addresses[order] & np.uint64(~((1 << self.page_shift) - 1) & (2**64 - 1))
        span = 1 << (2 * self.page_shift - 3)  # what one last-level table maps
        cuts = np.nonzero(np.diff(pages) > np.uint64(span))[0] + 1
        for run in np.split(np.arange(len(pages)), cuts):
            lo, hi = int(pages[run[0]]), int(pages[run[-1]]) + (1 << self.page_shift)
            mapped, pfns = self.mapped(mm, lo, hi)
            k = np.minimum(np.searchsorted(mapped, pages[run]), max(len(mapped) - 1, 0))
            hit = (mapped[k] == pages[run]) if len(mapped) else np.zeros(len(run), bool)
            out[order[run[hit]]] = pfns[k[hit]].astype(np.int64)
        return out

    def pfn_at(self, mm: int, address: int) -> Optional[int]:
        """The pfn the page at *address* maps to in *mm*, None where none."""
        page = address & ~((1 << self.page_shift) - 1)
        _, pfns = self.mapped(mm, page, page + (1 << self.page_shift))
        return int(pfns[0]) if len(pfns) else None

    def entry_at(self, mm: int, address: int) -> Optional[int]:
        """The physical address of the entry below the top level that maps
        *address* (a PTE, or a huge page's entry), None where there is none
        or no format is known: what a live re-read of a mapping reads."""
        fmt = self.fmt
        if fmt is None:
            return None
        table, physical = self.prog.read_word(mm + self._pgd_offset()), False
        order = "<" if fmt.little_endian else ">"
        for level in range(fmt.levels, 0, -1):
            index = (address >> fmt.level_shift(level)) & ((1 << fmt.index_bits) - 1)
            at = table + 8 * index
            try:
                entry = np.frombuffer(self.prog.read(at, 8, physical), order + "u8").astype(np.uint64)
            except drgn.FaultError:
                return None
            leaf, maps, where = fmt.decode(entry, level)
            if leaf[0]:
                return at if maps[0] and physical else None
            table, physical = int(where[0]), True
        return None

    def _pgd_offset(self) -> int:
        offset = self.prog.cache.get("ksminspect_mm_pgd")
        if offset is None:
            offset = self.prog.cache["ksminspect_mm_pgd"] = drgn.offsetof(self.prog.type("struct mm_struct"), "pgd")
        return offset

    def _walk(self, table: int, physical: bool, level: int, base: int, lo: int, hi: int,
              addresses: list[np.ndarray], pfns: list[np.ndarray]) -> None:
        """The entries of the table at *table* (mapping from *base*) that
        cover ``[lo, hi)``, at *level* (1: the last)."""
        fmt = self.fmt
        assert fmt is not None
        shift = fmt.level_shift(level)
        first, last = (lo - base) >> shift, ((hi - 1 - base) >> shift) + 1
        try:
            raw = self.prog.read(table + 8 * first, 8 * (last - first), physical)
        except drgn.FaultError as e:
            raise CannotTell(f"the page tables that would say whether {lo:#x} is mapped cannot be "
                             f"read ({e})") from None
        entries = np.frombuffer(raw, "<u8" if fmt.little_endian else ">u8").astype(np.uint64)
        leaf, maps, where = fmt.decode(entries, level)
        starts = np.uint64(base) + (np.arange(first, last, dtype=np.uint64) << np.uint64(shift))
        page = np.uint64(self.page_shift)
        if level == 1:
            hit = leaf & maps
            addresses.append(starts[hit])
            pfns.append(where[hit] >> page)
        else:
            span = 1 << shift
            for k in np.nonzero(leaf & maps)[0].tolist():  # a huge page: each base page in range
                begin = int(starts[k])
                pages = np.arange(max(lo, begin), min(hi, begin + span), 1 << self.page_shift, dtype=np.uint64)
                addresses.append(pages)
                pfns.append((np.uint64(int(where[k]) & ~(span - 1)) + (pages - np.uint64(begin))) >> page)
            for k in np.nonzero(~leaf)[0].tolist():
                begin = int(starts[k])
                self._walk(int(where[k]), True, level - 1, begin, max(lo, begin), min(hi, begin + span),
                           addresses, pfns)

    def _one_by_one(self, mm: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        from ksminspect.page import follow_page_frame

        obj = drgn.Object(self.prog, "struct mm_struct *", mm)
        addresses, pfns = [], []
        for address in range(start, end, 1 << self.page_shift):
            pfn = follow_page_frame(obj, address)
            if pfn is not None:
                addresses.append(address)
                pfns.append(pfn)
        return np.array(addresses, np.uint64), np.array(pfns, np.uint64)


def page_tables(prog: drgn.Program) -> PageTables:
    """The program's :class:`PageTables`, made once."""
    tables = prog.cache.get("ksminspect_page_tables")
    if tables is None:
        from ksminspect.layout import get_layout

        tables = prog.cache["ksminspect_page_tables"] = PageTables(prog, page_shift=get_layout(prog).page_shift)
    return tables
