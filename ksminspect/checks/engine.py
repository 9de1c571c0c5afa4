"""The check engine: the rule registry, what a rule is given, and the runs.

A rule is one function, registered with :func:`rule`: it reads the
:class:`~ksminspect.collect.Collection` (columns of everything the walks
reached) and the :class:`~ksminspect.lookups.Lookups`, and reports
through its :class:`RuleOut`: a violation as a finding, or why it cannot
tell. Only the walks the chosen rules need are run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Collection as Coll, Optional

import drgn
import numpy as np

from ksminspect.lookups import Lookups
from ksminspect.collect import STABLE, Collection, walked_counts
from ksminspect.counters import read_counters, read_tunables
from ksminspect.mm import mm_owner
from ksminspect.scan import unstable_tree_seqnr
from ksminspect.session import begin_session, session
from ksminspect.program import lacks_memory
from ksminspect.walk import WalkDamage, excluded_pages, fault


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    check: str  # one of CHECKS
    severity: Severity
    address: Optional[int]  # the object the finding is about
    message: str
    mm: Optional[int] = None
    pid: Optional[int] = None
    page_address: Optional[int] = None
    rule: Optional[str] = None  # for the stale-offset checks: which rule fired
    transient: bool = False  # live kernel: confirmed, but KSM was moving
    # stable nodes whose hlist the finding is about (re-read to confirm it live)
    nodes: tuple[int, ...] = ()

    @property
    def key(self) -> tuple:
        return (self.check, self.address, self.rule)


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    # check id -> why it could not run (wholly or for some objects) on this
    # target: a tool's limit, never a finding about the kernel
    cannot_tell: dict[str, str] = field(default_factory=dict)


# What a rule can ask to be walked; every walk rests on the rmap_lists.
WALKS = ("rmap_lists", "stable_trees", "unstable_trees", "slab")


@dataclass(frozen=True)
class Rule:
    """One check: its id, what a healthy KSM keeps, the walks it needs, and
    the function that looks."""

    id: str
    keeps: str
    needs: frozenset[str]
    run: Callable[["Context", "RuleOut"], None]


RULES: list[Rule] = []


def rule(id: str, keeps: str, *needs: str) -> Callable:
    """Register the decorated ``f(ctx, out)`` as the check *id*."""
    assert set(needs) <= set(WALKS), needs

    def register(f: Callable[["Context", "RuleOut"], None]) -> Callable:
        RULES.append(Rule(id, keeps, frozenset(("rmap_lists",) + needs), f))
        return f

    return register


class Context:
    """What every rule is given: the collection, the kernel's counters and
    tunables, the lookups, and the findings so far."""

    def __init__(self, prog: drgn.Program, live: bool, walks: frozenset[str], attempts: int = 3):
        self.prog = prog
        self.live = live
        self.walks = walks  # the walks this run makes
        self.c: Collection = session(prog).collect(*(walks & {"stable_trees", "unstable_trees"}),
                                                     attempts=attempts)
        w = self.c.w
        self.layout = w.layout
        self.look = Lookups(prog, w)
        self.counters = read_counters(prog)
        self.seqnr = self.counters["full_scans"]
        self.tree_seqnr = unstable_tree_seqnr(prog)
        tunables = read_tunables(prog)
        self.merge_across_nodes = tunables.get("merge_across_nodes", 1)
        self.max_page_sharing = tunables.get("max_page_sharing", 0)
        self.report = CheckReport()
        # mm -> its own counters as the mm-counters rule read them
        self.mm_counters_seen: dict[int, dict[str, int]] = {}

    @property
    def by_nid(self) -> bool:
        """Trees are kept per NUMA node (merge_across_nodes=0)."""
        return self.layout.numa and self.merge_across_nodes == 0

    def left_out(self, e: Optional[drgn.FaultError] = None) -> str:
        """Why a rule cannot tell where the dump left out memory it needs:
        the page of the read *e*, else the pages the walks stopped at."""
        pages = ([e.address & self.layout.page_mask] if e is not None else
                 excluded_pages(self.c.rmap_list_damage + self.c.tree_damage, self.layout.page_mask))
        return lacks_memory(self.prog, pages) + "; what is in it is not checked"


class RuleOut:
    """One rule's findings and reasons, under its id."""

    def __init__(self, ctx: Context, check: str):
        self.ctx = ctx
        self.check = check

    def add(self, severity: Severity, address: Optional[int], message: str,
            row: Optional[int] = None, rule: Optional[str] = None, nodes: tuple[int, ...] = ()) -> None:
        """A finding about *address*; *row*: the item row it concerns;
        *nodes*: the stable nodes on whose hlist it was found."""
        mm = pid = page = None
        if row is not None:
            c = self.ctx.c
            mm = int(c.items["mm"][row])
            page = int(c.page_address(row))
            pid = mm_owner(self.ctx.prog, mm).pid
        self.ctx.report.findings.append(
            Finding(self.check, severity, address, message, mm, pid, page, rule, nodes=nodes))

    def cannot_tell(self, why: str) -> None:
        """This rule could not judge some objects, because *why*."""
        self.ctx.report.cannot_tell.setdefault(self.check, why)


