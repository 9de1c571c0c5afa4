"""The check engine: the rule registry, what a rule is given, and the runs.

A rule is one function, registered with :func:`rule`: it reads the
:class:`~ksminspect.collect.Collection` (columns of everything the walks
reached) and the :class:`~ksminspect.lookups.Lookups`, and reports
through its :class:`RuleOut`: a violation as a finding that names what it
read (:mod:`ksminspect.checks.evidence`), or why it cannot tell. Only the
walks the chosen rules need are run; a rule that fails is "cannot tell"
alone, the others run (as corelens isolates its sections).

What becomes of a finding is the engine's, the same for every rule: in a
dump, a finding that rests on memory the dump lacks is "cannot tell"; on a
live kernel, a finding whose objects read differently a moment later is
counted as changed while read, and what stays keeps its severity.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass, field
from typing import Callable, Collection as Coll, Iterable, Optional

import drgn
import numpy as np

from ksminspect.checks.evidence import DumpGaps, Obj, extent, values_now, values_then
from ksminspect.collect import STABLE, Collection, walked_counts
from ksminspect.counters import read_counters, read_tunables
from ksminspect.errors import CannotTell
from ksminspect.lookups import Lookups
from ksminspect.mm import mm_owner
from ksminspect.program import is_gap, lacks_memory
from ksminspect.scan import unstable_tree_seqnr
from ksminspect.session import session
from ksminspect.walk import excluded_pages


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
    transient: bool = False  # live kernel: confirmed, but the walks it rests on may have raced
    # the kernel objects its judgement read (evidence.Obj), and the walks
    # whose completeness it rests on (a finding that something is missing)
    reads: tuple[Obj, ...] = ()
    rests_on: frozenset[str] = frozenset()
    # words among *reads* as the judgement saw them: (address, value)
    saw: tuple[tuple[int, int], ...] = ()

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
                                                     attempts=attempts, live=live)
        w = self.c.w
        self.layout = w.layout
        self.look = Lookups(prog, w)
        self.counters = read_counters(prog)
        self.seqnr = self.counters["full_scans"]
        self.tree_seqnr = unstable_tree_seqnr(prog)
        tunables = read_tunables(prog)
        self.merge_across_nodes = tunables.get("merge_across_nodes", 1)
        self.max_page_sharing = int(tunables.get("max_page_sharing", 0))  # a number, as every tunable but advisor_mode
        self.report = CheckReport()

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
        self.findings: list[Finding] = []

    def add(self, severity: Severity, address: Optional[int], message: str,
            row: Optional[int] = None, rule: Optional[str] = None,
            reads: Iterable[Obj] = (), rests_on: Iterable[str] = (),
            saw: Iterable[tuple[int, int]] = ()) -> None:
        """A finding about *address*; *row*: the item row it concerns (read,
        with its mm and page); *reads*: the other objects its judgement
        read; *rests_on*: the walks it takes to be complete; *saw*: the
        value of each "word" among *reads* as the judgement read it."""
        mm = pid = page = None
        reads = tuple(reads)
        if row is not None:
            c = self.ctx.c
            mm = int(c.items["mm"][row])
            page = int(c.page_address(row))
            pid = mm_owner(self.ctx.prog, mm).pid
            reads = (("rmap_item", int(c.item_address[row])),) + reads
        self.findings.append(Finding(self.check, severity, address, message, mm, pid, page, rule,
                                     reads=reads, rests_on=frozenset(rests_on), saw=tuple(saw)))

    def cannot_tell(self, why: str) -> None:
        """This rule could not judge some objects, because *why*."""
        self.ctx.report.cannot_tell.setdefault(self.check, why)


def run_checks(prog: drgn.Program, live: Optional[bool] = None,
               only: Optional[Coll[str]] = None, attempts: int = 3) -> CheckReport:
    """The checks *only* names (every one by default) on *prog*, running only
    the walks they need. *live* (by default: whether *prog* is the running
    kernel) confirms each finding by reading again what it names, twice, a
    moment apart: one whose objects changed is counted (stats
    ``changed_while_read``), never listed; what stays keeps its severity. A
    walk that met damage on a live kernel is taken again, up to *attempts*
    times, before the damage is believed. In a dump, a finding that rests
    on memory the dump lacks is "cannot tell" for its check."""
    if live is None:
        live = bool(prog.flags & drgn.ProgramFlags.IS_LIVE)
    ctx = _run(prog, live, only, attempts)
    _weigh_in_dump(ctx)
    if live:
        _confirm_live(ctx)
    return ctx.report


def check_live(prog: drgn.Program, attempts: int = 3,
               only: Optional[Coll[str]] = None) -> CheckReport:
    """:func:`run_checks` as on a live kernel, whatever *prog* is."""
    return run_checks(prog, True, only, attempts)


def _run(prog: drgn.Program, live: bool, only: Optional[Coll[str]], attempts: int = 3) -> Context:
    from ksminspect.checks import rules  # noqa: F401  (registers every rule)

    chosen = [r for r in RULES if only is None or r.id in only]
    ctx = Context(prog, live, frozenset(w for r in chosen for w in r.needs), attempts)
    for r in chosen:
        out = RuleOut(ctx, r.id)
        try:
            r.run(ctx, out)
        except CannotTell as e:
            out.cannot_tell(e.reason)
            continue
        except drgn.FaultError as e:
            if "ksminspect_truncated" in prog.cache:
                raise  # a dump cut short: the target cannot be inspected (the command says so)
            out.cannot_tell(ctx.left_out(e) if is_gap(prog, e) else
                            f"what {r.id} needs cannot be read ({e})")
            continue
        except Exception as e:  # a rule's own failure: that rule alone cannot tell
            out.cannot_tell(f"internal error in {r.id}: {type(e).__name__}: {e}")
            continue
        ctx.report.findings += out.findings
    if {"stable_trees", "unstable_trees"} <= ctx.walks:
        c = ctx.c
        ctx.report.stats = walked_counts(c, "stable_node_chains" in ctx.counters)
        stable = c.state[:c.walked] == STABLE
        ctx.report.stats["stable_items"] = (len(np.unique(c.item_address[:c.walked][stable]))
                                            if c.walked_twice else int(np.count_nonzero(stable)))
    return ctx


def _weigh_in_dump(ctx: Context) -> None:
    """In a dump: a finding that rests on memory the dump lacks (an object
    it read, a walk it takes to be complete that stopped at a gap) is no
    evidence about the kernel: it becomes "cannot tell" for its check,
    counted, with the pages."""
    gaps = DumpGaps(ctx.prog)
    if not gaps.dump:
        return
    c, page_size = ctx.c, ctx.layout.page_size
    damage = c.rmap_list_damage + c.tree_damage
    kept: list[Finding] = []
    lacking: dict[str, tuple[int, set[int]]] = {}
    for f in ctx.report.findings:
        pages = set(gaps.in_walks(damage, f.rests_on, page_size))
        for obj in f.reads:
            where = extent(c, obj)
            if where is not None:
                pages.update(gaps.lacks(*where, page_size))
        if pages:
            n, seen = lacking.get(f.check, (0, set()))
            lacking[f.check] = (n + 1, seen | pages)
        else:
            kept.append(f)
    ctx.report.findings = kept
    for check, (n, pages) in lacking.items():
        why = (f"{n} finding{'s' if n != 1 else ''} rest{'s' if n == 1 else ''} on memory the "
               f"dump lacks, not listed: " + lacks_memory(ctx.prog, sorted(pages)))
        said = ctx.report.cannot_tell.get(check)
        ctx.report.cannot_tell[check] = f"{said}; {why}" if said else why
        ctx.report.stats["cannot_tell"] = ctx.report.stats.get("cannot_tell", 0) + n


# Said of a confirmed finding whose walks a moving kernel may have raced.
RACE = " (live kernel: KSM may have moved while the walks it rests on were read)"


def _confirm_live(ctx: Context) -> None:
    """Live kernel: read again what each finding names, twice, a moment
    apart; a finding whose objects changed since the collection read them
    is counted, not listed. What stays keeps its severity."""
    report, c = ctx.report, ctx.c
    objs = {o for f in report.findings for o in f.reads}
    then = values_then(c, c.counters_before, objs)
    for f in report.findings:  # words the walks read, as they read them
        for address, value in f.saw:
            then[("word", address)] = value
    changed: set[Obj] = set()
    for _ in range(2):
        time.sleep(0.05)
        now = values_now(ctx.prog, c, objs)
        for o in objs:
            if then[o] is None:  # not kept by the collection: the first read again is the baseline
                then[o] = now[o]
            elif then[o] != now[o]:
                changed.add(o)
    kept, moved = [], 0
    for f in report.findings:
        if changed.intersection(f.reads):
            moved += 1
        elif f.rests_on:
            kept.append(dataclasses.replace(f, transient=True, message=f.message + RACE))
        else:
            kept.append(f)
    report.findings = kept
    report.stats["changed_while_read"] = moved + c.changed_while_read
