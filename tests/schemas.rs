//! Value modes `payload` and `registered` and the schema evolution gate, through the real binary, PostgreSQL, Kafka
//! and Apicurio Registry, read back with Confluent's own Python client (`AvroDeserializer`): typed payloads under
//! each subject name strategy, a payload that does not fit its schema, `auto_register = false` and
//! `use_latest_version`, Debezium-style payload values (text, bytea bytes, tombstones), and `schemas check` /
//! `schemas register` / the relay refusing an unsafe change with the field, the rule and the safe path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "common/services.rs"]
mod services;

#[path = "common/relay.rs"]
mod relay;

#[path = "common/proxy.rs"]
mod proxy;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use proxy::FaultProxy;
use relay::{Harness, Options};

const STARTED: &str = "replication started";

/// Two outbox tables routed by aggregate type, the second with a `bytea` payload.
const OUTBOX: &str = r#"
[[outbox.tables]]
table = "public.outbox"
route_topic_replacement = "{prefix}.${routedByValue}"
"#;

/// The order schema of the tests: logical types, a nested record in an array, an enum, a map, an optional field.
fn order_schema(ns: &str, extra_fields: &str) -> String {
    format!(
        r#"{{"type": "record", "name": "OrderCreated", "namespace": "{ns}", "fields": [
  {{"name": "orderId", "type": {{"type": "string", "logicalType": "uuid"}}}},
  {{"name": "total", "type": {{"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}}}},
  {{"name": "placedAt", "type": {{"type": "long", "logicalType": "timestamp-micros"}}}},
  {{"name": "status", "type": {{"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}}}},
  {{"name": "lines", "type": {{"type": "array", "items": {{"type": "record", "name": "Line", "fields": [
      {{"name": "sku", "type": "string"}}, {{"name": "qty", "type": "int"}}]}}}}}},
  {{"name": "attributes", "type": {{"type": "map", "values": "string"}}, "default": {{}}}},
  {{"name": "note", "type": ["null", "string"], "default": null}},
  {{"name": "email", "type": "string"}}{extra_fields}
]}}"#
    )
}

fn customer_schema(ns: &str) -> String {
    format!(
        r#"{{"type": "record", "name": "CustomerRenamed", "namespace": "{ns}", "fields": [
  {{"name": "customerId", "type": "string"}}, {{"name": "name", "type": "string"}}]}}"#
    )
}

/// The insert of one `CustomerRenamed` event of customer `c-<i>`.
fn customer_row(i: u32) -> String {
    format!(
        r#"INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
           VALUES ('customer', 'c-{i}', 'CustomerRenamed', '{{"customerId": "c-{i}", "name": "N{i}"}}')"#
    )
}

/// A fresh Avro namespace: record names (RecordNameStrategy subjects) are global in the shared registry.
fn namespace() -> String {
    services::unique_name("t").replace('_', "")
}

fn write_schemas(dir: &Path, files: &[(&str, String)]) -> PathBuf {
    let schemas = dir.join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    for (name, text) in files {
        std::fs::write(schemas.join(format!("{name}.avsc")), text).unwrap();
    }
    schemas
}

/// Adds `lines` to the `[schema_registry]` section the harness wrote.
fn set_registry(h: &Harness, lines: &str) {
    h.rewrite_config(|t| t.replace("[schema_registry]\n", &format!("[schema_registry]\n{lines}\n")));
}

fn registered_mode(h: &Harness, schemas: &Path, more: &str) {
    set_registry(h, &format!("value_mode = \"registered\"\nschemas_dir = \"{}\"\n{more}", schemas.display()));
}

/// Inserts `n` orders (aggregate type `order`), 2 customer renames and one order with a NULL payload.
async fn insert_events(h: &Harness, n: usize) {
    let c = h.db.client().await;
    c.batch_execute(&format!(
        r#"INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
           SELECT 'order', 'o-' || i, 'OrderCreated', jsonb_build_object(
               'orderId', md5(i::text)::uuid, 'total', i * 10 + 0.5, 'placedAt', to_jsonb(timestamptz '2026-12-01 10:00:00.123456+00'),
               'status', 'PAID', 'lines', jsonb_build_array(jsonb_build_object('sku', 'A-' || i, 'qty', i)),
               'note', CASE WHEN i % 2 = 0 THEN 'ä €' END, 'email', 'c' || i || '@example.com')
           FROM generate_series(1, {n}) i;
           INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
           SELECT 'customer', 'c-' || i, 'CustomerRenamed', jsonb_build_object('customerId', 'c-' || i, 'name', 'Ånna ' || i)
           FROM generate_series(1, 2) i;
           INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'o-gone', 'OrderCreated', NULL);"#
    ))
    .await
    .unwrap();
}

/// One call of the registry's REST API with Python's standard library (no client of ours in between): GET, or POST
/// with `body`; the answer as JSON.
fn registry_call(h: &Harness, path: &str, body: Option<&str>) -> serde_json::Value {
    let url = format!("{}{path}", h.services.schema_registry_url);
    let method = if body.is_some() { "POST" } else { "GET" };
    let (status, answer) = services::http_call(method, &url, body, "application/vnd.schemaregistry.v1+json");
    assert!((200..300).contains(&status), "{method} {url}: {status} {answer}");
    serde_json::from_str(&answer).unwrap()
}

fn subjects(h: &Harness) -> Vec<String> {
    serde_json::from_value(registry_call(h, "/subjects", None)).unwrap()
}

/// Checks the orders and customers as Confluent's Python deserializer decoded them.
fn assert_typed(orders: &[serde_json::Value], customers: &[serde_json::Value], n: usize) {
    assert_eq!(orders.len(), n + 1, "{orders:?}");
    for r in orders {
        let key = r["key"].as_str().unwrap();
        if key == "o-gone" {
            assert_eq!(r["value"], serde_json::Value::Null, "a NULL payload is a tombstone: {r}");
            continue;
        }
        let i: usize = key.trim_start_matches("o-").parse().unwrap();
        let v = &r["value"];
        assert_eq!(v["total"], format!("{}.50", i * 10), "decimal(10,2) from a JSON number: {r}");
        assert_eq!(v["placedAt"], "2026-12-01 10:00:00.123456+00:00", "timestamp-micros from ISO text: {r}");
        assert_eq!(v["status"], "PAID", "{r}");
        assert_eq!(v["lines"], serde_json::json!([{"sku": format!("A-{i}"), "qty": i}]), "{r}");
        assert_eq!(v["attributes"], serde_json::json!({}), "a missing member takes its default: {r}");
        let note = if i % 2 == 0 { serde_json::json!("ä €") } else { serde_json::Value::Null };
        assert_eq!(v["note"], note, "{r}");
        assert_eq!(v["email"], format!("c{i}@example.com"), "{r}");
        assert_eq!(v["orderId"].as_str().map(str::len), Some(36), "uuid: {r}");
        assert_eq!(r["headers"]["type"], "OrderCreated", "{r}");
    }
    assert_eq!(customers.len(), 2, "{customers:?}");
    for r in customers {
        assert_eq!(r["value"]["customerId"], r["key"], "{r}");
        assert!(r["value"]["name"].as_str().unwrap().starts_with("Ånna "), "{r}");
    }
}

/// Value mode `registered` under each subject name strategy: every payload arrives as the record of its event
/// type's schema (decimal, timestamp, enum, nested array, map default, optional field), a NULL payload as a
/// tombstone, and each schema is registered under the subject the strategy names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_payloads_are_typed_by_their_event_types_schema_under_every_subject_strategy() {
    for strategy in ["topic", "record", "topic_record"] {
        let ns = namespace();
        let h = Harness::new("registered", Options { outbox_toml: Some(OUTBOX.into()), ..Options::default() }).await;
        let dir = write_schemas(
            h.dir.path(),
            &[("OrderCreated", order_schema(&ns, "")), ("CustomerRenamed", customer_schema(&ns))],
        );
        registered_mode(&h, &dir, &format!("subject_name_strategy = \"{strategy}\""));
        let mut relay = h.spawn(&[], &[]);
        relay.wait_log(STARTED, Duration::from_secs(60));
        insert_events(&h, 5).await;
        let (orders, customers) = (h.topic("order"), h.topic("customer"));
        h.wait_for_records_of(Some(&relay), &[orders.clone(), customers.clone()], 8, Duration::from_secs(60));
        assert_typed(&h.python_avro_read(&orders, 6), &h.python_avro_read(&customers, 2), 5);
        let expected = match strategy {
            "topic" => [format!("{orders}-value"), format!("{customers}-value")],
            "record" => [format!("{ns}.OrderCreated"), format!("{ns}.CustomerRenamed")],
            _ => [format!("{orders}-{ns}.OrderCreated"), format!("{customers}-{ns}.CustomerRenamed")],
        };
        let held = subjects(&h);
        for s in &expected {
            assert!(held.contains(s), "{strategy}: subject {s} missing from {held:?}");
        }
        relay.stop();
    }
}

