"""The one place that knows how KSM's structures look in each kernel.

Everything is detected from the debug info (types, members, symbols), never
from the kernel version, because distributions backport. Each variant names
the upstream change that introduced it. The answer is computed once per
program and kept in ``prog.cache``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import drgn

from ksminspect.errors import NoKsmError

# mm/ksm.c #defines; not in DWARF, unchanged since they were introduced.
SEQNR_MASK = 0x0FF  # low bits of the unstable tree seqnr
UNSTABLE_FLAG = 0x100  # is a node of the unstable tree
STABLE_FLAG = 0x200  # is listed from the stable tree
STABLE_NODE_CHAIN = -1024  # rmap_hlist_len of a chain head (v4.13)
# The two flags as one number: 0 in no tree, 1 unstable, 2 stable, 3 both.
assert STABLE_FLAG == UNSTABLE_FLAG << 1
ITEM_FLAGS_SHIFT = UNSTABLE_FLAG.bit_length() - 1


def item_flags(raw_address):  # an int, or a numpy array of them
    """``rmap_item->address``'s UNSTABLE_FLAG and STABLE_FLAG as 0-3."""
    return (raw_address >> ITEM_FLAGS_SHIFT) & 3
MAX_REMAINING_SKIPS = 8  # skip_age() never returns more (v6.7)
# page->mapping of a KSM page is its stable node with both low bits set:
# PAGE_MAPPING_ANON | PAGE_MAPPING_MOVABLE, PAGE_MAPPING_KSM (FOLIO_MAPPING_*
# in newer kernels); of an anonymous page, its anon_vma | PAGE_MAPPING_ANON.
PAGE_MAPPING_ANON = 0x1
PAGE_MAPPING_FLAGS = 0x3
PAGE_MAPPING_KSM = 0x3
# The most NUMA nodes any kernel has: CONFIG_NODES_SHIFT is at most 10
# (mm/Kconfig); a kernel's own MAX_NUMNODES is KsmLayout.max_numnodes.
MAX_NID = 1 << 10

# Names the seed series gave the page offset it overlays on the unstable-only
# fields: "vm_pgoff" (v4), "pgoff" (v7), "linear_page_index" (v8).
OFFSET_MEMBER_NAMES = ("vm_pgoff", "pgoff", "linear_page_index")


def _offset(type_: drgn.Type, member: str) -> Optional[int]:
    try:
        return drgn.offsetof(type_, member)
    except LookupError:
        return None


def _member_size(type_: drgn.Type, member: str) -> Optional[int]:
    try:
        return drgn.sizeof(type_.member(member).type)
    except LookupError:
        return None


def read_variable(prog: drgn.Program, name: str) -> Optional[drgn.Object]:
    """The kernel variable *name*, or None where this kernel has none with a
    value: the symbol is missing (a config or version without it), or the
    compiler folded it away and the debug info gives it neither a location
    nor a constant value (e.g. ``root_stable_tree`` without CONFIG_NUMA, which
    mm/ksm.c never writes)."""
    try:
        obj = prog[name]
    except KeyError:
        return None
    return None if obj.absent_ else obj


def wall_clock(prog: drgn.Program) -> Optional[int]:
    """The kernel's own wall-clock time (seconds since the epoch) as its
    timekeeper last updated it: in a dump, when the dump was taken. None
    where it cannot be read."""
    # tk_core.timekeeper since v3.17 (the timekeeper moved beside its
    # seqcount into tk_core); timekeeper_data[TIMEKEEPER_CORE] where the
    # auxiliary clocks came (after 6.12: the 7.2 kernel here); a plain
    # `timekeeper` before v3.17.
    for name, pick in (("tk_core", lambda o: o.timekeeper), ("timekeeper_data", lambda o: o[0].timekeeper),
                       ("timekeeper", lambda o: o)):
        obj = read_variable(prog, name)
        if obj is None:
            continue
        try:
            return pick(obj).xtime_sec.value_()
        except (AttributeError, LookupError, drgn.FaultError, drgn.ObjectAbsentError):
            return None
    return None


