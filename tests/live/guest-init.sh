#!/bin/sh
# PID 1 of the live-kernel test guest. The root file system is the host's,
# read-only over 9p; paths come from the kernel command line as environment
# variables (KSMI_*). Runs the kernel's own KSM selftests, starts a KSM
# workload, then runs ksminspect against this live kernel while ksmd runs.
# Everything the host needs is printed on the console between markers.
. "$(dirname "$0")/guest-lib.sh"

section snapshot-before ksminspect snapshot /run/before.json

# The kernel's own KSM selftests, as run_vmtests.sh runs them (the
# performance runs with 100 MB are left out: too slow under TCG).
for t in "ksm_tests -M -p 10" "ksm_tests -U" "ksm_tests -Z -p 10 -z 0" \
         "ksm_tests -Z -p 10 -z 1" "ksm_tests -N -m 1" "ksm_tests -N -m 0" \
         "ksm_functional_tests"; do
    # shellcheck disable=SC2086
    section "selftest $t" timeout 900 "$KSMI_SELFTESTS"/$t
done

# check in the selftests' own format, as a selftest run would take it
section ktap ksminspect check --format ktap
section snapshot-after ksminspect snapshot /run/after.json
section diff "$KSMI_VENV/bin/ksminspect" diff /run/before.json /run/after.json
section diff-json "$KSMI_VENV/bin/ksminspect" diff /run/before.json /run/after.json --format json

# A workload that keeps KSM state while ksmd goes on scanning.
echo 20 >$ksm/sleep_millisecs
"$KSMI_WORKLOAD" >/run/workload.log 2>&1 &
i=0
until grep -q KSMINSPECT-READY /run/workload.log || [ $i -ge 600 ]; do sleep 1; i=$((i + 1)); done
echo 1 >$ksm/run
echo 100 >$ksm/pages_to_scan
echo "KSMI-WORKLOAD ready after ${i}s, full_scans $(cat $ksm/full_scans)"

section check ksminspect check --format json
section mm ksminspect mm --format json
section summary ksminspect summary --format json
section explain ksminspect explain --format json
# the contrib service's command, into a textfile directory as node_exporter's
metrics() { mkdir -p /run/textfile && ksminspect metrics /run/textfile/ksminspect.prom &&
            cat /run/textfile/ksminspect.prom; }
section metrics metrics
# 45 s: under TCG, starting Python with drgn and numpy from 9p takes a while
section watch timeout --preserve-status -s INT 45 "$KSMI_VENV/bin/ksminspect" -s "$KSMI_DEBUG" summary --watch 1 --format json

# A host that keeps moving: 4 processes keep writing 3000 pages each back
# with one of 8 contents (chains of dups), ksmd at full speed merges them
# again; ksminspect must not mistake the motion for corruption.
echo 0 >$ksm/sleep_millisecs
echo 1000 >$ksm/pages_to_scan
"$KSMI_CHURN" 4 3000 8 >/run/churn.log 2>&1 &
i=0
until [ "$(cat $ksm/pages_sharing)" -gt 6000 ] || [ $i -ge 300 ]; do sleep 1; i=$((i + 1)); done
echo "KSMI-CHURN after ${i}s: pages_shared $(cat $ksm/pages_shared) pages_sharing $(cat $ksm/pages_sharing)"
# check again and again while the pages move (each run under TCG: see the
# KSMI-TIME lines), so that a walk that trips over the motion shows up
for n in 1 2 3 4 5 6 7 8 9 10; do
    section churn-check-$n ksminspect check --format json
done
section churn-summary ksminspect summary --format json
section churn-stable-tree ksminspect stable-tree --format json
echo "KSMI-DONE full_scans $(cat $ksm/full_scans)"
