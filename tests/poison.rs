//! Records Kafka refuses and events that cannot be mapped, against the real broker: the relay stops naming the event
//! (`errors.mode = "stop"`) or puts a dead letter in its place inside the same Kafka transaction
//! (`errors.mode = "dead_letter"`), exactly once either way; topics are created with the configured shape; and memory
//! stays bounded by bytes with large payloads and a slow broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "common/services.rs"]
mod services;

#[path = "common/relay.rs"]
mod relay;

#[path = "common/proxy.rs"]
mod proxy;

#[path = "common/kafka_node.rs"]
mod kafka_node;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use relay::{Harness, Options, Record};

const STARTED: &str = "replication started";

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap()
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let r = admin(bootstrap).create_topics([&t], &AdminOptions::new()).await.unwrap();
    assert!(r.iter().all(Result::is_ok), "{r:?}");
}

/// Inserts one outbox row in its own transaction with the given columns (SQL expressions); returns its id.
async fn insert(c: &impl tokio_postgres::GenericClient, aggregate_type: &str, columns: &str, values: &str) -> String {
    c.query_one(
        &format!(
            "INSERT INTO outbox (aggregatetype, aggregateid, {columns}) VALUES ('{aggregate_type}', 'k', {values}) \
             RETURNING id::text"
        ),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

async fn good(c: &impl tokio_postgres::GenericClient) -> String {
    insert(c, "order", "type, payload", "'T', '{\"ok\": true}'").await
}

fn ids(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.header("id").unwrap_or_default()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_broker_refuses_stops_the_relay_naming_the_event() {
    let h = Harness::new("refusestop", Options::default()).await;
    let name = h.topic("order");
    let topic = NewTopic::new(&name, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "3000");
    let created = admin(&h.services.kafka_bootstrap).create_topics([&topic], &AdminOptions::new()).await.unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    good(&c).await;
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 1, Duration::from_secs(30));
    let before = h.confirmed_flush().await;
    let big = insert(
        &c,
        "order",
        "type, payload",
        "'T', jsonb_build_object('pad', (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 1000)))",
    )
    .await;
    let status = relay.wait_exit(Duration::from_secs(90)).expect("a refused record stops the relay");
    assert!(!status.success());
    let log = relay.log_text();
    assert!(log.contains(&big) && log.contains("max.message.bytes"), "the error names the event and the fix:\n{log}");
    assert_eq!(h.confirmed_flush().await, before, "checkpoint untouched");
    // A restart meets it again: never skipped, never an endless loop of retries.
    let mut again = h.spawn(&[], &[]);
    assert!(!again.wait_exit(Duration::from_secs(90)).expect("stops again").success());
    assert!(again.log_text().contains(&big));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_with_creation_off_is_named_at_first_use() {
    let h = Harness::new(
        "notopic",
        Options { extra_toml: "[kafka.topic_creation]\nenabled = false\n".into(), ..Options::default() },
    )
    .await;
    create_topic(&h.services.kafka_bootstrap, &h.topic("order"), 1).await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    good(&c).await;
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 1, Duration::from_secs(30));
    let lost = insert(&c, "invoice", "type, payload", "'T', '{}'").await;
    let status = relay.wait_exit(Duration::from_secs(90)).expect("a missing topic stops the relay");
    assert!(!status.success());
    let log = relay.log_text();
    assert!(
        log.contains(&lost) && log.contains(&h.topic("invoice")) && log.contains("topic_creation.enabled = false"),
        "{log}"
    );
    // Asked by a client that does not itself ask the broker to auto-create it (librdkafka's admin and producer
    // clients do by default).
    let probe: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &h.services.kafka_bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let md = probe.inner().fetch_metadata(Some(&h.topic("invoice")), Duration::from_secs(10));
    let exists = md.unwrap().topics().iter().any(|t| t.error().is_none() && !t.partitions().is_empty());
    assert!(!exists, "the broker must not have auto-created it");
}

/// Every kind of poison in one run, in dead-letter mode: each event that cannot be mapped, encoded or produced
/// is replaced by a dead letter in the same Kafka transaction; the good events around it arrive, all exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_become_dead_letters_exactly_once() {
    let h = Harness::new(
        "deadletter",
        Options {
            outbox_toml: Some(
                "[[outbox.tables]]\ntable = \"public.outbox\"\nroute_topic_replacement = \"{prefix}.${routedByValue}\"\n\
                 field_event_timestamp = \"created_at\"\n\
                 additional_fields = [{ column = \"part\", placement = \"partition\" }]\n"
                    .into(),
            ),
            extra_toml: "[errors]\nmode = \"dead_letter\"\ndead_letter_topic = \"{prefix}.dlq\"\n\
                         [kafka.topic_creation]\npartitions = 2\n\
                         configs = { \"max.message.bytes\" = 20000, \"message.timestamp.after.max.ms\" = 3600000 }\n"
                .into(),
            metrics: Some(300_000),
            ..Options::default()
        },
    )
    .await;
    let dlq = format!("{}.dlq", h.topic_prefix);
    h.rewrite_config(|t| t.replace("{prefix}", &h.topic_prefix));
    h.db.execute("ALTER TABLE outbox ADD COLUMN part int; ALTER TABLE outbox ALTER COLUMN type DROP NOT NULL").await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;

    let mut good_ids = vec![good(&c).await];
    let mut poison: HashMap<String, &str> = HashMap::new();
    poison.insert(
        insert(&c, "order", "type, payload", "'T', jsonb_build_object('pad', (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 2000)))").await,
        "kafka:record_too_large",
    );
    good_ids.push(good(&c).await);
    poison.insert(insert(&c, "order", "type, payload, part", "'T', '{}', 7").await, "kafka:unknown_partition");
    poison.insert(
        insert(&c, "order", "type, payload, created_at", "'T', '{}', now() + interval '10 days'").await,
        "kafka:invalid_timestamp",
    );
    poison.insert(insert(&c, "order", "type, payload", "NULL, '{\"n\": 1}'").await, "mapping");
    // Someone else owns the subject of topic `<prefix>.legacy` with a schema the envelope cannot evolve from.
    let subject = format!("{}-value", h.topic("legacy"));
    let legacy = r#"{"type":"record","name":"OutboxEnvelope","namespace":"io.outboxrelay","fields":[{"name":"legacy","type":"string"}]}"#;
    let registered = reqwest::Client::new()
        .post(format!("{}/subjects/{subject}/versions", h.services.schema_registry_url))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .body(serde_json::json!({ "schema": legacy }).to_string())
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success(), "{:?}", registered.text().await);
    poison.insert(insert(&c, "legacy", "type, payload", "'T', '{}'").await, "encoding");
    // One transaction: good, poison, good; the dead letter travels with its neighbours.
    let tx = c.transaction().await.unwrap();
    good_ids.push(good(&tx).await);
    poison.insert(
        insert(&tx, "order", "type, payload", "'T', jsonb_build_object('pad', (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 2000)))").await,
        "kafka:record_too_large",
    );
    good_ids.push(good(&tx).await);
    tx.commit().await.unwrap();
    good_ids.push(good(&c).await);

    let topics = [h.topic("order"), dlq.clone()];
    let all = h.wait_for_records_of(Some(&relay), &topics, good_ids.len() + poison.len(), Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let check = |all: &[Record], good_ids: &[String], log: &str| {
        let (letters, events): (Vec<&Record>, Vec<&Record>) = all.iter().partition(|r| r.topic == dlq);
        let event_ids: Vec<String> = events.iter().map(|r| r.header("id").unwrap()).collect();
        let described: Vec<String> = letters
            .iter()
            .map(|l| format!("{:?} {:?}", l.header("outbox.dlq.event.id"), l.header("outbox.dlq.error.kind")))
            .collect();
        assert_eq!(
            event_ids.iter().collect::<HashSet<_>>(),
            good_ids.iter().collect::<HashSet<_>>(),
            "good events; dead letters: {described:?}; poison: {poison:?}; relay log:\n{log}"
        );
        assert_eq!(event_ids.len(), good_ids.len(), "good events exactly once");
        assert_eq!(letters.len(), poison.len(), "dead letters exactly once: {:?}", ids(all));
        for letter in letters {
            let id = letter.header("outbox.dlq.event.id").unwrap_or_default();
            let kind = poison.get(&id).unwrap_or_else(|| panic!("dead letter for an unknown event {id}"));
            assert_eq!(letter.header("outbox.dlq.error.kind").as_deref(), Some(*kind), "{id}");
            assert_eq!(letter.header("outbox.dlq.source").as_deref(), Some("public.outbox"));
            assert!(letter.header("outbox.dlq.commit.lsn").is_some_and(|l| l.contains('/')));
            assert!(!letter.header("outbox.dlq.error.message").unwrap_or_default().is_empty());
            match *kind {
                "mapping" | "encoding" => {
                    let row: serde_json::Value = serde_json::from_slice(&letter.value).unwrap();
                    assert_eq!(row["id"], id.as_str(), "the row as JSON");
                    assert_eq!(letter.header("outbox.dlq.value.format").as_deref(), Some("row-json"));
                }
                "kafka:record_too_large" => {
                    assert!(letter.value.is_empty());
                    assert_eq!(letter.header("outbox.dlq.value.format").as_deref(), Some("none"));
                }
                _ => {
                    assert_eq!(letter.value[0], 0, "the record as produced (Confluent wire format)");
                    assert_eq!(letter.header("outbox.dlq.original.topic").as_deref(), Some(h.topic("order").as_str()));
                }
            }
        }
    };
    check(&all, &good_ids, &relay.log_text());
    assert!(relay.is_running(), "{}", relay.log_text());
    assert_eq!(h.metric("outbox_relay_dead_letters_total"), Some(poison.len() as f64));

    // Topics were created with the configured shape.
    let admin = admin(&h.services.kafka_bootstrap);
    let md = admin.inner().fetch_metadata(Some(&h.topic("order")), Duration::from_secs(10)).unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 2);
    let configs = admin.describe_configs([&ResourceSpecifier::Topic(&h.topic("order"))], &AdminOptions::new()).await;
    let resource = configs.unwrap().remove(0).unwrap();
    assert_eq!(resource.get("max.message.bytes").and_then(|e| e.value.clone()).as_deref(), Some("20000"));

    // A restart replays nothing twice.
    relay.terminate();
    assert!(relay.wait_exit(Duration::from_secs(40)).unwrap().success());
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    good_ids.push(good(&c).await);
    let all = h.wait_for_records_of(Some(&relay), &topics, good_ids.len() + poison.len(), Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(all.len(), good_ids.len() + poison.len());
    check(&h.read_committed(&topics), &good_ids, &relay.log_text());
}

/// Dead letters for a topic that does not exist (creation off): known before sending, no replay needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_in_dead_letter_mode_becomes_dead_letters() {
    let h = Harness::new(
        "notopicdlq",
        Options {
            extra_toml: "[errors]\nmode = \"dead_letter\"\n[kafka.topic_creation]\nenabled = false\n".into(),
            ..Options::default()
        },
    )
    .await;
    let dlq = format!("{}.dead-letter", h.connector);
    create_topic(&h.services.kafka_bootstrap, &h.topic("order"), 1).await;
    create_topic(&h.services.kafka_bootstrap, &dlq, 1).await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    let lost = insert(&c, "invoice", "type, payload", "'T', '{}'").await;
    let kept = good(&c).await;
    let records = h.wait_for_records_of(Some(&relay), &[h.topic("order"), dlq.clone()], 2, Duration::from_secs(60));
    let letter = records.iter().find(|r| r.topic == dlq).expect("a dead letter");
    assert_eq!(letter.header("outbox.dlq.event.id").as_deref(), Some(lost.as_str()));
    assert_eq!(letter.header("outbox.dlq.error.kind").as_deref(), Some("kafka:unknown_topic"));
    assert_eq!(letter.header("outbox.dlq.original.topic").as_deref(), Some(h.topic("invoice").as_str()));
    assert!(records.iter().any(|r| r.header("id").as_deref() == Some(kept.as_str())));
}