def _find_type(prog: drgn.Program, *names: str) -> Optional[drgn.Type]:
    for name in names:
        try:
            return prog.type(name)
        except LookupError:
            continue
    return None


@dataclass(frozen=True)
class RmapItemLayout:
    """``struct ksm_rmap_item`` (``struct rmap_item`` before v6.2's
    "ksm: add the ksm prefix to the names of the ksm private structures")."""

    type_name: str
    size: int
    rmap_list: int
    anon_vma: int
    mm: int
    address: int
    oldchecksum: int
    node: int  # struct rb_node, when in the unstable tree
    head: int  # struct ksm_stable_node *, when stable
    hlist: int  # struct hlist_node, when stable
    nid: Optional[int]  # CONFIG_NUMA ("ksm: allow trees per NUMA node", v3.9)
    age: Optional[int]  # smart scan ("mm/ksm: add smart page scanning mode", v6.7)
    remaining_skips: Optional[int]  # smart scan, v6.7
    offset_member: Optional[str]  # the seed's page offset, under its name
    offset: Optional[int]
    offset_size: Optional[int]

    @property
    def offset_covers_age(self) -> bool:
        """The seed's offset overlays age (and remaining_skips): an 8-byte
        unsigned long does; a 32-bit kernel's covers oldchecksum only."""
        return (self.offset is not None and self.age is not None and self.offset_size is not None
                and self.offset <= self.age < self.offset + self.offset_size)


@dataclass(frozen=True)
class StableNodeLayout:
    """``struct ksm_stable_node`` (``struct stable_node`` before v6.2)."""

    type_name: str
    size: int
    node: int  # struct rb_node, when in a stable tree
    head: int  # struct list_head *: &migrate_nodes or STABLE_NODE_DUP_HEAD
    list: int  # struct list_head, on migrate_nodes
    hlist: int  # struct hlist_head: rmap_items, or a chain's dups
    kpfn: int
    rmap_hlist_len: Optional[int]  # v4.13, with chains
    hlist_dup: Optional[int]  # v4.13, "ksm: introduce ksm_max_page_sharing ..."
    nid: Optional[int]  # CONFIG_NUMA


@dataclass(frozen=True)
class MmSlotLayout:
    """The per-mm slot on ``ksm_mm_head``.

    v6.2's "ksm: convert to use common struct mm_slot" made it
    ``struct ksm_mm_slot { struct mm_slot slot; rmap_list; }`` with
    ``slot.mm_node``/``slot.mm``; before, ``struct mm_slot { link; mm_list;
    rmap_list; mm; }`` private to mm/ksm.c.
    """

    type_name: str
    size: int
    mm_node: int  # struct list_head on ksm_mm_head
    mm: int
    rmap_list: int


@dataclass(frozen=True)
class MmStructLayout:
    """KSM's counters in ``struct mm_struct``."""

    ksm_rmap_items: Optional[int]  # v6.1, "ksm: count allocated ksm rmap_items for each process"
    ksm_merging_pages: Optional[int]  # v5.19, "ksm: count ksm merging pages for each process"
    # v6.6, "ksm: add ksm zero pages for each process"; an atomic_long_t
    # since v6.10 ("mm/ksm: fix ksm_zero_pages accounting"): the same bytes
    ksm_zero_pages: Optional[int]
    owner: Optional[int]  # CONFIG_MEMCG
    mm_users: int  # atomic_t
    flags: int  # mm->flags (a bitmap struct in newer kernels: its first word)


