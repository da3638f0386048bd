//! The outbox mapping against values as the real PostgreSQL of `tests/infra/up.sh` prints them: pgoutput sends
//! each column in its type's text output, which is what `column::text` returns in a session with the same settings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "common/services.rs"]
mod services;

use outbox_relay::outbox::{
    AdditionalField, BYTEA_OID, Cell, MapErrorKind, OutboxTableConfig, Placement, TableMapper, decode_bytea_hex,
    parse_pg_timestamp,
};
use outbox_relay::pg::lsn::{Lsn, PgTimestamp};

/// `timestamptz` and `timestamp` text output, in several session time zones (whole-hour, half-hour and historical
/// second-precision offsets), parses to the instant PostgreSQL itself computes.
#[tokio::test]
async fn timestamps_printed_by_postgres_parse_to_the_same_instant() {
    let services = services::services();
    let db = services::TestDb::create(&services, "outbox_ts").await;
    let client = db.client().await;
    let fixed = [
        "2026-11-27 22:53:51.123456+00",
        "2026-11-27 22:53:51+00",
        "2026-11-27 22:53:51.1+00",
        "1969-12-31 23:59:59.999999+00",
        "2000-02-29 12:00:00.5+00",
        "1900-01-01 00:00:00+00",
        "0044-03-15 12:00:00+00 BC",
        "4713-11-25 12:00:00+00 BC",
        "294276-12-30 23:59:59.999999+00",
    ];
    let mut checked = 0;
    for zone in
        ["UTC", "Asia/Kolkata", "America/St_Johns", "Europe/Amsterdam", "Pacific/Chatham", "America/Los_Angeles"]
    {
        client.batch_execute(&format!("SET TimeZone = '{zone}'; SET DateStyle = 'ISO, MDY'")).await.unwrap();
        let rows = client
            .query(
                // Microseconds since 2000-01-01 UTC, PostgreSQL's own epoch, through an interval: extract(epoch) of a
                // timestamp near the upper limit (year 294276) loses its microseconds.
                "SELECT t::text, (extract(epoch FROM t - timestamptz '2000-01-01 00:00:00+00') * 1000000)::bigint,
                        t::timestamp::text,
                        (extract(epoch FROM t::timestamp - timestamp '2000-01-01 00:00:00') * 1000000)::bigint
                 FROM (SELECT unnest($1::text[])::timestamptz AS t
                       UNION ALL
                       SELECT timestamptz '1890-01-01 00:00:00+00' + random() * interval '250 years'
                       FROM generate_series(1, 200)) s",
                &[&fixed.as_slice()],
            )
            .await
            .unwrap();
        for row in rows {
            for (text_col, micros_col) in [(0, 1), (2, 3)] {
                let text: String = row.get(text_col);
                let micros: i64 = row.get(micros_col);
                let parsed = parse_pg_timestamp(&text).unwrap_or_else(|e| panic!("{zone}: {text:?}: {e}"));
                assert_eq!(parsed, PgTimestamp(micros), "{zone}: {text:?}");
                checked += 1;
            }
        }
    }
    assert!(checked > 2000, "{checked}");
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    for special in ["infinity", "-infinity"] {
        let text: String =
            client.query_one(&format!("SELECT '{special}'::timestamptz::text"), &[]).await.unwrap().get(0);
        assert!(parse_pg_timestamp(&text).is_err(), "{text}");
    }
}

/// `bytea` text output (hex) decodes to the stored bytes.
#[tokio::test]
async fn bytea_printed_by_postgres_decodes_to_its_bytes() {
    let services = services::services();
    let db = services::TestDb::create(&services, "outbox_bytea").await;
    let client = db.client().await;
    let json = r#"{"note": "naïve ☕", "n": [1, 2]}"#;
    let row = client
        .query_one("SELECT convert_to($1, 'UTF8')::text, '\\x00ff10'::bytea::text, ''::bytea::text", &[&json])
        .await
        .unwrap();
    assert_eq!(decode_bytea_hex(row.get::<_, &str>(0).as_bytes()).unwrap(), json.as_bytes());
    assert_eq!(decode_bytea_hex(row.get::<_, &str>(1).as_bytes()).unwrap(), [0x00, 0xff, 0x10]);
    assert_eq!(decode_bytea_hex(row.get::<_, &str>(2).as_bytes()).unwrap(), b"");
}

