#!/usr/bin/env bash
# Download Debian's linux-source packages for every fixture kernel into $WORK/src.
# The older (bullseye) and newer (sid) suites are reached through a private
# sources file and lists directory so the machine's own apt state is untouched.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/apt-own.sh"
WORK=${WORK:-/var/tmp/ksminspect-build}
mkdir -p "$WORK/src" "$WORK/apt/lists/partial"
cd "$WORK/src"
mirror=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}
cat >"$WORK/apt/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main
SRC
aptx=(apt-get -q -o Dir::Etc::SourceList="$WORK/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o Dir::State::Lists="$WORK/apt/lists" -o Dir::Cache::archives="$WORK/apt")
"${aptx[@]}" update >/dev/null
get() {  # get PACKAGE [APT...]: download the .deb unless it is already here
    local pkg=$1; shift
    ls "$pkg"_*.deb >/dev/null 2>&1 || "$@" download "$pkg"
}
get linux-source-5.10 "${aptx[@]}"
get linux-source-7.2 "${aptx[@]}"
get linux-source-6.1 apt_own
get linux-source-6.12 apt_own
for deb in linux-source-*.deb; do
    v=${deb#linux-source-}; v=${v%%_*}
    [ -d "linux-$v" ] && continue
    dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards '*/linux-source-*.tar.xz' | tar -xJ
    [ -d "linux-source-$v" ] && mv "linux-source-$v" "linux-$v"
done
ls -d "$WORK"/src/linux-*/