@dataclass(frozen=True)
class TreeRootsLayout:
    """Where the ``struct rb_root``s of ``root_stable_tree`` or
    ``root_unstable_tree`` are.

    v3.9's "ksm: allow trees per NUMA node" made each a ``struct rb_root *``
    pointing at ``ksm_nr_node_ids`` roots (``one_stable_tree[1]`` until NUMA
    merging needs more). Without CONFIG_NUMA mm/ksm.c never writes the
    pointer, so the compiler folds it into ``one_*_tree`` and leaves it no
    location: then the roots are ``one_*_tree`` itself. Before v3.9 the
    variable was the one ``struct rb_root``.
    """

    pointer: Optional[int]  # address of the struct rb_root * variable, to read
    roots: int  # address of the first struct rb_root when there is no pointer
    nr_node_ids: Optional[int]  # address of int ksm_nr_node_ids (CONFIG_NUMA)


@dataclass(frozen=True)
class KsmLayout:
    rmap_item: RmapItemLayout
    stable_node: StableNodeLayout
    mm_slot: MmSlotLayout
    mm_struct: MmStructLayout
    pointer_size: int
    little_endian: bool
    page_shift: int
    numa: bool
    ksm_mm_head: int  # address of the list_head that ksm_mm_head's slots hang on
    migrate_nodes: Optional[int]  # address of LIST_HEAD(migrate_nodes), v3.9
    root_stable_tree: TreeRootsLayout
    root_unstable_tree: TreeRootsLayout
    vm_mergeable: int  # VM_MERGEABLE mask of vma->vm_flags
    # flags of VMAs KSM never touches, with their names: vma_ksm_compatible()
    vm_untouchable: tuple[tuple[str, int], ...]
    mmf_vm_merge_any: Optional[int]  # bit of mm->flags: the mm merges every VMA (v6.4)
    # where a tail page of a compound page names its head: (offset, masked)
    page_compound: Optional[tuple[int, bool]] = None
    struct_page_size: int = 64
    page_mapping: int = 24  # offsetof(struct page, mapping)
    max_numnodes: int = 1  # MAX_NUMNODES: the bits of a nodemask_t

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    @property
    def page_mask(self) -> int:
        return ~(self.page_size - 1) & ((1 << (8 * self.pointer_size)) - 1)

    @property
    def stable_node_dup_head(self) -> Optional[int]:
        """``STABLE_NODE_DUP_HEAD``: ``&migrate_nodes.prev``."""
        if self.migrate_nodes is None:
            return None
        return self.migrate_nodes + self.pointer_size

    @property
    def word(self) -> str:
        return ("<" if self.little_endian else ">") + ("Q" if self.pointer_size == 8 else "I")


def _rmap_item_layout(prog: drgn.Program) -> RmapItemLayout:
    t = _find_type(prog, "struct ksm_rmap_item", "struct rmap_item")
    if t is None:
        raise NoKsmError("this kernel has no KSM: neither struct ksm_rmap_item nor "
                         "struct rmap_item is in its debug info (CONFIG_KSM is off)")
    offset_member = next((m for m in OFFSET_MEMBER_NAMES if t.has_member(m)), None)
    return RmapItemLayout(
        type_name=t.tag or "",
        size=drgn.sizeof(t),
        rmap_list=drgn.offsetof(t, "rmap_list"),
        anon_vma=drgn.offsetof(t, "anon_vma"),
        mm=drgn.offsetof(t, "mm"),
        address=drgn.offsetof(t, "address"),
        oldchecksum=drgn.offsetof(t, "oldchecksum"),
        node=drgn.offsetof(t, "node"),
        head=drgn.offsetof(t, "head"),
        hlist=drgn.offsetof(t, "hlist"),
        nid=_offset(t, "nid"),
        age=_offset(t, "age"),
        remaining_skips=_offset(t, "remaining_skips"),
        offset_member=offset_member,
        offset=_offset(t, offset_member) if offset_member else None,
        offset_size=_member_size(t, offset_member) if offset_member else None,
    )


