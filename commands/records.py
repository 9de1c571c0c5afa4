"""The JSON records of every command, in one place: an rmap_item, a stable
node, an mm slot, the scan cursor and a finding have one shape wherever they
appear. ksminspect/schema.json describes them; a change here changes
SCHEMA_VERSION there too (tests/test_schema.py holds the two together).

Kernel addresses, page frame numbers, page offsets and checksums are hex
strings ("0x..."): addresses exceed 2**53, and crash and drgn print them in
hex. Counts, pids, nids and sequence numbers are integers."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
from typing import Any, Iterator, Optional

from ksminspect.decode import POINTER_FIELDS, NodeKind

SCHEMA_VERSION = 1  # schema.json's; bumped when a key is removed or changes meaning


def schema() -> dict[str, Any]:
    """ksminspect/schema.json: the JSON Schema (2020-12) of every document."""
    from importlib.resources import files

    return json.loads(files("ksminspect").joinpath("schema.json").read_text())

# rmap_item fields shown in hex: pointers, the page offset, the checksum
HEX_FIELDS = POINTER_FIELDS | {"offset", "oldchecksum"}


def hexaddr(value: int | None) -> str | None:
    """Kernel addresses as hex strings in JSON: they exceed 2**53."""
    return None if value is None else f"{value:#x}"


def json_int(value: int | None) -> str:
    """``json.dumps(value)`` of an int or None, without its cost per call."""
    return "null" if value is None else "%d" % value


def utc(seconds: Optional[float] = None) -> str:
    """A time as the schema's "time" (UTC, to the second); now by default."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def document(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """A command's JSON document: *data* under the schema version and the
    document's name (its $defs entry in schema.json)."""
    return {"schema_version": SCHEMA_VERSION, "document": name, **data}


def fields_json(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: hexaddr(v) if k in HEX_FIELDS else v for k, v in fields.items()}


