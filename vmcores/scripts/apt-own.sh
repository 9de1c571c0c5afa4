# Sourced: apt_own APT-GET-ARGS... runs apt-get on the machine's own suites.
# A fresh machine's package lists may predate the package: update once, retry.
apt_own() {
    apt-get -q "$@" 2>/dev/null || { apt-get update -qq && apt-get -q "$@"; }
}

# apt_other apt-get|apt-cache ARGS...: the same on Debian's older (bullseye)
# and newest (sid) suites, through a private sources file and lists
# directory under $WORK/apt, so the machine's own apt state is untouched.
apt_other() {
    local dir=${WORK:-/var/tmp/ksminspect-build}/apt tool=$1; shift
    local opts=(-o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
                -o Dir::State::Lists="$dir/lists" -o Dir::Cache::archives="$dir")
    if [ ! -f "$dir/updated" ]; then
        local mirror
        mirror=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' \
                 /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
        mirror=${mirror:-http://deb.debian.org/debian}
        mkdir -p "$dir/lists/partial"
        cat >"$dir/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main
SRC
        apt-get -q "${opts[@]}" update >/dev/null && touch "$dir/updated"
    fi
    "$tool" -q "${opts[@]}" "$@"
}

# image_of META: the kernel image package a Debian meta-package points at now.
image_of() {
    apt_own install --simulate "$1" >/dev/null
    apt-cache depends "$1" | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1
}
