"""Kernel lookups the checks and explain share, each made once per run: an
mm's VMAs, an address's slab object, a page's ``mapping``, an mm's flags.

A lookup that a drgn helper cannot make on this kernel answers None and
says why in :attr:`Lookups.why`; whoever asked reports it as "cannot tell",
never as a finding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

import drgn
import numpy as np

from ksminspect.errors import HELPER_LIMITS
from ksminspect.program import dump_description, is_gap, lacks_memory
from ksminspect.walk import Walker, WalkDamage

if TYPE_CHECKING:
    from ksminspect.layout import MemMap


@dataclass(frozen=True)
class Vmas:
    """An mm's VMAs in address order, as columns."""

    start: np.ndarray
    end: np.ndarray
    pgoff: np.ndarray
    flags: np.ndarray  # vm_flags (the first word of a vma_flags_t)
    file: np.ndarray  # struct file *vm_file, 0 for anonymous memory
    address: np.ndarray  # the struct vm_area_struct itself
    mergeable: np.ndarray  # KSM may merge in it: VM_MERGEABLE, or the mm merges any

    def at(self, addresses: np.ndarray) -> np.ndarray:
        """Index of the VMA holding each address, -1 where none does."""
        if not len(self.start):  # an mm whose owner has exited: its VMAs are gone
            return np.full(len(addresses), -1)
        i = np.searchsorted(self.start, addresses, side="right") - 1
        hit = (i >= 0) & (addresses < self.end[np.maximum(i, 0)])
        return np.where(hit, i, -1)

    def linear_page_index(self, at: np.ndarray, addresses: np.ndarray, page_shift: int) -> np.ndarray:
        """The kernel's ``linear_page_index(vma, address)`` of each address in
        the VMA at each index of *at*: ``vm_pgoff + ((address - vm_start) >>
        PAGE_SHIFT)``, which an anonymous VMA keeps when mremap() moves it (so
        that ``address >> PAGE_SHIFT`` is the index only where it never
        moved); 0 where *at* is -1."""
        start = self.take("start", at, 0)
        pgoff = self.take("pgoff", at, 0)
        inside = (at >= 0) & (addresses >= start)
        delta = np.where(inside, addresses - start, np.uint64(0)) >> np.uint64(page_shift)
        return np.where(inside, pgoff + delta, np.uint64(0)).astype(np.uint64)

    def take(self, column: str, at: np.ndarray, default) -> np.ndarray:
        """*column* of the VMA at each index of *at*, *default* where -1."""
        values = getattr(self, column)
        if not len(values):
            return np.full(len(at), default, values.dtype)
        return np.where(at >= 0, values[np.maximum(at, 0)], default).astype(values.dtype)


# anon_vma_state() answers: None (a live anon_vma), a sentence saying why
# not, or NO_ANSWER where slab objects cannot be looked up on this target.
NO_ANSWER = object()
AnonVmaState = Union[None, str, object]


