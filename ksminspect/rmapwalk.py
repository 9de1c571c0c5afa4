"""rmap_walk_ksm() replayed (mm/ksm.c): for a stable rmap_item, which VMAs
the kernel's reverse map of its KSM page visits.

The kernel takes each item on the page's stable node, walks the item's
``anon_vma->rb_root`` (an interval tree of anon_vma_chains, keyed by each
VMA's ``[vm_pgoff, vm_pgoff + pages - 1]``) for the range ``0..ULONG_MAX``
upstream, or for the item's stored page offset only where the 2026 series
("KSM: optimizations for rmap_walk_ksm") stores one, and of the VMAs it
yields keeps the one of ``item->mm`` whose ``[vm_start, vm_end)`` holds the
item's address. A second pass takes the other mms' VMAs that hold that
address: forks ksmd has not seen yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import drgn
import numpy as np

from ksminspect.layout import KsmLayout, rmap_walk_layout
from ksminspect.walk import Walker, WalkDamage


@dataclass(frozen=True)
class Reach:
    """Whether rmap_walk_ksm()'s first pass reaches an item's mapping: True,
    False (why: a sentence), or None (why: it cannot tell, or there is no
    mapping of the KSM page to reach)."""

    reached: Optional[bool]
    why: str = ""


@dataclass(frozen=True)
class TreeVmas:
    """The VMAs an anon_vma's interval tree links, in tree order, as columns."""

    vma: np.ndarray
    mm: np.ndarray
    start: np.ndarray
    end: np.ndarray
    pgoff: np.ndarray  # vm_pgoff: the first page offset of the VMA's interval

    def last_pgoff(self, page_shift: int) -> np.ndarray:
        """The last page offset of each VMA's interval (vma_last_pgoff())."""
        return self.pgoff + ((self.end - self.start) >> np.uint64(page_shift)) - np.uint64(1)


class RmapWalk:
    """The anon_vma trees of one program, each read once."""

    def __init__(self, prog: drgn.Program, layout: KsmLayout):
        self.layout = layout
        self.w = Walker(prog, layout)  # its own: an anon_vma tree is not one of KSM's walks
        self.lay = rmap_walk_layout(prog)
        self._trees: dict[int, Union[TreeVmas, str]] = {}

    def tree(self, anon_vma: int) -> Union[TreeVmas, str]:
        """The VMAs *anon_vma*'s interval tree links, or why they cannot be read."""
        if anon_vma not in self._trees:
            self._trees[anon_vma] = self._read_tree(anon_vma)
        return self._trees[anon_vma]

    def _read_tree(self, anon_vma: int) -> Union[TreeVmas, str]:
        lay, w = self.lay, self.w
        rows = []
        try:
            for avc in w.rbtree_inorder("anon_vma", anon_vma + lay.anon_vma_rb_root, lay.avc_rb, lay.avc_size):
                vma = w.read_word("anon_vma_chain", avc, avc + lay.avc_vma)
                rows.append([vma] + [w.read_word("vm_area_struct", vma, vma + off)
                                     for off in (lay.vma_mm, lay.vma_start, lay.vma_end, lay.vma_pgoff)])
        except WalkDamage as e:
            return f"the interval tree of anon_vma {anon_vma:#x} cannot be walked ({e.damage.sentence()})"
        cols = np.array(rows, np.uint64).reshape(len(rows), 5)
        return TreeVmas(*(cols[:, i] for i in range(5)))

    def first_pass(self, anon_vma: int, mm: int, pages: np.ndarray,
                   offsets: Optional[np.ndarray]) -> Union[str, tuple[np.ndarray, np.ndarray]]:
        """Whether the first pass reaches, through *anon_vma*, the VMA of *mm*
        holding each of *pages*, looking up each page offset of *offsets*
        (None: the whole range): ``(the index of that VMA in the tree, -1
        where it links none; reached)``, or why it cannot tell."""
        tree = self.tree(anon_vma)
        if isinstance(tree, str):
            return tree
        mine = np.nonzero(tree.mm == np.uint64(mm))[0]  # the mm's VMAs do not overlap
        if not len(mine):  # the tree links no VMA of the mm (or none at all)
            return np.full(len(pages), -1, np.int64), np.zeros(len(pages), bool)
        mine = mine[np.argsort(tree.start[mine], kind="stable")]
        k = np.searchsorted(tree.start[mine], pages, side="right") - 1
        inside = (k >= 0) & (pages < tree.end[mine][np.maximum(k, 0)])
        at = np.where(inside, mine[np.maximum(k, 0)], -1)
        if offsets is None:
            return at, inside
        last = tree.last_pgoff(self.layout.page_shift)
        i = np.maximum(at, 0)
        return at, inside & (tree.pgoff[i] <= offsets) & (offsets <= last[i])

    def reach(self, anon_vma: int, mm: int, page: int, offset: Optional[int], pfn: int, kpfn: int,
              member: Optional[str]) -> Reach:
        """:class:`Reach` of a stable item of *mm* at *page*, whose address
        maps *pfn* (-1: nothing) and whose node's page is *kpfn*; *offset* the
        item's stored *member* (None where the kernel has none)."""
        if pfn != kpfn:
            return Reach(None, "its address maps " + ("nothing" if pfn < 0 else f"another page ({pfn:#x})")
                         + ": written or unmapped since ksmd's last scan")
        got = self.first_pass(anon_vma, mm, np.array([page], np.uint64),
                              None if offset is None else np.array([offset], np.uint64))
        if isinstance(got, str):
            return Reach(None, got)
        at, reached = int(got[0][0]), bool(got[1][0])
        if reached:
            return Reach(True, "through anon_vma " + f"{anon_vma:#x}" + ("" if offset is None else
                                                                           f" at {member} {offset:#x}"))
        if at < 0:
            return Reach(False, f"its anon_vma {anon_vma:#x}'s interval tree links no VMA of the mm there")
        tree = self.tree(anon_vma)
        assert not isinstance(tree, str)
        i = at
        first, last = int(tree.pgoff[i]), int(tree.last_pgoff(self.layout.page_shift)[i])
        return Reach(False, f"stored {member} {offset:#x}, at which the series' lookup (the interval tree of "
                            f"anon_vma {anon_vma:#x} at the stored offset) misses the VMA mapping it "
                            f"({int(tree.start[i]):#x}-{int(tree.end[i]):#x}), which covers page offsets "
                            f"{first:#x}-{last:#x}")

    def second_pass_reaches(self, anon_vma: int, mm: int, address: int, vma: int,
                            offset: Optional[int]) -> Optional[bool]:
        """Whether the second pass of an item of another mm at *address*
        through *anon_vma* reaches *vma* (of *mm*); None: cannot tell."""
        tree = self.tree(anon_vma)
        if isinstance(tree, str):
            return None
        here = (tree.vma == np.uint64(vma)) & (tree.mm == np.uint64(mm)) & (tree.start <= np.uint64(address)) \
            & (np.uint64(address) < tree.end)
        if offset is not None:
            last = tree.last_pgoff(self.layout.page_shift)
            here &= (tree.pgoff <= np.uint64(offset)) & (np.uint64(offset) <= last)
        return bool(np.any(here))
