#!/usr/bin/env bash
# Record the offsets of KSM's structures from real debug info of layouts no
# committed dump covers: mm/ksm.o built for i386 (32-bit) from Debian's 5.10
# and from 7.2 with the seed patch. gdb reads the offsets from the object's
# DWARF. Output: tests/data/layouts/<name>.json. Needs fetch-sources.sh first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
vmcores=$here/../../vmcores
WORK=${WORK:-/var/tmp/ksminspect-build}

offsets() {  # offsets OBJ STRUCT MEMBER...: a JSON object of offsets and size
    local obj=$1 struct=$2; shift 2
    local args=(-ex "echo @sizeof=" -ex "print sizeof(struct $struct)")
    for m in "$@"; do
        args+=(-ex "echo @$m=" -ex "print (long)&((struct $struct *)0)->$m")
    done
    # A member this build lacks makes gdb print an error: it is left out.
    gdb -batch -nx "${args[@]}" "$obj" 2>&1 | python3 -c "
import json, re, sys
out = {}
for name, value in re.findall(r'@(\w+)=(?:\\$\d+ = (-?\d+))?', sys.stdin.read()):
    if value:
        out[name] = int(value)
print(json.dumps(out))"
}

build_ksm_o() {  # build_ksm_o SRC OUT: mm/ksm.o for i386 with DWARF
    local src=$1 out=$2
    mkdir -p "$out"
    make -s -C "$src" O="$out" ARCH=i386 tinyconfig >/dev/null
    cat >"$out/frag.config" <<CFG
CONFIG_MMU=y
CONFIG_KSM=y
CONFIG_SMP=y
CONFIG_X86_BIGSMP=y
CONFIG_NUMA=y
CONFIG_HIGHMEM64G=y
CONFIG_X86_PAE=y
CONFIG_DEBUG_INFO=y
CONFIG_DEBUG_INFO_DWARF4=y
CONFIG_SLUB=y
CONFIG_SLOB=n
CFG
    "$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$out/frag.config" >/dev/null
    make -s -C "$src" O="$out" ARCH=i386 olddefconfig >/dev/null
    make -s -C "$src" O="$out" ARCH=i386 -j"$(nproc)" mm/ksm.o >/dev/null
}

record() {  # record NAME SRC TAGPREFIX
    local name=$1 src=$2 p=$3 out=$WORK/layouts/$1
    build_ksm_o "$src" "$out"
    local obj=$out/mm/ksm.o
    local seed=
    grep -q 'unsigned long vm_pgoff;' "$src/mm/ksm.c" && seed=vm_pgoff
    python3 - "$here/layouts/$name.json" <<PY
import json, sys
def load(s): return json.loads(s)
data = {
  "source": "$name: mm/ksm.o built with ARCH=i386 from $(basename "$src"), offsets read by gdb from its DWARF",
  "pointer_size": 4,
  "rmap_item": load('''$(offsets "$obj" ${p}rmap_item rmap_list anon_vma nid mm address oldchecksum node head hlist \
      $(grep -q 'rmap_age_t age;' "$src/mm/ksm.c" && echo age remaining_skips) $seed)'''),
  "stable_node": load('''$(offsets "$obj" ${p}stable_node node head hlist_dup list hlist kpfn rmap_hlist_len nid)'''),
  "seed_member": "$seed" or None,
}
json.dump(data, open(sys.argv[1], "w"), indent=1)
PY
}

bash "$vmcores/scripts/fetch-sources.sh" >/dev/null
record i386-5.10 "$WORK/src/linux-5.10" ""
if [ ! -d "$WORK/src/linux-7.2-seed" ]; then
    cp -a "$WORK/src/linux-7.2" "$WORK/src/linux-7.2-seed"
    patch -d "$WORK/src/linux-7.2-seed" -p1 <"$vmcores/patches/7.2-ksm-vm_pgoff-seed-v4.patch"
fi
record i386-7.2-seed "$WORK/src/linux-7.2-seed" ksm_
ls -la "$here/layouts"