def _stable_node_layout(prog: drgn.Program) -> StableNodeLayout:
    t = _find_type(prog, "struct ksm_stable_node", "struct stable_node")
    if t is None:
        raise NoKsmError("this kernel's debug info has no struct ksm_stable_node")
    return StableNodeLayout(
        type_name=t.tag or "",
        size=drgn.sizeof(t),
        node=drgn.offsetof(t, "node"),
        head=drgn.offsetof(t, "head"),
        list=drgn.offsetof(t, "list"),
        hlist=drgn.offsetof(t, "hlist"),
        kpfn=drgn.offsetof(t, "kpfn"),
        rmap_hlist_len=_offset(t, "rmap_hlist_len"),
        hlist_dup=_offset(t, "hlist_dup"),
        nid=_offset(t, "nid"),
    )


def _mm_slot_layout(prog: drgn.Program) -> tuple[MmSlotLayout, int]:
    head = prog["ksm_mm_head"]
    t = head.type_
    if t.has_member("slot"):  # v6.2: struct ksm_mm_slot over struct mm_slot
        slot = drgn.offsetof(t, "slot")
        inner = t.member("slot").type
        layout = MmSlotLayout(
            type_name=t.tag or "ksm_mm_slot",
            size=drgn.sizeof(t),
            mm_node=slot + drgn.offsetof(inner, "mm_node"),
            mm=slot + drgn.offsetof(inner, "mm"),
            rmap_list=drgn.offsetof(t, "rmap_list"),
        )
    else:  # private struct mm_slot { link; mm_list; rmap_list; mm; }
        layout = MmSlotLayout(
            type_name=t.tag or "mm_slot",
            size=drgn.sizeof(t),
            mm_node=drgn.offsetof(t, "mm_list"),
            mm=drgn.offsetof(t, "mm"),
            rmap_list=drgn.offsetof(t, "rmap_list"),
        )
    return layout, head.address_ + layout.mm_node


def _mm_struct_layout(prog: drgn.Program) -> MmStructLayout:
    t = prog.type("struct mm_struct")
    return MmStructLayout(
        ksm_rmap_items=_offset(t, "ksm_rmap_items"),
        ksm_merging_pages=_offset(t, "ksm_merging_pages"),
        ksm_zero_pages=_offset(t, "ksm_zero_pages"),
        owner=_offset(t, "owner"),
        mm_users=drgn.offsetof(t, "mm_users"),
        flags=drgn.offsetof(t, "flags"),
    )


def _address_of(prog: drgn.Program, name: str) -> Optional[int]:
    obj = read_variable(prog, name)
    return None if obj is None else obj.address_


def _tree_roots_layout(prog: drgn.Program, name: str, single: str) -> TreeRootsLayout:
    var = prog[name]
    nr_node_ids = _address_of(prog, "ksm_nr_node_ids")
    if var.type_.unaliased().kind != drgn.TypeKind.POINTER:  # before v3.9: the root itself
        return TreeRootsLayout(pointer=None, roots=var.address_, nr_node_ids=None)
    if not var.absent_:
        return TreeRootsLayout(pointer=var.address_, roots=0, nr_node_ids=nr_node_ids)
    roots = _address_of(prog, single)
    if roots is None:
        raise NoKsmError(f"{name} has no location in the debug info and {single}, which "
                         f"it is folded into without CONFIG_NUMA, is missing too")
    return TreeRootsLayout(pointer=None, roots=roots, nr_node_ids=None)


