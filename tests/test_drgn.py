"""ksminspect inside drgn: the %ksm REPL command through drgn's own plugin
and command machinery, and the README's example script."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import drgn
from conftest import DUMPS, Dump, run_json

import ksminspect
from ksminspect.errors import TargetError
from ksminspect.program import check_kernel_addresses, decompressed

README = Path(__file__).resolve().parent.parent / "README.md"


def drgn_program(dump: Dump) -> drgn.Program:
    """A Program made the way drgn's CLI makes one (plugins run on it), or
    by the README's recipes where drgn alone cannot read the dump."""
    path = decompressed(str(dump.vmcore))
    try:
        prog = drgn.Program()
        prog.set_core_dump(path)
    except ValueError:  # no VMCOREINFO note: the README's recipe
        prog = drgn.Program(vmcoreinfo=ksminspect.vmcoreinfo_in_memory(path))
        prog.set_core_dump(path)
    except Exception as e:  # drgn's kdump errors are plain Exceptions
        if "ARCH_NAME" in str(e):
            # libkdumpfile cannot name a QEMU kdump file's architecture: the README's recipe
            prog = drgn.Program(ksminspect.dump_platform(path))
            prog.set_core_dump(path)
        elif "vmcoreinfo" in str(e):  # a kdump file without VMCOREINFO: the README's answer
            return ksminspect.open_program(str(dump.vmcore), [str(dump.debug)])
        else:
            raise
    prog.load_debug_info([decompressed(str(dump.debug))], main=True)
    try:
        check_kernel_addresses(prog)
    except TargetError:  # x86-32: no KERNELOFFSET; the README's recipe
        prog = ksminspect.open_program(str(dump.vmcore), [str(dump.debug)])
    return prog


def test_drgn_alone_misreads_x86_32_and_ksminspect_says_so() -> None:
    """drgn opens an i386 dump at link-time addresses (no KERNELOFFSET in an
    x86-32 VMCOREINFO); %ksm refuses it in one sentence, not with garbage."""
    dump = next(d for d in DUMPS if d.truth.get("machine") == "i686")
    path = decompressed(str(dump.vmcore))
    prog = drgn.Program()
    prog.set_core_dump(path)
    prog.load_debug_info([decompressed(str(dump.debug))], main=True)
    from ksminspect.commands.main import App, run

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run(["summary"], app=App(None, (), prog))
    assert code == 2
    assert "reads the kernel's variables at the wrong addresses" in err.getvalue()
    assert "ksminspect.open_program()" in err.getvalue()


