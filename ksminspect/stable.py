"""The stable tree as the kernel means it: nodes, chains of dups, sharers,
and the nodes waiting on ``migrate_nodes``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Optional, Union

import drgn
import numpy as np

from ksminspect.collect import CHAIN, DUP, MIGRATE, TREE
from ksminspect.decode import STATE_NAMES, NodeKind
from ksminspect.mm import mm_owner
from ksminspect.session import session
from ksminspect.walk import Damage, WalkDamage


class Sharer(NamedTuple):
    """An rmap_item on a stable node's hlist: one mapping of the KSM page."""

    item: int
    mm: int
    pid: Optional[int]
    comm: Optional[str]
    page_address: int
    state: str  # "stable" on a healthy KSM


class Sharers(Sequence):
    """A stable node's sharers: its stretch of columns that every node of one
    walk shares (item, mm, pid, comm, page_address, state). A host has a
    million sharers: :class:`Sharer` tuples are made only when read one by one."""

    __slots__ = ("_columns", "_start", "_stop")

    def __init__(self, columns: tuple[Sequence, ...] = ((),) * 6, start: int = 0, stop: int = 0):
        self._columns, self._start, self._stop = columns, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    def __iter__(self) -> Iterator[Sharer]:
        return map(Sharer, *self.columns())

    def __getitem__(self, i: Union[int, slice]):  # type: ignore[override]
        if isinstance(i, slice):
            return list(self)[i]
        if not -len(self) <= i < len(self):
            raise IndexError("sharer index out of range")
        at = self._start + i % len(self)
        return Sharer(*(column[at] for column in self._columns))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def span(self) -> tuple[tuple[Sequence, ...], int, int]:
        """``(columns, start, stop)``: the columns every node of the walk
        shares, and this node's stretch of them."""
        return self._columns, self._start, self._stop

    def columns(self) -> tuple[Sequence, ...]:
        """``(items, mms, pids, comms, page_addresses, states)``, one list each."""
        return tuple(column[self._start:self._stop] for column in self._columns)


@dataclass(slots=True)
class StableTreeNode:
    """A stable node, chain or dup, decoded with its sharers or dups."""

    node: int
    kind: NodeKind
    tree_nid: Optional[int]  # index of root_stable_tree[] it hangs in (None: migrate_nodes)
    nid: Optional[int]  # node->nid (CONFIG_NUMA)
    kpfn: Optional[int]  # None for a chain head (the field is chain_prune_time)
    chain_prune_time: Optional[int]
    rmap_hlist_len: Optional[int]
    sharers: Sharers = field(default_factory=Sharers)
    dups: list["StableTreeNode"] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)

    @property
    def pages(self) -> int:
        """KSM pages this entry holds: one per node or dup."""
        return len(self.dups) if self.kind == NodeKind.CHAIN else 1


# collect.py's kind column in the stable tree's own words
KINDS = {TREE: NodeKind.NODE, CHAIN: NodeKind.CHAIN, DUP: NodeKind.DUP, MIGRATE: NodeKind.MIGRATE}


@dataclass
class StableColumns:
    """The session's stable nodes as columns of Python values, each read
    once (a host has a hundred thousand nodes): what an entry of
    :func:`for_each_stable_tree_node` is made of, and what a renderer that
    needs no objects reads instead. Index ``i`` is the collection's node
    index."""

    address: list[int]
    kind: list[NodeKind]
    tree_nid: list[Optional[int]]  # None: on migrate_nodes
    nid: list[Optional[int]]  # node->nid (CONFIG_NUMA)
    kpfn: list[int]  # a chain's: chain_prune_time
    rmap_hlist_len: list[Optional[int]]
    holds_page: list[bool]
    # every sharer once, as (item, mm, pid, comm, page_address, state);
    # node i's are hlist_start[i]:hlist_stop[i] of each
    sharers: tuple[list, ...]
    hlist_start: list[int]
    hlist_stop: list[int]
    dups: dict[int, list[int]]  # chain address -> its dups' indices, in hlist order
    damage: dict[int, Damage]  # node index -> why its hlist (a chain's: dups) was cut short
    entries: list[int]  # the trees' entries in tree order, then migrate_nodes
    walk_damage: list[Damage]  # of the trees themselves, or of migrate_nodes

    def pages(self) -> list[int]:
        """Every node that holds a KSM page (a chain without dups stands for
        itself), in the order of :attr:`entries`."""
        out: list[int] = []
        for i in self.entries:
            out.extend(self.dups.get(self.address[i]) or [i])
        return out


