"""The stable tree as the kernel means it: nodes, chains of dups, sharers,
and the nodes waiting on ``migrate_nodes``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import drgn

from ksminspect.decode import NodeKind, RmapItem, StableNode
from ksminspect.mm import mm_owner
from ksminspect.walk import Damage, WalkDamage, Walker, walker


@dataclass(frozen=True)
class Sharer:
    """An rmap_item on a stable node's hlist: one mapping of the KSM page."""

    item: int
    mm: int
    pid: Optional[int]
    comm: Optional[str]
    page_address: int
    state: str  # "stable" on a healthy KSM


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
    sharers: list[Sharer] = field(default_factory=list)
    dups: list["StableTreeNode"] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)

    @property
    def pages(self) -> int:
        """KSM pages this entry holds: one per node or dup."""
        return len(self.dups) if self.kind == NodeKind.CHAIN else 1


def _sharer(prog: drgn.Program, item: RmapItem) -> Sharer:
    owner = mm_owner(prog, item.mm)
    return Sharer(item=item.address, mm=item.mm, pid=owner.pid, comm=owner.comm,
                  page_address=item.page_address, state=item.state.value)


def _entry(w: Walker, node: StableNode, kind: NodeKind, tree_nid: Optional[int]) -> StableTreeNode:
    chain = kind == NodeKind.CHAIN
    entry = StableTreeNode(node=node.address, kind=kind, tree_nid=tree_nid, nid=node.nid,
                           kpfn=None if chain else node.kpfn,
                           chain_prune_time=node.kpfn if chain else None,
                           rmap_hlist_len=node.rmap_hlist_len)
    try:
        if chain:
            for dup in w.for_each_stable_node_dup(node):
                entry.dups.append(_entry(w, dup, NodeKind.DUP, tree_nid))
        else:
            for item in w.for_each_stable_node_rmap_item(node):
                entry.sharers.append(_sharer(w.prog, item))
    except WalkDamage as e:
        entry.damage.append(e.damage)
    return entry


def for_each_stable_tree_node(prog: drgn.Program) -> Iterator[StableTreeNode]:
    """Every entry of every ``root_stable_tree[nid]``, in tree order, then the
    nodes on ``migrate_nodes``. A damaged tree raises :class:`WalkDamage`
    after its readable part."""
    w = walker(prog)
    for nid, root in w.stable_tree_roots():
        for node in w.for_each_stable_node(root):
            kind = NodeKind.CHAIN if node.is_chain else NodeKind.NODE
            yield _entry(w, node, kind, nid)
    for node in w.for_each_migrate_node():
        yield _entry(w, node, NodeKind.MIGRATE, None)
