#!/bin/bash
# Bio-Formats cache regeneration, driven from the coordinator (the proxy).
#   run.sh RUN                    a generation (a number) or a subset (a name
#                                 whose state directory holds `subset`)
#   run.sh --retry-failures RUN   a finished run's images whose last result
#                                 is fail or cancel, recorded in its results
#   run.sh --check                0 when every node and the database are
#                                 ready; 1 (and one line) while waiting for
#                                 software from IDR's deployment playbooks
# start.sh and idr-bfcache-start run it detached (systemd-run). Run again, it
# continues where it stopped: results.csv has one line per finished image,
# written as each image ends, and only images without an ok/fill/miss line
# are run again (failed ones are retried). The dispatcher (dispatch.py) runs
# the lanes of every node and chooses each lane's images from the node speeds
# it measures; each image is retried on its node (render-one.sh).
# Shipped verbatim (components/files/bfcache); settings from bfcache.conf.
set -euo pipefail
# shellcheck source=/dev/null
. "${BFCACHE_CONF:-/etc/idr-bfcache/bfcache.conf}"
# Set by bfcache.conf:
: "${state_dir:?}" "${nodes_file:?}" "${ssh_config:?}" "${ssh_user:?}" "${dispatch:?}" "${database_login:?}"
: "${node_ready:?}" "${ready:?}" "${keep_generations:?}" "${waiting_omero:?}" "${waiting_psql:?}"

say() { echo "bfcache: $*"; }

# The database host's authorized_keys forces this key to run ids.sh; no
# shared connection there.
db() { ssh -F "$ssh_config" -o ControlMaster=no -o ControlPath=none "$database_login" "$@"; }

check_ready() {
    # The coordinator's own part first. The dispatcher compiled now: a file
    # Python cannot compile stops the start here, and the first run after an
    # install does not compile it (~20 ms) before its first connection.
    # setpriv starts the dispatcher's masters.
    if ! /usr/bin/python3 -I -m py_compile "$dispatch"; then
        say "cannot compile $dispatch" >&2
        return 2
    fi
    if ! command -v setpriv > /dev/null; then
        say "setpriv (util-linux) is missing on the coordinator" >&2
        return 2
    fi
    # Every node holds the ready marker of its node-setup step (omero and
    # omero-cli-render in place) and the database has psql.
    local address name waiting=() out rc
    while read -r address name _; do
        case "$address" in '' | '#'*) continue ;; esac
        rc=0
        out=$(ssh -F "$ssh_config" -o ControlMaster=no -o ControlPath=none "$ssh_user@$address" \
            cat "$node_ready" 2> /dev/null < /dev/null) || rc=$?
        if [ "$rc" -eq 255 ]; then
            say "cannot reach $name ($address) over ssh" >&2
            return 2
        fi
        [ "$out" = "$ready" ] || waiting+=("$name")
    done < "$nodes_file"
    if [ -n "${waiting[*]}" ]; then
        local IFS=,
        # shellcheck disable=SC2059 # the format is the waiting line
        printf "$waiting_omero\n" "${waiting[*]}"
        return 1
    fi
    rc=0
    out=$(db check < /dev/null 2> /dev/null) || rc=$?
    if [ "$rc" -ne 0 ]; then
        say "cannot run the ID query's check on $database_login" >&2
        return 2
    fi
    if [ "$out" != ready ]; then
        echo "$waiting_psql"
        return 1
    fi
}

prune() {
    # Keep the state of the newest generations only (subset runs stay).
    # Counted with a glob first: no process at the end of most runs.
    local dirs=("$state_dir"/[0-9]*/)
    [ "${#dirs[@]}" -gt "$keep_generations" ] || return 0
    find "$state_dir" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' -printf '%f\n' \
        | sort -n | head -n "-$keep_generations" \
        | while read -r old; do rm -rf -- "${state_dir:?}/$old"; done
}

failures() {
    # Images whose last result is fail or cancel.
    awk -F, '{ last[$1] = $3 } END { for (i in last) if (last[i] == "fail" || last[i] == "cancel") n++; print n + 0 }' \
        "$1/results.csv"
}

main() {
    local retry=
    case "${1:-}" in
        --check) check_ready; return ;;
        --retry-failures) retry=--retry-failures; shift ;;
    esac
    local run=${1:-}
    case "$run" in
        '' | *[!a-z0-9-]* | -*) echo "usage: $0 [--retry-failures] RUN | --check" >&2; return 2 ;;
    esac
    local dir="$state_dir/$run"
    [ -d "$dir" ] || install -d -m 0750 "$dir"
    if [ -n "$retry" ] && [ ! -e "$dir/finished" ]; then
        say "run $run has not finished: start it again instead (it retries its failures)" >&2
        return 2
    fi
    if [ -z "$retry" ] && [ -e "$dir/finished" ]; then
        say "generation $run already finished"
        return 0
    fi
    case "$run" in
        *[!0-9]*) [ -s "$dir/subset" ] || { say "run $run is neither a generation nor a subset" >&2; return 2; } ;;
    esac
    # Builtins only until the dispatcher runs: every millisecond before the
    # first hand-out is lost in full.
    [ -s "$dir/started" ] || printf '%(%s)T\n' -1 > "$dir/started"
    : >> "$dir/results.csv"
    : >> "$dir/jobs.csv"
    # The dispatcher fetches the ID list (once) while it connects to the
    # nodes, then runs every lane until each image has a result.
    local rc=0
    # Imported, not run as a script: Python then keeps its compiled code.
    /usr/bin/python3 -I -S -c 'import sys; sys.path.insert(0, sys.argv[1]); import dispatch; sys.exit(dispatch.main(sys.argv[2:]))' \
        "${dispatch%/*}" run "$dir" $retry || rc=$?
    if [ "$rc" -ne 0 ]; then
        say "run $run interrupted (dispatcher exit $rc); run again to continue" >&2
        return "$rc"
    fi
    printf '%(%s)T\n' -1 > "$dir/finished"
    prune
    say "run $run finished with $(failures "$dir") failed image(s)"
}

main "$@"
exit
