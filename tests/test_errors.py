"""What the user sees when inspection cannot go on: one sentence on stderr,
exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import NO_KSM_DUMPS, Dump


# The installed console script, as a user runs it.
KSMINSPECT = os.path.join(os.path.dirname(sys.executable), "ksminspect")


def run_main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KSMINSPECT, *args], capture_output=True, text=True, timeout=120)


def test_kernel_without_ksm(noksm_dump: Dump) -> None:
    for command in ("summary", "check", "stable-tree"):
        r = run_main(*noksm_dump.args, command)
        assert r.returncode == 2
        assert r.stdout == ""
        assert "this kernel has no KSM" in r.stderr and "CONFIG_KSM" in r.stderr
        assert "Traceback" not in r.stderr


def test_no_ksm_dump_is_committed() -> None:
    assert NO_KSM_DUMPS


def test_usage_error_exits_2() -> None:
    r = run_main("no-such-command")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_missing_core_file(tmp_path) -> None:
    r = run_main("-c", str(tmp_path / "absent.xz"), "summary")
    assert r.returncode == 2 and "cannot open" in r.stderr and "Traceback" not in r.stderr


def _numa_dump() -> Dump:
    from conftest import DUMPS

    return next(d for d in DUMPS if d.truth.get("workload", {}).get("numa") == 2)


# A user's mistake: one sentence, exit 2, no traceback, and no walk first.
BAD_INPUT = [
    (["page", "99999999999999999999999"],
     "'99999999999999999999999' is not an address: addresses are 0 to 0xffffffffffffffff"),
    (["page", "--pid", "-5", "0x1000"], "-5 is not in the range 1<=x<=4194303"),
    (["page", "zz"], "'zz' is not a hex number (e.g. 0xffff888012345678 or f8b4)"),
    (["page", "0x7fff00001000"], "ksminspect: 0x7fff00001000 is neither a page frame number of this "
                                 "kernel (max_pfn 0xffe0) nor the address of a struct page; for an "
                                 "address in a process, add --pid"),
    (["rmap", "--pid", "999"], "ksminspect: no process with pid 999 in this kernel"),
    (["stable-tree", "--pid", "999"], "ksminspect: no process with pid 999 in this kernel"),
    (["page", "--pid", "999", "0x1000"], "ksminspect: no process with pid 999 in this kernel"),
    (["stable-tree", "--nid", "5"],
     "ksminspect: no tree for nid 5: this kernel keeps 2 stable and unstable trees (nid 0 to 1)"),
    (["stable-tree", "--min-sharers", "-3"], "-3 is not in the range x>=0"),
    (["check", "--retries", "0"], "0 is not in the range x>=1"),
    (["rmap", "--limit", "-1"], "-1 is not in the range x>=0"),
    (["mm", "--sort", "size"], "'size' is not one of 'pid', 'items', 'stable', 'merging_pages', 'profit'"),
    (["check", "--severity", "fatal"], "'fatal' is not one of 'error', 'warning', 'info'"),
    (["snapshot", "/nonexistent/dir/x.json"],
     "ksminspect: cannot write /nonexistent/dir/x.json: there is no directory /nonexistent/dir"),
]


def test_global_options_after_the_command_and_format_before_it() -> None:
    dump = _numa_dump()
    want = run_main(*dump.args, "summary", "--format", "json")
    for args in (["summary", *dump.args, "-f", "json"], ["-f", "json", "summary", *dump.args],
                 ["--format", "json", *dump.args, "summary"]):
        got = run_main(*args)
        assert got.returncode == 0 and got.stdout == want.stdout, (args, got.stderr)


# A filter that matches nothing says so on stderr, and exits 0.
EMPTY_FILTERS = [
    (["rmap", "--mm", "0xdeadbeef"],
     "ksminspect: nothing matched: mm 0xdeadbeef: not on ksm_mm_head (KSM does not scan it)"),
    (["rmap", "--pid", "1"], "ksminspect: nothing matched: process 1: not on ksm_mm_head"),
    (["stable-tree", "--min-sharers", "99"],
     "ksminspect: nothing matched: no stable pages with at least 99 sharers"),
    (["stable-tree", "--pid", "1"], "ksminspect: nothing matched: no stable pages shared by process 1"),
    (["mm", "--limit", "0"], "ksminspect: showing 0 of 7 mms (--limit)"),
]


@pytest.mark.parametrize("args,sentence,code", [(a, s, 2) for a, s in BAD_INPUT]
                         + [(a, s, 0) for a, s in EMPTY_FILTERS],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_and_empty_filters_are_one_sentence(args, sentence, code) -> None:
    """A mistake: exit 2, nothing on stdout. A filter matching nothing: exit
    0 and its sentence after the (empty) output. Neither a traceback."""
    r = run_main(*_numa_dump().args, *args)
    assert r.returncode == code, (args, r.stderr)
    assert sentence in r.stderr, (args, r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    if code == 2:
        assert r.stdout == ""


@pytest.mark.parametrize("command", ["summary", "rmap", "check"])
def test_a_reader_that_goes_away_ends_it_quietly(command: str) -> None:
    """`ksminspect summary | head -1`: the reader closes the pipe; the
    command ends as git's do, by SIGPIPE, with nothing on stderr; never exit
    code 1 (error-level findings), which click gave a failed write."""
    import signal

    from conftest import DUMPS

    dump = next(d for d in DUMPS if d.name == "6.12-numa")
    proc = subprocess.Popen([KSMINSPECT, *dump.args, command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the first line is written
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == -signal.SIGPIPE and stderr == ""
