"""ksminspect on a live kernel with the seed patch's bug, and the same dumped:
the 7.2-seed fixture kernel booted under QEMU with the host's root over 9p
(tests/live/run_seed.py, tests/live/seed-init.sh) builds the KSM state of
the 7.2-seed dumps (vmcores/dumps.tsv) with the fixtures' workload, stops
ksmd, runs `check` against /proc/kcore, then the host takes QEMU's ELF dump
of the same held-still memory and runs `check` on it. Once with the boot
switch ksm.fault_skip_pgoff_reset=1 (the offsets are not reset: stale
offsets and overlay garbage), once without (healthy).

The live check must list every stale-offset and overlay-garbage error the
dump's check lists, for the same rmap_items (a finding's "address").

Needs qemu-system-x86_64, gcc (with the static libc) and the committed
vmcores/kernels/7.2-seed/bzImage. Skipped where those are missing, unless
KSMINSPECT_REQUIRE_LIVE is set (CI sets it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import VMCORES, parse_ktap, skip_unless_live

LIVE = Path(__file__).parent / "live"
sys.path.insert(0, str(LIVE))

from run_seed import boot_seed  # noqa: E402

BZIMAGE = VMCORES / "kernels" / "7.2-seed" / "bzImage"
DEBUG = VMCORES / "kernels" / "7.2-seed" / "vmlinux.debug.xz"
WORKLOAD = VMCORES / "scripts" / "ksm-workload.c"
# The workload of the 7.2-seed dumps (vmcores/dumps.tsv), whose last step
# single-steps ksmd until all 16 merged pairs have left the stable tree.
APPEND = "slab_nomerge ksmw.max_page_sharing=4 ksmw.pairs=16"
BUG = "ksm.fault_skip_pgoff_reset=1"
# The workload of the 7.2-rmap dumps: a region split by mprotect() after its
# pages merged, one moved by mremap() before, one plain. The 7.2-seed kernel
# stores vma->vm_pgoff (the series' v4) without the rmap_walk change.
RMAPWALK = "slab_nomerge ksmw.rmapwalk=32"
SEED_CHECKS = ("stale-offset", "overlay-garbage")


def _unavailable() -> str | None:
    for tool in ("qemu-system-x86_64", "gcc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not BZIMAGE.exists():
        return f"{BZIMAGE} is missing"
    return None


@pytest.fixture(scope="module")
def seed_setup():
    skip_unless_live(_unavailable())
    from ksminspect.program import decompressed

    work = Path(os.environ.get("WORK", "/var/tmp/ksminspect-build")) / "live-seed"
    work.mkdir(parents=True, exist_ok=True)
    workload = work / "ksm-workload"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(workload), str(WORKLOAD)], check=True)
    return work, workload, Path(decompressed(str(DEBUG)))


def _findings(doc: dict) -> Counter:
    return Counter((f["check"], f["severity"]) for f in doc["findings"])


def _boot(seed_setup, name: str, append: str) -> dict:
    work, workload, debug = seed_setup
    run = boot_seed(BZIMAGE, debug, workload, Path(sys.prefix), work / name, append=append)
    assert run.vmcore is not None, f"{run.error}\n{run.console[-4000:]}"
    assert "KSMINSPECT-TRUTH-END" in run.sections["workload"][1], run.sections["workload"][1][-2000:]
    start = time.time()
    dump = subprocess.run([str(Path(sys.prefix) / "bin" / "ksminspect"), "-c", str(run.vmcore),
                           "-s", str(debug), "check", "--format", "json"],
                          capture_output=True, text=True, env=dict(os.environ, KSMINSPECT_PAGER="cat"))
    dump_check_seconds = time.time() - start
    live_rc, live_out = run.sections["check"]
    live = json.loads(live_out)
    result = {"run": run, "live": live, "live_rc": live_rc,
              "dump": json.loads(dump.stdout), "dump_rc": dump.returncode, "dump_stderr": dump.stderr}
    print(f"\n{name}: guest {run.seconds:.0f} s (booted after {run.boot_seconds:.0f} s, "
          f"dump taken after {run.ready_seconds:.0f} s, written in {run.dump_seconds:.1f} s); "
          "in the guest: " + ", ".join(f"{k} {v:.0f} s" for k, v in run.timings.items())
          + f"; dump check on the host {dump_check_seconds:.1f} s")
    print(f"{name}: live check rc={live_rc} {dict(_findings(live))}")
    print(f"{name}: dump check rc={dump.returncode} {dict(_findings(result['dump']))}")
    return result


@pytest.fixture(scope="module")
def buggy(seed_setup):
    return _boot(seed_setup, "noreset", f"{APPEND} {BUG}")


@pytest.fixture(scope="module")
def healthy(seed_setup):
    return _boot(seed_setup, "reset", APPEND)


@pytest.fixture(scope="module")
def split(seed_setup):
    return _boot(seed_setup, "rmapwalk", RMAPWALK)


def _seed_items(doc: dict) -> dict[str, set[str]]:
    return {c: {f["address"] for f in doc["findings"] if f["check"] == c and f["severity"] == "error"}
            for c in SEED_CHECKS}


def test_held_still(buggy, healthy) -> None:
    """ksmd stopped: the scan's counters the same before and after the live
    checks (and so at the dump, taken right after)."""
    for r in (buggy, healthy):
        before, after = r["run"].sections["counters-before"], r["run"].sections["counters-after"]
        assert "run 0" in before[1].splitlines()
        assert before == after


def test_dump_shows_the_bug(buggy) -> None:
    dump = buggy["dump"]
    items = _seed_items(dump)
    print(f"dump: stale-offset {len(items['stale-offset'])}, overlay-garbage {len(items['overlay-garbage'])} items")
    assert buggy["dump_rc"] == 1, buggy["dump_stderr"]
    assert dump["live"] is False
    assert all(items[c] for c in SEED_CHECKS), _findings(dump)


def test_live_lists_every_finding_of_the_dump(buggy) -> None:
    """The same rmap_items, as errors, exit code 1."""
    dump, live = _seed_items(buggy["dump"]), _seed_items(buggy["live"])
    assert buggy["live"]["live"] is True
    missing = {c: sorted(dump[c] - live[c]) for c in SEED_CHECKS}
    print("live vs dump: " + ", ".join(f"{c} {len(dump[c] & live[c])} of {len(dump[c])}" for c in SEED_CHECKS))
    assert all(dump[c] for c in SEED_CHECKS), "the dump shows no stale offsets: see test_dump_shows_the_bug"
    assert missing == {c: [] for c in SEED_CHECKS}, (
        "live check lists " + ", ".join(f"{len(dump[c] & live[c])} of {len(dump[c])} {c} findings"
                                        for c in SEED_CHECKS)
        + f" of the dump; live counts {buggy['live']['counts']}; live stderr: "
        + "".join(line + "\n" for line in buggy["run"].console.splitlines()
                  if line.startswith("KSMI-STDERR check:"))[-2000:])
    assert buggy["live_rc"] == 1


def test_live_ktap_says_not_ok(buggy) -> None:
    rc, out = buggy["run"].sections["ktap"]
    ktap = parse_ktap(out)
    result = {name: ok for ok, _, name, _ in ktap["results"]}
    print(f"ktap: rc={rc}, " + ", ".join(f"{c} {'ok' if result.get(c) else 'not ok'}" for c in SEED_CHECKS))
    assert [c for c in SEED_CHECKS if result.get(c) is not False] == [], out
    assert rc == 1


def test_healthy_boot_is_clean(healthy) -> None:
    for side in ("live", "dump"):
        bad = [f["message"] for f in healthy[side]["findings"] if f["severity"] in ("error", "warning")]
        assert bad == [], f"{side}: {bad[:10]}"
    assert healthy["live"]["live"] is True and healthy["dump"]["live"] is False
    assert healthy["live_rc"] == 0 and healthy["dump_rc"] == 0, healthy["dump_stderr"]
    # the workload's state is there in both: pairs written, nothing stable of theirs
    assert healthy["live"]["stats"]["rmap_items"] == healthy["dump"]["stats"]["rmap_items"] > 0


def test_live_rmap_walk_finds_the_split_half(split) -> None:
    """After mprotect() split a merged region, the items of its second half
    keep the unsplit VMA's vm_pgoff, at which the series' lookup misses their
    VMA: the live check lists those rmap-walk errors, for the same items as
    the dump of the same held-still memory: 32, the split-off half; exit 1."""
    def missed(doc: dict) -> set[str]:
        return {f["address"] for f in doc["findings"] if f["check"] == "rmap-walk" and f["severity"] == "error"}

    live, dump = missed(split["live"]), missed(split["dump"])
    print(f"rmapwalk: rmap-walk errors live {len(live)}, in the dump {len(dump)}; live changed while read "
          f"{split['live']['stats'].get('changed_while_read')}")
    assert split["live"]["live"] is True and split["dump"]["live"] is False
    assert len(dump) == 32 and live == dump
    assert split["live_rc"] == 1 and split["dump_rc"] == 1
