#!/usr/bin/env bash
# The project's test command (README "Quick start"): starts the local services if needed, runs every test against
# them, then a short fuzz run of the pgoutput decoder.
#   OUTBOX_RELAY_FUZZ_SECONDS=N   fuzz for N seconds (default 30; 0 skips the fuzz run)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/prerequisites.sh --tests
bash tests/infra/up.sh --with-pg-latest
# The Kafka Connect worker with Debezium for the hand-over test: its jars now (idempotent), so a download shows
# here and not as a slow test; the test starts the worker and stops it again.
bash tests/infra/connect.sh install
# up.sh started the newer PostgreSQL too: the protocol 3/4 tests must run, not skip.
export OUTBOX_RELAY_REQUIRE_PG_LATEST=1
# The tests read .infra/env themselves; the relay binary they start gets a clean environment.
# Tests sharing the one PostgreSQL/Kafka run two at a time on this 2-core machine.
cargo test --locked -- --test-threads=2

fuzz_seconds=${OUTBOX_RELAY_FUZZ_SECONDS:-30}
if [[ $fuzz_seconds != 0 ]]; then
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
    # cargo-fuzz needs nightly features; stable with RUSTC_BOOTSTRAP=1 works where no nightly toolchain exists.
    if rustup run nightly rustc --version >/dev/null 2>&1; then toolchain=(+nightly); else toolchain=(); export RUSTC_BOOTSTRAP=1; fi
    # Every parser of server input has a target: the pgoutput decoder gets the time, the small ones a share.
    for target in pgoutput_decode timeline_history; do
        seconds=$fuzz_seconds
        [[ $target == pgoutput_decode ]] || seconds=$(( (fuzz_seconds + 2) / 3 ))
        (cd fuzz && mkdir -p "corpus/$target" &&
            cargo "${toolchain[@]}" fuzz run "$target" "corpus/$target" "seeds/$target" -- \
                -max_total_time="$seconds" -print_final_stats=1 2>&1 | tail -n 25)
    done
    # A crash makes cargo fuzz exit non-zero (pipefail) and leaves the input in fuzz/artifacts/.
fi
