"""Pure decoding (bytes in, record out) for layouts no committed dump covers:
32-bit kernels, with offsets read by gdb from real i386 builds of mm/ksm.o
(tests/data/make-layouts.sh), and kernels before v4.13 (no chains), beside the
x86-64 layouts that the real-dump tests prove."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ksminspect.decode import ItemState, RmapItemDecoder, StableNodeDecoder
from ksminspect.layout import (
    STABLE_FLAG,
    STABLE_NODE_CHAIN,
    UNSTABLE_FLAG,
    KsmLayout,
    MmSlotLayout,
    TreeRootsLayout,
    MmStructLayout,
    RmapItemLayout,
    StableNodeLayout,
)

LAYOUTS = Path(__file__).parent / "data" / "layouts"


def make_layout(pointer_size: int, rmap: dict, node: dict, seed: str | None) -> KsmLayout:
    return KsmLayout(
        rmap_item=RmapItemLayout(
            type_name="rmap_item", size=rmap["sizeof"], rmap_list=rmap["rmap_list"],
            anon_vma=rmap["anon_vma"], mm=rmap["mm"], address=rmap["address"],
            oldchecksum=rmap["oldchecksum"], node=rmap["node"], head=rmap["head"],
            hlist=rmap["hlist"], nid=rmap.get("nid"), age=rmap.get("age"),
            remaining_skips=rmap.get("remaining_skips"), offset_member=seed,
            offset=rmap.get(seed) if seed else None,
            offset_size=pointer_size if seed else None),
        stable_node=StableNodeLayout(
            type_name="stable_node", size=node["sizeof"], node=node["node"], head=node["head"],
            list=node["list"], hlist=node["hlist"], kpfn=node["kpfn"],
            rmap_hlist_len=node.get("rmap_hlist_len"), hlist_dup=node.get("hlist_dup"),
            nid=node.get("nid")),
        mm_slot=MmSlotLayout("mm_slot", 0, 0, 0, 0),
        mm_struct=MmStructLayout(None, None, None, None, 0, 0),
        pointer_size=pointer_size, little_endian=True, page_shift=12,
        numa=rmap.get("nid") is not None, ksm_mm_head=0, migrate_nodes=0x1000,
        root_stable_tree=TreeRootsLayout(None, 0x2000, None),
        root_unstable_tree=TreeRootsLayout(None, 0x3000, None), vm_mergeable=1 << 31,
        vm_untouchable=(), mmf_vm_merge_any=None)


def pack(size: int, fields: dict[int, tuple[str, int]]) -> bytes:
    buf = bytearray(size)
    for offset, (fmt, value) in fields.items():
        struct.pack_into("<" + fmt, buf, offset, value)
    return bytes(buf)


def recorded(name: str) -> dict:
    return json.loads((LAYOUTS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", ["i386-5.10", "i386-7.2-seed"])
def test_32bit_rmap_item(name: str) -> None:
    data = recorded(name)
    r = data["rmap_item"]
    layout = make_layout(4, r, data["stable_node"], data["seed_member"])
    decode = RmapItemDecoder(layout)
    stable = pack(r["sizeof"], {
        r["rmap_list"]: ("I", 0xC1000040), r["anon_vma"]: ("I", 0xC2000080),
        r["mm"]: ("I", 0xC3000000), r["address"]: ("I", 0xB7F01000 | STABLE_FLAG),
        r["head"]: ("I", 0xC4000000), r["hlist"]: ("I", 0), r["hlist"] + 4: ("I", 0xC4000010)})
    item = decode(0xC1000000, stable)
    assert item.state is ItemState.STABLE
    assert item.page_address == 0xB7F01000
    assert (item.rmap_list, item.anon_vma, item.mm) == (0xC1000040, 0xC2000080, 0xC3000000)
    assert (item.head, item.hlist_next, item.hlist_pprev) == (0xC4000000, 0, 0xC4000010)
    fields = {r["address"]: ("I", 0xB7F02000 | UNSTABLE_FLAG | 0x05),
              r["oldchecksum"]: ("I", 0xDEADBEEF), r["node"]: ("I", 0xC5000001)}
    if "nid" in r:  # CONFIG_NUMA (the 7.2 i386 build has it off)
        fields[r["nid"]] = ("i", 1)
    item = decode(0xC1000020, pack(r["sizeof"], fields))
    assert item.state is ItemState.UNSTABLE and item.seqnr == 5
    assert item.nid == (1 if "nid" in r else None)
    assert item.oldchecksum == 0xDEADBEEF and item.rb_parent == 0xC5000000
    if data["seed_member"]:
        # On 32-bit the seed's unsigned long covers oldchecksum only: the
        # review's "might overlay" age.
        assert r[data["seed_member"]] == r["oldchecksum"]
        assert r["age"] >= r[data["seed_member"]] + 4
        assert item.offset == 0xDEADBEEF
        assert "offset" not in item.meaningful(True) and item.other(True)["offset"] == 0xDEADBEEF


@pytest.mark.parametrize("name", ["i386-5.10", "i386-7.2-seed"])
def test_32bit_stable_node_chain(name: str) -> None:
    data = recorded(name)
    n = data["stable_node"]
    layout = make_layout(4, data["rmap_item"], n, data["seed_member"])
    chain = StableNodeDecoder(layout)(0xC6000000, pack(n["sizeof"], {
        n["hlist"]: ("I", 0xC6000104), n["kpfn"]: ("I", 123456),
        n["rmap_hlist_len"]: ("i", STABLE_NODE_CHAIN)}))
    assert chain.is_chain and chain.kpfn == 123456  # chain_prune_time
    assert chain.hlist_first == 0xC6000104


# struct stable_node of v3.9 to v4.12 (no chains), as Ubuntu's 4.10 kernel
# debug info lists it: rb_node node | {list_head *head; list_head list},
# hlist_head hlist, unsigned long kpfn, int nid. x86-64 offsets:
PRE_4_13_NODE = {"sizeof": 48, "node": 0, "head": 0, "list": 8, "hlist": 24, "kpfn": 32, "nid": 40}
# struct rmap_item is the same as 5.10's (proven on the 5.10 dump).
RMAP_5_10 = {"sizeof": 64, "rmap_list": 0, "anon_vma": 8, "nid": 8, "mm": 16, "address": 24,
             "oldchecksum": 32, "node": 40, "head": 40, "hlist": 48}


def test_pre_4_13_stable_node_has_no_chain() -> None:
    layout = make_layout(8, RMAP_5_10, PRE_4_13_NODE, None)
    assert layout.stable_node.hlist_dup is None
    node = StableNodeDecoder(layout)(0xFFFF888000001000, pack(48, {
        0: ("Q", 0xFFFF888000002001), 24: ("Q", 0xFFFF888000003030), 32: ("Q", 0x1234),
        40: ("i", 1)}))
    assert node.kpfn == 0x1234 and node.nid == 1 and node.rmap_hlist_len is None
    assert not node.is_chain
    assert node.hlist_first == 0xFFFF888000003030


def test_both_flags_and_meaningful_fields() -> None:
    layout = make_layout(8, RMAP_5_10, PRE_4_13_NODE, None)
    decode = RmapItemDecoder(layout)
    both = decode(0x1000, pack(64, {24: ("Q", 0x7F0000001000 | STABLE_FLAG | UNSTABLE_FLAG)}))
    assert both.state is ItemState.BOTH
    none = decode(0x1000, pack(64, {8: ("Q", 0xFFFF888000004000), 24: ("Q", 0x7F0000002000),
                                    32: ("I", 77)}))
    assert none.state is ItemState.NONE
    assert none.meaningful(False) == {"oldchecksum": 77}
    assert none.other(False)["anon_vma"] == 0xFFFF888000004000


@pytest.mark.parametrize("name", ["i386-5.10", "i386-7.2-seed"])
def test_32bit_rows_as_check_reads_them(name: str) -> None:
    """The row path the collection and check use: an item's bytes from the
    first byte after rmap_list, gathered as a structured row, decode to the
    same record, and its columns (flags, offset, age) read as the rules read
    them."""
    import numpy as np

    from ksminspect.collect import object_rows
    from ksminspect.decode import STABLE, UNSTABLE, rmap_items
    from ksminspect.layout import item_flags

    data = recorded(name)
    r = data["rmap_item"]
    layout = make_layout(4, r, data["stable_node"], data["seed_member"])
    rows = object_rows(layout)["rmap_item"]
    assert rows.start == 4 and rows.dtype.itemsize == r["sizeof"] - 4
    fields = {r["rmap_list"]: ("I", 0xC1000040), r["address"]: ("I", 0xB7F02000 | UNSTABLE_FLAG | 5),
              r["oldchecksum"]: ("I", 0xB7F02), r["node"]: ("I", 0xC5000001)}
    if "age" in r:
        fields[r["age"]] = ("B", 7)
    raw = pack(r["sizeof"], fields) + pack(r["sizeof"], {r["address"]: ("I", 0xB7F03000 | STABLE_FLAG)})
    column = np.frombuffer(raw, np.uint8).reshape(2, r["sizeof"])[:, rows.start:].copy()
    got = column.view(rows.dtype).reshape(2)
    assert item_flags(got["raw_address"]).tolist() == [UNSTABLE, STABLE]
    assert (got["raw_address"] & 0xFF).tolist() == [5, 0]
    if data["seed_member"]:
        assert got["offset"][0] == 0xB7F02  # the 32-bit offset is oldchecksum's word
    if "age" in r:
        assert got["age"][0] == 7
    record = rmap_items(layout, [0xC1000000, 0xC1000020], got)[0]
    whole = RmapItemDecoder(layout)(0xC1000000, raw[:r["sizeof"]])
    assert record._replace(rmap_list=whole.rmap_list) == whole
