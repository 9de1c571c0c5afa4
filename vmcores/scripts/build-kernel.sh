#!/usr/bin/env bash
# build-kernel.sh VERSION [PATCH | noksm]: build a fixture kernel from Debian's
# linux-source-VERSION (unpacked by fetch-sources.sh) into
# $WORK/build/NAME/{bzImage,vmlinux}. NAME is VERSION, VERSION-seed when a
# patch is applied (to a copy of the tree), or VERSION-noksm for a kernel
# built without CONFIG_KSM.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-/var/tmp/ksminspect-build}
version=$1; patch=${2:-}
src=$WORK/src/linux-$version
name=$version
noksm=
if [ "$patch" = noksm ]; then
    name=$version-noksm; noksm=1; patch=
fi
if [ -n "$patch" ]; then
    name=$version-seed
    if [ ! -d "$WORK/src/linux-$name" ]; then
        cp -a "$src" "$WORK/src/linux-$name.tmp"
        patch -d "$WORK/src/linux-$name.tmp" -p1 <"$patch"
        mv "$WORK/src/linux-$name.tmp" "$WORK/src/linux-$name"
    fi
    src=$WORK/src/linux-$name
fi
out=$WORK/build/$name
mkdir -p "$out"
frag=$out/fragment.config
cp "$here/kernel.config" "$frag"
# DWARF 5 where the kernel offers it (5.12+), else DWARF 4.
if grep -q 'config DEBUG_INFO_DWARF5' "$src/lib/Kconfig.debug"; then
    echo CONFIG_DEBUG_INFO_DWARF5=y >>"$frag"
else
    echo CONFIG_DEBUG_INFO_DWARF4=y >>"$frag"
fi
[ -n "$noksm" ] && echo "CONFIG_KSM=n" >>"$frag"
make -s -C "$src" O="$out" tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$frag" >/dev/null
make -s -C "$src" O="$out" olddefconfig >/dev/null
for opt in $([ -n "$noksm" ] || echo KSM) NUMA SLUB KALLSYMS_ALL PROC_KCORE FW_CFG_SYSFS DEBUG_INFO ADVISE_SYSCALLS 9P_FS; do
    grep -q "^CONFIG_$opt=y" "$out/.config" || { echo "CONFIG_$opt missing in $name" >&2; exit 1; }
done
start=$(date +%s)
make -s -C "$src" O="$out" -j"$(nproc)" bzImage KCFLAGS="-Wno-error" 2>&1 | grep -v -i warning | tail -20 || true
test -f "$out/arch/x86/boot/bzImage"
cp "$out/arch/x86/boot/bzImage" "$out/bzImage"
echo "$name built in $(( $(date +%s) - start )) s"
