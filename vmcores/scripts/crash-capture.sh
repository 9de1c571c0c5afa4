#!/usr/bin/env bash
# crash-capture.sh OUT KERNEL "MAKEDUMPFILE OPTIONS" "KSMW PARAMETERS" [ALSO]
#
# A dump taken the way a distribution takes one. KERNEL (a Debian
# linux-image .deb, or a fixture kernel's bzImage built with MAGIC_SYSRQ,
# CRASH_DUMP and VIRTIO_BLK) boots under QEMU with crashkernel= reserved;
# the KSM workload (ksm-workload.c, ksmw.capture=) loads the same kernel as
# its capture kernel with kexec -p, builds its state, records the truth and
# crashes the kernel through /proc/sysrq-trigger; the capture kernel runs
# Debian's makedumpfile on /proc/vmcore with the given options, flattened
# (-F) onto a raw virtio disk, and powers off; on the host the same
# makedumpfile reassembles it (-R) into OUT/vmcore. OUT/truth.json records
# the truth, the makedumpfile options and version; a dump named *-old is one
# by a makedumpfile older than the kernel ("partial": it may leave out some
# of KSM's memory). ALSO (FORMAT=FILE, e.g.
# elf=OUT/qemu.elf) is QEMU's dump of the same state, taken before the crash.
#
# Environment: MEMORY (MB, default 1024) and CRASHKERNEL (default 256M);
# MAKEDUMPFILE_SUITE: "own" (default: the machine's Debian suite, as the
# crashed host would have it) or "sid" (Debian's newest makedumpfile, with
# its own C library). makedumpfile, kexec-tools and busybox-static come
# from that suite, with the libraries they need. Needs: qemu-system-x86,
# gcc, cpio, apt access.
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
image=$(realpath "$2")
options=$3
append=$4
also=(); [ -z "${5:-}" ] || also=(--also "$5")
suite=${MAKEDUMPFILE_SUITE:-own}
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-/var/tmp/ksminspect-build}/capture
mkdir -p "$work"
cd "$work"
. "$here/apt-own.sh"
case $suite in
    own) apt_get=(apt_own) apt_cache=(apt-cache) ;;
    sid) apt_get=(apt_other apt-get) apt_cache=(apt_other apt-cache) ;;
    *) echo "crash-capture: MAKEDUMPFILE_SUITE is own or sid, not $suite" >&2; exit 1 ;;
esac

