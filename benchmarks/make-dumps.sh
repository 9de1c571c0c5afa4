#!/usr/bin/env bash
# make-dumps.sh [small|medium|large]...: generate the benchmark dumps (not
# committed) with the same pipeline as vmcores/: the committed 6.12 fixture
# kernel, the KSM workload as /init, QEMU (TCG), QMP dump-guest-memory.
#   small   ~100,000 rmap_items  (1 GB guest)
#   medium  ~300,000 rmap_items  (2 GB guest)
#   large  ~1,000,000 rmap_items (6 GB guest)
#   huge   ~4,000,000 rmap_items (3 GB guest: identical pages, filled in
#          batches that ksmd merges before the next, max_page_sharing 65536)
#   distro-large  the large workload on Debian's cloud kernel, as
#          vmcores/scripts/distro-dumps.sh fetches it ($DISTRO, default
#          /var/tmp/ksminspect-distro/debian-6.1-cloud: vmlinuz and vmlinux)
# Each lands in $BENCH/<size>/{vmcore,truth.json,console.log} (default
# /var/tmp/ksminspect-bench). Watch progress in console.log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
vmcores=$here/../vmcores
BENCH=${BENCH:-/var/tmp/ksminspect-bench}
mkdir -p "$BENCH/initrd/dev" "$BENCH/initrd/proc" "$BENCH/initrd/sys"
gcc -static -O2 -o "$BENCH/initrd/init" "$vmcores/scripts/ksm-workload.c"
(cd "$BENCH/initrd" && find . | cpio -o -H newc --quiet | gzip -9 >"$BENCH/init.cpio.gz")

common="ksmw.sparse=1 ksmw.max_page_sharing=8 ksmw.chain=4 ksmw.volatile=64 ksmw.exit=1
        ksmw.pages_to_scan=20000 ksmw.sleep_millisecs=0 ksmw.pairs=0"
DISTRO=${DISTRO:-/var/tmp/ksminspect-distro/debian-6.1-cloud}
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(small medium large huge)
for size in "${sizes[@]}"; do
    case $size in
        small)  memory=1024; work="ksmw.sharers=4 ksmw.shared=12000 ksmw.unique=12000 ksmw.cow=500" ;;
        medium) memory=2560; work="ksmw.sharers=6 ksmw.shared=24500 ksmw.unique=24500 ksmw.cow=1000" ;;
        large)  memory=6144; work="ksmw.sharers=10 ksmw.shared=49000 ksmw.unique=49000 ksmw.cow=2000" ;;
        huge)   memory=3072; work="ksmw.sharers=8 ksmw.shared=500000 ksmw.same=1 ksmw.batch=16384
                ksmw.max_page_sharing=65536 ksmw.unique=2000 ksmw.cow=0 ksmw.exit=0" ;;
        distro-large) memory=6144; work="ksmw.sharers=10 ksmw.shared=49000 ksmw.unique=49000 ksmw.cow=2000" ;;
        *) echo "unknown size $size" >&2; exit 2 ;;
    esac
    kernel=$vmcores/kernels/6.12/bzImage
    [ "$size" != distro-large ] || kernel=$DISTRO/vmlinuz
    start=$(date +%s)
    python3 "$vmcores/scripts/make-dump.py" --kernel "$kernel" \
        --initrd "$BENCH/init.cpio.gz" --out "$BENCH/$size" --memory "$memory" \
        --timeout 7200 --append "$(echo $work $common)" </dev/null  # the first ksmw.X= wins
    if [ "$size" = distro-large ]; then  # benchmarks/run.py: its debug info, its memory floor
        python3 -c "import json,sys; t=json.load(open(sys.argv[1])); t['debug']=sys.argv[2]; \
t['floor']=sys.argv[3]; json.dump(t, open(sys.argv[1], 'w'), indent=1)" \
            "$BENCH/$size/truth.json" "$DISTRO/vmlinux" "$DISTRO/vmcore"
    fi
    echo "$size: $(( $(date +%s) - start )) s, $(python3 -c "import json,sys; \
t=json.load(open(sys.argv[1])); print(t['sysfs']['pages_shared'], 'shared', \
t['sysfs']['pages_sharing'], 'sharing', sum(int(p.get('ksm_stat', {}).get('ksm_rmap_items', 0)) \
for p in t['processes']), 'rmap_items')" "$BENCH/$size/truth.json")"
done
