#!/usr/bin/env bash
# build-kernel.sh NAME: build the fixture kernel NAME of vmcores/kernels.tsv
# from Debian's linux-source-SOURCE (unpacked by fetch-sources.sh) into
# $WORK/build/NAME/{vmlinux,bzImage|Image}. A patch is applied to a copy of
# the tree; the config is `make tinyconfig`, then scripts/kernel.config, then
# the line's own KEY=VALUE options.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-/var/tmp/ksminspect-build}
name=$1
read -r source arch patch config < <(awk -F'\t' -v n="$name" '!/^#/ && $1 == n {print $2, $3, $4, $5}' "$here/../kernels.tsv")
[ -n "${source:-}" ] || { echo "build-kernel.sh: no kernel $name in kernels.tsv" >&2; exit 1; }
src=$WORK/src/linux-$source
if [ "$patch" != - ]; then
    tree=$WORK/src/linux-${patch%.patch}
    if [ ! -d "$tree" ]; then
        cp -a "$src" "$tree.tmp"
        patch -s -d "$tree.tmp" -p1 <"$here/../patches/$patch"
        mv "$tree.tmp" "$tree"
    fi
    src=$tree
fi
case $arch in
    x86_64) kmake=(ARCH=x86_64) image=bzImage; built=arch/x86/boot/bzImage ;;
    i386) kmake=(ARCH=i386) image=bzImage; built=arch/x86/boot/bzImage ;;
    arm64) kmake=(ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-) image=Image; built=arch/arm64/boot/Image ;;
    *) echo "build-kernel.sh: unknown arch $arch" >&2; exit 1 ;;
esac
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
if [ "$config" != - ]; then
    for kv in $config; do echo "CONFIG_$kv" >>"$frag"; done
fi
make -s -C "$src" O="$out" "${kmake[@]}" tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$frag" >/dev/null
make -s -C "$src" O="$out" "${kmake[@]}" olddefconfig >/dev/null
# What the fixtures rely on, and every option of the line, must survive olddefconfig.
want=(SLUB KALLSYMS_ALL PROC_KCORE FW_CFG_SYSFS DEBUG_INFO ADVISE_SYSCALLS 9P_FS)
[[ " $config " == *" KSM=n "* ]] || want+=(KSM)
[[ " $config " == *" NUMA=n "* ]] || want+=(NUMA)
for opt in "${want[@]}"; do
    grep -qx "CONFIG_$opt=y" "$out/.config" || { echo "CONFIG_$opt missing in $name" >&2; exit 1; }
done
for kv in $([ "$config" = - ] || echo "$config"); do
    case $kv in
        *=n) ! grep -q "^CONFIG_${kv%=n}=y" "$out/.config" ;;
        *) grep -qx "CONFIG_$kv" "$out/.config" ;;
    esac || { echo "CONFIG_$kv not honoured in $name" >&2; exit 1; }
done
start=$(date +%s)
make -s -C "$src" O="$out" "${kmake[@]}" -j"$(nproc)" "$image" KCFLAGS="-Wno-error" 2>&1 | grep -v -i warning | tail -20 || true
test -f "$out/$built"
cp "$out/$built" "$out/$image"
echo "$name built in $(( $(date +%s) - start )) s"
