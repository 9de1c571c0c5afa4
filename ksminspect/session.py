"""One command's run over a program: what it reads of the kernel's moving
state belongs to it alone.

drgn keeps facts that never change in ``prog.cache`` (ksminspect's layout is
one); memory read from the kernel, the walker's kept chunks and the owners of
mms change, so they live in a :class:`Session`. The command line and ``%ksm``
begin a new session per command; a drgn script that never begins one gets one
on first use, for as long as it keeps the program.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import drgn

from ksminspect.layout import KsmLayout, get_layout

if TYPE_CHECKING:
    from ksminspect.collect import Collection
    from ksminspect.walk import Walker

_KEY = "ksminspect_session"


class Session:
    """The walker (with the memory chunks it keeps), the collection of what
    it walked, and the caches of one command's run over *prog*."""

    def __init__(self, prog: drgn.Program):
        self.prog = prog
        self.layout: KsmLayout = get_layout(prog)
        self._walker: Optional["Walker"] = None
        self._collection: Optional["Collection"] = None
        # mm (struct mm_struct *) -> MmOwner, and the task walk behind it
        self.owner_by_mm: dict[int, Any] = {}
        self.owners_by_task_walk: Optional[dict[int, tuple[int, str]]] = None

    @property
    def walker(self) -> "Walker":
        if self._walker is None:
            from ksminspect.walk import Walker

            self._walker = Walker(self.prog, self.layout)
        return self._walker

    @property
    def collection(self) -> "Collection":
        """What this session's walks reached, as columns: every command of
        the session reads the kernel's structures once."""
        if self._collection is None:
            from ksminspect.collect import Collection
            from ksminspect.counters import scan_state

            self._collection = Collection(self.walker)
            # before any walk: a live finding that read the counters stands
            # only if they did not move while the walks were taken
            try:
                self._collection.counters_before = scan_state(self.prog)
            except (drgn.FaultError, LookupError, drgn.ObjectAbsentError):
                pass  # unreadable counters: a finding's own reads say what they say
        return self._collection

    def collect(self, *walks: str, attempts: int = 3, live: Optional[bool] = None) -> "Collection":
        """The collection with the rmap_lists and *walks* ("stable_trees",
        "unstable_trees") made. On a live kernel (*live*, by default whether
        the program is the running kernel) a walk that met damage or a back
        link not pointing where it came from is taken again, afresh, up to
        *attempts* times, before either is believed: words read a moment
        apart can disagree on a list that moves (an hlist entry the walk
        reached through an item that was unlinked since)."""
        if live is None:
            live = bool(self.prog.flags & drgn.ProgramFlags.IS_LIVE)
        met: list[set] = []  # the damage each attempt met
        met_links: list[set] = []  # and the back links, as BadLink.as_met
        for attempt in range(max(attempts, 1)):
            c = self.collection
            c.runs
            if "stable_trees" in walks:
                c.nodes
            if "unstable_trees" in walks:
                c.unstable
            damage = set(c.rmap_list_damage + c.tree_damage)
            links = {b.as_met for b in c.bad_links} if live else set()
            if not live or not (damage or links):
                if met:  # what the earlier attempts met was motion: counted
                    c.set_aside(set().union(*met), set().union(*met_links))
                return c
            met.append(damage)
            met_links.append(links)
            if attempt == attempts - 1:
                break
            self._walker = self._collection = None  # read the moving kernel afresh
        # what was met the same way every time is believed; the rest was motion
        c.set_aside(damage - set.intersection(*met), links - set.intersection(*met_links))
        return c


def begin_session(prog: drgn.Program) -> Session:
    """A fresh session for a new command: nothing an earlier one read is kept."""
    s = prog.cache[_KEY] = Session(prog)
    return s


def session(prog: drgn.Program) -> Session:
    """The session under way on *prog*, begun on first use."""
    s = prog.cache.get(_KEY)
    return s if s is not None else begin_session(prog)
