"""ksminspect on a live kernel: a fixture kernel booted under QEMU with the
host's root over 9p runs the kernel's own KSM selftests, then a workload,
then ksminspect against /proc/kcore while ksmd runs (tests/live/).

Needs qemu-system-x86_64, gcc, libnuma-dev and Debian's linux-source-6.12
(fetched by tests/live/build-selftests.sh). Skipped where those are missing,
unless KSMINSPECT_REQUIRE_LIVE is set (CI sets it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import VMCORES, skip_unless_live

LIVE = Path(__file__).parent / "live"
sys.path.insert(0, str(LIVE))

from run_live import boot  # noqa: E402

BZIMAGE = VMCORES / "kernels" / "6.12" / "bzImage"
DEBUG = VMCORES / "kernels" / "6.12" / "vmlinux.debug.xz"
SELFTESTS = ["ksm_tests -M -p 10", "ksm_tests -U", "ksm_tests -Z -p 10 -z 0",
             "ksm_tests -Z -p 10 -z 1", "ksm_tests -N -m 1", "ksm_tests -N -m 0",
             "ksm_functional_tests"]


def _unavailable() -> str | None:
    for tool in ("qemu-system-x86_64", "gcc", "apt-get"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/usr/include/numa.h").exists():
        return "libnuma-dev is not installed"
    return None


@pytest.fixture(scope="module")
def live_run():
    skip_unless_live(_unavailable())
    from ksminspect.program import decompressed

    work = Path(os.environ.get("WORK", "/var/tmp/ksminspect-build"))
    bin_dir = work / "live-bin"
    subprocess.run(["bash", str(LIVE / "build-selftests.sh"), str(bin_dir)], check=True,
                   stdout=subprocess.DEVNULL)
    run = boot(BZIMAGE, Path(decompressed(str(DEBUG))), bin_dir, bin_dir / "ksm-workload",
               Path(sys.prefix), log=work / "live-console.log")
    print(f"live guest: {run.seconds:.0f} s; selftests: "
          + ", ".join(f"{t} rc={run.sections[f'selftest {t}'][0]}"
                      for t in SELFTESTS if f"selftest {t}" in run.sections))
    return run


def test_selftests_ran(live_run) -> None:
    for t in SELFTESTS:
        assert f"selftest {t}" in live_run.sections, live_run.console[-3000:]
    rc, out = live_run.sections["selftest ksm_functional_tests"]
    assert "# Totals" in out


def test_check_live_after_selftests_is_clean(live_run) -> None:
    rc, out = live_run.sections["check"]
    data = json.loads(out)
    assert data["live"] is True
    assert [f for f in data["findings"] if f["severity"] != "info"] == []
    assert rc == 0
    assert data["stats"]["rmap_items"] > 0


def test_check_ktap_after_selftests(live_run) -> None:
    """check --format ktap right after the kernel's KSM selftests, as a
    selftest run would take it: valid KTAP, every check ok or skipped."""
    from conftest import parse_ktap

    rc, out = live_run.sections["ktap"]
    ktap = parse_ktap(out)
    assert ktap["plan"] == len(ktap["results"]) > 0
    assert all(ok for ok, _, _, _ in ktap["results"]), out
    assert rc == 0


def test_explain_live(live_run) -> None:
    """explain on the running kernel: each sharer's pages by state add up,
    and its merged pages are there (ksmd runs meanwhile: the kernel's own
    counters may move between reads, so they are not compared exactly)."""
    rc, out = live_run.sections["explain"]
    assert rc == 0, out
    processes = json.loads(out)["processes"]
    sharers = [p for p in processes if (p["comm"] or "").startswith("ksm-share")]
    assert len(sharers) == 3
    for p in sharers:
        assert p["cannot_tell"] is None
        assert sum(v["pages"] for v in p["pages"].values()) == p["total"] > 0
        assert p["pages"]["merged"]["pages"] > 0


def test_mm_live_shows_the_workload(live_run) -> None:
    rc, out = live_run.sections["mm"]
    assert rc == 0
    slots = json.loads(out)["mm_slots"]
    sharers = [s for s in slots if (s["comm"] or "").startswith("ksm-share")]
    assert len(sharers) == 3
    assert all(s["items"]["stable"] > 0 for s in sharers)
    assert all(s["ksm_stat"]["ksm_merging_pages"] == s["items"]["stable"] for s in sharers)


def test_diff_around_selftests(live_run) -> None:
    rc, out = live_run.sections["diff-json"]
    assert rc == 0
    d = json.loads(out)
    # the selftests come and go: their processes are gone by the second snapshot
    assert d["after"]["kernel_release"] == "6.12.117"
    assert d["leaked"]["orphans"] == [] and d["new_findings"] == []
    assert "full_scans" in d["counters"]
    rc, text = live_run.sections["diff"]
    assert rc == 0 and "merged:" in text and "leaked:" in text


CHURN_CHECKS = 10  # tests/live/guest-init.sh: churn-check-1 .. churn-check-10


def test_a_host_that_keeps_moving(live_run) -> None:
    """Pages broken and merged again all the time (tests/live/ksm-churn.c)
    are no corruption: in each of the checks run while they move, no
    internal error, no error finding, at most a handful of warnings; and no
    walk damage in summary or stable-tree."""
    assert "KSMI-CHURN" in live_run.console
    console = live_run.console.replace("\r", "")
    missing = [n for n in range(1, CHURN_CHECKS + 1) if f"churn-check-{n}" not in live_run.sections]
    assert missing == [], f"churn checks {missing} did not run: {console[-3000:]}"
    runs, bad = {}, {}
    for n in range(1, CHURN_CHECKS + 1):
        name = f"churn-check-{n}"
        rc, out = live_run.sections[name]
        stderr = [line for line in console.splitlines() if line.startswith(f"KSMI-STDERR {name}: ")]
        try:
            data = json.loads(out)
        except ValueError:
            bad[name] = {"rc": rc, "stdout": out[:500], "stderr": stderr[-10:]}
            continue
        errors = [f["message"] for f in data["findings"] if f["severity"] == "error"]
        warnings = [f["message"] for f in data["findings"] if f["severity"] == "warning"]
        internal = [line for line in stderr if "internal error" in line]
        times = re.search(rf"^KSMI-TIME {name} (\S+) (\S+)$", console, re.M)
        runs[name] = {"rc": rc, "errors": len(errors), "warnings": len(warnings),
                      "internal_errors": len(internal),
                      "seconds": round(float(times[2]) - float(times[1])) if times else None}
        if internal or errors or len(warnings) > 5 or rc != 0:
            bad[name] = {"rc": rc, "internal": internal, "errors": errors[:5],
                         "warnings": warnings[:10], "stderr": stderr[-5:]}
    print("churn checks: " + "; ".join(f"{k}: {v}" for k, v in runs.items()))
    assert bad == {}, bad
    churn = console[console.index("KSMI-BEGIN churn-check-1\n"):
                    console.index(f"KSMI-TIME churn-check-{CHURN_CHECKS} ")]
    assert "internal error" not in churn and "Traceback" not in churn
    rc, out = live_run.sections["churn-summary"]
    assert json.loads(out)["damage"] == []
    rc, out = live_run.sections["churn-stable-tree"]
    tree = json.loads(out)
    assert tree["damage"] == []
    assert [n["damage"] for t in tree["trees"] for n in t["nodes"] if n["damage"]] == []
    assert tree["totals"]["pages_sharing"] > 0


def test_summary_watch_ends_on_ctrl_c(live_run) -> None:
    rc, out = live_run.sections["watch"]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert rc == 0 and len(lines) >= 3
    assert "scanned pages/s" in lines[-1]["rates"]
    assert "Traceback" not in live_run.console


def test_metrics_live_are_what_node_exporter_accepts(live_run, tmp_path) -> None:
    """The service's command, run inside the guest against its live kernel:
    node_exporter's textfile collector serves the file it wrote, without
    error, with the live kernel's counters."""
    from test_metrics import by, families, needs_node_exporter, samples, scrape_with_node_exporter

    rc, text = live_run.sections["metrics"]
    assert rc == 0, live_run.console[-3000:]
    needs_node_exporter()
    (tmp_path / "ksminspect.prom").write_text(text)
    served = families(scrape_with_node_exporter(tmp_path))
    assert samples(served, "node_textfile_scrape_error")[0].value == 0
    assert by(served, "ksminspect_info", "target") == {("live",): 1.0}
    assert sum(s.value for s in samples(served, "ksminspect_process_rmap_items")) > 0
    errors = [s for s in samples(served, "ksminspect_check_findings") if s.labels["severity"] == "error" and s.value]
    assert errors == []
