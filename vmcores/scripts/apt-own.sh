# Sourced: apt_own APT-GET-ARGS... runs apt-get on the machine's own suites.
# A fresh machine's package lists may predate the package: update once, retry.
apt_own() {
    apt-get -q "$@" 2>/dev/null || { apt-get update -qq && apt-get -q "$@"; }
}
