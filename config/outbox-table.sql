-- The outbox table with Debezium's Outbox Event Router column names (outbox-relay's defaults).
-- Used by scripts/quickstart.sh, the tests and the benchmarks; a starting point for your own.
CREATE TABLE IF NOT EXISTS outbox (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype text        NOT NULL,
    aggregateid   text        NOT NULL,
    type          text        NOT NULL,
    payload       jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
