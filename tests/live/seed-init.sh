#!/bin/sh
# PID 1 of the live seed guest (tests/live/run_seed.py): the 7.2-seed kernel
# booted with the host's root, read-only over 9p. Builds the KSM state of the
# 7.2-seed dumps with the fixtures' own workload (vmcores/scripts/
# ksm-workload.c, ksmw.pairs: merged pairs written until every pair has left
# the stable tree, single-stepping ksmd, which it then stops), then runs
# ksminspect check against this live kernel, and finally says KSMI-DUMP-NOW
# and waits, the state held still, while the host takes QEMU's dump of the
# same memory over QMP. With ksm.fault_skip_pgoff_reset=1 on the command line
# the kernel leaves the stale offsets of the seed patch's bug behind.
# Paths come from the kernel command line as environment variables (KSMI_*);
# everything the host needs is printed on the console between markers.
. "$(dirname "$0")/guest-lib.sh"

counters() {  # the scan's counters: unchanged from the checks to the dump
    for f in run full_scans pages_scanned pages_shared pages_sharing pages_unshared \
             pages_volatile; do
        [ -f $ksm/$f ] && echo "$f $(cat $ksm/$f)"
    done
}

# The workload is the fixtures' /init: it takes the console for itself when
# there is a /dev/console. Here it runs in a root of its own without /dev
# (it mounts its own /proc and /sys there), so that its output, the truth
# included, lands in a file this script can wait on.
mkdir -p /run/wl/proc /run/wl/sys
cp "$KSMI_WORKLOAD" /run/wl/ksm-workload
chroot /run/wl /ksm-workload >/run/workload.log 2>&1 &
i=0
until grep -q KSMINSPECT-READY /run/workload.log || [ $i -ge 900 ]; do sleep 1; i=$((i + 1)); done
echo 0 >$ksm/run   # stopped (the workload did so too), not 2: the state stays
echo "KSMI-WORKLOAD ready after ${i}s"
section workload cat /run/workload.log
section counters-before counters
section check ksminspect check --format json
section ktap ksminspect check --format ktap
section counters-after counters
# The host dumps this guest's memory now and quits QEMU; nothing here moves.
echo "KSMI-DUMP-NOW"
while [ ! -e /run/never ]; do sleep 10; done