/// A payload that does not fit its schema is a definite error naming the event and the field path; with
/// `errors.mode = "dead_letter"` it becomes a dead letter and the events around it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_does_not_fit_names_the_event_and_the_field_path() {
    let ns = namespace();
    let h = Harness::new(
        "misfit",
        Options {
            outbox_toml: Some(OUTBOX.into()),
            extra_toml: "[errors]\nmode = \"dead_letter\"\ndead_letter_topic = \"{prefix}.dlq\"\n".into(),
            ..Options::default()
        },
    )
    .await;
    h.rewrite_config(|t| t.replace("{prefix}", &h.topic_prefix));
    let dir = write_schemas(h.dir.path(), &[("CustomerRenamed", customer_schema(&ns))]);
    registered_mode(&h, &dir, "");
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    c.batch_execute(
        r#"INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES
             ('customer', 'c-1', 'CustomerRenamed', '{"customerId": "c-1", "name": "A"}'),
             ('customer', 'c-2', 'CustomerRenamed', '{"customerId": "c-2", "name": 7}'),
             ('customer', 'c-3', 'CustomerRenamed', '{"customerId": "c-3"}'),
             ('customer', 'c-4', 'Unknown', '{}'),
             ('customer', 'c-5', 'CustomerRenamed', '{"customerId": "c-5", "name": "E"}');"#,
    )
    .await
    .unwrap();
    let customers = h.topic("customer");
    let dlq = format!("{}.dlq", h.topic_prefix);
    h.wait_for_records_of(Some(&relay), &[customers.clone(), dlq.clone()], 5, Duration::from_secs(60));
    let good = h.python_avro_read(&customers, 2);
    let mut keys: Vec<&str> = good.iter().filter_map(|r| r["key"].as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["c-1", "c-5"], "{good:?}");
    let letters = h.read_committed(std::slice::from_ref(&dlq));
    let reason = |key: &str| {
        // A dead letter of an encoding failure carries the row as JSON.
        let r = letters
            .iter()
            .find(|r| String::from_utf8_lossy(&r.value).contains(&format!("\"{key}\"")))
            .unwrap_or_else(|| panic!("no dead letter for {key}: {letters:?}"));
        r.headers.iter().map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v))).collect::<Vec<_>>().join("\n")
    };
    let r2 = reason("c-2");
    assert!(r2.contains("payload.name") && r2.contains("a number where the schema has string"), "{r2}");
    let r3 = reason("c-3");
    assert!(r3.contains("payload.name") && r3.contains("has no default"), "{r3}");
    let r4 = reason("c-4");
    assert!(r4.contains("no schema for event type \"Unknown\""), "{r4}");
    relay.stop();
}