def fields_text(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:#x}" if k in HEX_FIELDS else f"{k}={v}" for k, v in fields.items())


@lru_cache(maxsize=None)
def item_template(pid: Optional[int], comm: Optional[str]) -> str:
    """An rmap_item's short record of one process, as json.dumps() writes
    it, to be filled with ``% (address, mm, page_address, state)``: a host's
    million sharers are no million dicts."""
    who = f'"pid": {json_int(pid)}, "comm": {json.dumps(comm)}'.replace("%", "%%")
    return f'{{"address": "%#x", "mm": "%#x", {who}, "page_address": "%#x", "state": "%s"}}'


def owner_json(owner) -> str:
    """``"pid": ..., "comm": ...`` of an :class:`~ksminspect.mm.MmOwner`, as json.dumps() writes them."""
    return f'"pid": {json_int(owner.pid)}, "comm": {json.dumps(owner.comm)}'


def item_texts(c, rows, who, has_offset: bool) -> list[str]:
    """:func:`item_json` of each of *rows* of the collection *c*, as
    json.dumps() writes it, made from the columns: a host's million items
    are no million records and dicts. *who*: the :func:`owner_json` of
    every row's owner, or one for all."""
    from ksminspect.decode import ITEM_STATES, item_column, meant_fields
    from ksminspect.layout import item_flags

    rows = np.asarray(rows, np.int64)
    items = c.items[rows]
    state = item_flags(items["raw_address"])
    names = items.dtype.names
    mms = items["mm"].tolist()
    if isinstance(who, str):
        who = [who] * len(rows)
    page = (items["raw_address"] & items["raw_address"].dtype.type(c.layout.page_mask)).tolist()
    address = c.item_address[rows].tolist()
    out: list[str] = [""] * len(rows)
    for number in np.unique(state).tolist():
        s = ITEM_STATES[number]
        fields = meant_fields(s, has_offset, "nid" in names, "age" in names)
        template = ('{"address": "%#x", "mm": "%#x", %s, "page_address": "%#x", "state": "' + s.value
                    + '", "fields": {' + ", ".join(f'"{n}": "%#x"' if n in HEX_FIELDS else f'"{n}": %d'
                                               for n in fields) + "}}")
        at = np.nonzero(state == number)[0]
        columns = [item_column(items[at], n).tolist() for n in fields]
        for k, values in zip(at.tolist(), zip(*columns) if columns else [()] * len(at)):
            out[k] = template % ((address[k], mms[k], who[k], page[k]) + values)
    return out


def item_json(item, owner, has_offset: bool, all_fields: bool = False) -> dict[str, Any]:
    """An rmap_item's record with the union members its state means (and,
    with *all_fields*, the others)."""
    out = json.loads(item_template(owner.pid, owner.comm)
                     % (item.address, item.mm, item.page_address, item.state.value))
    out["fields"] = fields_json(item.meaningful(has_offset))
    if all_fields:
        out["other"] = fields_json(item.other(has_offset))
    return out


def sharers_text(columns: tuple, start: int, stop: int) -> str:
    """The JSON texts of a node's sharers, comma-separated: rows
    *start*..*stop* of the sharer columns of a
    :class:`~ksminspect.stable.StableColumns` (a :class:`Sharers`' span)."""
    items, mms, pids, comms, pages, states = columns
    return ", ".join([item_template(pids[k], comms[k]) % (items[k], mms[k], pages[k], states[k])
                      for k in range(start, stop)])


def node_record(address: int, kind: NodeKind, tree_nid: Optional[int], nid: Optional[int], kpfn: Optional[int],
                rmap_hlist_len: Optional[int], sharers: str, dups: str, damage, chain_prune_time: Optional[int]) -> str:
    """A stable tree entry as JSON text: the one definition of its keys.
    *sharers* and *dups*: their JSON texts, comma-separated; *damage*: the
    :class:`~ksminspect.walk.Damage` met on its hlist or dups."""
    kpfn_text = "null" if kpfn is None else f'"{kpfn:#x}"'
    return (f'{{"address": "{address:#x}", "kind": "{kind.value}", "tree_nid": {json_int(tree_nid)}, '
            f'"nid": {json_int(nid)}, "kpfn": {kpfn_text}, '
            f'"rmap_hlist_len": {json_int(rmap_hlist_len)}, "sharers": [{sharers}], "dups": [{dups}], '
            f'"damage": {json.dumps([d.sentence() for d in damage]) if damage else "[]"}'
            + (f', "chain_prune_time": {chain_prune_time}}}' if chain_prune_time is not None else "}"))


def node_text(e) -> str:
    """A :class:`~ksminspect.stable.StableTreeNode` as JSON text."""
    return node_record(e.node, e.kind, e.tree_nid, None if e.kind is NodeKind.CHAIN else e.nid, e.kpfn,
                       e.rmap_hlist_len, sharers_text(*e.sharers.span()),
                       ", ".join(map(node_text, e.dups)), e.damage, e.chain_prune_time)


def node_texts(cols, indices: list[int]) -> Iterator[str]:
    """:func:`node_text` of each of *indices* of a
    :class:`~ksminspect.stable.StableColumns`, made from the columns as they
    are written: a host's hundred thousand stable pages are no hundred
    thousand objects, nor their texts all held at once."""
    start, stop, kpfn = cols.hlist_start, cols.hlist_stop, cols.kpfn

    def text(i: int) -> str:
        chain = cols.kind[i] is NodeKind.CHAIN
        return node_record(cols.address[i], cols.kind[i], cols.tree_nid[i], None if chain else cols.nid[i],
                           None if chain else kpfn[i], cols.rmap_hlist_len[i],
                           "" if chain or not cols.holds_page[i] else sharers_text(cols.sharers, start[i], stop[i]),
                           ", ".join(map(text, cols.dups.get(cols.address[i], ()))) if chain else "",
                           [cols.damage[i]] if i in cols.damage else (), kpfn[i] if chain else None)

    return map(text, indices)


def node_json(e) -> dict[str, Any]:
    return json.loads(node_text(e))


def cursor_json(prog, cursor) -> dict[str, Any]:
    return {"mm_slot": hexaddr(cursor.mm_slot), "page_address": hexaddr(cursor.address),
            "seqnr": cursor.seqnr, "at_head": cursor.at_head(prog)}


def mm_slot_json(s, cursor) -> dict[str, Any]:
    return {
        "address": hexaddr(s.slot),
        "mm": hexaddr(s.mm),
        "pid": s.owner.pid,
        "comm": s.owner.comm,
        "exited": s.owner.exited,
        "items": s.items,
        "ksm_stat": s.counters,
        "cursor": {"page_address": hexaddr(cursor.address), "next_item": hexaddr(cursor.next_item)}
        if cursor.mm_slot == s.slot else None,
        "damage": [s.damage.sentence()] if s.damage else [],
    }


def finding_json(f) -> dict[str, Any]:
    return {"check": f.check, "severity": f.severity.value, "rule": f.rule,
            "address": hexaddr(f.address), "mm": hexaddr(f.mm), "pid": f.pid,
            "page_address": hexaddr(f.page_address), "transient": f.transient,
            "message": f.message}


def damage_json(damage) -> list[str]:
    return [d.sentence() for d in damage]