def detect_layout(prog: drgn.Program) -> KsmLayout:
    """Work out every KSM layout fact for *prog* (uncached; see :func:`get_layout`)."""
    try:
        prog["ksm_mm_head"]
    except KeyError:
        raise NoKsmError("this kernel has no KSM: the symbol ksm_mm_head is missing "
                         "(CONFIG_KSM is off, or the debug info lacks mm/ksm.c)") from None
    rmap_item = _rmap_item_layout(prog)
    mm_slot, mm_head = _mm_slot_layout(prog)
    page_shift_var = read_variable(prog, "PAGE_SHIFT")  # drgn has it from VMCOREINFO
    page_shift = page_shift_var.value_() if page_shift_var is not None else 12
    return KsmLayout(
        rmap_item=rmap_item,
        stable_node=_stable_node_layout(prog),
        mm_slot=mm_slot,
        mm_struct=_mm_struct_layout(prog),
        pointer_size=_kernel_word(prog),
        little_endian=prog.platform.flags & drgn.PlatformFlags.IS_LITTLE_ENDIAN != 0,
        page_shift=page_shift,
        numa=rmap_item.nid is not None,
        ksm_mm_head=mm_head,
        migrate_nodes=_address_of(prog, "migrate_nodes"),
        root_stable_tree=_tree_roots_layout(prog, "root_stable_tree", "one_stable_tree"),
        root_unstable_tree=_tree_roots_layout(prog, "root_unstable_tree", "one_unstable_tree"),
        vm_mergeable=_vm_mergeable(prog),
        vm_untouchable=_vm_untouchable(prog),
        page_compound=_page_compound(prog),
        mmf_vm_merge_any=_mmf_vm_merge_any(prog),
        struct_page_size=drgn.sizeof(prog.type("struct page")),
        page_mapping=drgn.offsetof(prog.type("struct page"), "mapping"),
        max_numnodes=_max_numnodes(prog),
    )


def _mmf_vm_merge_any(prog: drgn.Program) -> Optional[int]:
    """The bit of mm->flags that makes an mm merge every VMA: MMF_VM_MERGE_ANY,
    30 since v6.4 ("mm: add new api to enable ksm per process", with
    ksm_enable_merge_any()); an enum constant where the kernel names it so."""
    try:
        return prog.constant("MMF_VM_MERGE_ANY").value_()
    except LookupError:
        pass
    return 30 if _address_of(prog, "ksm_enable_merge_any") is not None else None


def _max_numnodes(prog: drgn.Program) -> int:
    """MAX_NUMNODES, a #define that DWARF lacks: the bits of a nodemask_t
    (``DECLARE_BITMAP(bits, MAX_NUMNODES)``, rounded up to a word)."""
    try:
        return min(drgn.sizeof(prog.type("nodemask_t")) * 8, MAX_NID)
    except LookupError:
        return MAX_NID


def _kernel_word(prog: drgn.Program) -> int:
    """The size of the kernel's pointers, from its debug info. Never the core
    file's: QEMU writes an ELF64 core for an i386 guest, and drgn then calls
    the platform 64-bit (``void *`` of 8 bytes)."""
    return drgn.sizeof(prog.type("struct list_head").member("next").type)


def _vm_mergeable(prog: drgn.Program) -> int:
    """VM_MERGEABLE: bit 31 since 2.6.32; an enum bit (VMA_MERGEABLE_BIT) where
    vm_flags became a bitmap of named bits."""
    try:
        return 1 << prog.constant("VMA_MERGEABLE_BIT").value_()
    except LookupError:
        return 1 << 31


# vma_ksm_compatible() (v6.4, "mm: add new api to enable ksm per process";
# before it the same test was inline in ksm_madvise()): KSM ignores VMAs with
# any of these. VM_DROPPABLE came in v6.11 ("mm: add MAP_DROPPABLE"), a high
# bit of 64-bit kernels only. The #defines of include/linux/mm.h, unchanged
# since each was introduced, except where vm_flags became a bitmap of named
# bits (VMA_*_BIT, the kernel of vma_flags_t): then the enum says.
_VM_UNTOUCHABLE = (("hugetlb", "HUGETLB", 0x400000), ("shared", "SHARED", 0x8),
                   ("may share", "MAYSHARE", 0x80), ("pfn map", "PFNMAP", 0x400), ("I/O", "IO", 0x4000),
                   ("mixed map", "MIXEDMAP", 0x10000000), ("droppable", "DROPPABLE", 1 << 40),
                   ("do not expand", "DONTEXPAND", 0x40000))


def _vm_untouchable(prog: drgn.Program) -> tuple[tuple[str, int], ...]:
    out = []
    for words, name, value in _VM_UNTOUCHABLE:
        try:
            value = 1 << prog.constant(f"VMA_{name}_BIT").value_()
        except LookupError:
            if value >= 1 << 32 and _kernel_word(prog) == 4:
                continue
        out.append((words, value))
    return tuple(out)


