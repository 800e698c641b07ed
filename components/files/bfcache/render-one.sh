#!/bin/bash
# Bio-Formats cache jobs on an OMERO node: `omero render test --force` for
# each image, one after the other. The images (ID or ID:IMAGES) come from the
# arguments, or from BFCACHE_BATCH (ID:IMAGES,...), or, with BFCACHE_BATCH=-,
# one a line from stdin as the coordinator's dispatcher sends them (a lane of
# the run). Each is tried up to $attempts times (a busy server may cancel).
# One CSV line per image as soon as it is done, so the coordinator records it
# even if the job is killed later:
#   image,node,status,seconds,images-in-its-fileset
# Exits 1 if an image failed. omero reads nothing (stdin may be the lane's
# images). Per image only omero is started: its output goes to one file per
# lane, read back with bash's own `read`, and is capped (ulimit -f: an omero
# writing more than 4 MB is stopped, a fail). A hung omero must not hold its
# lane for the rest of a five-day run: one watchdog per lane (not a
# `timeout` per image) stops an omero running longer than job_timeout
# seconds (TERM, KILL a minute later), and ends with its lane. It finds the
# running omero itself (the lane's child, its age from `ps`, once a minute),
# so the image's path writes nothing for it. IDs are checked with a glob
# pattern, not a regex: bash compiles a `=~` regex at each test (~0.4 ms an
# image here).
# Shipped verbatim (components/files/bfcache); settings from node.conf.
set -uo pipefail
shopt -s extglob
# shellcheck source=/dev/null
. "${BFCACHE_NODE_CONF:-/etc/idr-bfcache/node.conf}"
: "${omero_bin:?}" "${job_timeout_seconds:?}" "${attempts:?}" "${public_password_file:?}"   # set by node.conf
node=${BFCACHE_NODE:-${PARALLEL_SSHHOST:-${HOSTNAME%%.*}}}
# The public user's password as the deployment step configured it; without
# that file, OMERO.web's default.
password=public
if [ -r "$public_password_file" ]; then
    IFS= read -r password < "$public_password_file" || true
fi
valid() {
    # ID[:IMAGES]: at most 18 digits, and 9.
    local id=${1%%:*} images=${1#*:}
    [ "$id" != "$1" ] || images=0
    if [[ $id != +([0-9]) || $images != +([0-9]) || ${#id} -gt 18 || ${#images} -gt 9 ]]; then
        echo "render-one: not an image ID: $1" >&2
        return 1
    fi
}
if [ "${BFCACHE_BATCH:-}" = - ]; then
    items=()
elif [ -n "${BFCACHE_BATCH:-}" ]; then
    IFS=, read -r -a items <<< "$BFCACHE_BATCH"
else
    items=("$@")
    if [ -z "${items[*]}" ]; then
        echo "usage: $0 ID[:IMAGES]... (or BFCACHE_BATCH=ID:IMAGES,... or BFCACHE_BATCH=-)" >&2
        exit 2
    fi
fi
for item in "${items[@]}"; do
    valid "$item" || exit 2
done

# omero's output: a new file created by bash itself (noclobber opens it
# O_EXCL, as mktemp does, without a process on the lane's start), on tmpfs
# where there is one: each image truncates and rewrites it, which cost
# ~0.25 ms an image on ext4 (measured), next to nothing on tmpfs.
umask 077   # the lane's files (omero's output) are its own, as mktemp's 0600
scratch=/dev/shm
[ -d "$scratch" ] && [ -w "$scratch" ] || scratch=${TMPDIR:-/tmp}
out=$scratch/bfcache-render-one.$$.$RANDOM$RANDOM
set -C
{ : > "$out"; } 2> /dev/null || { echo "render-one: cannot create $out" >&2; exit 2; }
set +C
lane=$$
every=$((job_timeout_seconds < 60 ? job_timeout_seconds : 60))
watchdog=
start_watchdog() {
    # Started once the lane's first omero runs (off the first image's path).
    # It waits with `read -t` on a FIFO nobody writes: no child process
    # that could outlive it (or hold the lane's output open).
    (
        mkfifo -m 0600 "$out.tick" && exec 3<> "$out.tick" > /dev/null || exit 2
        while :; do
            read -r -t "$every" -u 3 _
            # The lane was killed (its trap did not run): clear up after it.
            kill -0 "$lane" 2> /dev/null || { rm -f "$out" "$out.tick"; exit 0; }
            # The lane's children but this watchdog: the omero running now
            # (or the short sleep between two attempts).
            while read -r pid age; do
                if [ "$pid" != "$BASHPID" ] && [ "$age" -ge "$job_timeout_seconds" ] && kill -TERM "$pid" 2> /dev/null; then
                    echo "render-one: omero $pid ran longer than $job_timeout_seconds s: stopped" >&2
                    read -r -t "$every" -u 3 _
                    kill -KILL "$pid" 2> /dev/null
                fi
            done < <(ps -o pid=,etimes= --ppid "$lane")
        done
    ) < /dev/null &
    watchdog=$!
}
trap '[ -z "$watchdog" ] || kill "$watchdog" 2> /dev/null; rm -f "$out" "$out.tick"' EXIT
ulimit -f 4096

next() {
    # The next image: from the list, or a line of stdin.
    if [ "${BFCACHE_BATCH:-}" = - ]; then
        IFS= read -r item || return 1
        valid "$item" || { item=; return 0; }
    else
        [ -n "${items[index]+set}" ] || return 1
        item=${items[index]}
        index=$((index + 1))
    fi
}

# Worst first: an image with several pixel sets prints several lines.
declare -A rank=([fail]=5 [cancel]=4 [miss]=3 [fill]=2 [ok]=1)
failed=0
index=0
while next; do
    [ -n "$item" ] || continue
    id=${item%%:*}
    images=
    [ "$id" = "$item" ] || images=${item#*:}
    start=${EPOCHREALTIME/[.,]/}
    attempt=1
    while :; do
        "$omero_bin" render -s localhost -u public -w "$password" test --force "Image:$id" < /dev/null > "$out" 2>&1 &
        omero=$!
        [ -n "$watchdog" ] || start_watchdog
        wait "$omero"
        rc=$?
        status='' tail1='' tail2='' tail3=''
        while IFS= read -r line || [ -n "$line" ]; do
            word=${line%%:*}
            if [ "$word" != "$line" ] && [ -n "${rank[$word]+set}" ] \
                && { [ -z "$status" ] || [ "${rank[$word]}" -gt "${rank[$status]}" ]; }; then
                status=$word
            fi
            tail1=$tail2 tail2=$tail3 tail3=${line:0:300}
        done < "$out"
        if [ "$rc" -ne 0 ] || [ -z "$status" ]; then
            status=fail
        fi
        case "$status" in
            ok | fill | miss) break ;;
        esac
        if [ "$attempt" -ge "$attempts" ]; then
            break
        fi
        sleep "$attempt"
        attempt=$((attempt + 1))
    done
    us=$((${EPOCHREALTIME/[.,]/} - start))
    # Nobody to tell (the coordinator's session is gone): stop, do no more.
    printf '%s,%s,%s,%d.%06d,%s\n' "$id" "$node" "$status" $((us / 1000000)) $((us % 1000000)) "$images" \
        || exit 3
    case "$status" in
        ok | fill | miss) ;;
        *)
            printf '%s\n' "$tail1" "$tail2" "$tail3" | sed '/^$/d' >&2
            failed=1 ;;
    esac
done
exit "$failed"
