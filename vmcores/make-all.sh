#!/usr/bin/env bash
# Regenerate every committed dump from scratch: Debian's kernel sources, the
# fixture kernels, the workload, one QEMU run per line of dumps.tsv.
# Work files go to $WORK (default /var/tmp/ksminspect-build); results to
# vmcores/<dump>/{vmcore.xz,truth.json} and vmcores/kernels/<kernel>/vmlinux.debug.xz.
# Needs: qemu-system-x86, gcc, flex, bison, bc, libelf-dev, libssl-dev, cpio, dwz, xz-utils.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export WORK=${WORK:-/var/tmp/ksminspect-build}
only=${1:-}   # optional: one dump name
start=$(date +%s)

"$here/scripts/fetch-sources.sh"
for k in $(awk '!/^#/ {print $2}' "$here/dumps.tsv" | sort -u); do
    [ -f "$WORK/build/$k/bzImage" ] && continue
    case $k in
        *-seed) "$here/scripts/build-kernel.sh" "${k%-seed}" "$here/patches/${k%-seed}-ksm-vm_pgoff-seed-v4.patch" ;;
        *-noksm) "$here/scripts/build-kernel.sh" "${k%-noksm}" noksm ;;
        *) "$here/scripts/build-kernel.sh" "$k" ;;
    esac
done

mkdir -p "$WORK/initrd/dev" "$WORK/initrd/proc" "$WORK/initrd/sys"
gcc -static -O2 -Wall -o "$WORK/initrd/init" "$here/scripts/ksm-workload.c"
(cd "$WORK/initrd" && find . | cpio -o -H newc --quiet | gzip -9 >"$WORK/init.cpio.gz")

grep -v '^#' "$here/dumps.tsv" | while IFS=$'\t' read -r name kernel numa append; do
    [ -n "$only" ] && [ "$only" != "$name" ] && continue
    out=$WORK/dumps/$name
    rm -rf "$out"
    python3 "$here/scripts/make-dump.py" --kernel "$WORK/build/$kernel/bzImage" \
        --initrd "$WORK/init.cpio.gz" --out "$out" --numa "$numa" --append "$append" </dev/null
    mkdir -p "$here/$name"
    python3 - "$out/truth.json" "$here/$name/truth.json" "$name" "$kernel" <<'PY'
import json, sys
truth = json.load(open(sys.argv[1]))
truth["name"], truth["kernel"] = sys.argv[3], sys.argv[4]
with open(sys.argv[2], "w") as f:
    json.dump(truth, f, indent=1, sort_keys=True)
    f.write("\n")
PY
    xz -T2 -9 -c "$out/vmcore" >"$here/$name/vmcore.xz"
done

# Debug info: DWARF types and symbols, without line tables and location lists.
for k in $(awk '!/^#/ {print $2}' "$here/dumps.tsv" | sort -u); do
    dst=$here/kernels/$k/vmlinux.debug.xz
    [ -f "$dst" ] && [ "$dst" -nt "$WORK/build/$k/vmlinux" ] && continue
    mkdir -p "$here/kernels/$k"
    cp "$WORK/build/$k/vmlinux" "$WORK/build/$k/vmlinux.dwz"
    dwz -q "$WORK/build/$k/vmlinux.dwz" || true
    # Line tables and location lists are not needed; DWARF 4 kernels keep
    # section symbols that refer to them, so there they stay.
    objcopy --only-keep-debug --remove-section=.debug_loclists --remove-section=.debug_line \
        "$WORK/build/$k/vmlinux.dwz" "$WORK/build/$k/vmlinux.debug" 2>/dev/null ||
    objcopy --only-keep-debug "$WORK/build/$k/vmlinux.dwz" "$WORK/build/$k/vmlinux.debug"
    xz -T2 -9e -c "$WORK/build/$k/vmlinux.debug" >"$dst"
done
# The live test boots this kernel.
cp "$WORK/build/6.12/bzImage" "$here/kernels/6.12/bzImage"
echo "make-all: done in $(( $(date +%s) - start )) s"
du -sh "$here"