def _page_compound(prog: drgn.Program) -> Optional[tuple[int, bool]]:
    """Where a tail page says which page is its head, and how: the word
    page->compound_head holds head + 1 (v4.4, "mm: make compound_head()
    robust"); page->compound_info, where struct zone has vmemmap_tails,
    holds a mask that the tail's own address ANDed with gives the head (the
    7.2 kernel here), else head + 1 too. None before v4.4 (first_page)."""
    page = prog.type("struct page")
    for member in ("compound_info", "compound_head"):
        offset = _offset(page, member)
        if offset is not None:
            masked = (member == "compound_info" and page.size & (page.size - 1) == 0
                      and prog.type("struct zone").has_member("vmemmap_tails"))
            return offset, masked
    return None


def zero_pfn(prog: drgn.Program) -> Optional[int]:
    """The zero page's pfn: the variable zero_pfn (v2.6.32), zero_page_pfn
    where zero_pfn became a function (the 7.2 kernel here); else the pfn of
    empty_zero_page. None where none can be read."""
    for name in ("zero_page_pfn", "zero_pfn"):
        obj = read_variable(prog, name)
        if obj is not None and obj.type_.unaliased().kind == drgn.TypeKind.INT:
            try:
                return obj.value_()
            except drgn.FaultError:
                return None
    obj = read_variable(prog, "empty_zero_page")
    if obj is None:
        return None
    from drgn.helpers.linux.mm import virt_to_pfn

    try:
        return virt_to_pfn(prog, obj.address_).value_()
    except (drgn.FaultError, ValueError, NotImplementedError):
        return None


@dataclass(frozen=True)
class RmapWalkLayout:
    """What rmap_walk_ksm() reads beyond KSM's own objects: an anon_vma's
    interval tree of anon_vma_chains (``rb_root``, an ``rb_root_cached``
    since v4.14, f808c13fd373 "lib/interval_tree: fast overlap detection";
    its first word is the root node either way) and the VMAs they link."""

    anon_vma_rb_root: int
    avc_size: int
    avc_vma: int
    avc_rb: int
    vma_start: int
    vma_end: int
    vma_mm: int
    vma_pgoff: int


def rmap_walk_layout(prog: drgn.Program) -> RmapWalkLayout:
    anon_vma, avc = prog.type("struct anon_vma"), prog.type("struct anon_vma_chain")
    vma = prog.type("struct vm_area_struct")
    return RmapWalkLayout(drgn.offsetof(anon_vma, "rb_root"), avc.size, drgn.offsetof(avc, "vma"),
                          drgn.offsetof(avc, "rb"), drgn.offsetof(vma, "vm_start"), drgn.offsetof(vma, "vm_end"),
                          drgn.offsetof(vma, "vm_mm"), drgn.offsetof(vma, "vm_pgoff"))


