"""One command's run (ksminspect/session.py): a session reads the kernel
once, a new one afresh, and running the checks does not begin another (so
snapshot's items and findings come from the same reads)."""

from __future__ import annotations

from conftest import DUMPS, program_of

from ksminspect.checks import check_live, run_checks
from ksminspect.session import begin_session, session

DUMP = next(d for d in DUMPS if d.name == "7.2-seed-noreset")


def test_a_session_reads_once() -> None:
    prog = program_of(DUMP)
    s = begin_session(prog)
    c = s.collect("stable_trees")
    assert session(prog).collect() is c
    assert c.counters_before is not None
    assert begin_session(prog).collect() is not c


def test_checks_use_the_session_under_way() -> None:
    prog = program_of(DUMP)
    c = begin_session(prog).collect("stable_trees", "unstable_trees")
    run_checks(prog)
    check_live(prog)
    assert session(prog).collection is c
