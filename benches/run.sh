#!/usr/bin/env bash
# Runs the outbox-relay benchmarks against the local services and prints one results table.
# See benches/README.md.
#
#   bash benches/run.sh [--rows N] [--quick] [--only decode,replication,e2e] [--repeat N]
#                     [--profile tuned|latency|defaults] [--no-infra] [--no-build] [-- extra arguments for e2e]
#
# Parts (each also runnable alone, see README):
#   decode       cargo bench --bench decode --features testing   pgoutput decoder alone, messages/s on one core
#   replication  cargo bench --bench replication -- ...          our client vs pg_recvlogical on the same WAL
#   e2e          cargo bench --bench e2e -- ...                  release relay binary + Kafka + registry:
#                                                                throughput vs pg_recvlogical, latency, memory,
#                                                                start-up to first delivered event; a full run
#                                                                adds Debezium on Kafka Connect as a third reader
#                                                                (--debezium: tests/infra/connect.sh, its worker
#                                                                stays up for the next run; connect.sh stop ends it)
# OUTBOX_RELAY_BIN=path runs the e2e part against another relay binary (default target/release/outbox-relay).
# Exit status: 0 all targets met, 3 a target was missed, 1 a benchmark failed.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)

rows=""
quick=0
only="decode,replication,e2e"
repeat=""
profile="tuned"
infra=1
build=1
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) rows="$2"; shift 2 ;;
        --rows=*) rows="${1#*=}"; shift ;;
        --quick) quick=1; shift ;;
        --only) only="$2"; shift 2 ;;
        --only=*) only="${1#*=}"; shift ;;
        --repeat) repeat="$2"; shift 2 ;;
        --repeat=*) repeat="${1#*=}"; shift ;;
        --profile) profile="$2"; shift 2 ;;
        --profile=*) profile="${1#*=}"; shift ;;
        --no-infra) infra=0; shift ;;
        --no-build) build=0; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$profile" in
    # The relay configuration the published figures use (see README, "Settings").
    tuned) profile_args=(--prop compression.type=lz4
                         --prop queue.buffering.max.kbytes=16384
                         --pg spill_threshold_bytes=16777216) ;;
    # What the proposed src/ fixes allow (README, "Problems found"): a short Kafka transaction interval.
    latency) profile_args=(--kafka max_batch_ms=10
                           --prop compression.type=lz4
                           --prop queue.buffering.max.kbytes=16384
                           --pg spill_threshold_bytes=16777216) ;;
    defaults) profile_args=() ;;
    *) echo "--profile tuned|latency|defaults" >&2; exit 2 ;;
esac
want() { [[ ",$only," == *",$1,"* ]]; }

common_args=()
[ -n "$rows" ] && common_args+=(--rows "$rows")
[ "$quick" = 1 ] && common_args+=(--quick)
repl_args=("${common_args[@]}")
e2e_args=("${common_args[@]}" "${profile_args[@]}")
if [ -n "$repeat" ]; then
    repl_args+=(--rounds "$repeat")
    e2e_args+=(--repeat "$repeat")
elif [ "$quick" = 0 ]; then
    e2e_args+=(--repeat 3)
fi
[ "$quick" = 0 ] && e2e_args+=(--debezium)
e2e_args+=("${extra[@]}")

if [ "$infra" = 1 ]; then
    echo "== services (tests/infra/up.sh)"
    bash tests/infra/up.sh || { echo "tests/infra/up.sh failed" >&2; exit 1; }
fi
if [ -f .infra/env ]; then
    # shellcheck disable=SC1091
    . .infra/env
elif [ -z "${PG_URL:-}" ] || [ -z "${KAFKA_BOOTSTRAP:-}" ] || [ -z "${SCHEMA_REGISTRY_URL:-}" ] || [ -z "${PG_BIN_DIR:-}" ]; then
    echo ".infra/env missing and PG_URL/PG_BIN_DIR/KAFKA_BOOTSTRAP/SCHEMA_REGISTRY_URL not set: run bash tests/infra/up.sh" >&2
    exit 1
fi

if [ "$build" = 1 ]; then
    echo "== build (release profile: lto=thin, debug=1)"
    bash scripts/prerequisites.sh || exit 1
    cargo build --release --bin outbox-relay || exit 1
    # decode needs the test-only encoder (feature testing); the others build without it, as they run below.
    cargo bench --no-run --features testing --bench decode || exit 1
    cargo bench --no-run --bench replication --bench e2e || exit 1
fi

mkdir -p target/bench-results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
export BENCH_RESULTS="$ROOT/target/bench-results/$stamp.tsv"
: > "$BENCH_RESULTS"
log="$ROOT/target/bench-results/$stamp.log"
status=0
note() { # exit status of a part -> overall status
    case "$1" in
        0) ;;
        3) [ "$status" = 0 ] && status=3 ;;
        *) status=1 ;;
    esac
}

{
echo "outbox-relay benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r)"
echo "profile: $profile; e2e arguments: ${e2e_args[*]:-none}; relay binary: ${OUTBOX_RELAY_BIN:-target/release/outbox-relay}"
echo "git: $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain src 2>/dev/null | wc -l | tr -d ' ') uncommitted file(s) under src/"
} | tee "$log"

if want decode; then
    echo "== decode: cargo bench --bench decode --features testing" | tee -a "$log"
    if [ "$quick" = 1 ]; then export BENCH_SECONDS=1 BENCH_ROUNDS=2; fi
    out=$(cargo bench -q --features testing --bench decode 2>&1); rc=$?
    echo "$out" | tee -a "$log"
    best=$(echo "$out" | sed -n 's/.*best \([0-9.]*\) M messages\/s.*/\1/p' | tail -1)
    if [ $rc -eq 0 ] && [ -n "$best" ]; then
        ok=$(awk -v b="$best" 'BEGIN { print (b >= 2.0) ? "ok" : "MISSED" }')
        printf 'decode\tpgoutput decode (Begin+Insert+Commit mix)\t%s\tM msg/s\ttarget >= 2 M/s: %s\n' "$best" "$ok" >> "$BENCH_RESULTS"
        [ "$ok" = ok ] || note 3
    else
        note 1
    fi
fi

if want replication; then
    echo "== replication: cargo bench --bench replication -- ${repl_args[*]}" | tee -a "$log"
    cargo bench -q --bench replication -- "${repl_args[@]}" 2>&1 | tee -a "$log"
    note "${PIPESTATUS[0]}"
fi

if want e2e; then
    echo "== e2e: cargo bench --bench e2e -- ${e2e_args[*]}" | tee -a "$log"
    cargo bench -q --bench e2e -- "${e2e_args[@]}" 2>&1 | tee -a "$log"
    note "${PIPESTATUS[0]}"
fi

{
echo
echo "== results ($BENCH_RESULTS)"
printf 'part\tmetric\tvalue\tunit\tnote\n' | cat - "$BENCH_RESULTS" | column -t -s $'\t'
echo
case $status in
    0) echo "all targets met" ;;
    3) echo "some targets MISSED (see the note column)" ;;
    *) echo "a benchmark FAILED (see the output above)" ;;
esac
} | tee -a "$log"
echo "log: $log"
exit $status