def run_checks(prog: drgn.Program, live: bool = False,
               only: Optional[Coll[str]] = None) -> CheckReport:
    """The checks *only* names (every one by default) on *prog*, running only
    the walks they need; *live* softens what a moving kernel explains."""
    return _run(prog, live, only).report


def _run(prog: drgn.Program, live: bool, only: Optional[Coll[str]], attempts: int = 3) -> Context:
    from ksminspect.checks import rules  # noqa: F401  (registers every rule)

    chosen = [r for r in RULES if only is None or r.id in only]
    ctx = Context(prog, live, frozenset(w for r in chosen for w in r.needs), attempts)
    for r in chosen:
        out = RuleOut(ctx, r.id)
        try:
            r.run(ctx, out)
        except drgn.FaultError as e:
            if fault(e) != "excluded":
                raise  # damage: the command says what could not be read
            out.cannot_tell(ctx.left_out(e))
    if {"stable_trees", "unstable_trees"} <= ctx.walks:
        c = ctx.c
        ctx.report.stats = walked_counts(c, "stable_node_chains" in ctx.counters)
        stable = c.state[:c.walked] == STABLE
        ctx.report.stats["stable_items"] = (len(np.unique(c.item_address[:c.walked][stable]))
                                            if c.walked_twice else int(np.count_nonzero(stable)))
    return ctx


def check_live(prog: drgn.Program, attempts: int = 3,
               only: Optional[Coll[str]] = None) -> CheckReport:
    """Checks on a live kernel, which moves while it is read.

    One walk of everything; a walk that met damage (a cycle, a fault) is
    taken again, up to *attempts* times, before the damage is believed. Each
    finding is then confirmed by reading again only what it names, twice, a
    moment apart: a finding whose objects changed since the walk read them
    is counted (stats ``changed_while_read``), never listed. What stays is
    reported as transient (a warning), or as info where it is informational.
    """
    import dataclasses
    import time

    begin_session(prog)  # read the moving kernel afresh
    ctx = _run(prog, True, only, attempts)
    report = ctx.report
    out = CheckReport(stats=dict(report.stats), cannot_tell=dict(report.cannot_tell))
    suspects = [f for f in report.findings if f.severity != Severity.INFO]
    moved: set[int] = set()
    first_read: dict[int, bytes] = {}
    for _ in range(2):
        time.sleep(0.05)
        ctx.c.w.memory.forget()  # read what the findings name afresh
        moved |= {i for i, f in enumerate(suspects) if i not in moved and _moved(ctx, f, first_read)}
    out.stats["changed_while_read"] = len(moved) + ctx.c.changed_while_read
    for f in report.findings:
        if f.severity == Severity.INFO:
            out.findings.append(f)
    for i, f in enumerate(suspects):
        if i not in moved:
            out.findings.append(dataclasses.replace(f, transient=True, severity=Severity.WARNING,
                                                    message=f.message + " (live kernel: may be a race)"))
    return out


def _moved(ctx: Context, f: Finding, first_read: dict[int, bytes]) -> bool:
    """Whether what finding *f* names has changed since the walk read it
    (*first_read*: what an earlier confirmation read of objects the walk did
    not keep)."""
    from ksminspect.mm import mm_counters

    c, read = ctx.c, ctx.prog.read
    if f.address is None:  # the kernel's global counters against the walk
        now = read_counters(ctx.prog)
        return any(now.get(k) != ctx.counters.get(k) for k in ctx.report.stats)
    if f.check == "mm-counters":
        return mm_counters(ctx.prog, f.address) != ctx.mm_counters_seen.get(f.address)
    for node in f.nodes:  # is the item still on that node's hlist?
        if not _on_hlist_now(ctx, node, f.address):
            return True
    kept = [(c.item_address, c.items)]
    if "_stable" in c.__dict__:
        kept.append((c.nodes.address, c.nodes.rows))
    try:
        for addresses, rows in kept:
            hit = np.nonzero(addresses == np.uint64(f.address))[0]
            if len(hit):
                then = rows[hit[0]:hit[0] + 1].tobytes()
                return read(f.address, len(then)) != then
        if f.check == "orphans" and f.message.startswith(ctx.layout.rmap_item.type_name):
            return _reached_now(ctx, f.address)
        now = read(f.address, 64)
    except drgn.FaultError:
        return True  # freed and gone
    return first_read.setdefault(f.address, now) != now


def _on_hlist_now(ctx: Context, node: int, item: int) -> bool:
    from array import array

    w = ctx.c.w
    found: array[int] = array("Q")
    try:
        w.stable_node_hlist(w.stable_node(node), found)
    except WalkDamage:
        return False
    return item in found


def _reached_now(ctx: Context, item: int) -> bool:
    """An rmap_item no walk reached: is it on its mm's rmap_list now (it was
    allocated after the walk passed)? Walks that one list again."""
    from array import array

    w = ctx.c.w
    mm = w.rmap_item(item).mm
    for run in ctx.c.runs:
        if run.mm == mm:
            found: array[int] = array("Q")
            w.rmap_list(w.mm_slot(run.slot)[1], run.slot, found)
            return item in found
    return False
