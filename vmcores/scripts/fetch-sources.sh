#!/usr/bin/env bash
# Download Debian's linux-source packages for every fixture kernel into $WORK/src:
# 6.1 and 6.12 from the machine's own suites, 5.10 and 7.2 from bullseye and sid.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/apt-own.sh"
WORK=${WORK:-/var/tmp/ksminspect-build}
mkdir -p "$WORK/src"
cd "$WORK/src"
get() {  # get PACKAGE [APT...]: download the .deb unless it is already here
    local pkg=$1; shift
    ls "$pkg"_*.deb >/dev/null 2>&1 || "$@" download "$pkg"
}
get linux-source-5.10 apt_other apt-get
get linux-source-7.2 apt_other apt-get
get linux-source-6.1 apt_own
get linux-source-6.12 apt_own
for deb in linux-source-*.deb; do
    v=${deb#linux-source-}; v=${v%%_*}
    [ -d "linux-$v" ] && continue
    dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards '*/linux-source-*.tar.xz' | tar -xJ
    [ -d "linux-source-$v" ] && mv "linux-source-$v" "linux-$v"
done
ls -d "$WORK"/src/linux-*/
