"""KSM's global counters and tunables as the kernel's variables hold them,
keyed by the names of the files in /sys/kernel/mm/ksm, and the same counters
recomputed by walking ksm_mm_head, the rmap_lists and the stable trees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import drgn

from ksminspect.layout import get_layout, read_variable
from ksminspect.mm import ksm_profit, mm_stat


Value = Union[int, str]


def _var(name: str) -> Callable[[drgn.Program], Optional[int]]:
    def read(prog: drgn.Program) -> Optional[int]:
        obj = read_variable(prog, name)
        if obj is None:
            return None
        if obj.type_.unaliased().kind == drgn.TypeKind.STRUCT:
            obj = obj.counter  # atomic_long_t (v6.10)
        return int(obj.value_())  # bool tunables print as 0/1
    return read


def _full_scans(prog: drgn.Program) -> Optional[int]:
    return prog["ksm_scan"].seqnr.value_()


# sysfs file -> kernel variable, as each *_show() in mm/ksm.c prints it.
COUNTER_VARIABLES: dict[str, Callable[[drgn.Program], Optional[int]]] = {
    "pages_shared": _var("ksm_pages_shared"),
    "pages_sharing": _var("ksm_pages_sharing"),
    "pages_unshared": _var("ksm_pages_unshared"),
    "pages_scanned": _var("ksm_pages_scanned"),  # v6.6
    "pages_skipped": _var("ksm_pages_skipped"),  # v6.7
    "ksm_zero_pages": _var("ksm_zero_pages"),  # v6.6
    "stable_node_chains": _var("ksm_stable_node_chains"),  # v4.13
    "stable_node_dups": _var("ksm_stable_node_dups"),  # v4.13
    "full_scans": _full_scans,
    # No sysfs file: pages_volatile and general_profit are derived from it.
    "rmap_items": _var("ksm_rmap_items"),
}

TUNABLE_VARIABLES: dict[str, Callable[[drgn.Program], Optional[int]]] = {
    "run": _var("ksm_run"),
    "sleep_millisecs": _var("ksm_thread_sleep_millisecs"),
    "pages_to_scan": _var("ksm_thread_pages_to_scan"),
    "merge_across_nodes": _var("ksm_merge_across_nodes"),  # CONFIG_NUMA
    "max_page_sharing": _var("ksm_max_page_sharing"),  # v4.13
    "stable_node_chains_prune_millisecs": _var("ksm_stable_node_chains_prune_millisecs"),
    "use_zero_pages": _var("ksm_use_zero_pages"),
    "smart_scan": _var("ksm_smart_scan"),  # v6.7
    "advisor_max_cpu": _var("ksm_advisor_max_cpu"),  # v6.8 advisor
    "advisor_min_pages_to_scan": _var("ksm_advisor_min_pages_to_scan"),
    "advisor_max_pages_to_scan": _var("ksm_advisor_max_pages_to_scan"),
    "advisor_target_scan_time": _var("ksm_advisor_target_scan_time"),
}


def _has(prog: drgn.Program, name: str) -> bool:
    try:
        prog[name]
        return True
    except KeyError:
        return False


def pages_volatile(rmap_items: int, shared: int, sharing: int, unshared: int) -> int:
    """pages_volatile_show(): what is neither shared, sharing nor unshared."""
    return max(rmap_items - shared - sharing - unshared, 0)


def read_counters(prog: drgn.Program) -> dict[str, int]:
    """The counters of /sys/kernel/mm/ksm (and rmap_items) from the kernel's variables."""
    out = {name: v for name, read in COUNTER_VARIABLES.items() if (v := read(prog)) is not None}
    out["pages_volatile"] = pages_volatile(out["rmap_items"], out["pages_shared"],
                                           out["pages_sharing"], out["pages_unshared"])
    if _has(prog, "general_profit_show"):
        out["general_profit"] = ksm_profit(out["pages_sharing"], out.get("ksm_zero_pages"),
                                           out["rmap_items"], get_layout(prog))
    return out