/// Columns of a real outbox table, in attribute order with their type oids (what pgoutput's Relation message
/// carries: no dropped or generated columns).
async fn relation_columns(client: &tokio_postgres::Client, table: &str) -> Vec<(String, u32)> {
    client
        .query(
            "SELECT attname::text, atttypid FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
             ORDER BY attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, u32>(1)))
        .collect()
}

/// A Debezium-style outbox table (uuid, varchar, jsonb, timestamptz and extra columns) binds, and an inserted row
/// in its text output maps to the expected event; a table lacking a configured column fails naming it.
#[tokio::test]
async fn mapper_binds_to_a_real_outbox_table_and_maps_its_rows() {
    let services = services::services();
    let db = services::TestDb::create(&services, "outbox_map").await;
    let client = db.client().await;
    client
        .batch_execute(
            "SET TimeZone = 'UTC';
             CREATE TABLE outbox (
                 id uuid PRIMARY KEY,
                 dropped_later int,
                 aggregatetype varchar(255) NOT NULL,
                 aggregateid varchar(255) NOT NULL,
                 type varchar(255) NOT NULL,
                 payload jsonb,
                 created_at timestamptz NOT NULL DEFAULT now(),
                 tenant text,
                 shard int,
                 body_bytes bytea);
             ALTER TABLE outbox DROP COLUMN dropped_later;
             INSERT INTO outbox VALUES ('5d2c8d6e-37c4-4f3a-9d1c-2a1f0e9b8c7d', 'Order', 'order-42', 'OrderCreated',
                 '{\"total\": 12.50, \"items\": [], \"a\": 1}', '2026-11-27 22:53:51.123456+00', 'acme', 3,
                 convert_to('{\"x\": 1}', 'UTF8'));",
        )
        .await
        .unwrap();
    let columns = relation_columns(&client, "outbox").await;
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    let select = names.iter().map(|n| format!("{n}::text")).collect::<Vec<_>>().join(", ");
    let row = client.query_one(&format!("SELECT {select} FROM outbox"), &[]).await.unwrap();
    let texts: Vec<Option<String>> = (0..columns.len()).map(|i| row.get(i)).collect();
    let cells: Vec<Cell<'_>> =
        texts.iter().map(|t| t.as_deref().map_or(Cell::Null, |t| Cell::Text(t.as_bytes()))).collect();

    let mapping = OutboxTableConfig {
        field_event_timestamp: "created_at".into(),
        additional_fields: vec![
            AdditionalField { column: "tenant".into(), placement: Placement::Header, alias: String::new() },
            AdditionalField { column: "tenant".into(), placement: Placement::Envelope, alias: "tenant_id".into() },
            AdditionalField { column: "shard".into(), placement: Placement::Partition, alias: String::new() },
        ],
        ..OutboxTableConfig::default()
    };
    let mapper =
        TableMapper::bind(&mapping, "public", "outbox", columns.iter().map(|(n, o)| (n.as_str(), *o))).unwrap();
    let event = mapper.map_row(cells.as_slice(), Lsn(7), PgTimestamp(0)).unwrap();
    assert_eq!(event.id, "5d2c8d6e-37c4-4f3a-9d1c-2a1f0e9b8c7d");
    assert_eq!(event.topic, "outbox.event.Order");
    assert_eq!(event.aggregate_id, "order-42");
    assert_eq!(event.event_type, "OrderCreated");
    // jsonb prints normalized: keys by length then bytes, numbers as written.
    assert_eq!(
        event.payload.as_ref().and_then(outbox_relay::outbox::Payload::text),
        Some(r#"{"a": 1, "items": [], "total": 12.50}"#)
    );
    assert_eq!(event.timestamp, parse_pg_timestamp("2026-11-27 22:53:51.123456+00").unwrap());
    assert_eq!(event.headers, vec![("tenant".to_owned(), bytes::Bytes::from_static(b"acme"))]);
    assert_eq!(event.envelope_fields, vec![("tenant_id".to_owned(), Some("acme".to_owned()))]);
    assert_eq!(event.partition, Some(3));
    assert_eq!(event.source, "public.outbox");

    // A bytea payload column is decoded from its hex output.
    let bytea_mapping = OutboxTableConfig { field_event_payload: "body_bytes".into(), ..OutboxTableConfig::default() };
    assert!(columns.iter().any(|(n, o)| n == "body_bytes" && *o == BYTEA_OID));
    let mapper =
        TableMapper::bind(&bytea_mapping, "public", "outbox", columns.iter().map(|(n, o)| (n.as_str(), *o))).unwrap();
    assert_eq!(
        mapper
            .map_row(cells.as_slice(), Lsn(7), PgTimestamp(0))
            .unwrap()
            .payload
            .as_ref()
            .and_then(outbox_relay::outbox::Payload::text),
        Some(r#"{"x": 1}"#)
    );

    // A table without the configured columns: one error naming all of them.
    client.batch_execute("CREATE TABLE not_outbox (id uuid, aggregatetype text, payload jsonb)").await.unwrap();
    let columns = relation_columns(&client, "not_outbox").await;
    let err = TableMapper::bind(
        &OutboxTableConfig::default(),
        "public",
        "not_outbox",
        columns.iter().map(|(n, o)| (n.as_str(), *o)),
    )
    .unwrap_err();
    assert_eq!(
        err.kind,
        MapErrorKind::MissingColumns(vec![
            ("aggregateid".into(), "field_event_key"),
            ("type".into(), "field_event_type")
        ])
    );
    assert!(err.to_string().contains("public.not_outbox"), "{err}");
}

/// Per-row mapping cost on the hot path (no services), printed for the record; bounded generously so a regression
/// to per-row name lookups or parsing the configuration again fails.
#[test]
fn mapping_cost_per_row() {
    let columns = [
        ("id", 2950),
        ("aggregatetype", 1043),
        ("aggregateid", 1043),
        ("type", 1043),
        ("payload", 3802),
        ("created_at", 1184),
        ("tenant", 25),
    ];
    let mapping = OutboxTableConfig {
        field_event_timestamp: "created_at".into(),
        additional_fields: vec![AdditionalField {
            column: "tenant".into(),
            placement: Placement::Header,
            alias: String::new(),
        }],
        ..OutboxTableConfig::default()
    };
    let mapper = TableMapper::bind(&mapping, "public", "outbox", columns).unwrap();
    let payload =
        format!(r#"{{"orderId": "order-42", "lines": [{}], "note": "{}"}}"#, "1, ".repeat(20) + "1", "x".repeat(40));
    let row = [
        Cell::Text(b"5d2c8d6e-37c4-4f3a-9d1c-2a1f0e9b8c7d"),
        Cell::Text(b"Order"),
        Cell::Text(b"order-42"),
        Cell::Text(b"OrderCreated"),
        Cell::Text(payload.as_bytes()),
        Cell::Text(b"2026-11-27 22:53:51.123456+00"),
        Cell::Text(b"acme"),
    ];
    let n = 100_000u32;
    let started = std::time::Instant::now();
    let mut bytes = 0;
    for _ in 0..n {
        bytes += mapper.map_row(row.as_slice(), Lsn(1), PgTimestamp(0)).unwrap().topic.len();
    }
    let per_row = started.elapsed() / n;
    println!("mapping cost per row ({} build): {per_row:?}", if cfg!(debug_assertions) { "debug" } else { "release" });
    assert!(bytes > 0);
    assert!(per_row < std::time::Duration::from_micros(50), "{per_row:?} per row");
}
