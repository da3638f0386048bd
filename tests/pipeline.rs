//! End-to-end tests of the exactly-once pipeline against the real PostgreSQL, Kafka and schema registry from
//! `tests/infra/up.sh`, with the real `outbox-relay` binary as a child process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "common/services.rs"]
mod services;

#[path = "common/relay.rs"]
mod relay;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay::{Harness, Options, Record};

const STARTED: &str = "replication started";

/// Per aggregate key, the `n` payload fields in partition order must be strictly increasing, and each key must live
/// in exactly one partition.
fn assert_per_key_order(records: &[Record], values: &[serde_json::Value]) {
    let mut last: HashMap<Vec<u8>, (i32, i64)> = HashMap::new();
    for (r, v) in records.iter().zip(values) {
        let payload: serde_json::Value = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
        let n = payload["n"].as_i64().unwrap();
        if let Some((part, prev)) = last.get(&r.key) {
            assert_eq!(*part, r.partition, "key {:?} spread over partitions", String::from_utf8_lossy(&r.key));
            assert!(n > *prev, "key {:?}: n {n} after {prev} (out of commit order)", String::from_utf8_lossy(&r.key));
        }
        last.insert(r.key.clone(), (r.partition, n));
    }
}

/// Exactly the committed ids, each once.
fn assert_exactly_once(records: &[Record], committed: &HashSet<String>) {
    let mut seen = HashSet::new();
    let mut dups = Vec::new();
    for r in records {
        let id = r.header("id").expect("id header");
        if !seen.insert(id.clone()) {
            dups.push(id);
        }
    }
    let missing: Vec<_> = committed.difference(&seen).take(5).collect();
    let extra: Vec<_> = seen.difference(committed).take(5).collect();
    assert!(dups.is_empty(), "{} duplicates, e.g. {:?}", dups.len(), &dups[..dups.len().min(5)]);
    assert!(
        missing.is_empty(),
        "{} committed rows missing, e.g. {missing:?}",
        committed.len() - (seen.len() - extra.len())
    );
    assert!(extra.is_empty(), "rows that were never committed: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_rows_arrive_once_on_the_right_topics_with_keys_and_headers() {
    let h = Harness::new("e2e", Options::default()).await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;

    let mut committed = HashSet::new();
    let mut expected: BTreeMap<String, (String, String, String, i64)> = BTreeMap::new();
    let mut n = 0i64;
    // Single-row and multi-row transactions over two aggregate types.
    for t in 0..10 {
        let rows: Vec<(&str, String, &str, i64)> = (0..(t % 3 + 1))
            .map(|i| {
                n += 1;
                let (at, ty) =
                    if (t + i) % 2 == 0 { ("order", "OrderPlaced") } else { ("customer", "CustomerCreated") };
                (at, format!("{at}-{}", (t + i) % 4), ty, n)
            })
            .collect();
        let args: Vec<(&str, &str, &str, String)> = rows
            .iter()
            .map(|(at, aid, ty, n)| (*at, aid.as_str(), *ty, format!(r#"{{"n": {n}, "items": []}}"#)))
            .collect();
        let ids = h.insert_txn(&mut c, &args).await;
        for (id, (at, aid, ty, n)) in ids.iter().zip(&rows) {
            committed.insert(id.clone());
            expected.insert(id.clone(), ((*at).to_owned(), aid.clone(), (*ty).to_owned(), *n));
        }
    }
    // A rolled-back transaction never appears.
    {
        let tx = c.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'order-x', 'Nope', '{}')",
            &[],
        )
        .await
        .unwrap();
        tx.rollback().await.unwrap();
    }
    // Rows of other tables are not events.
    c.batch_execute("INSERT INTO other (note) VALUES ('not an event')").await.unwrap();

    let topics = vec![h.topic("order"), h.topic("customer")];
    let records = h.wait_for_records(&topics, committed.len(), Duration::from_secs(60));
    // A little longer: nothing extra may trickle in.
    std::thread::sleep(Duration::from_millis(500));
    let records = {
        let again = h.read_committed(&topics);
        assert_eq!(again.len(), records.len(), "extra records arrived");
        again
    };
    assert_exactly_once(&records, &committed);
    let values = h.decode_values(&records).await;
    for (r, v) in records.iter().zip(&values) {
        let id = r.header("id").unwrap();
        let (at, aid, ty, n) = &expected[&id];
        assert_eq!(r.topic, h.topic(at), "topic of {id}");
        assert_eq!(String::from_utf8_lossy(&r.key), *aid, "key of {id}");
        assert_eq!(r.header("type").as_deref(), Some(ty.as_str()), "type header of {id}");
        assert_eq!(v["id"], serde_json::json!(id));
        assert_eq!(v["aggregate_type"], serde_json::json!(at));
        assert_eq!(v["aggregate_id"], serde_json::json!(aid));
        assert_eq!(v["type"], serde_json::json!(ty));
        let payload: serde_json::Value = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload, serde_json::json!({"n": n, "items": []}), "payload of {id} (empty arrays kept)");
    }
    assert_per_key_order(&records, &values);

    // Ack after commit: the slot's confirmed position is exactly the stored checkpoint.
    relay.terminate();
    let status = relay.wait_exit(Duration::from_secs(30)).expect("exit after SIGTERM");
    assert!(status.success(), "exit status {status:?}; log:\n{}", relay.log_text());
    let cp = h.read_committed(std::slice::from_ref(&h.checkpoint_topic));
    let last: serde_json::Value = serde_json::from_slice(&cp.last().unwrap().value).unwrap();
    let end: outbox_relay::pg::lsn::Lsn = last["end_lsn"].as_str().unwrap().parse().unwrap();
    assert_eq!(h.confirmed_flush().await, end.as_u64(), "confirmed_flush_lsn == checkpoint end_lsn");
}

/// Continuous load from a writer task; the relay is SIGKILLed at random instants and restarted.
/// `env`: settings every relay instance of the run gets (environment overrides).
async fn load_with_kills(prefix: &str, kills: usize, failpoint_rounds: &[&str], env: &[(&str, &str)]) {
    let h = Arc::new(Harness::new(prefix, Options { max_batch_ms: 20, ..Options::default() }).await);
    // The slot must exist before the first row: rows written before it are not in its stream.
    let mut relay = h.spawn(&[], env);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    // Replayable: OUTBOX_RELAY_TEST_SEED=<n> repeats a run's load and kill instants.
    let seed: u64 =
        std::env::var("OUTBOX_RELAY_TEST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("{prefix}: seed {seed} (set OUTBOX_RELAY_TEST_SEED to replay)");
    let writer = {
        let h = Arc::clone(&h);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut c = h.db.client().await;
            let mut committed = HashSet::new();
            let mut next_n: HashMap<String, i64> = HashMap::new();
            let mut rng = StdRng::seed_from_u64(seed);
            let mut n_txn = 0u64;
            while !stop.load(Ordering::Relaxed) && n_txn < 200_000 {
                n_txn += 1;
                let picked: Vec<(String, String)> = (0..rng.random_range(1..=3))
                    .map(|_| {
                        let key = format!("agg-{}", rng.random_range(0..16));
                        let n = next_n.entry(key.clone()).or_insert(0);
                        *n += 1;
                        (key, format!(r#"{{"n": {n}}}"#))
                    })
                    .collect();
                let rows: Vec<(&str, &str, &str, String)> =
                    picked.iter().map(|(k, p)| ("order", k.as_str(), "OrderPlaced", p.clone())).collect();
                committed.extend(h.insert_txn(&mut c, &rows).await);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            committed
        })
    };
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    for round in 0..kills {
        // Let it work for a random while, then kill without warning.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1200))).await;
        relay.kill9();
        relay = h.spawn(&[], env);
        if round % 5 == 0 {
            relay.wait_log(STARTED, Duration::from_secs(90));
        }
    }
    for fp in failpoint_rounds {
        relay.wait_log(STARTED, Duration::from_secs(90));
        relay.kill9();
        let mut crashing_env = env.to_vec();
        crashing_env.push(("OUTBOX_RELAY_FAILPOINT", fp));
        let mut crashing = h.spawn(&[], &crashing_env);
        let status = crashing.wait_exit(Duration::from_secs(90)).unwrap_or_else(|| panic!("failpoint {fp} never hit"));
        assert!(!status.success(), "failpoint {fp} must crash the process");
        let name = fp.split(':').next().unwrap();
        assert!(crashing.log_text().contains(&format!("failpoint {name} reached")), "log:\n{}", crashing.log_text());
        relay = h.spawn(&[], env);
    }
    relay.wait_log(STARTED, Duration::from_secs(90));
    stop.store(true, Ordering::Relaxed);
    let committed = writer.await.unwrap();
    assert!(committed.len() > 100, "the load wrote only {} rows", committed.len());
    let topics = vec![h.topic("order")];
    h.wait_for_records_of(Some(&relay), &topics, committed.len(), Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    let records = h.read_committed(&topics).into_iter().collect::<Vec<_>>();
    assert!(records.len() >= committed.len(), "records shrank");
    assert_exactly_once(&records, &committed);
    let values = h.decode_values(&records).await;
    assert_per_key_order(&records, &values);
    eprintln!(
        "{prefix}: {} rows committed, {} kills, all delivered exactly once in per-key order",
        committed.len(),
        kills
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_instants_loses_and_duplicates_nothing() {
    let kills = std::env::var("OUTBOX_RELAY_SOAK_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    load_with_kills("crash", kills, &[], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoints_after_produce_and_after_commit_lose_and_duplicate_nothing() {
    // `between_overlapping_commits`: pipelined commits (the default), the previous transaction's commit running on
    // one transactional id while this one's records and checkpoint are in the logs under the other.
    let rounds = ["after_produce_before_commit", "after_commit_before_ack:3", "between_overlapping_commits:3"];
    load_with_kills("failpoint", 0, &rounds, &[]).await;
}

/// The same with one producer on one transactional id (`kafka.pipelined_commits = false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoints_with_commits_not_pipelined_lose_and_duplicate_nothing() {
    let rounds = ["after_produce_before_commit", "after_commit_before_ack:3"];
    load_with_kills("onefp", 0, &rounds, &[("OUTBOX_RELAY_KAFKA__PIPELINED_COMMITS", "false")]).await;
}

/// A relay running on `h` that has relayed one row: the relay, the client that wrote it, and its id.
async fn first_instance_with_one_row(h: &Harness) -> (relay::RelayProcess, tokio_postgres::Client, HashSet<String>) {
    let mut first = h.spawn(&[], &[]);
    first.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;
    let mut committed = HashSet::new();
    committed.extend(h.insert_txn(&mut c, &[("order", "a", "T", r#"{"n": 1}"#.into())]).await);
    h.wait_for_records(&[h.topic("order")], 1, Duration::from_secs(30));
    (first, c, committed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_fences_the_first() {
    let h = Harness::new("fence", Options::default()).await;
    let (mut first, mut c, mut committed) = first_instance_with_one_row(&h).await;

    // Kafka fencing is the second line behind the leadership lease: an instance that does not take the lease
    // (leader.enabled = false) still cannot make the first commit beside it.
    let mut second = h.spawn(&[], &[("OUTBOX_RELAY_LEADER__ENABLED", "false")]);
    // The second fences the first at init_transactions; the first notices at its next commit (or heartbeat) and
    // stops; the second then gets the slot.
    committed.extend(h.insert_txn(&mut c, &[("order", "a", "T", r#"{"n": 2}"#.into())]).await);
    let status = first.wait_exit(Duration::from_secs(90)).expect("first instance must stop after being fenced");
    assert!(!status.success());
    let log = first.log_text();
    assert!(log.contains("fenced"), "first instance log must name the fencing:\n{log}");
    second.wait_log(STARTED, Duration::from_secs(90));
    committed.extend(h.insert_txn(&mut c, &[("order", "a", "T", r#"{"n": 3}"#.into())]).await);
    h.wait_for_records(&[h.topic("order")], 3, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let records = h.read_committed(&[h.topic("order")]);
    assert_exactly_once(&records, &committed);
}

/// Not pipelining, a relay still fences `<transactional_id>.2` before it reads the checkpoint: an instance that
/// pipelines (one started before the setting changed, a standby configured otherwise) could otherwise still commit
/// on that id afterwards. A producer on that id with a transaction open stands in for such an instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_does_not_pipeline_still_fences_the_second_transactional_id() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let h = Harness::new("fencetwo", Options::default()).await;
    let (mut first, mut c, mut committed) = first_instance_with_one_row(&h).await;
    first.stop();
    let stray_id = format!("outbox-relay-{}.2", h.connector);
    let (bootstrap, topic) = (h.services.kafka_bootstrap.clone(), h.topic("order"));
    let stray = tokio::task::spawn_blocking(move || {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", &stray_id)
            .create()
            .unwrap();
        p.init_transactions(Duration::from_secs(30)).unwrap();
        p.begin_transaction().unwrap();
        p.send(BaseRecord::to(&topic).key("stray").payload("stray")).map_err(|(e, _)| e).unwrap();
        p.flush(Duration::from_secs(10)).unwrap();
        p
    })
    .await
    .unwrap();

    let mut second = h.spawn(&[], &[("OUTBOX_RELAY_KAFKA__PIPELINED_COMMITS", "false")]);
    second.wait_log(STARTED, Duration::from_secs(60));
    let commit = tokio::task::spawn_blocking(move || stray.commit_transaction(Duration::from_secs(30))).await.unwrap();
    assert!(commit.is_err(), "the transaction open on the second id survived the start:\n{}", second.log_text());

    committed.extend(h.insert_txn(&mut c, &[("order", "a", "T", r#"{"n": 2}"#.into())]).await);
    h.wait_for_records_of(Some(&second), &[h.topic("order")], 2, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let records = h.read_committed(&[h.topic("order")]);
    assert!(records.iter().all(|r| r.key != b"stray"), "the fenced transaction's record is visible");
    assert_exactly_once(&records, &committed);
}

/// A start that fails on PostgreSQL (here: a misconfigured outbox table, as a bad rollout would ship) must not fence
/// the instance that is running: fencing comes only after PostgreSQL's checks passed. Without the lease
/// (leader.enabled = false) nothing else would keep the failing instance from taking the running one down with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_on_postgres_leaves_the_running_instance_alone() {
    let h = Harness::new("nofence", Options::default()).await;
    let (mut first, mut c, mut committed) = first_instance_with_one_row(&h).await;

    let mut broken = h.spawn(
        &[],
        &[("OUTBOX_RELAY_LEADER__ENABLED", "false"), ("OUTBOX_RELAY_OUTBOX__TABLES__0__TABLE", "public.missing")],
    );
    let status = broken.wait_exit(Duration::from_secs(60)).expect("the misconfigured instance stops");
    assert!(!status.success());
    assert!(broken.log_text().contains("public.missing"), "it names the table:\n{}", broken.log_text());
    assert!(!broken.log_text().contains("older instances fenced"), "it fenced:\n{}", broken.log_text());

    committed.extend(h.insert_txn(&mut c, &[("order", "a", "T", r#"{"n": 2}"#.into())]).await);
    h.wait_for_records_of(Some(&first), &[h.topic("order")], 2, Duration::from_secs(30));
    assert!(first.is_running(), "the running instance must go on:\n{}", first.log_text());
    assert!(!first.log_text().contains("fenced:"), "{}", first.log_text());
    std::thread::sleep(Duration::from_millis(500));
    assert_exactly_once(&h.read_committed(&[h.topic("order")]), &committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_advanced_behind_the_relays_back_is_a_named_gap_error() {
    let h = Harness::new("gap", Options::default()).await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;
    h.insert_txn(&mut c, &[("order", "a", "T", r#"{"n": 1}"#.into())]).await;
    h.wait_for_records(&[h.topic("order")], 1, Duration::from_secs(30));
    relay.terminate();
    assert!(relay.wait_exit(Duration::from_secs(30)).expect("stops").success());

    // Rows written while the relay is down, then the slot is advanced past them by someone else.
    h.insert_txn(&mut c, &[("order", "a", "T", r#"{"n": 2}"#.into())]).await;
    // Someone else consumes the slot (as a stray pg_recvlogical or a second tool would): row 2 is gone from it.
    // (The test server runs with synchronous_commit = off: the commit becomes decodable once its WAL is flushed.)
    let mut consumed = 0i64;
    for _ in 0..50 {
        consumed += c
            .query_one(
                "SELECT count(*) FROM pg_logical_slot_get_binary_changes($1::name, NULL, NULL, 'proto_version', '1', 'publication_names', $1::text)",
                &[&h.slot()],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if consumed >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(consumed >= 3, "the stray consumer took row 2's transaction (B, I, C), got {consumed} messages");

    let mut again = h.spawn(&[], &[]);
    let status = again.wait_exit(Duration::from_secs(60)).expect("must refuse to start");
    assert!(!status.success());
    let log = again.log_text();
    assert!(log.contains("gap detected"), "named gap error expected:\n{log}");
    assert!(log.contains("--accept-gap"), "the error must say how to proceed:\n{log}");

    // The operator accepts the gap: the relay starts from the slot.
    let mut accepted = h.spawn(&["--accept-gap"], &[]);
    accepted.wait_log(STARTED, Duration::from_secs(60));
    h.insert_txn(&mut c, &[("order", "a", "T", r#"{"n": 3}"#.into())]).await;
    h.wait_for_records_of(Some(&accepted), &[h.topic("order")], 2, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let records = h.read_committed(&[h.topic("order")]);
    let ns: Vec<i64> = h
        .decode_values(&records)
        .await
        .iter()
        .map(|v| {
            serde_json::from_str::<serde_json::Value>(v["payload"].as_str().unwrap()).unwrap()["n"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(
        ns,
        vec![1, 3],
        "row 2 was skipped by the operator's choice, row 3 arrives; log:\n{}",
        accepted.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_outbox_still_advances_the_slot() {
    let h = Harness::new("idle", Options { heartbeat_interval_ms: 300, ..Options::default() }).await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    let mut observed = Vec::new();
    for _ in 0..4 {
        // Other tables are written, the outbox is not: WAL grows, and the slot must follow.
        c.batch_execute("INSERT INTO other (note) SELECT md5(g::text) FROM generate_series(1, 500) g").await.unwrap();
        let written: i64 =
            c.query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[]).await.unwrap().get(0);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let flushed = h.confirmed_flush().await;
            if flushed >= written as u64 {
                observed.push(flushed);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "slot stuck at {flushed} while WAL is at {written}; log:\n{}",
                relay.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(observed.windows(2).all(|w| w[1] > w[0]), "confirmed_flush_lsn must keep advancing: {observed:?}");
    assert!(h.read_committed(&[h.topic("order")]).is_empty(), "heartbeats are not events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_zero_and_a_restart_continues_exactly_once() {
    let h = Arc::new(Harness::new("term", Options::default()).await);
    // The slot must exist before the first row: rows written before it are not in its stream.
    let mut first = Some(h.spawn(&[], &[]));
    first.as_mut().unwrap().wait_log(STARTED, Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let h = Arc::clone(&h);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut c = h.db.client().await;
            let mut committed = HashSet::new();
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                n += 1;
                committed.extend(h.insert_txn(&mut c, &[("order", "k", "T", format!(r#"{{"n": {n}}}"#))]).await);
            }
            committed
        })
    };
    // More rounds: OUTBOX_RELAY_SIGTERM_ROUNDS (a race at shutdown once made one round in many exit 1).
    let rounds: usize = std::env::var("OUTBOX_RELAY_SIGTERM_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    for _ in 0..rounds {
        let mut relay = first.take().unwrap_or_else(|| h.spawn(&[], &[]));
        relay.wait_log(STARTED, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(800)).await;
        relay.terminate();
        let status = relay.wait_exit(Duration::from_secs(40)).expect("exit within the grace period");
        assert!(status.success(), "SIGTERM must exit 0: {status:?}\n{}", relay.log_text());
        assert!(relay.log_text().contains("stopped cleanly"), "{}", relay.log_text());
    }
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    let committed = writer.await.unwrap();
    let records = h.wait_for_records_of(Some(&relay), &[h.topic("order")], committed.len(), Duration::from_secs(60));
    assert_exactly_once(&records, &committed);
    let values = h.decode_values(&records).await;
    assert_per_key_order(&records, &values);
}