class Lookups:
    def __init__(self, prog: drgn.Program, w: Walker):
        self.prog = prog
        self.w = w
        self.layout = w.layout
        self._vmas: dict[int, Optional[Vmas]] = {}
        self._anon_vma: dict[int, AnonVmaState] = {}
        self.why: dict[str, str] = {}  # "vmas", "slab" -> why it cannot be looked up

    # -- VMAs ------------------------------------------------------------

    def vmas(self, mm: int) -> Optional[Vmas]:
        """The VMAs of *mm*; None where they cannot be read whole (why in
        ``why["vmas"]``)."""
        if mm not in self._vmas:
            self._vmas[mm] = self._read_vmas(mm)
        return self._vmas[mm]

    def _read_vmas(self, mm: int) -> Optional[Vmas]:
        from drgn.helpers.linux.mm import for_each_vma

        rows = []
        try:
            for vma in for_each_vma(drgn.Object(self.prog, "struct mm_struct *", mm)):
                rows.append((vma.vm_start.value_(), vma.vm_end.value_(), vma.vm_pgoff.value_(),
                             _vm_flags(vma, self.layout.little_endian), vma.vm_file.value_(),
                             vma.value_()))
        except drgn.FaultError as e:
            self.why.setdefault("vmas", lacks_memory(self.prog, [e.address & self.layout.page_mask],
                                                     of=f"the VMAs of mm {mm:#x}")
                                if is_gap(self.prog, e) else
                                f"the VMAs of mm {mm:#x} cannot be read ({e})")
            return None
        except ValueError as e:
            self.why.setdefault("vmas", f"the VMAs of mm {mm:#x} cannot be read ({e})")
            return None
        except HELPER_LIMITS as e:
            self.why.setdefault("vmas", f"drgn's for_each_vma() cannot run on this kernel ({e})")
            return None
        rows.sort()
        any_ = self.merges_any(mm)
        cols = np.array(rows, np.uint64).reshape(len(rows), 6)
        return Vmas(cols[:, 0], cols[:, 1], cols[:, 2], cols[:, 3], cols[:, 4], cols[:, 5],
                    ((cols[:, 3] & np.uint64(self.layout.vm_mergeable)) != 0) | any_)

    def merges_any(self, mm: int) -> bool:
        """The mm merges every VMA (MMF_VM_MERGE_ANY, v6.4)."""
        bit = self.layout.mmf_vm_merge_any
        if bit is None:
            return False
        try:
            flags = self.w.read_word("mm_struct", mm, mm + self.layout.mm_struct.flags)
        except WalkDamage:
            return False
        return bool(flags >> bit & 1)

    # -- slab objects ------------------------------------------------------

    def anon_vma_state(self, address: int) -> AnonVmaState:
        """None if *address* is a live anon_vma, else why not (a sentence),
        or NO_ANSWER where slab objects cannot be looked up (``why["slab"]``)."""
        if address not in self._anon_vma:
            self._anon_vma[address] = self._anon_vma_state(address)
        return self._anon_vma[address]

    def _anon_vma_state(self, address: int) -> AnonVmaState:
        from drgn.helpers.linux.slab import slab_object_info

        try:
            info = slab_object_info(self.prog, address)
        except drgn.FaultError as e:
            if is_gap(self.prog, e):  # the dump lacks what would say
                self.why.setdefault("slab", lacks_memory(self.prog, [e.address & self.layout.page_mask],
                                                         of="the slab pages of anon_vmas"))
                return NO_ANSWER
            info = None
        except ValueError:
            info = None
        except HELPER_LIMITS as e:
            self.why.setdefault("slab", f"drgn's slab_object_info() cannot run on this kernel ({e})")
            return NO_ANSWER
        if info is None:
            return "is not in a slab object"
        if info.address != address:
            return "points into the middle of a slab object"
        name = info.slab_cache.name.string_().decode(errors="replace")
        if info.allocated is None:  # a freelist drgn needed could not be read
            why = (lacks_memory(self.prog, of=f"the freelists of slab cache {name}")
                   if dump_description(self.prog) else "a freelist of the cache cannot be read")
            self.why.setdefault("slab", f"drgn's slab_object_info() cannot tell whether objects of "
                                        f"slab cache {name} are allocated: {why}")
            return NO_ANSWER
        if not info.allocated:
            return f"is a free object of slab cache {name}"
        if name != "anon_vma":
            return f"is an object of slab cache {name}, not anon_vma"
        try:
            refcount = drgn.Object(self.prog, "struct anon_vma *", address).refcount.counter.value_()
        except (drgn.FaultError, LookupError):
            refcount = 1
        return None if refcount > 0 else "is an anon_vma whose refcount is 0"

    # -- struct page ---------------------------------------------------------

    def page_addresses(self, pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(struct page address, known)`` of each pfn, by the kernel's memory
        model (:class:`~ksminspect.layout.MemMap`). Raises NotImplementedError
        where no model is found."""
        mm_ = self._mem_map()
        size = np.uint64(self.layout.struct_page_size)
        pfns = pfns.astype(np.uint64)
        if mm_.model == "linear":  # struct page addresses beyond the address space cannot be read
            known = pfns < np.uint64(((1 << 64) - 1 - mm_.base) // int(size))
            return np.where(known, np.uint64(mm_.base) + pfns * size, np.uint64(0)), known
        nr = pfns >> np.uint64(mm_.section_shift)
        root = nr // np.uint64(mm_.sections_per_root)
        roots, known = self._section_roots(root)
        maps, ok = self._section_maps(roots, nr % np.uint64(mm_.sections_per_root), known)
        return np.where(ok, maps + pfns * size, np.uint64(0)), ok

    def pfn_of_page(self, page: int) -> Optional[int]:
        """The pfn whose struct page is at *page* (page_to_pfn()), None where
        no pfn's is; NotImplementedError as :meth:`page_addresses`."""
        mm_ = self._mem_map()
        size = self.layout.struct_page_size
        if mm_.model == "linear":
            pfn, rest = divmod(page - mm_.base, size)
            return pfn if pfn >= 0 and not rest else None
        per_root = mm_.sections_per_root
        roots, known = self._section_roots(np.arange(mm_.roots, dtype=np.uint64))
        index = np.arange(per_root, dtype=np.uint64)
        for r in np.nonzero(known)[0].tolist():  # a root at a time: most of an EXTREME array is empty
            maps, ok = self._section_maps(np.full(per_root, roots[r], np.uint64), index, np.ones(per_root, bool))
            for i, base in zip(np.nonzero(ok)[0].tolist(), maps[ok].tolist()):
                nr = r * per_root + i
                pfn, rest = divmod(page - base, size)
                if not rest and nr << mm_.section_shift <= pfn < (nr + 1) << mm_.section_shift:
                    return pfn
        return None

    def _mem_map(self) -> "MemMap":
        from ksminspect.layout import mem_map

        mm_ = mem_map(self.prog)
        if mm_ is None:
            raise NotImplementedError("neither a vmemmap, a mem_map nor a mem_section was found")
        return mm_

    def _section_roots(self, root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(address of mem_section[root][0], known)`` for each root index
        (classic SPARSEMEM; under EXTREME a root read from the pointer array,
        unknown where it is NULL or unreadable)."""
        mm_ = self._mem_map()
        known = root < np.uint64(mm_.roots)
        if mm_.extreme:
            at = np.where(known, np.uint64(mm_.base) + root * np.uint64(self.layout.pointer_size), np.uint64(0))
            roots, ok = self.w.memory.read_words(at)
            return roots, known & ok & (roots != 0)
        return np.uint64(mm_.base) + root * np.uint64(mm_.sections_per_root * mm_.section_size), known

    def _section_maps(self, roots: np.ndarray, index: np.ndarray,
                      known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mem_map minus the section's first pfn, known)`` of section
        *index* of each root: its ``section_mem_map`` decoded
        (``sparse_decode_mem_map()``), known where it has a mem_map."""
        mm_ = self._mem_map()
        at = roots + index * np.uint64(mm_.section_size) + np.uint64(mm_.section_mem_map)
        encoded, ok = self.w.memory.read_words(np.where(known, at, np.uint64(0)))
        known = known & ok & ((encoded & np.uint64(mm_.has_mem_map)) != 0)
        return encoded & np.uint64(mm_.map_mask & 0xFFFFFFFFFFFFFFFF), known

    def page_mappings(self, pfns: np.ndarray,
                      heads: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(page->mapping, readable, where each mapping is)`` for each pfn
        (where: 0 if unknown). With *heads*, a tail page of a compound page
        (a THP) answers its head's mapping: what makes it anonymous. Raises
        NotImplementedError where no memory model is found."""
        off = np.uint64(self.layout.page_mapping)
        pages, known = self.page_addresses(pfns)
        addresses = np.where(known, pages + off, np.uint64(0))
        mapping, readable = self.w.memory.read_words(addresses)
        compound = self.layout.page_compound
        if heads and compound is not None:
            offset, masked = compound
            info, ok = self.w.memory.read_words(np.where(known, pages + np.uint64(offset), np.uint64(0)))
            tail = ok & known & ((info & np.uint64(1)) != 0)
            if np.any(tail):
                head = (pages[tail] & info[tail]) if masked else info[tail] - np.uint64(1)
                head_mapping, head_ok = self.w.memory.read_words(head + off)
                mapping[tail] = head_mapping
                readable[tail] &= head_ok
        return mapping, readable & known, addresses


def _vm_flags(vma: drgn.Object, little_endian: bool) -> int:
    flags = vma.vm_flags
    if flags.type_.unaliased().kind == drgn.TypeKind.STRUCT:  # vma_flags_t bitmap (v7.x)
        word = drgn.sizeof(flags.type_.unaliased().members[0].type.type)  # its first unsigned long
        return int.from_bytes(flags.to_bytes_()[:word], "little" if little_endian else "big")
    return flags.value_()