def test_ksm_command_in_drgn_repl(tmp_path: Path) -> None:
    from drgn.internal.repl import _InteractiveConsoleWithCommand

    dump = next(d for d in DUMPS if d.name == "7.2-seed-noreset")
    prog = drgn_program(dump)
    console = _InteractiveConsoleWithCommand({"prog": prog})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        console.runsource("%ksm check --only stale-offset --format json")
    findings = json.loads(out.getvalue())["findings"]
    assert findings and findings == run_json(*dump.args, "check", "--only", "stale-offset")["findings"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        console.runsource("%ksm summary -c /elsewhere/vmcore")
    assert "ksminspect: -c and -s choose the kernel, and inside drgn the kernel is the one drgn " \
           "has: start drgn with -c VMCORE -s VMLINUX instead" in err.getvalue()
    alone = io.StringIO()
    with contextlib.redirect_stdout(alone):
        console.runsource("%ksm")
    assert alone.getvalue().startswith("usage: %ksm COMMAND [OPTIONS]")
    assert "  stable-tree  " in alone.getvalue() and "--core" not in alone.getvalue()
    target = tmp_path / "tree.json"
    with contextlib.redirect_stdout(io.StringIO()):
        console.runsource(f"%ksm stable-tree --format json > {target}")
    assert json.loads(target.read_text())["totals"]["pages_shared"] == int(dump.sysfs["pages_shared"])


def test_ksm_command_is_registered_by_the_plugin() -> None:
    from drgn.commands import DEFAULT_COMMAND_NAMESPACE

    prog = drgn_program(DUMPS[0])
    assert DEFAULT_COMMAND_NAMESPACE.lookup(prog, "ksm") is not None


def readme_example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- example: drgn-script -->\n```python\n(.*?)```", text, re.S)
    assert m, "README lost its example script"
    return m.group(1)


def test_readme_example_script(dump: Dump) -> None:
    prog = drgn_program(dump)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README example", "exec"), {"prog": prog})
    text = out.getvalue()
    assert "rmap_items by state:" in text and "findings:" in text
    stable = int(dump.sysfs["pages_shared"]) + int(dump.sysfs["pages_sharing"])
    assert f"'stable': {stable}" in text


# A dump played as the live kernel, so that `summary --watch` runs on the host.
WATCH_AS_LIVE = """
import sys
import ksminspect.program as program
from ksminspect.commands.main import main
vmcore, debug = sys.argv[1:3]
program._open_live = lambda prog: prog.set_core_dump(vmcore)
main(["-s", debug, "summary", "--watch", "0.05", "--format", "json"])
"""


def test_watch_ends_cleanly_on_repeated_sigint(tmp_path: Path) -> None:
    """Ctrl-C pressed more than once (or timeout(1), which signals the child
    and then its process group) still ends the watch with exit 0."""
    dump = DUMPS[0]
    proc = subprocess.Popen(
        [sys.executable, "-c", WATCH_AS_LIVE, decompressed(str(dump.vmcore)),
         decompressed(str(dump.debug))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tmp_path)  # not the checkout, whose ksminspect/ lacks commands
    lines = [proc.stdout.readline() for _ in range(3)]
    assert all(line.startswith("{") for line in lines), proc.communicate()
    assert all(json.loads(line)["counters"] for line in lines)
    while proc.poll() is None:  # a SIGINT every 2 ms until it has gone
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.002)
    out, err = proc.communicate()
    assert (proc.returncode, err) == (0, "")


def test_watch_inside_drgn_gives_sigint_back(monkeypatch, capsys) -> None:
    """%ksm summary --watch in drgn's REPL: Ctrl-C ends the watch, and the
    REPL's own SIGINT handler is in place again afterwards."""
    import ksminspect.counters
    from ksminspect.commands.main import App, run

    monkeypatch.setattr(App, "live", property(lambda self: True))  # a dump plays live
    read_counters = ksminspect.counters.read_counters
    reads = []

    def ctrl_c_on_third_read(prog):  # Ctrl-C at a known point, not after a delay
        reads.append(1)
        if len(reads) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return read_counters(prog)

    monkeypatch.setattr(ksminspect.counters, "read_counters", ctrl_c_on_third_read)
    before = signal.getsignal(signal.SIGINT)
    code = run(["summary", "--watch", "0.01", "--format", "json"],
               App(None, (), prog=drgn_program(DUMPS[0])))
    assert code == 0 and signal.getsignal(signal.SIGINT) is before
    assert len(capsys.readouterr().out.splitlines()) >= 2


def test_each_ksm_command_reads_the_kernel_afresh() -> None:
    """Two %ksm commands on one program (as in drgn's REPL on a live kernel):
    the second sees memory as it is when it runs, not what the first kept.
    The test changes an rmap_item's flags between them through a memory
    segment laid over the dump's."""
    from ksminspect.commands.main import App, run
    from ksminspect.layout import STABLE_FLAG, get_layout

    dump = next(d for d in DUMPS if d.name == "6.12-numa")
    prog = drgn_program(dump)

    def rmap() -> dict[str, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert run(["rmap", "--format", "json"], App(None, (), prog)) == 0
        return {i["address"]: i["state"] for i in json.loads(out.getvalue())["items"]}

    before = rmap()
    item = int(next(a for a, state in before.items() if state == "none"), 16)
    page = item & ~0xFFF
    memory = bytearray(prog.read(page, 0x1000))
    prog.add_memory_segment(page, 0x1000, lambda address, count, offset, physical:
                            bytes(memory[offset:offset + count]))
    memory[item - page + get_layout(prog).rmap_item.address + 1] |= STABLE_FLAG >> 8
    after = rmap()
    assert after[f"{item:#x}"] == "stable"
    assert {a: s for a, s in after.items() if a != f"{item:#x}"} == \
        {a: s for a, s in before.items() if a != f"{item:#x}"}


def test_ksm_command_without_the_repl() -> None:
    """The README's non-interactive use: drgn -e with run_command."""
    dump = next(d for d in DUMPS if d.name == "6.12-numa")
    drgn_cli = os.path.join(os.path.dirname(sys.executable), "drgn")
    r = subprocess.run([drgn_cli, "-q", "-c", decompressed(str(dump.vmcore)), "-s", decompressed(str(dump.debug)),
                        "-e", 'from drgn.commands import run_command; run_command(prog, "ksm summary -f json")'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counters"]["pages_shared"] == int(dump.sysfs["pages_shared"])
