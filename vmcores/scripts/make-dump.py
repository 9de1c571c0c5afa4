#!/usr/bin/env python3
"""Boot a fixture kernel under QEMU (TCG) with the KSM workload as /init, wait
until the guest has recorded its truth, dump guest memory over QMP and write
vmcore + truth.json into the output directory.

    make-dump.py --kernel IMAGE --initrd INIT.CPIO.GZ --out DIR
                 [--arch x86_64|i386|arm64] [--paging] [--memory MB] [--numa N]
                 [--format elf|kdump-zlib] [--also FORMAT=FILE] [--append "ksmw.x=y ..."]
                 [--after-dump]

--paging asks QEMU for a dump whose segments carry the guest's virtual
addresses (``dump-guest-memory`` with ``paging: true``): the only kind drgn
can read for an architecture it has no page-table walker for (i386).
--cpu qemu64,+la57 gives an x86-64 guest 5-level paging (a kernel that can
use it then runs with pgtable_l5_enabled). --format kdump-zlib writes QEMU's kdump-compressed format, flattened, as
``virsh dump --memory-only --format kdump-zlib`` does; --also adds a dump
of the same guest state in another format.
--after-dump (on by itself when the command line has ksmw.rmapwalk=N, N > 0)
lets the guest go on once the dump is taken: QEMU gets a second serial port
(the guest's ttyS1) on a socket, to which a 'g' is written after the dump;
the guest's output between KSMINSPECT-AFTER-BEGIN and KSMINSPECT-AFTER-END
then goes into truth.json as "after_dump" (ksm-workload.c's rmapwalk: the
kernel's verdict on migrating the pages). Every other dump is made as before.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time


# QEMU binary, console device and machine options of each fixture architecture.
MACHINES = {
    "x86_64": ("qemu-system-x86_64", "ttyS0", []),
    "i386": ("qemu-system-i386", "ttyS0", []),
    "arm64": ("qemu-system-aarch64", "ttyAMA0", ["-M", "virt", "-cpu", "cortex-a57"]),
}


def qmp(sock_path: str, *commands: dict) -> list[dict]:
    """Run QMP commands in order, waiting for each reply."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    f = s.makefile("rw")
    json.loads(f.readline())  # greeting
    replies = []
    for cmd in ({"execute": "qmp_capabilities"},) + commands:
        f.write(json.dumps(cmd) + "\n")
        f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                break
        if "error" in msg:
            raise RuntimeError(f"QMP {cmd['execute']}: {msg['error']}")
        replies.append(msg)
    s.close()
    return replies


