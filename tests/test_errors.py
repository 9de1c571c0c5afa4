"""What the user sees when inspection cannot go on: one sentence on stderr,
exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

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