@dataclass(frozen=True)
class PageTableFormat:
    """How an mm's page tables map user addresses, read as drgn's own walker
    reads them (libdrgn/arch_x86_64.c, arch_aarch64.c), so that a bulk walk
    answers what ``follow_pfn()`` answers for each address.

    x86-64: 4 levels of 512 entries, 5 where the kernel runs with
    ``pgtable_l5_enabled`` (v4.17, "x86/mm: Make 5-level paging support
    boot time switchable"); an entry maps if _PAGE_PRESENT (bit 0) is set,
    a huge page where _PAGE_PSE (bit 7) is set above the last level;
    physical address bits 12-51. arm64: ``VA_BITS`` (or ``64 -
    TCR_EL1_T1SZ``, v5.9, for 4K and 16K pages) give the levels; a
    descriptor's bits 1:0 say table (3), block (1) or invalid, and page (3)
    at the last level; address bits 47:PAGE_SHIFT, with bits 51:48 in 15:12
    for 64K pages (FEAT_LPA) or 49:48 and 9:8 for 52-bit 4K/16K.
    """

    arch: str  # "x86_64" or "aarch64"
    levels: int
    page_shift: int
    top_entries: int  # entries of the top-level table that user addresses use
    little_endian: bool
    low_mask: int  # an entry's physical address bits
    high_mask: int = 0  # bits that hold the address's high bits (arm64, 52-bit)
    high_shift: int = 0

    @property
    def index_bits(self) -> int:
        return self.page_shift - 3

    def level_shift(self, level: int) -> int:
        """log2 of the bytes one entry of a table at *level* (1: the last) maps."""
        return self.page_shift + self.index_bits * (level - 1)

    def decode(self, entries, level: int):
        """``(leaf, maps, address)`` of numpy uint64 *entries* of a table at
        *level*: which end the walk, which of those map memory, and the
        physical address each entry holds (a table, or the mapped memory)."""
        import numpy as np

        address = entries & np.uint64(self.low_mask)
        if self.high_mask:
            address |= (entries & np.uint64(self.high_mask)) << np.uint64(self.high_shift)
        if self.arch == "x86_64":
            present = (entries & np.uint64(1)) != 0
            huge = (entries & np.uint64(0x80)) != 0
            leaf = ~present | huge if level > 1 else np.ones(len(entries), bool)
            return leaf, present, address
        kind = entries & np.uint64(3)
        leaf = (kind != 3) if level > 1 else np.ones(len(entries), bool)
        return leaf, kind == np.uint64(3 if level == 1 else 1), address


