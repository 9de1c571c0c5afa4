"""What the user sees when inspection cannot go on: one sentence on stderr,
exit code 2, no traceback."""

from __future__ import annotations

import os
import re
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
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"Invalid value for '-c' / '--core': File '{tmp_path / 'absent.xz'}' does not exist." in r.stderr


def test_symbols_that_are_not_elf(tmp_path) -> None:
    notes = tmp_path / "vmlinux"
    notes.write_text("not a kernel\n")
    r = run_main("-c", str(_numa_dump().vmcore), "-s", str(notes), "summary")
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert (f"ksminspect: {notes} is not an ELF file: -s takes the kernel's vmlinux or its debug file "
            f"(for kernel 6.12.117, e.g. ") in r.stderr, r.stderr


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
    (["snapshot", "-f", "table", "-"], "'table' is not 'json'"),
    # paths: the file named, not drgn's "missing some debugging symbols"
    (["summary", "-s", "/nonexistent/vmlinux"],
     "Invalid value for '-s' / '--symbols': File '/nonexistent/vmlinux' does not exist."),
    (["summary", "-c", "/"], "Invalid value for '-c' / '--core': File '/' is a directory."),
    (["summary", "--watch", "-1"], "Invalid value for '--watch': -1.0 is not in the range 0<x<=86400."),
    (["check", "--only", ""], "Invalid value for --only: '' names no check; known: walk-damage, links"),
    (["check", "--only", "stale-offset,nope"], "Invalid value for --only: unknown check nope; known: "),
    (["explain", "--cgroup", "vm-a"],
     "Invalid value for --cgroup: 'vm-a' is not a cgroup path: cgroup paths begin with / (e.g. /vm-a)"),
    (["explain", "--cgroup", ""],
     "Invalid value for --cgroup: '' is not a cgroup path: cgroup paths begin with / (e.g. /system.slice)"),
    (["snapshot", "/proc/version"], "ksminspect: cannot write /proc/version: "),
    # filters that disagree: the disagreement, not "not scanned"
    (["rmap", "--pid", "1", "--mm", "0xdeadbeef"],
     "ksminspect: --pid 1 and --mm 0xdeadbeef name different mms: process 1 has mm 0xffff"),
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


# Environment variables: a value that cannot be used is one sentence, exit 2,
# before any work.
BAD_ENVIRONMENT = [
    ({"KSMINSPECT_CACHE": "{file}"},
     "ksminspect: KSMINSPECT_CACHE={file} is not a directory: point KSMINSPECT_CACHE at a directory "
     "(it is made where missing)"),
    ({"KSMINSPECT_CACHE": "{file}/below"},
     "ksminspect: KSMINSPECT_CACHE={file}/below cannot be made (Not a directory): point "
     "KSMINSPECT_CACHE at a directory you can write"),
    ({"KSMINSPECT_CACHE_MAX": "abc"},
     "ksminspect: KSMINSPECT_CACHE_MAX=abc is not a size in GB: give a number such as 20 (0 keeps "
     "only what the running command reads)"),
    ({"KSMINSPECT_CACHE_MAX": "-1"}, "ksminspect: KSMINSPECT_CACHE_MAX=-1 is not a size in GB"),
    ({"XDG_CACHE_HOME": "{file}", "KSMINSPECT_CACHE": ""},
     "ksminspect: the cache directory {file}/ksminspect cannot be made (Not a directory): point "
     "KSMINSPECT_CACHE at a directory you can write"),
]


