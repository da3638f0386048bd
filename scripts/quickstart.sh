#!/usr/bin/env bash
# Quick start: bring up PostgreSQL, Kafka and the schema registry locally (tests/infra/up.sh), create the outbox
# table, and run the relay in the foreground against them (Ctrl-C stops it cleanly).
# Then, in another terminal:
#   psql postgres://outbox:outbox@127.0.0.1:55432/outbox -c \
#     "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'o-1', 'OrderPlaced', '{\"total\": 42}')"
#   target/release/outbox-relay --config config/quickstart.toml tail outbox.event.order
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/prerequisites.sh
bash tests/infra/up.sh
# shellcheck source=/dev/null
. .infra/env
psql "$PG_URL" -v ON_ERROR_STOP=1 -q -f config/outbox-table.sql
cargo build --release --locked --bin outbox-relay
# The env file exports OUTBOX_RELAY_* overrides pointing at the same services; the config file says it all.
exec target/release/outbox-relay --config config/quickstart.toml run
