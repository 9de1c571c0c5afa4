#!/usr/bin/env bash
# distro-dumps.sh OUT: dumps of Debian's own distribution kernels (the cloud
# flavour: KASLR, hardened SLUB freelists, memcg, NUMA, modules), booted under
# QEMU with the KSM workload as /init. Not committed: the debug files are
# ~350 MB each. The tests pick them up from $KSMINSPECT_EXTRA_DUMPS=OUT.
#
# The guest does not load the qemu_fw_cfg module, so the dumps carry no
# VMCOREINFO note, as a `virsh dump` of such a guest would not: ksminspect
# finds the copy in the guest's memory.
# Needs: apt access to the machine's Debian suites, qemu-system-x86, gcc, cpio.
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
cd "$out"

. "$here/apt-own.sh"

if [ ! init.cpio.gz -nt "$here/ksm-workload.c" ]; then  # a new workload: new dumps
    mkdir -p initrd/dev initrd/proc initrd/sys
    gcc -static -O2 -Wall -o initrd/init "$here/ksm-workload.c"
    (cd initrd && find . | cpio -o -H newc --quiet | gzip -9 >../init.cpio.gz)
fi

# name  meta-package  numa  also  kernel command line (ksmw.*: see ksm-workload.c)
# also: another format of the same guest state, in NAME-FORMAT/ (- for none)
while read -r name meta numa also append; do
    done_=$name/truth.json
    [ "$also" = - ] || done_=$name-$also/truth.json
    [ -f "$done_" ] && [ "$done_" -nt init.cpio.gz ] && continue
    image=$(image_of "$meta")
    [ -n "$image" ] || { echo "distro-dumps: $meta points at no kernel image" >&2; exit 1; }
    ls "$image"_*.deb >/dev/null 2>&1 || apt_own download "$image"
    ls "$image-dbg"_*.deb >/dev/null 2>&1 || apt_own download "$image-dbg"
    release=${image#linux-image-}
    rm -rf "$name" && mkdir -p "$name"
    dpkg-deb --fsys-tarfile "$image"_*.deb | tar -xO "./boot/vmlinuz-$release" >"$name/vmlinuz"
    dpkg-deb --fsys-tarfile "$image-dbg"_*.deb |
        tar -xO "./usr/lib/debug/boot/vmlinux-$release" >"$name/vmlinux"
    extra=()
    if [ "$also" != - ]; then
        rm -rf "$name-$also" && mkdir -p "$name-$also"
        extra=(--also "$also=$name-$also/vmcore")
    fi
    dump() {
        python3 "$here/make-dump.py" --kernel "$name/vmlinuz" --initrd init.cpio.gz \
            --out "$name" --memory 512 --numa "$numa" "${extra[@]}" --append "$append" </dev/null
    }
    # A guest under TCG once ended early in CI (not seen in 6 runs since):
    # show why, and boot it once more.
    dump || { tail -n 20 "$name/console.log" >&2; echo "distro-dumps: $name: once more" >&2; dump; }
    python3 - "$name/truth.json" "$name" "$image" "$also" <<'PY'
import json, sys
path, name, image, also = sys.argv[1:]
truth = json.load(open(path))
truth.update(name=name, kernel=image, vmcore="vmcore", debug="vmlinux")
json.dump(truth, open(path, "w"), indent=1, sort_keys=True)
if also != "-":  # the same guest state in another format, the same debug info
    truth.update(name=f"{name}-{also}", debug=f"../{name}/vmlinux")
    truth["dump"] = dict(truth["dump"], format=also)
    json.dump(truth, open(f"{name}-{also}/truth.json", "w"), indent=1, sort_keys=True)
PY
done <<'LIST'
debian-6.1-cloud linux-image-cloud-amd64 0 kdump-zlib ksmw.max_page_sharing=4 ksmw.sharers=4 ksmw.chain=3 ksmw.cow=8 ksmw.exit=1
debian-6.12-cloud-numa linux-image-6.12-cloud-amd64 2 - ksmw.numa=2 ksmw.merge_across_nodes=0 ksmw.max_page_sharing=4 ksmw.use_zero_pages=1 ksmw.zero=16 ksmw.chain=3 ksmw.cow=8
LIST
# Crash-kernel captures, as distributions take them: of the 6.1 kernel with
# kdump-tools' makedumpfile -c (zlib), RHEL's -l (lzo), and a filtered ELF
# (-E), all at dump level 31; and of the 6.12 kernel by Debian 12's
# makedumpfile, older than that kernel: it leaves out some of KSM's slab
# pages ("partial": the counters cannot all be walked). Written elsewhere
# first: a directory appears here only whole.
# name  meta-package  the dump whose vmlinux it shares  makedumpfile options
while read -r name meta debug options; do
    [ -f "$name/truth.json" ] && [ "$name/truth.json" -nt init.cpio.gz ] && continue
    image=$(image_of "$meta")
    rm -rf "$name" "$name.part"
    bash "$here/crash-capture.sh" "$name.part" "$(ls "$out/$image"_*.deb)" "$options" \
        "ksmw.max_page_sharing=4 ksmw.sharers=4 ksmw.chain=3 ksmw.cow=8 ksmw.exit=1" >/dev/null
    python3 - "$name.part/truth.json" "$name" "$image" "$debug" <<'PY'
import json, sys
path, name, image, debug = sys.argv[1:]
truth = json.load(open(path))
truth.update(name=name, kernel=image, vmcore="vmcore", debug=f"../{debug}/vmlinux")
json.dump(truth, open(path, "w"), indent=1, sort_keys=True)
PY
    mv "$name.part" "$name"
done <<'LIST'
debian-6.1-cloud-mdf-c31 linux-image-cloud-amd64 debian-6.1-cloud -c -d 31
debian-6.1-cloud-mdf-l31 linux-image-cloud-amd64 debian-6.1-cloud -l -d 31
debian-6.1-cloud-mdf-E31 linux-image-cloud-amd64 debian-6.1-cloud -E -d 31
debian-6.12-cloud-mdf-old linux-image-6.12-cloud-amd64 debian-6.12-cloud-numa -c -d 31
LIST
ls -d "$out"/*/truth.json