def dump_guest_memory(sock: str, fmt: str, path: str, paging: bool) -> None:
    arguments = {"paging": paging, "protocol": f"file:{os.path.abspath(path)}"}
    if fmt != "elf":
        arguments["format"] = fmt
    qmp(sock, {"execute": "dump-guest-memory", "arguments": arguments})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--arch", choices=sorted(MACHINES), default="x86_64")
    ap.add_argument("--paging", action="store_true")
    ap.add_argument("--format", default="elf", choices=["elf", "kdump-zlib"],
                    help="QEMU's dump format; kdump-zlib is written flattened, as virsh dump writes it")
    ap.add_argument("--also", metavar="FORMAT=FILE", action="append", default=[],
                    help="a second dump of the same guest state in another format (with "
                         "--capture: QEMU's, taken before the guest crashes)")
    ap.add_argument("--capture", metavar="DISK",
                    help="no QEMU dump: the guest crashes into a capture kernel that writes "
                         "the dump onto this raw disk and powers off (crash-capture.sh)")
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--numa", type=int, default=0)
    ap.add_argument("--cpu", help="QEMU's CPU model, e.g. qemu64,+la57 for x86-64 5-level paging")
    ap.add_argument("--append", default="")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--after-dump", action="store_true",
                    help="let the guest continue after the dump and record what it prints "
                         "(implied by ksmw.rmapwalk=N, N > 0)")
    args = ap.parse_args()
    m = re.search(r"(?:^|\s)ksmw\.rmapwalk=(\S+)", args.append)
    if m and m.group(1) not in ("0", "0x0"):
        args.after_dump = True
    if args.after_dump and args.capture:
        ap.error("--after-dump: not with --capture")

    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="ksmdump-")
    sock = os.path.join(tmp, "qmp.sock")
    log = os.path.join(args.out, "console.log")
    qemu, console, machine = MACHINES[args.arch]
    append = f"console={console} loglevel=1 panic=-1 {args.append}".strip()
    cmd = [
        qemu, *machine, "-accel", "tcg", "-m", str(args.memory),
        "-smp", str(args.smp), "-kernel", args.kernel, "-initrd", args.initrd,
        "-append", append, "-display", "none", "-monitor", "none",
        "-serial", f"file:{log}", "-no-reboot", "-device", "vmcoreinfo",
        "-qmp", f"unix:{sock},server=on,wait=off",
    ]
    if args.cpu:
        cmd += ["-cpu", args.cpu]
    if args.capture:
        cmd += ["-drive", f"file={args.capture},format=raw,if=virtio"]
    go = os.path.join(tmp, "go.sock")
    if args.after_dump:  # the guest's ttyS1: the host's word that the dump is taken
        cmd += ["-chardev", f"socket,id=go,path={go},server=on,wait=off",
                "-serial", "chardev:go"]
    if args.numa:
        per = args.memory // args.numa
        for n in range(args.numa):
            cpus = [c for c in range(args.smp) if c % args.numa == n]
            cmd += ["-object", f"memory-backend-ram,id=m{n},size={per}M",
                    "-numa", f"node,nodeid={n},memdev=m{n}" + "".join(f",cpus={c}" for c in cpus)]
    print(" ".join(cmd), file=sys.stderr)
    start = time.time()
    vm = subprocess.Popen(cmd)
    try:
        text = ""
        while "KSMINSPECT-READY" not in text:
            if vm.poll() is not None:
                raise SystemExit(f"QEMU exited early; see {log}")
            if time.time() - start > args.timeout:
                raise SystemExit(f"no KSMINSPECT-READY within {args.timeout} s; see {log}")
            time.sleep(0.25 if args.capture else 2)  # a capture's guest crashes 10 s after
            with open(log, errors="replace") as f:
                text = f.read()
        vmcore = os.path.join(args.out, "vmcore")
        if args.capture:  # the guest crashes; its capture kernel writes the dump
            if args.also:  # the state before it, in QEMU's formats
                qmp(sock, {"execute": "stop"})
                for fmt, path in [a.split("=", 1) for a in args.also]:
                    dump_guest_memory(sock, fmt, path, args.paging)
                qmp(sock, {"execute": "cont"})
            vm.wait(args.timeout)
            with open(log, errors="replace") as f:
                text = f.read()
            if "KSMINSPECT-CAPTURE-DONE 0" not in text:
                raise SystemExit(f"the capture kernel did not write a dump; see {log}")
        else:
            if os.path.exists(vmcore):
                os.unlink(vmcore)
            for fmt, path in [(args.format, vmcore)] + [a.split("=", 1) for a in args.also]:
                dump_guest_memory(sock, fmt, path, args.paging)
            if args.after_dump:
                after_start = time.time()
                g = socket.socket(socket.AF_UNIX)
                g.connect(go)
                g.sendall(b"g\n")
                while "KSMINSPECT-AFTER-END" not in text:
                    if vm.poll() is not None:
                        raise SystemExit(f"QEMU exited after the dump; see {log}")
                    if time.time() - after_start > args.timeout:
                        raise SystemExit(f"no KSMINSPECT-AFTER-END within {args.timeout} s; see {log}")
                    time.sleep(1)
                    with open(log, errors="replace") as f:
                        text = f.read()
                g.close()
            qmp(sock, {"execute": "quit"})
            vm.wait(60)
    finally:
        if vm.poll() is None:
            vm.kill()
    text = text.replace("\r", "")
    m = re.search(r"KSMINSPECT-TRUTH-BEGIN\n(.*?)\nKSMINSPECT-TRUTH-END", text, re.S)
    truth = json.loads(m.group(1))
    truth["dump"] = {
        "qemu": cmd,
        "seconds_to_ready": round(time.time() - start, 1),
        "paging": args.paging,
        "format": args.format,
    }
    if args.after_dump:  # what the guest printed once the dump was taken
        m = re.search(r"KSMINSPECT-AFTER-BEGIN\n(.*?)\nKSMINSPECT-AFTER-END", text, re.S)
        truth["after_dump"] = json.loads(m.group(1))
        truth["dump"]["after_dump_seconds"] = round(time.time() - after_start, 1)
    with open(os.path.join(args.out, "truth.json"), "w") as f:
        json.dump(truth, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"dump ready in {time.time() - start:.0f} s: {vmcore}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