@pytest.mark.parametrize("env,sentence", BAD_ENVIRONMENT, ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_bad_environment_is_one_sentence(env, sentence, tmp_path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    env = {k: v.format(file=a_file) for k, v in env.items()}
    if "KSMINSPECT_CACHE" not in env and "XDG_CACHE_HOME" not in env:
        env["KSMINSPECT_CACHE"] = str(tmp_path / "cache")
    r = subprocess.run([KSMINSPECT, *_numa_dump().args, "summary"], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, **env))
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert sentence.format(file=a_file) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr


def test_filters_that_disagree_blame_the_disagreement() -> None:
    """explain --pid P --cgroup C where P lives in another cgroup: said so,
    not "process P: not on ksm_mm_head"."""
    from conftest import DUMPS

    dump = next(d for d in DUMPS if d.name == "6.12-explain")
    pid, cgroup = next((p["pid"], p["cgroup"]) for p in dump.processes if p.get("cgroup") == "/vm-a")
    r = run_main(*dump.args, "explain", "--pid", str(pid), "--cgroup", "/vm-b")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert f"ksminspect: nothing matched: process {pid} is in cgroup /vm-a, not in /vm-b or below it" in r.stderr


def test_path_options_complete_as_file_names(tmp_path) -> None:
    """With click's completion on, -c, -s and snapshot's FILE complete as
    file names (bash's own completion), not as nothing."""
    for words, incomplete in ((["-c"], "vm"), (["-s"], "vm"), (["snapshot"], "be")):
        env = dict(os.environ, _KSMINSPECT_COMPLETE="bash_complete",
                   COMP_WORDS=" ".join(["ksminspect", *words, incomplete]), COMP_CWORD=str(len(words) + 1))
        r = subprocess.run([KSMINSPECT], capture_output=True, text=True, env=env, timeout=60)
        assert r.stdout.splitlines()[:1] == [f"file,{incomplete}"], (words, r.stdout, r.stderr)


def _snapshot(tmp_path) -> dict:
    import json

    path = tmp_path / "before.json"
    assert run_main(*_numa_dump().args, "snapshot", str(path)).returncode == 0
    return json.loads(path.read_text())


def _edited(data: dict, key: str, value) -> dict:
    out = dict(data)
    if value is KeyError:
        del out[key]
    else:
        out[key] = value
    return out


def test_damaged_or_edited_snapshots_are_one_sentence(tmp_path) -> None:
    """diff on every kind of file a snapshot can turn into: each named, its
    fault said, exit 2, never an internal error."""
    import json

    good = _snapshot(tmp_path)
    text = json.dumps(good)
    check = run_main(*_numa_dump().args, "check", "-f", "json").stdout
    cases = {
        "cut.json": (text[:5000], "is not a ksminspect snapshot: it is not JSON, or it was cut short"),
        "empty.json": ("", "is not a ksminspect snapshot: it is not JSON, or it was cut short"),
        "check.json": (check, "is not a ksminspect snapshot: it is the output of ksminspect check; "
                              "take one with 'ksminspect snapshot FILE'"),
        "list.json": ("[1, 2]", "is not a ksminspect snapshot"),
        "binary.json": ("\udcff", "is not a ksminspect snapshot"),
        "no-items.json": (json.dumps(_edited(good, "items", KeyError)),
                          "is damaged or was edited: items is missing; take the snapshot again"),
        "items-int.json": (json.dumps(_edited(good, "items", 5)), "is damaged or was edited: items is not a list"),
        "counters-null.json": (json.dumps(_edited(good, "counters", None)),
                               "is damaged or was edited: counters is null, not an object"),
        "item-bad.json": (json.dumps(_edited(good, "items", [{"x": 1}])),
                          "is damaged or was edited: items[0].pid is missing"),
        "pid-text.json": (json.dumps(_edited(good, "mm_slots", [{"pid": "one", "comm": "x", "exited": False}])),
                          'is damaged or was edited: mm_slots[0].pid is "one", not a number or null'),
    }
    for name, (content, sentence) in cases.items():
        path = tmp_path / name
        path.write_text(content, errors="surrogateescape")
        r = run_main("diff", str(tmp_path / "before.json"), str(path))
        assert r.returncode == 2 and r.stdout == "", (name, r.stderr)
        assert f"ksminspect: {path} {sentence}" in r.stderr, (name, r.stderr)
        assert "internal error" not in r.stderr and "Traceback" not in r.stderr


def _value_options() -> list[tuple[str, str, object]]:
    """(command, option, its click type) for every option that takes a value."""
    from ksminspect.commands.main import cli

    out = []
    for name, command in sorted(cli.commands.items()):
        for p in command.params:
            if isinstance(p, __import__("click").Option) and not p.is_flag and p.opts[0] != "--help":
                out.append((name, max(p.opts, key=len), p.type))
    return out


@pytest.mark.parametrize("command,option,kind", _value_options(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_option_missing_its_value_or_given_a_wrong_one(command: str, option: str, kind) -> None:
    """Every option of every command: without its value, and with a value
    its type refuses, one sentence naming the option, exit 2, before any
    kernel is read."""
    import click

    r = run_main(command, option)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert f"Error: Option '{option}' requires an argument." in r.stderr, r.stderr
    if isinstance(kind, (click.Choice, click.IntRange, click.FloatRange)) or kind.name in ("ADDRESS", "integer"):
        r = run_main(command, option, "bogus")
        assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
        assert re.search(rf"Error: Invalid value for '?{re.escape(option)}'?", r.stderr) or \
            f"Invalid value for '{option}'" in r.stderr or option in r.stderr, r.stderr


def test_terminal_settings_that_cannot_be_used_are_ignored() -> None:
    """COLUMNS that is no width and a pager that is not installed: the
    output is what it is without them (a setting of the terminal is no
    reason to fail)."""
    dump = _numa_dump()
    base = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    plain = subprocess.run([KSMINSPECT, *dump.args, "mm"], capture_output=True, text=True, timeout=120, env=base)
    for env in ({"COLUMNS": "abc"}, {"COLUMNS": "-3"}, {"KSMINSPECT_PAGER": "/nonexistent/pager"}):
        r = subprocess.run([KSMINSPECT, *dump.args, "mm"], capture_output=True, text=True, timeout=120,
                           env=dict(base, **env))
        assert r.returncode == 0 and r.stdout == plain.stdout and r.stderr == plain.stderr, env
