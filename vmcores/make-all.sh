#!/usr/bin/env bash
# Regenerate every committed dump from scratch: Debian's kernel sources, the
# fixture kernels of kernels.tsv, the workload, one QEMU run per line of
# dumps.tsv. Work files go to $WORK (default /var/tmp/ksminspect-build);
# results to vmcores/<dump>/{vmcore.xz,truth.json} and
# vmcores/kernels/<kernel>/vmlinux.debug.xz. The format of a dump: elf
# (QEMU's dump-guest-memory: physical addresses), elf-paging (with the
# guest's virtual addresses), elf-refused (physical, for an architecture drgn
# cannot translate: the test that ksminspect says how to take a readable one),
# elf-la57 (elf, the guest's CPU with 5-level paging: LA57),
# kdump-zlib (QEMU's kdump-compressed format, flattened, as virsh dump writes it),
# makedumpfile:OPTIONS (a crash-kernel capture: the kernel crashes into
# itself, where the machine's own Debian makedumpfile writes the dump with
# OPTIONS; makedumpfile-sid:OPTIONS, the same with Debian unstable's; see
# scripts/crash-capture.sh). The also column: QEMU's ELF dump of the state a
# capture was taken of, as another dump.
# Needs: qemu-system-x86, qemu-system-arm, gcc, gcc-aarch64-linux-gnu,
# gcc-i686-linux-gnu (and their libc6-dev-*-cross), flex, bison, bc,
# libelf-dev, libssl-dev, cpio, dwz, xz-utils.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export WORK=${WORK:-/var/tmp/ksminspect-build}
only=${1:-}   # optional: one dump name
start=$(date +%s)

arch_of() { awk -F'\t' -v n="$1" '!/^#/ && $1 == n {print $3}' "$here/kernels.tsv"; }
image_file() { case $(arch_of "$1") in arm64) echo Image ;; *) echo bzImage ;; esac; }
kernels=$(awk -F'\t' -v only="$only" '!/^#/ && (only == "" || $1 == only) {print $2}' "$here/dumps.tsv" | sort -u)

"$here/scripts/fetch-sources.sh"
for k in $kernels; do
    [ -f "$WORK/build/$k/$(image_file "$k")" ] || "$here/scripts/build-kernel.sh" "$k"
done

# The workload as /init, one initramfs per architecture.
for arch in $(for k in $kernels; do arch_of "$k"; done | sort -u); do
    case $arch in
        x86_64) cc=gcc ;; i386) cc=i686-linux-gnu-gcc ;; arm64) cc=aarch64-linux-gnu-gcc ;;
    esac
    root=$WORK/initrd-$arch
    mkdir -p "$root/dev" "$root/proc" "$root/sys"
    $cc -static -O2 -Wall -o "$root/init" "$here/scripts/ksm-workload.c"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -9 >"$WORK/init-$arch.cpio.gz")
done

grep -v '^#' "$here/dumps.tsv" | while IFS=$'\t' read -r name kernel numa format memory also append; do
    [ -n "$only" ] && [ "$only" != "$name" ] && continue
    arch=$(arch_of "$kernel")
    out=$WORK/dumps/$name
    rm -rf "$out" "$WORK/dumps/$also"
    if [[ $format == makedumpfile* ]]; then  # the kernel captures its own crash
        [ "$also" = - ] || mkdir -p "$WORK/dumps/$also"
        suite=own; [[ $format == makedumpfile-sid:* ]] && suite=sid
        MEMORY=$memory CRASHKERNEL=96M MAKEDUMPFILE_SUITE=$suite bash "$here/scripts/crash-capture.sh" \
            "$out" "$WORK/build/$kernel/$(image_file "$kernel")" "${format#*:}" "$append" \
            "$([ "$also" = - ] || echo "elf=$WORK/dumps/$also/vmcore")" </dev/null
    else
        python3 "$here/scripts/make-dump.py" --kernel "$WORK/build/$kernel/$(image_file "$kernel")" \
            --initrd "$WORK/init-$arch.cpio.gz" --arch "$arch" --out "$out" --numa "$numa" \
            --memory "$memory" $([ "$format" = elf-paging ] && echo --paging) \
            $([ "$format" = kdump-zlib ] && echo --format kdump-zlib) \
            $([ "$format" = elf-la57 ] && echo --cpu qemu64,+la57) --append "$append" </dev/null
    fi
    mkdir -p "$here/$name"
    [ "$also" = - ] || mkdir -p "$here/$also"
    python3 - "$out/truth.json" "$here" "$name" "$kernel" "$format" "$also" <<'PY'
import json, os, sys
path, here, name, kernel, fmt, also = sys.argv[1:]
truth = json.load(open(path))
truth["name"], truth["kernel"] = name, kernel
if fmt == "elf-refused":  # a dump ksminspect must refuse with a sentence
    truth["refused"] = True
dumps = {name: truth}
if also != "-":  # QEMU's ELF of the state the capture was taken of
    capture = {k: v for k, v in truth["dump"].items() if not k.startswith(("makedumpfile", "capture"))}
    twin = {k: v for k, v in truth.items() if k != "partial"}  # QEMU's dump lacks nothing
    dumps[also] = dict(twin, name=also, dump=dict(capture, format="elf", before_crash_of=name))
for n, t in dumps.items():
    with open(os.path.join(here, n, "truth.json"), "w") as f:
        json.dump(t, f, indent=1, sort_keys=True)
        f.write("\n")
PY
    xz -T2 -9 -c "$out/vmcore" >"$here/$name/vmcore.xz"
    [ "$also" = - ] || xz -T2 -9 -c "$WORK/dumps/$also/vmcore" >"$here/$also/vmcore.xz"
done

# Debug info: DWARF types and symbols, without line tables and location lists.
for k in $kernels; do
    dst=$here/kernels/$k/vmlinux.debug.xz
    [ -f "$dst" ] && [ "$dst" -nt "$WORK/build/$k/vmlinux" ] && continue
    mkdir -p "$here/kernels/$k"
    case $(arch_of "$k") in arm64) objcopy=aarch64-linux-gnu-objcopy ;; *) objcopy=objcopy ;; esac
    cp "$WORK/build/$k/vmlinux" "$WORK/build/$k/vmlinux.dwz"
    dwz -q "$WORK/build/$k/vmlinux.dwz" || true
    # Line tables and location lists are not needed; DWARF 4 kernels keep
    # section symbols that refer to them, so there they stay.
    $objcopy --only-keep-debug --remove-section=.debug_loclists --remove-section=.debug_line \
        "$WORK/build/$k/vmlinux.dwz" "$WORK/build/$k/vmlinux.debug" 2>/dev/null ||
    $objcopy --only-keep-debug "$WORK/build/$k/vmlinux.dwz" "$WORK/build/$k/vmlinux.debug"
    xz -T2 -9e -c "$WORK/build/$k/vmlinux.debug" >"$dst"
done
# The live tests boot these kernels (tests/test_live.py, tests/test_live_seed.py)
# with the debug info above: the same build (scripts/build-kernel.sh, builds.tsv);
# 7.2-rmap's image is kept beside its debug info likewise.
for k in 6.12 7.2-seed 7.2-rmap; do
    if [ -f "$WORK/build/$k/bzImage" ]; then cp "$WORK/build/$k/bzImage" "$here/kernels/$k/bzImage"; fi
done
echo "make-all: done in $(( $(date +%s) - start )) s"
du -sh "$here"
