# Sourced by the live guests' PID 1 scripts (guest-init.sh, seed-init.sh):
# the root file system is the host's, read-only over 9p, and paths come from
# the kernel command line as environment variables (KSMI_*). Mounts what a
# PID 1 needs, and gives ksminspect() and section(): everything the host
# needs is printed on the console between markers.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
# /tmp stays the host's (read-only): the paths below may live there.
export HOME=/run KSMINSPECT_CACHE=/run/cache
# the console is a terminal, but nobody pages through it
export KSMINSPECT_PAGER=cat
cd /run
echo "KSMI-BOOTED $(uname -r) $(cut -d' ' -f1 /proc/uptime)"
ksm=/sys/kernel/mm/ksm
ksminspect() { "$KSMI_VENV/bin/ksminspect" -s "$KSMI_DEBUG" "$@"; }

section() {  # section NAME COMMAND...: stdout framed by markers with the exit code
    name=$1; shift
    t0=$(cut -d' ' -f1 /proc/uptime)
    echo "KSMI-BEGIN $name"
    "$@" 2>/run/stderr
    echo "KSMI-END $name rc=$?"
    sed "s/^/KSMI-STDERR $name: /" /run/stderr
    echo "KSMI-TIME $name $t0 $(cut -d' ' -f1 /proc/uptime)"  # uptime in s at start and end
}
