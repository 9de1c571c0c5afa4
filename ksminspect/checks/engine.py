"""The check engine: the rule registry, what a rule is given, and the runs.

A rule is one function, registered with :func:`rule`: it reads the
:class:`~ksminspect.collect.Collection` (columns of everything the walks
reached) and the :class:`~ksminspect.checks.lookups.Lookups`, and reports
through its :class:`RuleOut`: a violation as a finding, or why it cannot
tell. Only the walks the chosen rules need are run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Collection as Coll, Optional

import drgn

from ksminspect.checks.lookups import Lookups
import numpy as np

from ksminspect.collect import STABLE, Collection, walked_counts
from ksminspect.counters import read_counters, read_tunables
from ksminspect.mm import mm_owner
from ksminspect.scan import unstable_tree_seqnr
from ksminspect.session import begin_session
from ksminspect.walk import walker


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
    transient: bool = False  # live kernel: seen on every walk, but KSM was moving

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

    def __init__(self, prog: drgn.Program, live: bool, walks: frozenset[str]):
        self.prog = prog
        self.live = live
        self.walks = walks  # the walks this run makes
        w = walker(prog)
        self.layout = w.layout
        self.c = Collection(w)
        self.look = Lookups(prog, w)
        self.counters = read_counters(prog)
        self.seqnr = self.counters["full_scans"]
        self.tree_seqnr = unstable_tree_seqnr(prog)
        tunables = read_tunables(prog)
        self.merge_across_nodes = tunables.get("merge_across_nodes", 1)
        self.max_page_sharing = tunables.get("max_page_sharing", 0)
        self.report = CheckReport()

    @property
    def by_nid(self) -> bool:
        """Trees are kept per NUMA node (merge_across_nodes=0)."""
        return self.layout.numa and self.merge_across_nodes == 0


class RuleOut:
    """One rule's findings and reasons, under its id."""

    def __init__(self, ctx: Context, check: str):
        self.ctx = ctx
        self.check = check

    def add(self, severity: Severity, address: Optional[int], message: str,
            row: Optional[int] = None, rule: Optional[str] = None) -> None:
        """A finding about *address*; *row*: the item row it concerns."""
        mm = pid = page = None
        if row is not None:
            c = self.ctx.c
            mm = int(c.items["mm"][row])
            page = int(c.page_address[row])
            pid = mm_owner(self.ctx.prog, mm).pid
        self.ctx.report.findings.append(
            Finding(self.check, severity, address, message, mm, pid, page, rule))

    def cannot_tell(self, why: str) -> None:
        """This rule could not judge some objects, because *why*."""
        self.ctx.report.cannot_tell.setdefault(self.check, why)


def run_checks(prog: drgn.Program, live: bool = False,
               only: Optional[Coll[str]] = None) -> CheckReport:
    """The checks *only* names (every one by default) on *prog*, running only
    the walks they need; *live* softens what a moving kernel explains."""
    from ksminspect.checks import rules  # noqa: F401  (registers every rule)

    chosen = [r for r in RULES if only is None or r.id in only]
    ctx = Context(prog, live, frozenset(w for r in chosen for w in r.needs))
    # Every walk runs before any rule reads the item columns: the trees may
    # reach items the rmap_lists did not.
    if "stable_trees" in ctx.walks:
        ctx.c.nodes
    if "unstable_trees" in ctx.walks:
        ctx.c.unstable
    for r in chosen:
        r.run(ctx, RuleOut(ctx, r.id))
    if {"stable_trees", "unstable_trees"} <= ctx.walks:
        c = ctx.c
        ctx.report.stats = walked_counts(c, "stable_node_chains" in ctx.counters)
        stable = c.item_address[:c.walked][c.state[:c.walked] == STABLE]
        ctx.report.stats["stable_items"] = len(np.unique(stable))
    return ctx.report


def check_live(prog: drgn.Program, attempts: int = 3,
               only: Optional[Coll[str]] = None) -> CheckReport:
    """Checks on a live kernel: KSM moves while we read, so the walk is
    repeated and only what every attempt saw is reported, as transient unless
    it is informational. Each attempt is a session of its own."""
    import dataclasses

    reports = []
    for _ in range(max(attempts, 1)):
        begin_session(prog)  # read the moving kernel afresh
        reports.append(run_checks(prog, live=True, only=only))
        common = set.intersection(*({f.key for f in r.findings} for r in reports))
        if not any(f.severity != Severity.INFO for f in reports[-1].findings if f.key in common):
            break
    last = reports[-1]
    out = CheckReport(stats=dict(last.stats), cannot_tell=dict(last.cannot_tell))
    out.stats["attempts"] = len(reports)
    out.stats["dropped_as_races"] = sum(1 for f in last.findings if f.key not in common)
    for f in last.findings:
        if f.key not in common:
            continue
        if f.severity != Severity.INFO:
            f = dataclasses.replace(f, transient=True, severity=Severity.WARNING,
                                    message=f.message + " (live kernel: may be a race)")
        out.findings.append(f)
    return out
