"""ksminspect: inspect kernel samepage merging (KSM) state with drgn.

The library for drgn scripts (``prog`` is a :class:`drgn.Program`):

- :func:`get_layout` -- the kernel's KSM layout, detected from debug info
- :func:`collection` -- everything the walks reach, as numpy columns
  (:class:`Collection`: item rows, stable nodes and their hlists, unstable
  trees, each mm's counters), read once per session: the one way ksminspect
  reads KSM's objects; ``Collection.item_records(rows)`` makes
  :class:`RmapItem` records of rows
- :class:`RmapItem`, :class:`StableNode` -- decoded records (views of a row)
- :func:`walker` -- the session's :class:`Walker`: the bounded primitives
  the collection is made of (``list_for_each``, ``follow``,
  ``rbtree_inorder``, ``for_each_mm_slot``, ``rmap_list``,
  ``stable_node_hlist``, ``stable_tree_roots``, ``unstable_tree_roots``)
- :func:`for_each_mm_slot` -- mm slots with owner, counters and items by state
- :func:`for_each_stable_tree_node` -- stable trees with chains, dups, sharers
- :func:`read_counters`, :func:`read_tunables`, :func:`walk_counts`
- :func:`read_scan_cursor`
- :func:`run_checks` -- every check, as :class:`Finding` records
- :func:`open_program` -- a dump or the live kernel opened as ksminspect
  opens it: compressed files, a missing VMCOREINFO note, x86-32's missing
  KASLR offset
- :func:`vmcoreinfo_in_memory` -- the VMCOREINFO text of a dump that lacks
  the note, for ``drgn.Program(vmcoreinfo=...)``
- :func:`dump_platform` -- the architecture a kdump-compressed file's header
  names, for ``drgn.Program(platform)`` where libkdumpfile cannot name it
"""

__version__ = "0.1.0"

from ksminspect.checks import CHECKS, CheckReport, Finding, Severity, run_checks
from ksminspect.collect import Collection
from ksminspect.counters import read_counters, read_tunables, walk_counts
from ksminspect.decode import ItemState, NodeKind, RmapItem, StableNode
from ksminspect.layout import KsmLayout, get_layout
from ksminspect.mm import MmOwner, MmSlot, for_each_mm_slot, mm_counters, mm_owner
from ksminspect.dumpfile import dump_platform
from ksminspect.program import open_program, vmcoreinfo_in_memory
from ksminspect.scan import ScanCursor, read_scan_cursor
from ksminspect.session import begin_session, session
from ksminspect.stable import Sharer, Sharers, StableTreeNode, for_each_stable_tree_node
from ksminspect.walk import Damage, WalkDamage, Walker, walker


def collection(prog, *walks: str) -> Collection:
    """The session's :class:`Collection` of *prog*, with the rmap_lists and
    *walks* ("stable_trees", "unstable_trees") made; call
    :func:`begin_session` first to read a live kernel afresh."""
    return session(prog).collect(*walks)

__all__ = [
    "CHECKS", "CheckReport", "Collection", "Damage", "Finding", "ItemState", "KsmLayout", "MmOwner",
    "MmSlot", "NodeKind", "RmapItem", "ScanCursor", "Severity", "Sharer", "Sharers", "StableNode",
    "StableTreeNode", "WalkDamage", "Walker", "begin_session", "collection", "for_each_mm_slot",
    "for_each_stable_tree_node",
    "get_layout", "mm_counters", "mm_owner", "open_program", "read_counters", "read_scan_cursor",
    "read_tunables", "run_checks", "vmcoreinfo_in_memory", "dump_platform", "walk_counts", "walker",
]
