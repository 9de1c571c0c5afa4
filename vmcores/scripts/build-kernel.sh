#!/usr/bin/env bash
# build-kernel.sh NAME: build the fixture kernel NAME of vmcores/kernels.tsv
# from Debian's linux-source-SOURCE (unpacked by fetch-sources.sh) into
# $WORK/build/NAME/{vmlinux,bzImage|Image}. A patch (or several, joined with
# "+" in the patch column: A.patch+B.patch, applied in that order) is applied
# to a copy of the tree, $WORK/src/linux-A (linux-A+B for two; the path is in
# the debug info, so in the Build ID); the config is `make tinyconfig`, then
# scripts/kernel.config, then
# the line's own KEY=VALUE options. The build's time and number come from
# vmcores/builds.tsv (see below).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-/var/tmp/ksminspect-build}
name=$1
read -r source arch patch config < <(awk -F'\t' -v n="$name" '!/^#/ && $1 == n {print $2, $3, $4, $5}' "$here/../kernels.tsv")
[ -n "${source:-}" ] || { echo "build-kernel.sh: no kernel $name in kernels.tsv" >&2; exit 1; }
src=$WORK/src/linux-$source
if [ "$patch" != - ]; then
    IFS=+ read -r -a patches <<<"$patch"
    tree=$WORK/src/linux-
    for p in "${patches[@]}"; do tree+=${p%.patch}+; done
    tree=${tree%+}
    if [ ! -d "$tree" ]; then
        rm -rf "$tree.tmp"
        cp -a "$src" "$tree.tmp"
        for p in "${patches[@]}"; do
            patch -s -d "$tree.tmp" -p1 <"$here/../patches/$p"
        done
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
# Reproducible: the Build ID of vmlinux (a hash of all of it) depends on the
# build's time, number, user and host: they are in the banner and in the
# mtimes of the built-in initramfs. The committed debug info and every dump
# made with a kernel belong to one build, and an image built again (the live
# tests boot kernels/NAME/bzImage with that debug info) must be that very
# build, or drgn would pair memory with the wrong symbols. So vmcores/
# builds.tsv records each kernel's values and Build ID, checked below; the
# same sources, paths ($WORK) and compiler are needed too.
builds=$here/../builds.tsv
IFS=$'\t' read -r stamp number cpio_mtime build_id < <(awk -F'\t' -v n="$name" \
    '!/^#/ && $1 == n {print $2 "\t" $3 "\t" $4 "\t" $5}' "$builds") || true
if [ -z "${stamp:-}" ]; then  # a new kernel: its values, from now on
    stamp=$(LC_ALL=C date -u '+%a %b %e %H:%M:%S UTC %Y') number=1 cpio_mtime=- build_id=new
fi
export KBUILD_BUILD_USER=root KBUILD_BUILD_HOST=vm
kbuild() {
    make -s -C "$src" O="$out" "${kmake[@]}" -j"$(nproc)" "$image" KCFLAGS="-Wno-error" 2>&1 |
        grep -v -i warning | tail -20 || true
}
start=$(date +%s)
if [ "$cpio_mtime" = - ]; then
    # Kernels built since builds.tsv: the kernel's own variables fix it all.
    KBUILD_BUILD_TIMESTAMP=$stamp KBUILD_BUILD_VERSION=$number kbuild
else
    # The kernels committed before it were built without those variables:
    # the banner took `date` of the last make run and the count of make runs
    # in the build directory (.version), the initramfs the time it was
    # written, and 6.1+'s init/version.o a banner without either ("# SMP "),
    # as the variables would not leave it. So: a `date` that answers the
    # recorded time, two runs, and before the second, the initramfs written
    # with its recorded mtime and .version one short of the build number.
    if [ "$cpio_mtime" = '?' ]; then
        echo "build-kernel.sh: the initramfs mtime of $name is unknown (builds.tsv):" \
             "this build cannot be the committed one" >&2
        cpio_mtime=$(date -u -d "$stamp" +%s)
    fi
    shim=$out/.build-date
    mkdir -p "$shim"
    printf '#!/bin/sh\n[ $# -eq 0 ] && exec echo "%s"\nexec %s "$@"\n' "$stamp" "$(command -v date)" >"$shim/date"
    chmod +x "$shim/date"
    (unset KBUILD_BUILD_TIMESTAMP KBUILD_BUILD_VERSION; export PATH=$shim:$PATH
     kbuild
     (cd "$out" && sh "$src/usr/gen_initramfs.sh" -o usr/initramfs_data.cpio -d "@$cpio_mtime" \
         "$src/usr/default_cpio_list")
     echo $((number - 1)) >"$out/.version"
     kbuild)
fi
test -f "$out/$built"
cp "$out/$built" "$out/$image"
got=$(readelf -n "$out/vmlinux" | awk '/Build ID:/ {print $3; exit}')
if [ "$build_id" = new ]; then
    printf '%s\t%s\t%s\t-\t%s\n' "$name" "$stamp" "$number" "$got" >>"$builds"
    echo "$name: recorded in $builds (commit it with the kernel's debug info)"
elif [ "$got" != "$build_id" ]; then
    echo "build-kernel.sh: $name built with Build ID $got, not $build_id of $builds:" \
         "not the build of the committed debug info and dumps (other sources or compiler?)" >&2
fi
echo "$name built in $(( $(date +%s) - start )) s"