# The tools and the library packages they depend on (the C library and its
# loader among them), unpacked side by side; run with that loader.
stage=$work/stage-$suite
if [ ! -f "$stage/done" ]; then
    rm -rf "$stage" "debs-$suite" && mkdir -p "$stage" "debs-$suite"
    libs=$("${apt_cache[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
           --no-breaks --no-replaces --no-enhances makedumpfile kexec-tools |
           grep -E '^lib[^<]*$' | sort -u)
    (cd "debs-$suite" && "${apt_get[@]}" download makedumpfile kexec-tools busybox-static $libs \
        >/dev/null 2>&1)
    for d in "debs-$suite"/*.deb; do dpkg-deb -x "$d" "$stage"; done
    touch "$stage/done"
fi
tool() { find "$stage" -path "*bin/$1" -type f | head -n1; }  # /usr merged or not
loader=$(find "$stage" -name ld-linux-x86-64.so.2 -type f | head -n1)
libpath=$stage/lib/x86_64-linux-gnu:$stage/usr/lib/x86_64-linux-gnu
missing=$(for b in "$(tool makedumpfile)" "$(tool kexec)"; do
              "$loader" --library-path "$libpath" --list "$b"; done | awk '/not found/ {print $1}' | sort -u)
[ -z "$missing" ] || { echo "crash-capture: libraries not found: $missing" >&2; exit 1; }
mdf() { "$loader" --library-path "$libpath" "$(tool makedumpfile)" "$@"; }

# copy_with_libs ROOT BINARY DEST: the binary, its libraries and the loader into ROOT
copy_with_libs() {
    install -D "$2" "$1$3"
    "$loader" --library-path "$libpath" --list "$2" | awk '$3 ~ /^\// {print $3}' |
        while read -r lib; do
            install -D "$(realpath "$lib")" "$1/lib/x86_64-linux-gnu/$(basename "$lib")"
        done
    install -D "$loader" "$1/lib64/ld-linux-x86-64.so.2"
}

# The kernel: a Debian package's (with its modules), or a fixture kernel's image.
if [[ $image == *.deb ]]; then
    release=$(dpkg-deb -f "$image" Package | sed 's/^linux-image-//')
    kernel=$work/kernel-$release
    rm -rf "$kernel" && mkdir -p "$kernel"
    dpkg-deb -x "$image" "$kernel"
    vmlinuz=$kernel/boot/vmlinuz-$release
else
    release=$(basename "$(dirname "$image")")
    kernel=$work/kernel-$release
    rm -rf "$kernel" && mkdir -p "$kernel/lib/modules"
    vmlinuz=$image
fi

# The capture kernel's initramfs: busybox, makedumpfile, the virtio modules.
cap=$work/capture-root
rm -rf "$cap" && mkdir -p "$cap/bin" "$cap/proc" "$cap/sys" "$cap/dev" "$cap/modules"
install "$(tool busybox)" "$cap/bin/busybox"
for a in sh mount insmod poweroff tr sleep echo cat mkdir; do ln -s busybox "$cap/bin/$a"; done
copy_with_libs "$cap" "$(tool makedumpfile)" /bin/makedumpfile
# virtio_blk and what it needs, in the order their depends= (modinfo) asks
want="virtio_blk virtio_pci"
order=""
while [ -n "$want" ]; do
    m=${want%% *}; want=${want#"$m"}; want=${want# }
    case " $order " in *" $m "*) continue ;; esac
    f=$(find "$kernel/lib/modules" -name "$m.ko*" | head -n1)
    [ -n "$f" ] || continue  # built in
    case $f in  # busybox's insmod takes them uncompressed
        *.xz) xz -dc "$f" >"$cap/modules/$m.ko" ;;
        *.zst) zstd -qdc "$f" >"$cap/modules/$m.ko" ;;
        *) cp "$f" "$cap/modules/$m.ko" ;;
    esac
    deps=$(strings "$cap/modules/$m.ko" | sed -n 's/^depends=//p' | tr ',' ' ')
    pending=$(for d in $deps; do case " $order " in *" $d "*) ;; *) echo "$d" ;; esac; done)
    if [ -n "$pending" ]; then want="$(echo $pending) $m $want"; continue; fi
    order="$order $m"
done
echo "$order" >"$cap/modules/order"
cat >"$cap/init" <<'SH'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp
for m in $(cat /modules/order); do insmod /modules/$m.ko; done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done
options=$(cat /proc/cmdline | tr ' ' '\n' | sed -n 's/^ksmcap.mdf=//p' | tr ',' ' ')
echo "KSMINSPECT-CAPTURE: makedumpfile $options -F /proc/vmcore"
makedumpfile $options -F /proc/vmcore >/dev/vda
echo "KSMINSPECT-CAPTURE-DONE $?"
poweroff -f
SH
ln -s busybox "$cap/bin/sed"
chmod +x "$cap/init"
(cd "$cap" && find . | cpio -o -H newc --quiet | gzip -9 >"$work/capture.cpio.gz")

# The first kernel's initramfs: the workload, kexec, and the capture kernel.
first=$work/first-root
rm -rf "$first" && mkdir -p "$first/dev" "$first/proc" "$first/sys" "$first/capture"
gcc -static -O2 -Wall -o "$first/init" "$here/ksm-workload.c"
copy_with_libs "$first" "$(tool kexec)" /capture/kexec
cp "$vmlinuz" "$first/capture/vmlinuz"
cp "$work/capture.cpio.gz" "$first/capture/initrd.img"
(cd "$first" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/first.cpio.gz")

disk=$work/disk.img
rm -f "$disk" && truncate -s 1G "$disk"
start=$(date +%s)
python3 "$here/make-dump.py" --kernel "$vmlinuz" --initrd "$work/first.cpio.gz" --out "$out" \
    --memory "${MEMORY:-1024}" --capture "$disk" "${also[@]}" \
    --append "crashkernel=${CRASHKERNEL:-256M} init_on_free=1 ksmw.capture=$(echo "$options" | tr ' ' ',') $append" </dev/null
rm -f "$out/vmcore"
mdf -R "$out/vmcore" <"$disk" >/dev/null
rm -f "$disk"
python3 - "$out/truth.json" "$options" "$(mdf -v 2>&1 | head -n1)" "$(( $(date +%s) - start ))" \
    "$release" <<'PY'
import json, os, sys
path, options, version, seconds, capture_kernel = sys.argv[1:]
truth = json.load(open(path))
truth["dump"].update(format="makedumpfile", makedumpfile=options, makedumpfile_version=version,
                     capture_seconds=int(seconds), capture_kernel=capture_kernel)
if os.path.basename(os.path.dirname(path)).removesuffix(".part").endswith("-old"):
    truth["partial"] = "a makedumpfile older than the kernel left out some of KSM's slab pages"
json.dump(truth, open(path, "w"), indent=1, sort_keys=True)
PY
ls -la "$out/vmcore"