/// 1 MB payloads through a broker throttled to 4 MB/s: the relay reads ahead only as far as its byte budget
/// (`kafka.max_buffered_bytes`) and the producer queue allow, so its memory stays flat instead of growing with the
/// backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_with_large_payloads_and_a_slow_broker() {
    let proxy_port = services::closed_port();
    let broker = kafka_node::KafkaNode::start_behind(proxy_port);
    let proxy = proxy::FaultProxy::start_on(proxy_port, &broker.client_listener()).await;
    proxy.throttle(4 << 20);
    let h = Harness::new(
        "bigpayload",
        Options {
            extra_toml: "[kafka.topic_creation]\nconfigs = { \"max.message.bytes\" = 3000000 }\n".into(),
            ..Options::default()
        },
    )
    .await;
    h.rewrite_config(|t| {
        t.replace(&h.services.kafka_bootstrap, &proxy.addr()).replace(
            "[kafka]\n",
            "[kafka]\nmax_buffered_bytes = 4194304\nproperties = { \"message.max.bytes\" = 3000000, \
             \"queue.buffering.max.kbytes\" = 4096 }\n",
        )
    });
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(90));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = relay.rss_kib().unwrap();
    let c = h.db.client().await;
    const ROWS: usize = 60;
    for _ in 0..ROWS {
        c.batch_execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('order', 'k', 'T', jsonb_build_object('blob', \
             (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 31250))))",
        )
        .await
        .unwrap();
    }
    let direct = broker.bootstrap();
    let topics = vec![h.topic("order")];
    let mut peak = baseline;
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last_read = Instant::now();
    loop {
        peak = peak.max(relay.rss_kib().unwrap_or(0));
        if last_read.elapsed() > Duration::from_secs(3) {
            if relay::read_committed(&direct, &topics).len() >= ROWS {
                break;
            }
            last_read = Instant::now();
        }
        assert!(Instant::now() < deadline, "not delivered in time:\n{}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown_mib = (peak.saturating_sub(baseline)) / 1024;
    eprintln!(
        "rss baseline {} MiB, peak {} MiB, growth {grown_mib} MiB over {ROWS} MB of backlog",
        baseline / 1024,
        peak / 1024
    );
    // Budget 4 MiB + producer queue 4 MiB + the event being encoded (payload text, Avro value: ~2 MB) + librdkafka's
    // in-flight batches and compression buffers: well under 48 MiB. Without the byte bound the channel holds the
    // whole 60 MB backlog twice over.
    assert!(grown_mib < 48, "memory grew by {grown_mib} MiB over a {ROWS} MB backlog");
}

/// A topic the relay's principal may not write to, on a broker with a real authorizer: the relay stops naming the
/// event and the missing permission, or puts a dead letter in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_the_relay_may_not_write_to_is_named_or_dead_lettered() {
    let broker = kafka_node::KafkaNode::start_secured();
    let h = Harness::new("acl", Options::default()).await;
    let forbidden = h.topic("secret");
    broker.allow_relay_all_but(&["--operation", "Write", "--topic", &forbidden]);
    h.rewrite_config(|t| {
        t.replace(&h.services.kafka_bootstrap, &broker.client_listener()).replace(
            "[kafka]\n",
            "[kafka]\nproperties = { \"security.protocol\" = \"SASL_PLAINTEXT\", \"sasl.mechanisms\" = \"PLAIN\", \
             \"sasl.username\" = \"relay\", \"sasl.password\" = \"relay-secret\" }\n",
        )
    });
    let direct = broker.bootstrap();
    let read = |topics: &[String]| relay::read_committed(&direct, topics);
    let wait = |topics: Vec<String>, n: usize, relay: &relay::RelayProcess| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let records = read(&topics);
            if records.len() >= n {
                return records;
            }
            assert!(Instant::now() < deadline, "have {}; log:\n{}", records.len(), relay.log_text());
            std::thread::sleep(Duration::from_millis(300));
        }
    };

    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(90));
    let c = h.db.client().await;
    good(&c).await;
    wait(vec![h.topic("order")], 1, &relay);
    let denied = insert(&c, "secret", "type, payload", "'T', '{}'").await;
    let status = relay.wait_exit(Duration::from_secs(90)).expect("a refused write stops the relay");
    assert!(!status.success());
    let log = relay.log_text();
    assert!(log.contains(&denied) && log.contains("grant it WRITE"), "named, with the permission to grant:\n{log}");

    h.rewrite_config(|t| format!("{t}\n[errors]\nmode = \"dead_letter\"\n"));
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(90));
    let after = good(&c).await;
    let dlq = format!("{}.dead-letter", h.connector);
    let records = wait(vec![h.topic("order"), dlq.clone()], 3, &relay);
    let letter = records.iter().find(|r| r.topic == dlq).expect("a dead letter");
    assert_eq!(letter.header("outbox.dlq.event.id").as_deref(), Some(denied.as_str()));
    assert_eq!(letter.header("outbox.dlq.error.kind").as_deref(), Some("kafka:not_authorized"));
    assert!(records.iter().any(|r| r.header("id").as_deref() == Some(after.as_str())));
    assert!(read(&[forbidden]).is_empty());
}

