#!/usr/bin/env python3
"""Time ksminspect's commands and the plain-drgn baseline on the benchmark
dumps (benchmarks/make-dumps.sh), each in a fresh process, and print per
command: wall seconds, rmap_items per second, peak RSS, and the speed-up over
the baseline; then the rate of the rmap_list walk measured in-process.
Each figure is the best of --repeat runs (3).

    run.py [--bench DIR] [--debug VMLINUX] [--repeat N] [SIZE...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KSMINSPECT = Path(sys.executable).parent / "ksminspect"
COMMANDS = [["summary"], ["mm"], ["rmap", "--format", "json"], ["stable-tree", "--format", "json"],
            ["unstable-tree", "--format", "json"], ["page", "{kpfn}"], ["snapshot", "-"],
            ["check", "--format", "json"], ["check", "--only", "rmap-walk", "--format", "json"],
            ["explain", "--format", "json"], ["metrics"]]


def a_kpfn(vmcore: Path, vmlinux: str) -> str:
    """A KSM page of the dump, for `page` (the first stable node's kpfn),
    looked up in a process of its own: a parent grown by reading a large
    stable tree would pass its peak RSS on to every command it forks (Linux
    keeps the high-water mark across exec)."""
    return subprocess.run([sys.executable, __file__, "--kpfn-of", str(vmcore), "--debug", vmlinux],
                          capture_output=True, text=True, check=True).stdout.strip()


def _first_kpfn(vmcore: str, vmlinux: str) -> str:
    out = subprocess.run([str(KSMINSPECT), "-c", vmcore, "-s", vmlinux, "stable-tree", "--limit", "1",
                          "--format", "json"], capture_output=True, text=True).stdout
    tree = json.loads(out)
    node = next(n for t in tree["trees"] for n in t["nodes"])
    return (node["dups"][0] if node["dups"] else node)["kpfn"]


def measure(argv: list[str], repeat: int = 1) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MB, CPU seconds) of a process, output
    discarded: the best of *repeat* runs (as timeit reports), the machine's
    noise left out."""
    return min(_measure_once(argv) for _ in range(repeat))


def _measure_once(argv: list[str]) -> tuple[float, float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"{' '.join(argv)} failed with {status}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def walk_rate(vmcore: str, debug: str) -> tuple[int, float]:
    """rmap_items walked per second along the rmap_lists (warm: second pass)."""
    from array import array

    from ksminspect.program import open_program
    from ksminspect.walk import walker

    w = walker(open_program(vmcore, [debug]))  # the primitives alone
    for _ in range(2):
        start, found = time.perf_counter(), array("Q")
        for slot in w.for_each_mm_slot():
            _, first = w.mm_slot(slot)
            w.rmap_list(first, slot, found)
        seconds = time.perf_counter() - start
    return len(found), len(found) / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=os.environ.get("BENCH", "/var/tmp/ksminspect-bench"))
    ap.add_argument("--debug", default=str(HERE.parent / "vmcores/kernels/6.12/vmlinux.debug.xz"))
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each command and of the baseline; the best is shown")
    ap.add_argument("sizes", nargs="*", default=["small", "medium", "large", "huge", "distro-large"])
    ap.add_argument("--in-process", metavar="VMCORE", help=argparse.SUPPRESS)
    ap.add_argument("--kpfn-of", metavar="VMCORE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from ksminspect.program import decompressed

    if args.kpfn_of:
        print(_first_kpfn(args.kpfn_of, args.debug))
        return
    if args.in_process:  # measured apart, so that no command forks a grown parent
        n, rate = walk_rate(args.in_process, decompressed(args.debug))
        print(json.dumps({"n": n, "rate": rate}))
        return

    debug = decompressed(args.debug)
    # The memory floor of a kernel: summary on a dump of it with a few hundred
    # items (a truth.json "floor", else the committed 6.12-numa dump); check's
    # B/item is its peak RSS above its kernel's floor, per rmap_item.
    floors: dict[str, float] = {}

    def floor_of(truth: dict, vmlinux: str) -> float:
        dump = truth.get("floor", str(HERE.parent / "vmcores/6.12-numa/vmcore.xz"))
        if dump not in floors:
            _, floors[dump], _ = measure([str(KSMINSPECT), "-c", dump, "-s", vmlinux, "summary"], args.repeat)
            print(f"memory floor: summary on {dump}: {floors[dump]:.0f} MB peak RSS")
        return floors[dump]

    per_item: dict[str, float] = {}
    print(f"{'size':12} {'items':>9} {'command':24} {'wall s':>7} {'items/s':>10} {'RSS MB':>7} "
          f"{'vs baseline':>11} {'B/item':>7}")
    for size in args.sizes:
        vmcore = Path(args.bench) / size / "vmcore"
        if not vmcore.exists():
            print(f"{size}: no dump at {vmcore} (run benchmarks/make-dumps.sh {size})")
            continue
        truth = json.loads((vmcore.parent / "truth.json").read_text())
        items = sum(int(p.get("ksm_stat", {}).get("ksm_rmap_items", 0)) for p in truth["processes"])
        vmlinux = truth.get("debug", debug)  # a distribution kernel's own
        floor_rss = floor_of(truth, vmlinux)
        base_wall, base_rss, _ = measure([sys.executable, str(HERE / "baseline.py"), str(vmcore), vmlinux],
                                         args.repeat)
        rows = [("baseline (plain drgn)", base_wall, base_rss)]
        kpfn = a_kpfn(vmcore, vmlinux)
        took: dict[str, tuple[float, float, float]] = {}
        for cmd in ([a.format(kpfn=kpfn) for a in c] for c in COMMANDS):
            took[" ".join(cmd)] = wall, rss, cpu = measure([str(KSMINSPECT), "-c", str(vmcore), "-s", vmlinux,
                                                             *cmd], args.repeat)
            rows.append((" ".join(cmd), wall, rss))
            if cmd[0] == "check":
                per_item[size] = wall / items
        for name, wall, rss in rows:
            extra = (rss - floor_rss) * 2**20 / items if name.startswith("check") else None
            print(f"{size:12} {items:9} {name:24} {wall:7.2f} {items / wall:10.0f} {rss:7.0f} "
                  f"{base_wall / wall:10.1f}x" + (f" {extra:7.0f}" if extra is not None else ""))
        # metrics reads once what explain and check each read: it costs no more than both
        m_wall, m_rss, m_cpu = took["metrics"]
        both = took["explain --format json"][0] + took["check --format json"][0]
        print(f"{size:12} metrics: {m_wall:.2f} s wall, {m_cpu:.2f} s CPU, {m_rss:.0f} MB peak RSS; "
              f"explain + check {both:.2f} s: metrics / (explain + check) = {m_wall / both:.2f}")
        inproc = json.loads(subprocess.run(
            [sys.executable, __file__, "--debug", vmlinux, "--in-process", str(vmcore)],
            capture_output=True, text=True, check=True).stdout)
        n, rate = inproc["n"], inproc["rate"]
        print(f"{size:12} {n:9} {'rmap_list walk in-process':24} {n / rate:7.2f} {rate:10.0f}")
    if "small" in per_item:
        for size in per_item:
            if size != "small":
                print(f"check: time per item at {size} / at small = "
                      f"{per_item[size] / per_item['small']:.2f}")


if __name__ == "__main__":
    main()
