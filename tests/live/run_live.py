"""Boot a fixture kernel under QEMU with the host's root file system over
9p and run tests/live/guest-init.sh in it: the kernel's KSM selftests, a
workload, then ksminspect against the guest's live kernel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


@dataclass
class LiveRun:
    console: str
    sections: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (rc, output)
    seconds: float = 0.0


def parse(console: str) -> dict[str, tuple[int, str]]:
    out = {}
    text = console.replace("\r", "")
    for m in re.finditer(r"^KSMI-BEGIN (.+?)\n(.*?)^KSMI-END \1 rc=(\d+)$", text, re.S | re.M):
        out[m.group(1)] = (int(m.group(3)), m.group(2))
    return out


def boot(bzimage: Path, debug: Path, selftests: Path, workload: Path, venv: Path,
         memory: int = 1536, timeout: int = 2400, log: Path | None = None) -> LiveRun:
    """Run the live guest; returns its console and framed sections."""
    env = {"KSMI_VENV": venv, "KSMI_DEBUG": debug, "KSMI_SELFTESTS": selftests,
           "KSMI_WORKLOAD": workload, "KSMI_CHURN": selftests / "ksm-churn"}
    append = ("console=ttyS0 loglevel=1 panic=-1 root=rootfs rootfstype=9p "
              "rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose ro "
              f"init={HERE / 'guest-init.sh'} ksmw.live=1 ksmw.pairs=0 ksmw.sharers=3 "
              + " ".join(f"{k}={v}" for k, v in env.items()))
    log = log or Path(os.environ.get("TMPDIR", "/tmp")) / "ksminspect-live-console.log"
    half = memory // 2
    # -cpu max: the host's Python packages run in the guest, and numpy's
    # wheels need x86-64-v2 (SSE4.2, POPCNT), which QEMU's default qemu64 lacks.
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", str(memory), "-smp", "2",
           "-kernel", str(bzimage), "-append", append, "-display", "none", "-monitor", "none",
           "-serial", f"file:{log}", "-no-reboot", "-nic", "none",
           "-virtfs", "local,path=/,mount_tag=rootfs,security_model=none,readonly=on,multidevs=remap",
           "-object", f"memory-backend-ram,id=m0,size={half}M",
           "-numa", "node,nodeid=0,memdev=m0,cpus=0",
           "-object", f"memory-backend-ram,id=m1,size={memory - half}M",
           "-numa", "node,nodeid=1,memdev=m1,cpus=1"]
    start = time.time()
    try:
        subprocess.run(cmd, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pass
    console = log.read_text(errors="replace")
    return LiveRun(console=console, sections=parse(console), seconds=time.time() - start)


if __name__ == "__main__":
    bz, dbg, st, wl, venv = map(Path, sys.argv[1:6])
    run = boot(bz, dbg, st, wl, venv)
    for name, (rc, text) in run.sections.items():
        print(f"== {name}: rc={rc}, {len(text)} bytes")
    print(f"{run.seconds:.0f} s")
