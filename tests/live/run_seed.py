"""Boot the 7.2-seed kernel under QEMU with the host's root file system over
9p and tests/live/seed-init.sh as PID 1: the fixtures' KSM workload builds
its state and stops ksmd, ksminspect checks the live kernel, then, the state
held still, the host takes QEMU's dump of the same guest over QMP (the
QMP helpers of vmcores/scripts/make-dump.py) and quits QEMU. The live
check and a check of the dump can then be compared item by item."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from run_live import HERE, ROOT, LiveRun, parse


def _make_dump():
    """vmcores/scripts/make-dump.py as a module (its name has a dash)."""
    spec = importlib.util.spec_from_file_location("make_dump", ROOT / "vmcores" / "scripts" / "make-dump.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class SeedRun(LiveRun):
    vmcore: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)  # section -> seconds in the guest
    boot_seconds: float = 0.0   # QEMU started -> KSMI-BOOTED on the console
    ready_seconds: float = 0.0  # QEMU started -> KSMI-DUMP-NOW
    dump_seconds: float = 0.0   # dump-guest-memory
    error: str = ""             # why there is no dump, if there is none


def timings(console: str) -> dict[str, float]:
    return {m[1]: float(m[3]) - float(m[2])
            for m in re.finditer(r"^KSMI-TIME (.+) (\S+) (\S+)$", console.replace("\r", ""), re.M)}


def boot_seed(bzimage: Path, debug: Path, workload: Path, venv: Path, out: Path,
              append: str = "", memory: int = 1024, timeout: int = 1800) -> SeedRun:
    """Run the seed guest; its console log and vmcore go to *out*."""
    mkdump = _make_dump()
    out.mkdir(parents=True, exist_ok=True)
    log, vmcore = out / "console.log", out / "vmcore"
    for stale in (log, vmcore):
        stale.unlink(missing_ok=True)
    env = {"KSMI_VENV": venv, "KSMI_DEBUG": debug, "KSMI_WORKLOAD": workload}
    cmdline = ("console=ttyS0 loglevel=1 panic=-1 root=rootfs rootfstype=9p "
               "rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose ro "
               f"init={HERE / 'seed-init.sh'} {append} "
               + " ".join(f"{k}={v}" for k, v in env.items()))
    tmp = Path(tempfile.mkdtemp(prefix="ksmi-seed-"))
    sock = str(tmp / "qmp.sock")
    # -cpu max: the host's Python packages run in the guest, and numpy's
    # wheels need x86-64-v2 (SSE4.2, POPCNT), which QEMU's default qemu64 lacks.
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", str(memory), "-smp", "2",
           "-kernel", str(bzimage), "-append", cmdline, "-display", "none", "-monitor", "none",
           "-serial", f"file:{log}", "-no-reboot", "-nic", "none",
           "-device", "vmcoreinfo", "-qmp", f"unix:{sock},server=on,wait=off",
           "-virtfs", "local,path=/,mount_tag=rootfs,security_model=none,readonly=on,multidevs=remap"]
    run = SeedRun(console="")
    start = time.time()
    vm = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        text = ""
        while "KSMI-DUMP-NOW" not in text:
            if vm.poll() is not None:
                run.error = f"QEMU exited (rc {vm.returncode}) before KSMI-DUMP-NOW; see {log}"
                break
            if time.time() - start > timeout:
                run.error = f"no KSMI-DUMP-NOW within {timeout} s; see {log}"
                break
            time.sleep(1)
            text = log.read_text(errors="replace") if log.exists() else ""
            if not run.boot_seconds and "KSMI-BOOTED" in text:
                run.boot_seconds = time.time() - start
        else:
            run.ready_seconds = time.time() - start
            mkdump.qmp(sock, {"execute": "stop"})
            t = time.time()
            mkdump.dump_guest_memory(sock, "elf", str(vmcore), False)
            run.dump_seconds = time.time() - t
            run.vmcore = vmcore
            mkdump.qmp(sock, {"execute": "quit"})
            vm.wait(60)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    run.console = log.read_text(errors="replace") if log.exists() else ""
    run.sections = parse(run.console)
    run.timings = timings(run.console)
    run.seconds = time.time() - start
    return run


if __name__ == "__main__":
    bz, dbg, wl, venv, out = map(Path, sys.argv[1:6])
    r = boot_seed(bz, dbg, wl, venv, out, " ".join(sys.argv[6:]))
    for name, (rc, text) in r.sections.items():
        print(f"== {name}: rc={rc}, {len(text)} bytes, {r.timings.get(name, 0):.1f} s")
    print(f"{r.seconds:.0f} s (booted {r.boot_seconds:.0f}, dump taken at {r.ready_seconds:.0f}, "
          f"in {r.dump_seconds:.1f}) {r.error}")
