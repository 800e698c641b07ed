#!/bin/bash
# Starts Bio-Formats cache regeneration GENERATION detached, once: it refuses
# a generation whose run has finished, does nothing while it runs, and
# starts nothing while a node or the database still waits for software from
# IDR's deployment playbooks (run.sh --check prints that one line).
# Shipped verbatim (components/files/bfcache); settings from bfcache.conf;
# run as root by `pulumi up`.
set -euo pipefail
# shellcheck source=/dev/null
. "${BFCACHE_CONF:-/etc/idr-bfcache/bfcache.conf}"
: "${state_dir:?}" "${run_script:?}"   # set by bfcache.conf
run=$run_script

generation=${1:-}
case "$generation" in
    '' | *[!0-9]*) echo "usage: $0 GENERATION" >&2; exit 2 ;;
esac
dir="$state_dir/$generation"
unit="idr-bfcache-$generation.service"

complete() {
    # Finished, or every image of the ID list has a result line.
    [ -e "$dir/finished" ] && return 0
    [ -s "$dir/ids.txt" ] && [ -s "$dir/results.csv" ] || return 1
    awk -F'[|,]' 'FNR == NR { want[$1] = 1; n++; next }
                  ($1 in want) && !($1 in seen) { seen[$1] = 1; got++ }
                  END { exit !(n > 0 && got >= n) }' "$dir/ids.txt" "$dir/results.csv"
}

if complete; then
    echo "bfcache: generation $generation has run to completion; not starting it again"
    exit 0
fi
if systemctl is-active --quiet "$unit"; then
    echo "bfcache: generation $generation is running"
    exit 0
fi
if [ ! -x /usr/bin/python3 ]; then
    dnf -y -q install python3
fi
# The dispatcher starts its masters through setpriv (util-linux).
command -v setpriv > /dev/null || dnf -y -q install util-linux
ready=0
"$run" --check || ready=$?
case "$ready" in
    0) ;;
    1) exit 0 ;;   # waiting: the line is printed; a deploymentGeneration bump runs this again
    *) exit "$ready" ;;
esac
# One regeneration at a time: a newer generation supersedes an older run,
# and a subset run started by hand.
systemctl list-units --plain --no-legend 'idr-bfcache-*.service' \
    | while read -r other _; do
        if [ "$other" != "$unit" ]; then
            systemctl stop "$other"
        fi
    done
systemctl reset-failed "$unit" 2> /dev/null || true
systemd-run --unit "$unit" --description "IDR Bio-Formats cache regeneration $generation" \
    --setenv=HOME=/root -p Nice=5 "$run" "$generation"
echo "bfcache: started generation $generation as $unit; idr-bfcache-status shows progress"