def _vmcoreinfo(prog: drgn.Program) -> dict[str, str]:
    """The kernel's VMCOREINFO note as KEY=VALUE pairs (drgn's object VMCOREINFO)."""
    try:
        text = prog["VMCOREINFO"].string_().decode(errors="replace")
    except (LookupError, drgn.FaultError, ValueError):
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def page_table_format(prog: drgn.Program) -> Optional[PageTableFormat]:
    """The :class:`PageTableFormat` of *prog*'s user page tables; None for an
    architecture (or a kernel without VMCOREINFO) that it does not cover."""
    info = _vmcoreinfo(prog)
    little = prog.platform.flags & drgn.PlatformFlags.IS_LITTLE_ENDIAN != 0
    arch = prog.platform.arch
    try:
        page_shift = int(info.get("PAGESIZE", "4096")).bit_length() - 1
        if arch == drgn.Architecture.X86_64:
            levels = 5 if int(info.get("NUMBER(pgtable_l5_enabled)", "0")) else 4
            return PageTableFormat("x86_64", levels, 12, 512, little, 0xFFFFFFFFFF000)
        if arch == drgn.Architecture.AARCH64:
            bits = page_shift - 3
            va_bits = int(info["NUMBER(VA_BITS)"])
            t1sz = int(info.get("NUMBER(TCR_EL1_T1SZ)", "0"), 0)
            if page_shift != 16 and t1sz:
                va_bits = 64 - t1sz
            if not page_shift < va_bits <= 52:
                return None
            levels = (va_bits - page_shift + bits - 1) // bits
            top = 1 << ((va_bits - page_shift - 1) % bits + 1)
            low = 0x0000FFFFFFFFFFFF & ~((1 << page_shift) - 1)
            if page_shift == 16:
                return PageTableFormat("aarch64", levels, page_shift, top, little, low, 0xF000, 36)
            if va_bits == 52:
                return PageTableFormat("aarch64", levels, page_shift, top, little,
                                       low | 0x0003000000000000, 0x300, 42)
            return PageTableFormat("aarch64", levels, page_shift, top, little, low)
    except (KeyError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class MemMap:
    """Where each pfn's ``struct page`` is: the memory model's pfn_to_page().

    "linear": one array from pfn 0 (SPARSEMEM_VMEMMAP's ``vmemmap``, or
    FLATMEM's ``mem_map - ARCH_PFN_OFFSET``), as drgn's pfn_to_page() finds it.
    "sections": classic SPARSEMEM, which drgn's helper does not cover: each
    ``mem_section``'s ``section_mem_map`` holds its section's mem_map minus
    the section's first pfn (``sparse_encode_mem_map()``), flags in its low
    bits; ``mem_section`` is an array of roots, each a pointer to
    ``SECTIONS_PER_ROOT`` sections under SPARSEMEM_EXTREME (v2.6.14).
    """

    model: str  # "linear" or "sections"
    base: int  # linear: the struct page of pfn 0; sections: the address of mem_section[0]
    section_shift: int = 0  # PFN_SECTION_SHIFT: SECTION_SIZE_BITS - PAGE_SHIFT
    sections_per_root: int = 1
    roots: int = 0  # NR_SECTION_ROOTS
    extreme: bool = False  # mem_section is an array of pointers to roots
    section_size: int = 0  # sizeof(struct mem_section)
    section_mem_map: int = 0  # offsetof(struct mem_section, section_mem_map)
    map_mask: int = ~0  # SECTION_MAP_MASK
    has_mem_map: int = 2  # SECTION_HAS_MEM_MAP


def mem_map(prog: drgn.Program) -> Optional[MemMap]:
    """The :class:`MemMap` of *prog*, found once and cached; None where
    neither model is found."""
    if "ksminspect_mem_map" not in prog.cache:
        prog.cache["ksminspect_mem_map"] = _find_mem_map(prog)
    return prog.cache["ksminspect_mem_map"]


def _find_mem_map(prog: drgn.Program) -> Optional[MemMap]:
    from drgn.helpers.linux.mm import pfn_to_page

    size = drgn.sizeof(prog.type("struct page"))
    try:
        base = pfn_to_page(prog, 0).value_()
        if pfn_to_page(prog, 1 << 20).value_() == base + (size << 20):
            return MemMap("linear", base)
    except (LookupError, AttributeError, NotImplementedError, drgn.FaultError, ValueError):
        pass
    sections = read_variable(prog, "mem_section")
    if sections is None:
        return None
    info = _vmcoreinfo(prog)
    try:
        page_shift = int(info.get("PAGESIZE", "4096")).bit_length() - 1
        if "NUMBER(SECTION_SIZE_BITS)" in info:  # v5.13 ("crash_core, vmcoreinfo: append 'SECTION_SIZE_BITS'")
            section_bits = int(info["NUMBER(SECTION_SIZE_BITS)"])
        else:  # drgn's per-architecture fallback
            section_bits = prog["SECTION_SIZE_BITS"].value_()
        kind = sections.type_.unaliased()
        section_type = prog.type("struct mem_section")
        extreme = kind.kind == drgn.TypeKind.POINTER
        if extreme:
            roots = int(info["LENGTH(mem_section)"])
            per_root = (1 << page_shift) // section_type.size
            start = sections.value_()
        else:  # struct mem_section mem_section[NR_SECTION_ROOTS][SECTIONS_PER_ROOT]
            roots = kind.length
            per_root = kind.type.unaliased().length
            start = sections.address_
    except (KeyError, ValueError, LookupError, AttributeError, TypeError, drgn.FaultError):
        return None
    try:
        last = prog.constant("SECTION_MAP_LAST_BIT").value_()  # an enum since v5.19 (ed7802dd48f7)
    except LookupError:
        last = 6  # a #define before; the mem_map is page-aligned, so bits below 6 are flags only
    return MemMap("sections", start, section_bits - page_shift, per_root, roots, extreme, section_type.size,
                  drgn.offsetof(section_type, "section_mem_map"), ~((1 << last) - 1))


def get_layout(prog: drgn.Program) -> KsmLayout:
    """The :class:`KsmLayout` of *prog*, detected once and cached."""
    layout = prog.cache.get("ksminspect_layout")
    if layout is None:
        layout = prog.cache["ksminspect_layout"] = detect_layout(prog)
    return layout