def stable_columns(prog: drgn.Program) -> StableColumns:
    """The stable trees and migrate_nodes of the session's collection."""
    c = session(prog).collect("stable_trees")
    nodes = c.nodes
    rows = nodes.hlist_rows
    mms = c.items["mm"][rows].tolist()
    owner_of = {mm: mm_owner(prog, mm) for mm in set(mms)}
    n = len(nodes)
    names = nodes.rows.dtype.names or ()
    dups: dict[int, list[int]] = {}
    for d, chain in zip(np.nonzero(nodes.kind == DUP)[0].tolist(), nodes.chain[nodes.kind == DUP].tolist()):
        dups.setdefault(chain, []).append(d)
    return StableColumns(
        address=nodes.address.tolist(),
        kind=[KINDS[k] for k in nodes.kind.tolist()],
        tree_nid=[None if k == MIGRATE else t for k, t in zip(nodes.kind.tolist(), nodes.nid.tolist())],
        nid=nodes.rows["nid"].tolist() if "nid" in names else [None] * n,
        kpfn=nodes.rows["kpfn"].tolist(),
        rmap_hlist_len=nodes.rows["rmap_hlist_len"].tolist() if "rmap_hlist_len" in names else [None] * n,
        holds_page=nodes.holds_page.tolist(),
        sharers=(c.item_address[rows].tolist(), mms, [owner_of[mm].pid for mm in mms],
                 [owner_of[mm].comm for mm in mms], c.page_address(rows).tolist(),
                 [STATE_NAMES[st] for st in c.state[rows].tolist()]),
        hlist_start=nodes.hlist_start.tolist(), hlist_stop=nodes.hlist_stop.tolist(),
        dups=dups, damage=nodes.damage_of,
        entries=np.nonzero(nodes.kind != DUP)[0].tolist(),
        walk_damage=nodes.walk_damage)


def for_each_stable_tree_node(prog: drgn.Program) -> Iterator[StableTreeNode]:
    """Every entry of every ``root_stable_tree[nid]``, in tree order, then the
    nodes on ``migrate_nodes``, from the session's collection. Damage to a
    tree or to migrate_nodes raises :class:`WalkDamage` after every readable
    entry; damage to one entry's hlist or dups is in its ``damage``."""
    cols = stable_columns(prog)

    def entry(i: int) -> StableTreeNode:
        kind = cols.kind[i]
        chain = kind is NodeKind.CHAIN
        e = StableTreeNode(node=cols.address[i], kind=kind, tree_nid=cols.tree_nid[i], nid=cols.nid[i],
                           kpfn=None if chain else cols.kpfn[i],
                           chain_prune_time=cols.kpfn[i] if chain else None,
                           rmap_hlist_len=cols.rmap_hlist_len[i])
        if i in cols.damage:
            e.damage.append(cols.damage[i])
        if chain:
            e.dups = [entry(d) for d in cols.dups.get(cols.address[i], ())]
        elif cols.holds_page[i]:
            e.sharers = Sharers(cols.sharers, cols.hlist_start[i], cols.hlist_stop[i])
        return e

    yield from map(entry, cols.entries)
    if cols.walk_damage:
        raise WalkDamage(cols.walk_damage[0])
