"""Layout detection (ksminspect/layout.py) on every dump: what each kernel's
debug info says, against facts of that kernel build."""

from __future__ import annotations

import drgn

from conftest import Dump, program_of

from ksminspect.layout import MAX_NID, get_layout


def test_struct_sizes_and_word(dump: Dump) -> None:
    prog = program_of(dump)
    lay = get_layout(prog)
    assert lay.pointer_size == (4 if "i386" in dump.name else 8)
    assert lay.rmap_item.size == drgn.sizeof(prog.type(f"struct {lay.rmap_item.type_name}"))
    assert lay.page_size == dump.truth.get("page_size", 4096)
    assert lay.page_mapping == drgn.offsetof(prog.type("struct page"), "mapping")
    assert lay.struct_page_size == drgn.sizeof(prog.type("struct page"))


def test_the_seed_member_only_on_patched_kernels(dump: Dump) -> None:
    lay = get_layout(program_of(dump)).rmap_item
    patched = dump.patched
    assert (lay.offset_member == "vm_pgoff") == patched
    if patched:
        assert lay.offset == lay.oldchecksum
        assert lay.offset_covers_age == (lay.offset_size == 8)


def test_numa_and_nodes(dump: Dump) -> None:
    prog = program_of(dump)
    lay = get_layout(prog)
    assert 1 <= lay.max_numnodes <= MAX_NID
    if lay.numa:
        assert lay.root_stable_tree.nr_node_ids is not None


def test_merge_any_where_the_kernel_has_it(dump: Dump) -> None:
    prog = program_of(dump)
    has = "ksm_enable_merge_any" in {s.name for s in prog.symbols()} if hasattr(prog, "symbols") else None
    bit = get_layout(prog).mmf_vm_merge_any
    if has is not None:
        assert (bit is not None) == has
    if bit is not None:
        assert bit == 30  # MMF_VM_MERGE_ANY since v6.4