/// Kafka as production runs it: SASL_SSL with SCRAM-SHA-512, the broker's certificate verified, and the principal
/// holding exactly the ACLs the README lists. The relay delivers exactly once; without the transactional-id ACL it
/// stops at once with a named error instead of retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_with_scram_and_exactly_the_documented_acls() {
    let broker = tokio::task::spawn_blocking(kafka_node::KafkaNode::start_sasl_ssl).await.unwrap();
    let h = Harness::new("saslssl", Options { metrics: Some(60_000), ..Options::default() }).await;
    let transactional_id = format!("outbox-relay-{}", h.connector);
    let second_id = format!("{transactional_id}.2");
    // A downstream consumer group whose lag the relay measures (configured, so no cluster-wide Describe is needed).
    let group = format!("{}-billing", h.connector);
    // The README's minimal ACLs for User:relay, and nothing else.
    let acls: Vec<Vec<String>> = vec![
        // Event topics (the route template's prefix): describe, write, create (topic_creation.enabled).
        vec!["--topic", &h.topic_prefix, "--resource-pattern-type", "prefixed", "--operation", "Describe"],
        vec!["--topic", &h.topic_prefix, "--resource-pattern-type", "prefixed", "--operation", "Write"],
        vec!["--topic", &h.topic_prefix, "--resource-pattern-type", "prefixed", "--operation", "Create"],
        // The checkpoint topic (named under the same prefix here): read it back and check its policy.
        vec!["--topic", &h.checkpoint_topic, "--operation", "Read"],
        vec!["--topic", &h.checkpoint_topic, "--operation", "DescribeConfigs"],
        // The transactional ids: the configured one and the second one of pipelined commits.
        vec!["--transactional-id", &transactional_id, "--operation", "Write"],
        vec!["--transactional-id", &transactional_id, "--operation", "Describe"],
        vec!["--transactional-id", &second_id, "--operation", "Write"],
        vec!["--transactional-id", &second_id, "--operation", "Describe"],
        // consumer_lag: the committed offsets of the groups it measures.
        vec!["--group", &group, "--operation", "Describe"],
    ]
    .into_iter()
    .map(|a| a.into_iter().map(str::to_owned).collect())
    .collect();
    for acl in &acls {
        let mut args = vec!["--add", "--allow-principal", "User:relay"];
        args.extend(acl.iter().map(String::as_str));
        broker.acl(&args);
    }
    let ca = broker.ca_file();
    let properties = format!(
        "[kafka]\nproperties = {{ \"security.protocol\" = \"SASL_SSL\", \"sasl.mechanisms\" = \"SCRAM-SHA-512\", \
         \"sasl.username\" = \"relay\", \"sasl.password\" = \"relay-secret\", \"ssl.ca.location\" = \"{}\" }}\n",
        ca.display()
    );
    h.rewrite_config(|t| {
        t.replace(&h.services.kafka_bootstrap, &broker.client_listener())
            .replace("[kafka]\n", &properties)
            .replace("[metrics]\n", &format!("[consumer_lag]\ngroups = [\"{group}\"]\ninterval_ms = 1000\n[metrics]\n"))
    });
    let direct = broker.bootstrap();
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(90));
    let c = h.db.client().await;
    let mut expected = HashSet::new();
    for _ in 0..5 {
        expected.insert(good(&c).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let records = relay::read_committed(&direct, &[h.topic("order")]);
        if records.len() >= expected.len() {
            break records;
        }
        assert!(Instant::now() < deadline, "have {}; log:\n{}", records.len(), relay.log_text());
        std::thread::sleep(Duration::from_millis(300));
    };
    let ids: Vec<String> = records.iter().filter_map(|r| r.header("id")).collect();
    assert_eq!(ids.len(), expected.len(), "exactly once:\n{}", relay.log_text());
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), expected);

    // The group has read nothing (offsets at the start, set through the broker's direct listener): the relay, with
    // only Describe on the group, reports it behind by at least the 5 events.
    let topic = h.topic("order");
    let reset = ["--reset-offsets", "--group", &group, "--topic", &topic, "--to-earliest", "--execute"];
    services::kafka_tool(services::CONSUMER_GROUPS, &direct, &reset);
    let metric = format!("outbox_relay_consumer_lag_records{{group=\"{group}\",topic=\"{topic}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag = h.metric(&metric);
        if lag.is_some_and(|l| l >= 5.0) {
            break;
        }
        assert!(Instant::now() < deadline, "lag {lag:?} not reported:\n{}", relay.log_text());
        std::thread::sleep(Duration::from_millis(300));
    }
    relay.stop();
    assert!(!relay.log_text().contains(" ERROR "), "{}", relay.log_text());

    // Without WRITE on its transactional id the relay cannot start: a named, definite error, not a retry loop.
    broker.acl(&[
        "--remove",
        "--force",
        "--allow-principal",
        "User:relay",
        "--transactional-id",
        &transactional_id,
        "--operation",
        "Write",
    ]);
    let mut relay = h.spawn(&[], &[]);
    let status = relay.wait_exit(Duration::from_secs(90)).expect("stops instead of retrying");
    assert!(!status.success());
    let log = relay.log_text();
    println!("--- without the transactional id's WRITE:\n{}", log.lines().rev().take(3).collect::<Vec<_>>().join("\n"));
    assert!(
        log.contains(&format!("may not use transactional id `{transactional_id}`")) && log.contains("grant it WRITE"),
        "named, with the ACL to grant:\n{log}"
    );
    assert!(!log.contains("starting over"), "no retry loop:\n{log}");
}