fn schemas_cmd(h: &Harness, args: &[&str]) -> Output {
    h.command().arg("schemas").args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The evolution gate: `schemas check` passes a safe change (a new field with a default) and refuses an unsafe one
/// (a rename, a field added without default) with exit 1, naming the field, the rule and the safe path;
/// `schemas register` registers nothing while one is refused; the relay refuses to start with the unsafe schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_schema_change_is_refused_before_deploy_and_at_start_with_the_safe_path() {
    let ns = namespace();
    let h = Harness::new("evolve", Options { outbox_toml: Some(OUTBOX.into()), ..Options::default() }).await;
    let dir = write_schemas(h.dir.path(), &[("OrderCreated", order_schema(&ns, ""))]);
    registered_mode(&h, &dir, "subject_name_strategy = \"record\"");
    let subject = format!("{ns}.OrderCreated");

    // Version 1 through the CI command: a new subject.
    let out = schemas_cmd(&h, &["check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("new subject"), "{}", text(&out));
    let out = schemas_cmd(&h, &["register"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("subject {subject}: registered as id")), "{}", text(&out));

    // Safe: a new optional field with a default.
    let safe = order_schema(&ns, r#", {"name": "coupon", "type": ["null", "string"], "default": null}"#);
    std::fs::write(dir.join("OrderCreated.avsc"), &safe).unwrap();
    let out = schemas_cmd(&h, &["check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("compatible (BACKWARD against version 1)"), "{}", text(&out));
    let out = schemas_cmd(&h, &["register"]);
    assert!(out.status.success(), "{}", text(&out));

    // Unsafe: `email` renamed to `mail`, and a required field without default.
    let unsafe_schema = order_schema(
        &ns,
        r#", {"name": "coupon", "type": ["null", "string"], "default": null},
        {"name": "channel", "type": "int"}"#,
    )
    .replace(r#""name": "email""#, r#""name": "mail""#);
    std::fs::write(dir.join("OrderCreated.avsc"), &unsafe_schema).unwrap();
    let out = schemas_cmd(&h, &["check"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("FAIL  OrderCreated") && said.contains(&subject), "{said}");
    assert!(said.contains("email") && said.contains("mail") && said.to_lowercase().contains("renamed"), "{said}");
    assert!(said.contains("channel") && said.contains("default"), "{said}");
    assert!(said.contains("Safe path:"), "{said}");
    let out = schemas_cmd(&h, &["register"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("nothing was registered"), "{}", text(&out));
    let versions = registry_call(&h, &format!("/subjects/{subject}/versions"), None);
    assert_eq!(versions, serde_json::json!([1, 2]), "no third version");

    // The relay refuses to start with it, saying why.
    let mut relay = h.spawn(&[], &[]);
    let status = relay.wait_exit(Duration::from_secs(60)).expect("the relay refuses to start");
    let log = relay.log_text();
    assert!(!status.success(), "{log}");
    assert!(log.contains("incompatible") && log.contains("mail") && log.contains("Safe path"), "{log}");
    assert!(!log.contains(STARTED), "{log}");
}

/// `auto_register = false`: an event whose schema was not registered is refused by name, with the command that
/// fixes it; after `schemas register` it is delivered. `use_latest_version`: the registry's latest version is
/// what values are written with, even when the local file is older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_registration_only_registered_schemas_are_used() {
    let ns = namespace();
    let h = Harness::new("noauto", Options { outbox_toml: Some(OUTBOX.into()), ..Options::default() }).await;
    let dir = write_schemas(h.dir.path(), &[("CustomerRenamed", customer_schema(&ns))]);
    registered_mode(&h, &dir, "subject_name_strategy = \"record\"\nauto_register = false");
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    c.batch_execute(&customer_row(1)).await.unwrap();
    let status = relay.wait_exit(Duration::from_secs(60)).expect("a definite error stops the relay");
    let log = relay.log_text();
    assert!(!status.success(), "{log}");
    assert!(log.contains("outbox-relay schemas register") && log.contains(&format!("{ns}.CustomerRenamed")), "{log}");

    let out = schemas_cmd(&h, &["register"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let customers = h.topic("customer");
    h.wait_for_records_of(Some(&relay), std::slice::from_ref(&customers), 1, Duration::from_secs(60));
    relay.stop();

    // use_latest_version: register a version 2 with a defaulted field; the relay writes with it.
    let v2 = customer_schema(&ns).replace(
        r#"{"name": "name", "type": "string"}]}"#,
        r#"{"name": "name", "type": "string"}, {"name": "tier", "type": "string", "default": "basic"}]}"#,
    );
    let body = serde_json::json!({ "schema": v2 }).to_string();
    registry_call(&h, &format!("/subjects/{ns}.CustomerRenamed/versions"), Some(&body));
    h.rewrite_config(|t| t.replace("auto_register = false", "auto_register = false\nuse_latest_version = true"));
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    c.batch_execute(&customer_row(2)).await.unwrap();
    h.wait_for_records_of(Some(&relay), std::slice::from_ref(&customers), 2, Duration::from_secs(60));
    let read = h.python_avro_read(&customers, 2);
    let value =
        |key: &str| &read.iter().find(|r| r["key"] == key).unwrap_or_else(|| panic!("{key}: {read:?}"))["value"];
    assert_eq!(value("c-1").get("tier"), None, "written with version 1: {read:?}");
    assert_eq!(value("c-2")["tier"], "basic", "written with the latest version, default filled: {read:?}");
    relay.stop();
}

/// Value mode `payload`, as Debezium's Outbox Event Router writes it: the JSON text as an Avro string, the bytes of a
/// `bytea` payload column unchanged (not UTF-8 here), and a NULL payload as a tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_mode_writes_the_payload_alone_text_bytes_and_tombstones() {
    let outbox = r#"
[[outbox.tables]]
table = "public.outbox"
route_topic_replacement = "{prefix}.${routedByValue}"
[[outbox.tables]]
table = "public.outbox_bin"
route_topic_replacement = "{prefix}.bin.${routedByValue}"
"#;
    let h = Harness::new("payload", Options { outbox_toml: Some(outbox.into()), ..Options::default() }).await;
    h.db.execute(
        "CREATE TABLE outbox_bin (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregatetype text NOT NULL,
             aggregateid text NOT NULL, type text NOT NULL, payload bytea)",
    )
    .await;
    set_registry(&h, "value_mode = \"payload\"");
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    c.batch_execute(
        r#"INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES
             ('order', 'o-1', 'OrderCreated', '{"n": 1, "note": "ä €"}'), ('order', 'o-2', 'OrderVoided', NULL);
           INSERT INTO outbox_bin (aggregatetype, aggregateid, type, payload) VALUES ('doc', 'd-1', 'Blob', '\x00ff10'::bytea);"#,
    )
    .await
    .unwrap();
    let (orders, docs) = (h.topic("order"), h.topic("bin.doc"));
    h.wait_for_records_of(Some(&relay), &[orders.clone(), docs.clone()], 3, Duration::from_secs(60));
    let read = h.python_avro_read(&orders, 2);
    let text = read.iter().find(|r| r["key"] == "o-1").unwrap();
    let payload: serde_json::Value = serde_json::from_str(text["value"].as_str().unwrap()).unwrap();
    assert_eq!(payload, serde_json::json!({"n": 1, "note": "ä €"}), "{read:?}");
    assert_eq!(read.iter().find(|r| r["key"] == "o-2").unwrap()["value"], serde_json::Value::Null, "{read:?}");
    let bytes = h.python_avro_read(&docs, 1);
    assert_eq!(bytes[0]["value"], serde_json::json!({"$bytes": "00ff10"}), "{bytes:?}");
    assert!(subjects(&h).contains(&format!("{orders}-value")));
    relay.stop();
}

/// A registry outage longer than every registry timeout: event types whose schema id is cached keep flowing; an event
/// of a type not seen yet waits (retried, never guessed) and is delivered once the registry answers again; each row
/// arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_does_not_stop_event_types_already_seen() {
    let ns = namespace();
    let h = Harness::new("sroutage", Options { outbox_toml: Some(OUTBOX.into()), ..Options::default() }).await;
    let registry = url::Url::parse(&h.services.schema_registry_url).unwrap();
    let target = format!("{}:{}", registry.host_str().unwrap(), registry.port().unwrap());
    let proxy = FaultProxy::start(&target).await;
    let proxied = h.services.schema_registry_url.replace(&target, &proxy.addr());
    h.rewrite_config(|t| t.replace(&h.services.schema_registry_url, &proxied));
    let dir = write_schemas(
        h.dir.path(),
        &[("OrderCreated", order_schema(&ns, "")), ("CustomerRenamed", customer_schema(&ns))],
    );
    registered_mode(&h, &dir, "subject_name_strategy = \"record\"\nrequest_timeout_ms = 1000");
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    c.batch_execute(&customer_row(1)).await.unwrap();
    let (customers, orders) = (h.topic("customer"), h.topic("order"));
    h.wait_for_records_of(Some(&relay), std::slice::from_ref(&customers), 1, Duration::from_secs(60));

    proxy.stall();
    c.batch_execute(&format!("{}; {}", customer_row(2), customer_row(3))).await.unwrap();
    h.wait_for_records_of(Some(&relay), std::slice::from_ref(&customers), 3, Duration::from_secs(30));
    c.batch_execute(
        r#"INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'o-1', 'OrderCreated',
           '{"orderId": "6f1c2a52-0c1e-4b8e-9a57-2d1f0e4c3b2a", "total": 1, "placedAt": 0, "status": "NEW",
             "lines": [], "email": "x@example.com"}')"#,
    )
    .await
    .unwrap();
    // Longer than the 1 s request timeout times the retries of one registration: the start of the outage is over.
    std::thread::sleep(Duration::from_secs(8));
    assert!(h.read_committed(std::slice::from_ref(&orders)).is_empty(), "nothing is written with a guessed id");
    assert!(relay.is_running(), "{}", relay.log_text());
    proxy.restore();
    h.wait_for_records_of(Some(&relay), std::slice::from_ref(&orders), 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let all = h.read_committed(&[customers.clone(), orders.clone()]);
    let mut keys: Vec<String> = all.iter().map(|r| String::from_utf8_lossy(&r.key).into_owned()).collect();
    keys.sort();
    assert_eq!(keys, ["c-1", "c-2", "c-3", "o-1"], "exactly once:\n{}", relay.log_text());
    assert_eq!(h.python_avro_read(&orders, 1)[0]["value"]["status"], "NEW");
    relay.stop();
}

/// The test registry behind `tests/infra/registry_gateway.py`: HTTPS with a private CA, client certificates
/// required, users `writer` (password `w-secret`) and `reader` (`r-secret`, may not write), bearer token `t-secret`.
/// Returns the gateway's URL and the process (killed on drop).
struct Gateway {
    url: String,
    child: std::process::Child,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway(h: &Harness, pki: &Path) -> Gateway {
    use std::io::BufRead;
    let file = |n: &str| pki.join(n).display().to_string();
    let script = services::repo_root().join("tests/infra/registry_gateway.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .args([&h.services.schema_registry_url, &file("server.crt"), &file("server.key"), &file("ca.crt")])
        .args(["w-secret", "r-secret", "t-secret"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).expect("the gateway says where it listens");
    let port: u16 = line.trim().strip_prefix("listening ").and_then(|p| p.parse().ok()).expect(&line);
    Gateway { url: format!("https://127.0.0.1:{port}"), child }
}

/// Registry access as users have it: HTTPS with a private CA and a client certificate, basic auth or a bearer
/// token, and a list of URLs whose first is down (fail-over). Refusals are told apart: wrong credentials (401) name
/// the credential settings, a user without write permission (403) names the permission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_behind_tls_client_certificates_and_auth_is_used_and_refusals_are_named() {
    let pki = tempfile::tempdir().unwrap();
    services::test_pki(pki.path(), "relay");
    let h = Harness::new("srtls", Options { outbox_toml: Some(OUTBOX.into()), ..Options::default() }).await;
    let gw = gateway(&h, pki.path());
    let file = |n: &str| pki.path().join(n).display().to_string();
    let down = format!("http://127.0.0.1:{}", services::closed_port());
    let access = |auth: &str| {
        format!(
            "url = \"{down},{}\"\n{auth}\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            gw.url,
            file("ca.crt"),
            file("client.crt"),
            file("client.key")
        )
    };
    let original = std::fs::read_to_string(&h.config_path).unwrap();
    let configure = |auth: &str| {
        let registry_line = format!("url = \"{}\"\n", h.services.schema_registry_url);
        std::fs::write(&h.config_path, original.replace(&registry_line, &access(auth))).unwrap();
    };
    let check = || {
        let out = h.command().arg("check").output().unwrap();
        (out.status.success(), text(&out))
    };

    configure("username = \"writer\"\npassword = \"w-secret\"");
    let (ok, said) = check();
    assert!(ok, "{said}");
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;
    let ids = h.insert_rows(&mut c, "order", 2).await;
    let records = h.wait_for_records_of(Some(&relay), &[h.topic("order")], 2, Duration::from_secs(60));
    assert_eq!(records.iter().map(|r| r.header("id").unwrap()).collect::<Vec<_>>(), ids);
    relay.stop();
    assert!(!relay.log_text().contains("w-secret"), "the password stays out of the log");

    configure("token = \"t-secret\"");
    let (ok, said) = check();
    assert!(ok, "bearer token: {said}");

    configure("username = \"writer\"\npassword = \"wrong\"");
    let (ok, said) = check();
    assert!(!ok && said.contains("HTTP 401") && said.contains("schema_registry.password"), "{said}");
    assert!(!said.contains("wrong\""), "{said}");

    // A reader may look, not register: the first event of a new topic needs a registration.
    configure("username = \"reader\"\npassword = \"r-secret\"");
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    h.insert_rows(&mut c, "fresh", 1).await;
    let status = relay.wait_exit(Duration::from_secs(60)).expect("a refused registration stops the relay");
    let log = relay.log_text();
    assert!(!status.success(), "{log}");
    assert!(log.contains("HTTP 403") && log.contains("grant the user"), "{log}");
}

/// Value mode `envelope` under the record strategies: subjects named by the envelope record
/// (`io.outboxrelay.OutboxEnvelope`, `<topic>-io.outboxrelay.OutboxEnvelope`), values read by Confluent's Python
/// deserializer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_values_under_the_record_strategies_are_read_by_confluents_deserializer() {
    for (strategy, suffix) in [("record", ""), ("topic_record", "-")] {
        let h = Harness::new("envstrat", Options { outbox_toml: Some(OUTBOX.into()), ..Options::default() }).await;
        set_registry(&h, &format!("subject_name_strategy = \"{strategy}\""));
        let mut relay = h.spawn(&[], &[]);
        relay.wait_log(STARTED, Duration::from_secs(60));
        let mut c = h.db.client().await;
        let ids = h.insert_rows(&mut c, "order", 3).await;
        let topic = h.topic("order");
        h.wait_for_records_of(Some(&relay), std::slice::from_ref(&topic), 3, Duration::from_secs(60));
        let read = h.python_avro_read(&topic, 3);
        let mut read_ids: Vec<String> = read.iter().map(|r| r["value"]["id"].as_str().unwrap().to_owned()).collect();
        read_ids.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(read_ids, want, "{strategy}: {read:?}");
        assert!(read.iter().all(|r| r["value"]["aggregate_id"] == r["key"]), "{read:?}");
        let subject = if suffix.is_empty() {
            "io.outboxrelay.OutboxEnvelope".to_owned()
        } else {
            format!("{topic}-io.outboxrelay.OutboxEnvelope")
        };
        assert!(subjects(&h).contains(&subject), "{strategy}: {subject}");
        relay.stop();
    }
}
