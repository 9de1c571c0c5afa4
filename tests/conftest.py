"""Shared fixtures: the committed dumps in vmcores/, each with its truth.

A dump directory holds vmcore.xz and truth.json (the kernel's own counters,
recorded by the guest just before the dump); truth.json names the kernel
whose debug info is in vmcores/kernels/<kernel>/vmlinux.debug.xz. Set
KSMINSPECT_REQUIRE_DUMPS=1 to turn a missing dump into a failure, and
KSMINSPECT_EXTRA_DUMPS=DIR to run every per-dump test on more dumps too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

VMCORES = Path(__file__).resolve().parent.parent / "vmcores"


@dataclass(frozen=True)
class Dump:
    name: str
    vmcore: Path
    debug: Path
    truth: dict[str, Any]

    @property
    def args(self) -> list[str]:
        """Global CLI options selecting this dump."""
        return ["-c", str(self.vmcore), "-s", str(self.debug)]

    @property
    def sysfs(self) -> dict[str, str]:
        return self.truth["sysfs"]

    @property
    def processes(self) -> list[dict[str, Any]]:
        return self.truth["processes"]

    def sharer(self, index: int = 0) -> dict[str, Any]:
        """A process whose pages KSM merged: sharer *index* of the workload's
        sharers, or with ksmw.rmapwalk its one sharer."""
        return next((p for p in self.processes if p["role"] == "share" and p["index"] == index), None) or \
            next(p for p in self.processes if p["role"] == "rwshare")

    def not_unmapped(self) -> dict[str, list[int]]:
        """The kernel's own verdict after the dump (ksmw.rmapwalk): the page
        indexes of each mover region that move_pages(2) could not migrate, a
        KSM page whose reverse map missed a mapping; {} without one."""
        regions = self.truth.get("after_dump", {}).get("regions", {})
        return {name: [i for i, (a, b) in enumerate(zip(r["nodes_before"], r["nodes_after"])) if a == b]
                for name, r in regions.items()}

    @property
    def patched(self) -> bool:
        """Its kernel carries the seed patch (vmcores/kernels.tsv's patch column)."""
        for line in (VMCORES / "kernels.tsv").read_text().splitlines():
            fields = line.split("\t")
            if not line.startswith("#") and fields[0] == self.truth["kernel"]:
                return "seed" in fields[3]
        return False


def find_dumps() -> list[Dump]:
    """The committed dumps, then those under $KSMINSPECT_EXTRA_DUMPS (made by
    vmcores/scripts/distro-dumps.sh: their truth.json names vmcore and debug)."""
    paths = sorted(VMCORES.glob("*/truth.json"))
    extra = os.environ.get("KSMINSPECT_EXTRA_DUMPS")
    if extra:
        paths += sorted(Path(extra).glob("*/truth.json"))
    dumps = []
    for truth_path in paths:
        truth = json.loads(truth_path.read_text())
        here = truth_path.parent
        dumps.append(Dump(
            name=here.name,
            vmcore=here / truth.get("vmcore", "vmcore.xz"),
            debug=(here / truth["debug"] if "debug" in truth
                   else VMCORES / "kernels" / truth["kernel"] / "vmlinux.debug.xz"),
            truth=truth,
        ))
    return dumps


ALL_DUMPS = find_dumps()
# Dumps ksminspect must refuse with a sentence (dumps.tsv format elf-refused).
REFUSED_DUMPS = [d for d in ALL_DUMPS if d.truth.get("refused")]
# Dumps that lack some of KSM's memory on purpose (a makedumpfile older than
# the kernel): walks cannot equal the counters; tests/test_dumpfile.py.
PARTIAL_DUMPS = [d for d in ALL_DUMPS if d.truth.get("partial")]
# Dumps of kernels with KSM; a kernel built without it records no sysfs files.
DUMPS = [d for d in ALL_DUMPS if d.sysfs and d not in REFUSED_DUMPS and d not in PARTIAL_DUMPS]
NO_KSM_DUMPS = [d for d in ALL_DUMPS if not d.sysfs]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dump" in metafunc.fixturenames:
        metafunc.parametrize("dump", DUMPS, ids=[d.name for d in DUMPS])
    if "noksm_dump" in metafunc.fixturenames:
        metafunc.parametrize("noksm_dump", NO_KSM_DUMPS, ids=[d.name for d in NO_KSM_DUMPS])


@pytest.fixture(scope="session", autouse=True)
def _require_dumps() -> None:
    if os.environ.get("KSMINSPECT_REQUIRE_DUMPS") and not DUMPS:
        pytest.fail(f"no dumps under {VMCORES} and KSMINSPECT_REQUIRE_DUMPS is set")


def skip_unless_live(why: str | None) -> None:
    """Skip a live-kernel test for *why* (what this machine lacks), or fail
    it where KSMINSPECT_REQUIRE_LIVE asks for it (CI)."""
    if why:
        if os.environ.get("KSMINSPECT_REQUIRE_LIVE"):
            pytest.fail(f"live test required but {why}")
        pytest.skip(why)


_programs: dict[str, Any] = {}


def program_of(dump: Dump):
    """One drgn Program per dump for the whole session."""
    if dump.name not in _programs:
        from ksminspect.program import open_program

        _programs[dump.name] = open_program(str(dump.vmcore), [str(dump.debug)])
    return _programs[dump.name]


@pytest.fixture
def prog(dump: Dump):
    return program_of(dump)


def run_cli(*args: str) -> Any:
    """Run ksminspect in-process; returns the click Result (exceptions propagate)."""
    from click.testing import CliRunner

    from ksminspect.commands.main import cli

    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2 mixes stderr into stdout
    except TypeError:
        runner = CliRunner()  # click >= 8.2 keeps them apart, and has no such argument
    return runner.invoke(cli, list(args), catch_exceptions=False)


def run_on(dump: Dump, *args: str, columns: int | None = None, env: dict | None = None) -> Any:
    """Run ksminspect in-process on *dump*'s Program of this session (as
    %ksm does inside drgn: no reopening), through the one path by which
    errors reach the user, *columns* wide; returns exit_code, stdout, stderr."""
    import contextlib
    import io
    from types import SimpleNamespace
    from unittest import mock

    from ksminspect.commands.main import App, run

    env = dict(env or {}, **({"COLUMNS": str(columns)} if columns else {}))
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        code = run(list(args), App(None, (), program_of(dump)))
    return SimpleNamespace(exit_code=code, stdout=out.getvalue(), stderr=err.getvalue())


def command_lines(dump: Dump) -> list[list[str]]:
    """Every command that reads a kernel, with the options that change its
    output's shape, on what *dump* holds (page: a KSM page, a page that is
    not, a process address)."""
    lines = [["summary"], ["mm"], ["rmap"], ["rmap", "--all-fields"], ["stable-tree"],
             ["unstable-tree"], ["check"], ["explain"], ["explain", "--by", "vma"],
             ["explain", "--by", "cgroup"]]
    tree = json.loads(run_on(dump, "stable-tree", "-f", "json").stdout)
    nodes = [n for t in tree["trees"] for n in t["nodes"]] + tree["migrate_nodes"]
    pages = [d for n in nodes for d in (n["dups"] or [n]) if d["sharers"]]
    if pages:
        lines.append(["page", pages[0]["kpfn"]])
        owned = [s for p in pages for s in p["sharers"] if s["pid"] is not None]
        if owned:
            lines.append(["page", "--pid", str(owned[0]["pid"]), owned[0]["page_address"]])
        chained = [n for n in nodes if n["dups"]]
        if chained:
            lines.append(["page", chained[0]["dups"][0]["kpfn"]])
    lines.append(["page", "0x1000"])
    return lines


def run_json(*args: str) -> Any:
    result = run_cli(*args, "--format", "json")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def cannot_tell_or_json(dump: Dump, *args: str):
    """The command's JSON, or None where it refused with "cannot tell" (a
    drgn helper it needs cannot run on this kernel)."""
    from ksminspect.errors import KsmInspectError

    try:
        return run_json(*dump.args, *args)
    except KsmInspectError as e:
        assert str(e).startswith("cannot tell"), e
        return None


def parse_ktap(text: str) -> dict[str, Any]:
    """KTAP version 1 (Documentation/dev-tools/ktap.rst), strictly: the
    version line, the plan, then one result per planned test, in order;
    returns {"plan": N, "results": [(ok, number, name, directive)]}."""
    import re

    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "KTAP version 1", lines[:1]
    plan = re.fullmatch(r"1\.\.(\d+)", lines[1])
    assert plan, lines[1]
    results = []
    for line in lines[2:]:
        m = re.fullmatch(r"(ok|not ok) (\d+) (\S+)(?: # (SKIP|TODO)\b.*)?", line)
        assert m, line
        results.append((m[1] == "ok", int(m[2]), m[3], m[4]))
    assert [r[1] for r in results] == list(range(1, int(plan[1]) + 1))
    return {"plan": int(plan[1]), "results": results}
