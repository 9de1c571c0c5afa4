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

    def columns(self) -> tuple[Sequence, ...]:
        """``(items, mms, pids, comms, page_addresses, states)``, one list each."""
        return tuple(column[self._start:self._stop] for column in self._columns)


@dataclass
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


def for_each_stable_tree_node(prog: drgn.Program) -> Iterator[StableTreeNode]:
    """Every entry of every ``root_stable_tree[nid]``, in tree order, then the
    nodes on ``migrate_nodes``, from the session's collection. Damage to a
    tree or to migrate_nodes raises :class:`WalkDamage` after every readable
    entry; damage to one entry's hlist or dups is in its ``damage``."""
    c = session(prog).collect("stable_trees")
    nodes = c.nodes
    item_address = c.item_address
    state, mm_of = c.state, c.items["mm"]

    # every sharer once, as columns of Python values; each node takes its stretch
    rows = nodes.hlist_rows
    mms = mm_of[rows].tolist()
    owner_of = {mm: mm_owner(prog, mm) for mm in set(mms)}
    everyone = (item_address[rows].tolist(), mms, [owner_of[mm].pid for mm in mms],
                [owner_of[mm].comm for mm in mms], c.page_address(rows).tolist(),
                [STATE_NAMES[st] for st in state[rows].tolist()])
    start, stop = nodes.hlist_start.tolist(), nodes.hlist_stop.tolist()

    def sharers(i: int) -> Sharers:
        return Sharers(everyone, start[i], stop[i])

    # each column once as Python values: a host has a hundred thousand nodes
    n = len(nodes)
    names = nodes.rows.dtype.names or ()
    address, kpfns = nodes.address.tolist(), nodes.rows["kpfn"].tolist()
    nids = nodes.rows["nid"].tolist() if "nid" in names else [None] * n
    lens = nodes.rows["rmap_hlist_len"].tolist() if "rmap_hlist_len" in names else [None] * n
    holds_page = nodes.holds_page.tolist()

    def entry(i: int, kind: NodeKind, tree_nid: Optional[int]) -> StableTreeNode:
        chain = kind == NodeKind.CHAIN
        e = StableTreeNode(node=address[i], kind=kind, tree_nid=tree_nid, nid=nids[i],
                           kpfn=None if chain else kpfns[i],
                           chain_prune_time=kpfns[i] if chain else None, rmap_hlist_len=lens[i])
        if i in nodes.damage_of:
            e.damage.append(nodes.damage_of[i])
        if chain:
            e.dups = [entry(d, NodeKind.DUP, tree_nid) for d in dups_of.get(e.node, [])]
        elif holds_page[i]:
            e.sharers = sharers(i)
        return e

    dups_of: dict[int, list[int]] = {}
    for d in np.nonzero(nodes.kind == DUP)[0].tolist():
        dups_of.setdefault(int(nodes.chain[d]), []).append(d)
    for i in np.nonzero((nodes.kind == TREE) | (nodes.kind == CHAIN))[0].tolist():
        yield entry(i, NodeKind.CHAIN if nodes.kind[i] == CHAIN else NodeKind.NODE, int(nodes.nid[i]))
    for i in np.nonzero(nodes.kind == MIGRATE)[0].tolist():
        yield entry(i, NodeKind.MIGRATE, None)
    if nodes.walk_damage:
        raise WalkDamage(nodes.walk_damage[0])
