#!/bin/sh
# hotmesh container entrypoint (after tini): check that the folders the daemon needs are usable by the container's
# user, then run the command (CMD: hotmesh run). Bind-mounted ./inbox and ./outbox keep the host's ownership, and
# a daemon that cannot write its outbox or state would otherwise fail job after job with permission errors; this
# stops at once with what to run on the host instead.
#
#   HOTMESH_INBOX  must be readable (writable only for ops.inbox_after = move | delete; `hotmesh cancel` then
#                  writes its marker to the state folder)
#   HOTMESH_OUTBOX must be writable
#   HOTMESH_STATE  must be writable
# Variables that are not set are not checked (the Ray head and worker containers set none).
set -eu

uid=$(id -u)
gid=$(id -g)
fail=0

fix_hint() {
    echo "hotmesh:   fix on the host: sudo chown -R $uid:$gid <the folder mounted at $1>" >&2
    echo "hotmesh:   or build the image for your user: HOTMESH_UID=\$(id -u) HOTMESH_GID=\$(id -g) docker compose build" >&2
}

check_dir() {  # $1 variable name, $2 path, $3 "read" or "write"
    [ -n "$2" ] || return 0
    if [ ! -d "$2" ] && ! mkdir -p "$2" 2>/dev/null; then
        echo "hotmesh: $1=$2 does not exist and user $uid:$gid cannot create it" >&2
        fix_hint "$(dirname "$2")"
        fail=1
        return 0
    fi
    owner=$(stat -c '%u:%g' "$2" 2>/dev/null || echo unknown)
    if [ "$3" = write ] && ! { [ -w "$2" ] && [ -x "$2" ]; }; then
        echo "hotmesh: $1=$2 (owner $owner) is not writable by the container user $uid:$gid" >&2
        fix_hint "$2"
        fail=1
    elif ! { [ -r "$2" ] && [ -x "$2" ]; }; then
        echo "hotmesh: $1=$2 (owner $owner) is not readable by the container user $uid:$gid" >&2
        fix_hint "$2"
        fail=1
    elif [ "$3" = read ] && ! [ -w "$2" ]; then
        echo "hotmesh: note: $1=$2 is read-only for $uid:$gid; fine with ops.inbox_after = keep (the default)" >&2
    fi
}

check_dir HOTMESH_INBOX "${HOTMESH_INBOX:-}" read
check_dir HOTMESH_OUTBOX "${HOTMESH_OUTBOX:-}" write
check_dir HOTMESH_STATE "${HOTMESH_STATE:-}" write
if [ "$fail" != 0 ]; then
    exit 78  # EX_CONFIG: a setup problem, not a crash
fi
exec "$@"