def scan_state(prog: drgn.Program) -> tuple:
    """KSM's global counters and where the scan cursor is, as one value:
    what changes whenever KSM moves (a finding on a live kernel that read
    them is confirmed only while they stand still)."""
    from ksminspect.scan import read_scan_cursor

    cursor = read_scan_cursor(prog)
    return tuple(sorted(read_counters(prog).items())) + (("cursor", cursor.mm_slot, cursor.address),)


def read_tunables(prog: drgn.Program) -> dict[str, Value]:
    """The tunables of /sys/kernel/mm/ksm, printed as their *_show() prints them."""
    out: dict[str, Value] = {name: v for name, read in TUNABLE_VARIABLES.items()
                             if (v := read(prog)) is not None}
    try:
        advisor = prog["ksm_advisor"]  # v6.8, "mm/ksm: add ksm advisor"
    except KeyError:
        pass
    else:
        scan_time = advisor.value_() == prog.constant("KSM_ADVISOR_SCAN_TIME").value_()
        out["advisor_mode"] = "none [scan-time]" if scan_time else "[none] scan-time"
    return out


# What a full walk of one kind lists, by the counter that says how many there are.
_WALKED_OBJECTS = {
    "rmap_items": "rmap_item on the rmap_lists of ksm_mm_head",
    "pages_shared": "KSM page in the stable trees",
    "pages_unshared": "rmap_item in the unstable trees",
}


def nothing_found(counter: str, expected: Optional[int], walked: int) -> Optional[str]:
    """A sentence when a full walk found no object although the kernel's
    *counter* (a key of :data:`_WALKED_OBJECTS`) is *expected* > 0; else None.
    An empty answer there is a damaged structure or a misread layout, never
    a KSM at rest."""
    if walked or not expected or counter not in _WALKED_OBJECTS:
        return None
    return (f"the kernel's {counter} is {expected}, but the walk found no "
            f"{_WALKED_OBJECTS[counter]}: the structures are damaged, or ksminspect misreads "
            f"this kernel's layout (please report it); what is shown is not KSM's state")


def walk_found_nothing(prog: drgn.Program, counter: str, walked: int) -> Optional[str]:
    """:func:`nothing_found` against the kernel's own counter."""
    return None if walked else nothing_found(counter, read_counters(prog).get(counter), walked)


@dataclass
class WalkedCounts:
    """Counters recomputed from the structures themselves."""

    counts: dict[str, int]  # collect.walked_counts(): rmap_items, pages_shared, ...
    zero_pages: Optional[int] = None  # sum of mm->ksm_zero_pages
    damage: list = field(default_factory=list)
    changed_while_read: int = 0  # live kernel: walks that met their lists changing

    @property
    def rmap_items(self) -> int:
        return self.counts["rmap_items"]

    def as_counters(self, prog: drgn.Program, counters: dict[str, int]) -> dict[str, int]:
        """The walked values under the sysfs names that a walk can recompute."""
        out = {k: v for k, v in self.counts.items()
               if k in counters or k not in ("stable_node_chains", "stable_node_dups")}
        out["pages_volatile"] = pages_volatile(out["rmap_items"], out["pages_shared"],
                                               out["pages_sharing"], out["pages_unshared"])
        if "ksm_zero_pages" in counters and self.zero_pages is not None:
            out["ksm_zero_pages"] = self.zero_pages
        if "general_profit" in counters:
            out["general_profit"] = ksm_profit(out["pages_sharing"], out.get("ksm_zero_pages"),
                                               out["rmap_items"], get_layout(prog))
        return out


def walk_counts(prog: drgn.Program) -> WalkedCounts:
    """Walk ksm_mm_head, every rmap_list and every stable tree, counting."""
    from ksminspect.collect import walked_counts
    from ksminspect.session import session

    c = session(prog).collect("stable_trees")
    counts = WalkedCounts(walked_counts(c, chains=True))
    for i in range(len(c.runs)):
        zero = mm_stat(prog, c.mm_rows[i]).get("ksm_zero_pages")
        if zero is not None:
            counts.zero_pages = (counts.zero_pages or 0) + zero
    counts.damage = c.rmap_list_damage + c.tree_damage
    counts.changed_while_read = c.changed_while_read
    return counts
