#!/usr/bin/env bash
# Stop the services tests/infra/up.sh started, and only those: each is found
# through its pid file under .infra and checked against its command line
# before any signal is sent. Graceful first, SIGKILL after a bounded wait.
# Succeeds when nothing runs.
#
# Usage: tests/infra/down.sh [--wipe]
#   --wipe   also delete .infra (all data, logs and the env file)
set -euo pipefail

# shellcheck source=tests/infra/common.sh
source "$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)/common.sh"
# The Kafka Connect worker of connect.sh (functions only when sourced).
# shellcheck source=tests/infra/connect.sh
source "$INFRA_SCRIPT_DIR/connect.sh"

WIPE=0
for arg in "$@"; do
    case $arg in
        --wipe) WIPE=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done

# wait_gone PIDFILE MARKER SECONDS: true once the process has exited.
wait_gone() {
    local pidfile=$1 marker=$2 deadline=$((SECONDS + $3))
    while pid_matches "$pidfile" "$marker"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# stop_process NAME PIDFILE MARKER GRACE_S: SIGTERM, then SIGKILL.
stop_process() {
    local name=$1 pidfile=$2 marker=$3 grace=$4 pid
    if ! pid_matches "$pidfile" "$marker"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(pid_of "$pidfile")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pidfile" "$marker" "$grace"; then
        log "$name did not stop within ${grace}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pidfile" "$marker" 10 || log "WARNING: $name (pid $pid) is still alive"
    fi
    rm -f "$pidfile"
}

# stop_postgres NAME: pg_ctl's "fast" shutdown (as the postgres user, since
# pg_ctl refuses root), else SIGQUIT (immediate), else SIGKILL.
stop_postgres() {
    local name=$1 root data pidfile pid bin
    [[ -e $INFRA_DIR/$name ]] || return 0
    root=$(pg_root_path "$name")
    data="$root/data"
    pidfile="$data/postmaster.pid"
    pid_matches "$pidfile" "$data" || return 0
    pid=$(pid_of "$pidfile")
    log "stopping $name (pid $pid)"
    # pg_ctl from the binary tree the server was started from.
    bin=$(dirname "$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n1)")
    if [[ -x $bin/pg_ctl ]] &&
        (cd / && runuser -u "$PG_OS_USER" -- "$bin/pg_ctl" -D "$data" -m fast -w -t 30 stop) >/dev/null 2>&1; then
        return 0
    fi
    log "$name: pg_ctl stop failed; sending SIGQUIT"
    kill -QUIT "$pid" 2>/dev/null || true
    if ! wait_gone "$pidfile" "$data" 10; then
        kill -KILL "$pid" 2>/dev/null || true
        # The backends notice their postmaster is gone and exit on their own.
        wait_gone "$pidfile" "$data" 10 || log "WARNING: $name (pid $pid) is still alive"
    fi
}

if [[ -d $INFRA_DIR ]]; then
    # Wait for a running up.sh to finish rather than kill half-started services.
    exec 9>"$INFRA_DIR/.up.lock"
    flock -w 300 9 || die "up.sh is still running (holds $INFRA_DIR/.up.lock)"
    # Reverse start order; connect.sh's worker (if any) came last.
    connect_stop
    stop_process apicurio "$APICURIO_PID_FILE" "$APICURIO_MARKER" 30
    stop_process kafka "$KAFKA_PID_FILE" "$KAFKA_MARKER" 60
    stop_postgres pg-latest
    stop_postgres pg
    # The env file would otherwise advertise services that are gone.
    rm -f "$INFRA_DIR/env"
fi

if ((WIPE)); then
    for name in pg pg-latest; do
        # up.sh may have put a PostgreSQL directory in /var/tmp (symlinked).
        if [[ -L $INFRA_DIR/$name ]]; then
            target=$(readlink -f -- "$INFRA_DIR/$name")
            log "removing $target"
            rm -rf -- "$target"
            rmdir -- "$(dirname -- "$target")" 2>/dev/null || true
        fi
    done
    log "removing $INFRA_DIR"
    rm -rf -- "$INFRA_DIR"
fi
log "down"
