# shellcheck shell=bash
# Apache Kafka for the tests, one KRaft node (broker + controller in one JVM),
# from Maven Central jars: sourced by up.sh after common.sh, never run. Its
# configuration files are the templates in tests/infra/kafka/.
# Needs KAFKA_JAVA (a Java 17+ binary), set by up.sh.

KAFKA_LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"

# ensure_kafka_jars: resolve the broker's runtime classpath into the cache (once).
ensure_kafka_jars() {
    [[ -f $KAFKA_LIBS/.complete ]] && return 0
    log "fetching Kafka $KAFKA_VERSION jars from Maven Central"
    local work="$CACHE_DIR/kafka-$KAFKA_VERSION"
    mkdir -p "$work"
    render "$INFRA_SCRIPT_DIR/kafka/pom.xml" "$work/pom.xml" \
        KAFKA_VERSION="$KAFKA_VERSION" LOG4J_VERSION="$LOG4J_VERSION"
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

# start_kafka: (re)write the configuration, format the storage (once) and
# start the broker in the background unless it already runs.
start_kafka() {
    mkdir -p "$KAFKA_DIR"
    local logfile="$KAFKA_DIR/server.log" p
    # Config files are (re)written even when the broker runs: the tools
    # config is used by --verify; the broker only reads its files at start.
    render "$INFRA_SCRIPT_DIR/kafka/server.properties" "$KAFKA_DIR/server.properties" \
        HOST="$HOST" KAFKA_PORT="$KAFKA_PORT" KAFKA_CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT" \
        KAFKA_DATA_DIR="$KAFKA_DIR/data"
    render "$INFRA_SCRIPT_DIR/kafka/log4j2.properties" "$KAFKA_DIR/log4j2.properties" \
        KAFKA_LOG_FILE="$logfile"
    render "$INFRA_SCRIPT_DIR/kafka/tools-log4j2.properties" "$KAFKA_DIR/tools-log4j2.properties"

    if pid_matches "$KAFKA_PID_FILE" "$KAFKA_MARKER"; then
        return 0
    fi
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_open "$p"; then die "kafka: port $p is taken by a process up.sh did not start"; fi
    done

    if [[ ! -f $KAFKA_DIR/data/meta.properties ]]; then
        log "kafka: formatting storage in $KAFKA_DIR/data"
        rm -rf "$KAFKA_DIR/data"
        # A cluster id is 16 random bytes in URL-safe base64 without padding. One in
        # 64 starts with "-", which the tool's parser takes for an option unless the
        # value is attached with "=".
        local cluster_id
        cluster_id=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
        run_logged "$KAFKA_DIR/format.log" "$KAFKA_JAVA" -Xmx256m \
            -Dlog4j2.configurationFile="$KAFKA_DIR/tools-log4j2.properties" -cp "$KAFKA_LIBS/*" \
            kafka.tools.StorageTool format --standalone --cluster-id="$cluster_id" -c "$KAFKA_DIR/server.properties"
    fi

    log "kafka: starting on $HOST:$KAFKA_PORT"
    if [[ -f $logfile ]]; then mv -f "$logfile" "$logfile.prev"; fi
    # setsid: the broker must outlive up.sh and not get the caller's Ctrl-C;
    # the inner shell records its own pid right before exec. fd 9 (up.sh's
    # lock) is closed so the broker does not hold the lock for its whole life.
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

# kafka_verify TOPIC LOGFILE: a transactional produce of 100 records to TOPIC
# and a read_committed consume of them (up.sh --verify).
kafka_verify() {
    local topic=$1 out=$2 n
    log "verify: transactional produce of 100 records to $topic"
    run_logged "$out" "$KAFKA_JAVA" -Xmx256m -Dlog4j2.configurationFile="$KAFKA_DIR/tools-log4j2.properties" \
        -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.ProducerPerformance \
        --topic "$topic" --num-records 100 --record-size 50 --throughput -1 \
        --transactional-id "infra-verify-$$" --transaction-duration-ms 200 \
        --producer-props "bootstrap.servers=$HOST:$KAFKA_PORT" acks=all
    log "verify: read_committed consume"
    n=$("$KAFKA_JAVA" -Xmx256m -Dlog4j2.configurationFile="$KAFKA_DIR/tools-log4j2.properties" \
        -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.consumer.ConsoleConsumer \
        --bootstrap-server "$HOST:$KAFKA_PORT" --topic "$topic" --from-beginning \
        --isolation-level read_committed --max-messages 100 --timeout-ms 30000 2>>"$out" | wc -l)
    [[ $n == 100 ]] || fail_with_log "verify: read $n of 100 committed records" "$out"
}
