"""The mms KSM scans: their owners and their own KSM counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

import drgn
from drgn.helpers.linux.pid import for_each_task

from ksminspect.layout import get_layout
from ksminspect.session import session

if TYPE_CHECKING:
    from ksminspect.walk import Damage


@dataclass(frozen=True)
class MmOwner:
    """The process that owns an mm, as far as the kernel still knows it."""

    pid: Optional[int]
    comm: Optional[str]
    exited: bool  # mm_users == 0: the owner has exited, ksmd has yet to drop the slot


def mm_counters(prog: drgn.Program, mm: int) -> dict[str, int]:
    """An mm's own KSM counters, named as in /proc/<pid>/ksm_stat, read now."""
    from ksminspect.collect import object_rows

    try:
        return mm_stat(prog, object_rows(get_layout(prog))["mm_struct"].read_one(prog.read, mm))
    except drgn.FaultError:
        return {}


def mm_stat(prog: drgn.Program, row) -> dict[str, int]:
    """``/proc/<pid>/ksm_stat`` of an ``mm_struct`` row
    (:func:`~ksminspect.decode.mm_struct_fields`): the counters this kernel
    keeps, and ksm_process_profit where it has it (v6.4)."""
    names = row.dtype.names
    out = {name: int(row[name]) for name in ("ksm_rmap_items", "ksm_zero_pages", "ksm_merging_pages")
           if name in names}
    if "ksm_rmap_items" in out and _has_process_profit(prog):
        out["ksm_process_profit"] = ksm_profit(out["ksm_merging_pages"], out.get("ksm_zero_pages"),
                                               out["ksm_rmap_items"], get_layout(prog))
    return out


def _has_process_profit(prog: drgn.Program) -> bool:
    try:
        prog["ksm_process_profit"]  # v6.4, "mm: add new api to enable ksm per process"
        return True
    except KeyError:
        return False


def ksm_profit(pages: int, zero_pages: Optional[int], rmap_items: int, layout) -> int:
    """What merging saves less what its rmap_items cost, as
    general_profit_show() and ksm_process_profit() compute it (v6.4); zero
    pages count since v6.6 ("ksm: consider KSM-placed zeropages when
    calculating KSM profit")."""
    return (pages + (zero_pages or 0)) * layout.page_size - rmap_items * layout.rmap_item.size


def _owners_by_task_walk(prog: drgn.Program) -> dict[int, tuple[int, str]]:
    owners: dict[int, tuple[int, str]] = {}
    for task in for_each_task(prog):
        try:
            mm = task.mm.value_()
            if not mm:
                continue
            tgid = task.tgid.value_()
            if mm not in owners or tgid == task.pid.value_():
                owners[mm] = (tgid, task.comm.string_().decode(errors="replace"))
        except drgn.FaultError:
            continue
    return owners


def find_process(prog: drgn.Program, pid: int) -> drgn.Object:
    """The ``struct task_struct *`` of *pid*; a pid this kernel has no
    process for is the user's mistake (KsmInspectError, exit 2)."""
    from drgn.helpers.linux.pid import find_task

    from ksminspect.errors import KsmInspectError

    task = find_task(prog, pid)
    if not task:
        raise KsmInspectError(f"no process with pid {pid} in this kernel")
    return task


def mm_owner(prog: drgn.Program, mm: int) -> MmOwner:
    """pid and comm of the process owning *mm* (``struct mm_struct *``):
    ``mm->owner`` where CONFIG_MEMCG has it, else a walk of the tasks; and
    whether it has exited. Looked up once per mm and session; unknown (all
    None) where the memory cannot be read."""
    owners = session(prog).owner_by_mm
    owner = owners.get(mm)
    if owner is None:
        try:
            owner = _mm_owner(prog, mm)
        except drgn.FaultError:
            owner = MmOwner(None, None, False)
        owners[mm] = owner
    return owner


def _mm_owner(prog: drgn.Program, mm: int) -> MmOwner:
    from ksminspect.collect import object_rows

    layout = get_layout(prog)
    obj = drgn.Object(prog, "struct mm_struct *", mm)[0]
    try:
        exited = int(object_rows(layout)["mm_struct"].read_one(prog.read, mm)["mm_users"]) == 0
    except drgn.FaultError:
        exited = False
    pid = comm = None
    try:
        if layout.mm_struct.owner is not None and obj.owner.value_():
            pid = obj.owner.tgid.value_()
            comm = obj.owner.comm.string_().decode(errors="replace")
    except drgn.FaultError:
        pass
    if pid is None:
        run = session(prog)
        owners = run.owners_by_task_walk
        if owners is None:
            owners = run.owners_by_task_walk = _owners_by_task_walk(prog)
        if mm in owners:
            pid, comm = owners[mm]
    return MmOwner(pid=pid, comm=comm, exited=exited)


@dataclass(frozen=True)
class MmSlot:
    """One ``struct ksm_mm_slot`` on ``ksm_mm_head``, with what its walk found."""

    slot: int
    mm: int
    owner: MmOwner
    counters: dict[str, int]  # the mm's own, named as in /proc/<pid>/ksm_stat
    items: dict[str, int]  # rmap_items on its rmap_list, by ItemState value
    damage: Optional["Damage"]  # why its rmap_list walk stopped early, if it did


def for_each_mm_slot(prog: drgn.Program) -> Iterator[MmSlot]:
    """Every mm slot on ``ksm_mm_head`` in scan order, its rmap_list counted
    by state (from the session's collection). Damage to ksm_mm_head raises
    :class:`WalkDamage` after the readable slots."""
    import numpy as np

    from ksminspect.decode import ITEM_STATES
    from ksminspect.walk import WalkDamage

    c = session(prog).collect()
    for i, run in enumerate(c.runs):
        counts = np.bincount(c.state[run.start:run.stop], minlength=4)
        items = {s.value: int(n) for s, n in zip(ITEM_STATES, counts)}
        yield MmSlot(slot=run.slot, mm=run.mm, owner=mm_owner(prog, run.mm),
                     counters=mm_stat(prog, c.mm_rows[i]), items=items, damage=run.cut)
    if c.mm_head_damage:
        raise WalkDamage(c.mm_head_damage)
