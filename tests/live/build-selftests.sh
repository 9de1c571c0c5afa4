#!/usr/bin/env bash
# build-selftests.sh OUT: build the kernel's own KSM selftests (ksm_tests,
# ksm_functional_tests) from Debian's linux-source-6.12, the source of the
# fixture kernel the live test boots, the KSM workload and ksm-churn, into OUT.
# Needs: apt access to the machine's Debian suites, gcc, make, libnuma-dev.
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-/var/tmp/ksminspect-build}
src=$WORK/src/linux-6.12
if [ ! -d "$src/tools/testing/selftests/mm" ]; then
    mkdir -p "$WORK/src" && cd "$WORK/src"
    . "$here/../../vmcores/scripts/apt-own.sh"
    ls linux-source-6.12_*.deb >/dev/null 2>&1 || apt_own download linux-source-6.12 >/dev/null
    rm -rf linux-source-6.12 && dpkg-deb --fsys-tarfile linux-source-6.12_*.deb |
        tar -xO --wildcards '*/linux-source-6.12.tar.xz' | tar -xJ
    rm -rf "$src" && mv linux-source-6.12 "$src"
fi
hdr=$WORK/khdr-6.12
[ -d "$hdr/usr/include/linux" ] ||
    make -s -C "$src" O="$hdr" ARCH=x86_64 headers >/dev/null  # into $hdr/usr/include
mm=$src/tools/testing/selftests/mm
cflags=(-O2 -isystem "$hdr/usr/include" -I"$src" -I"$src/tools/include" -I"$src/tools/testing/selftests")
gcc "${cflags[@]}" -o "$out/ksm_tests" "$mm/ksm_tests.c" "$mm/vm_util.c" "$mm/thp_settings.c" -lnuma -lrt -lm
gcc "${cflags[@]}" -o "$out/ksm_functional_tests" "$mm/ksm_functional_tests.c" "$mm/vm_util.c" -lrt
gcc -static -O2 -o "$out/ksm-workload" "$here/../../vmcores/scripts/ksm-workload.c"
gcc -static -O2 -Wall -o "$out/ksm-churn" "$here/ksm-churn.c"
ls "$out"
