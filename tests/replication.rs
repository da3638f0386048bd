//! The replication client against the real PostgreSQL of `tests/infra/up.sh`.
//!
//! Each test makes its own database (table + publication) and its own slots, so the tests run in parallel against one
//! server. The services must be up: a test that cannot reach them fails with a message saying how to start them.
//! `PG_LATEST_URL` (from `up.sh --with-pg-latest`) enables the newest-server test; set
//! `OUTBOX_RELAY_REQUIRE_PG_LATEST=1` to make its absence a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "common/services.rs"]
mod services;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use outbox_relay::pg::conninfo::{ConnInfo, SslMode};
use outbox_relay::pg::lsn::Lsn;
use outbox_relay::pg::pgoutput::{Decoder, DecoderOptions, LogicalMessage};
use outbox_relay::pg::replication::{
    Backoff, ReplicationClient, ReplicationError, ReplicationMessage, ReplicationOptions, ReplicationStream,
    SnapshotAction, Streaming, XLogData,
};
use services::{Services, TestDb, infra_var, required_var, unique_name};

/// Bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

fn pg_services(pg_url: String) -> Services {
    Services {
        pg_url,
        kafka_bootstrap: String::new(),
        schema_registry_url: String::new(),
        pg_bin_dir: infra_var("PG_BIN_DIR").map(PathBuf::from),
        pg_ssl_cert: infra_var("PG_SSL_CERT").map(PathBuf::from),
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {what}"))
}

const PUBLICATION: &str = "Outbox \"Pub\", it's";

/// A database with table `outbox(id, payload)` in a publication whose name needs quoting; slots left in it are dropped
/// with it.
struct Fixture {
    db: TestDb,
    host: String,
    port: u16,
}

impl Fixture {
    async fn new(prefix: &str) -> Fixture {
        Self::on(required_var("PG_URL"), prefix).await
    }

    async fn on(admin_url: String, prefix: &str) -> Fixture {
        let parsed = url::Url::parse(&admin_url).expect("PG_URL is a URL");
        let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = parsed.port().unwrap_or(5432);
        let reachable = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
        assert!(
            reachable,
            "PostgreSQL at {host}:{port} does not accept connections: start the test services with \
             `bash tests/infra/up.sh` (add --with-pg-latest for PG_LATEST_URL)"
        );
        let db = TestDb::create(&pg_services(admin_url), prefix).await;
        db.execute(&format!(
            "CREATE TABLE outbox (id bigserial PRIMARY KEY, payload text NOT NULL);
             CREATE PUBLICATION \"{}\" FOR TABLE outbox;",
            PUBLICATION.replace('"', "\"\"")
        ))
        .await;
        Fixture { db, host, port }
    }

    fn url(&self, user: &str, password: Option<&str>, query: &str) -> String {
        let auth = match password {
            Some(p) => format!("{user}:{p}"),
            None => user.to_owned(),
        };
        format!("postgres://{auth}@{}:{}/{}?{query}", self.host, self.port, self.db.name)
    }

    /// The SCRAM replication role `relay`, no TLS, plus `extra` backend options.
    fn relay_config(&self, options: &[(&str, &str)]) -> ConnInfo {
        let mut config =
            ConnInfo::from_url(&self.url("relay", Some("relay-secret"), "sslmode=disable")).expect("valid URL");
        for (name, value) in options {
            config.add_guc(name, value);
        }
        config
    }

    async fn connect(&self, options: &[(&str, &str)]) -> ReplicationClient {
        let config = self.relay_config(options);
        within("connect", ReplicationClient::connect(&config)).await.unwrap_or_else(|e| panic!("connect: {e}"))
    }

    /// Inserts `payloads` in one transaction.
    async fn insert(&self, payloads: &[&str]) {
        let values: Vec<String> = payloads.iter().map(|p| format!("('{}')", p.replace('\'', "''"))).collect();
        self.db.execute(&format!("INSERT INTO outbox (payload) VALUES {}", values.join(","))).await;
    }

    /// `(active, confirmed_flush_lsn)` of `slot`.
    async fn slot(&self, slot: &str) -> (bool, Lsn) {
        let row = self
            .db
            .client()
            .await
            .query_one(
                "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap_or_else(|e| panic!("slot {slot}: {e}"));
        let lsn: String = row.get(1);
        (row.get(0), lsn.parse().expect("an LSN"))
    }

    async fn wait_slot_inactive(&self, slot: &str) {
        let deadline = Instant::now() + WAIT;
        while self.slot(slot).await.0 {
            assert!(Instant::now() < deadline, "slot {slot} still active after {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_confirmed(&self, slot: &str, lsn: Lsn) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, confirmed) = self.slot(slot).await;
            if confirmed == lsn {
                return;
            }
            assert!(Instant::now() < deadline, "slot {slot} confirmed_flush_lsn is {confirmed}, expected {lsn}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Fixture {
    /// Streams of a failed test may still hold their slots for a moment: wait for them, drop the slots, so that
    /// `TestDb` can drop the database.
    fn drop(&mut self) {
        let url = self.db.url.clone();
        let name = self.db.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(conn);
                let sql = "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                           WHERE database = $1 AND active_pid IS NOT NULL";
                client.execute(sql, &[&name]).await.ok()?;
                for _ in 0..100 {
                    let busy = client
                        .query_one("SELECT count(*) FROM pg_replication_slots WHERE database = $1 AND active", &[&name])
                        .await
                        .ok()?;
                    if busy.get::<_, i64>(0) == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                client
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1",
                        &[&name],
                    )
                    .await
                    .ok()
            })
        })
        .join();
    }
}

fn slot_name() -> String {
    unique_name("slot")
}

/// Creates a persistent slot and starts streaming from it.
async fn start(
    fx: &Fixture,
    slot: &str,
    backend_options: &[(&str, &str)],
    tweak: impl FnOnce(&mut ReplicationOptions),
) -> ReplicationStream {
    let mut client = fx.connect(backend_options).await;
    within("create slot", client.create_replication_slot(slot, false, SnapshotAction::Nothing))
        .await
        .unwrap_or_else(|e| panic!("create slot: {e}"));
    let mut options = ReplicationOptions::new(slot, [PUBLICATION]);
    tweak(&mut options);
    within("start replication", client.start_replication(&options))
        .await
        .unwrap_or_else(|e| panic!("start replication: {e}"))
}

/// The next XLogData, skipping keepalives.
async fn next_xlog(stream: &mut ReplicationStream) -> XLogData {
    within("next XLogData", async {
        loop {
            match stream.next().await {
                Ok(Some(ReplicationMessage::XLogData(x))) => return x,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the server ended the stream"),
                Err(e) => panic!("stream error: {e}"),
            }
        }
    })
    .await
}

fn decoder(stream: &ReplicationStream) -> Decoder {
    Decoder::new(DecoderOptions::new(stream.proto_version()).expect("a supported protocol version"))
}

/// Messages of the next whole transaction, up to and including its Commit.
async fn next_txn(stream: &mut ReplicationStream, decoder: &mut Decoder) -> Vec<(XLogData, LogicalMessage)> {
    let mut txn = Vec::new();
    loop {
        let x = next_xlog(stream).await;
        let msg = decoder.decode(&x.data).unwrap_or_else(|e| panic!("decode {:?}: {e}", x.data));
        let done = matches!(msg, LogicalMessage::Commit(_) | LogicalMessage::StreamCommit(_));
        txn.push((x, msg));
        if done {
            return txn;
        }
    }
}

fn commit_end(txn: &[(XLogData, LogicalMessage)]) -> Lsn {
    match txn.last() {
        Some((_, LogicalMessage::Commit(c))) => c.end_lsn,
        Some((_, LogicalMessage::StreamCommit(c))) => c.end_lsn,
        other => panic!("transaction does not end with a commit: {other:?}"),
    }
}

/// Payloads of the inserts of a transaction.
fn payloads(txn: &[(XLogData, LogicalMessage)]) -> Vec<String> {
    txn.iter()
        .filter_map(|(_, m)| match m {
            LogicalMessage::Insert(i) => Some(i.new_tuple.get(1)?.as_text()?.ok()?.to_owned()),
            _ => None,
        })
        .collect()
}

fn tags(txn: &[(XLogData, LogicalMessage)]) -> String {
    txn.iter().map(|(x, _)| char::from(x.data[0])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_arrive_as_begin_insert_commit() {
    let fx = Fixture::new("repl_inserts").await;
    let mut client = fx.connect(&[]).await;
    assert!(client.server_version_num() >= 100_000, "{}", client.server_version_num());

    let system = within("IDENTIFY_SYSTEM", client.identify_system()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(system.dbname.as_deref(), Some(fx.db.name.as_str()));
    assert!(system.timeline >= 1 && !system.xlogpos.is_zero() && system.system_id != 0, "{system:?}");

    // SQL works on a replication=database connection too.
    let rows = within("SELECT", client.simple_query("SELECT 1 AS one, NULL AS nothing")).await.unwrap();
    assert_eq!(rows[0].get(0, "one"), Some("1"));
    assert_eq!(rows[0].get(0, "nothing"), None);

    let slot = slot_name();
    let created = within("create slot", client.create_replication_slot(&slot, false, SnapshotAction::Export))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.slot_name, slot);
    assert!(created.consistent_point >= system.xlogpos, "{created:?} vs {system:?}");
    assert!(created.snapshot_name.is_some(), "exported snapshot expected: {created:?}");
    assert_eq!(created.output_plugin.as_deref(), Some("pgoutput"));

    let options = ReplicationOptions::new(&slot, [PUBLICATION]);
    let mut stream = within("start", client.start_replication(&options)).await.unwrap_or_else(|e| panic!("{e}"));
    let expected_proto = outbox_relay::pg::replication::max_proto_version_for(stream.server_info().server_version_num);
    assert_eq!(stream.proto_version(), expected_proto);

    fx.insert(&["first", "second", "third"]).await;
    fx.db
        .execute("BEGIN; INSERT INTO outbox (payload) VALUES ('fourth'); SELECT pg_logical_emit_message(true, 'outbox', 'hello'); COMMIT;")
        .await;

    let mut dec = decoder(&stream);
    let t1 = next_txn(&mut stream, &mut dec).await;
    assert_eq!(tags(&t1), "BRIIIC");
    assert_eq!(payloads(&t1), ["first", "second", "third"]);
    let t2 = next_txn(&mut stream, &mut dec).await;
    assert_eq!(tags(&t2), "BIMC", "Relation is sent once per session; the message arrives in its transaction");
    assert_eq!(payloads(&t2), ["fourth"]);
    assert!(commit_end(&t2) > commit_end(&t1));
    for (x, m) in t1.iter().chain(&t2) {
        // pgoutput sends Relation messages without a position.
        if !matches!(m, LogicalMessage::Relation(_)) {
            assert!(x.wal_start >= created.consistent_point && x.wal_end >= x.wal_start, "{x:?}");
        }
    }
    assert!(stream.last_received_lsn() >= t2.last().unwrap().0.wal_end);
    assert_eq!(stream.last_flushed_lsn(), Lsn::ZERO, "nothing acknowledged yet");

    let client = within("stop", stream.stop()).await.unwrap_or_else(|e| panic!("stop: {e}"));
    within("close", client.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_is_streamed_with_small_decoding_memory() {
    let fx = Fixture::new("repl_streaming").await;
    let slot = slot_name();
    let mut stream = start(&fx, &slot, &[("logical_decoding_work_mem", "64kB")], |o| o.streaming = Streaming::On).await;
    assert!(stream.proto_version() >= 2);
    // ~600 kB of changes in one transaction: far above 64 kB.
    fx.db.execute("INSERT INTO outbox (payload) SELECT repeat('x', 200) || i FROM generate_series(1, 3000) i").await;

    let mut dec = decoder(&stream);
    let txn = next_txn(&mut stream, &mut dec).await;
    let tags = tags(&txn);
    assert!(tags.starts_with('S'), "a streamed transaction starts with Stream Start: {}", &tags[..10]);
    assert!(tags.contains('E'), "Stream Stop expected");
    assert!(tags.ends_with('c'), "Stream Commit expected: {}", &tags[tags.len() - 10..]);
    assert_eq!(payloads(&txn).len(), 3000);
    within("stop", stream.stop()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_replies_keep_an_idle_connection_alive() {
    let fx = Fixture::new("repl_keepalive").await;
    let slot = slot_name();
    // A status interval far above the timeout: only the replies to the server's keepalive requests keep us alive.
    let mut stream = start(&fx, &slot, &[("wal_sender_timeout", "2s")], |o| {
        o.status_interval = Duration::from_secs(3600);
    })
    .await;
    let idle_until = Instant::now() + Duration::from_secs(6);
    let mut requests = 0;
    while let Ok(next) = tokio::time::timeout_at(idle_until.into(), stream.next()).await {
        match next {
            Ok(Some(ReplicationMessage::Keepalive(k))) => requests += usize::from(k.reply_requested),
            Ok(Some(other)) => panic!("no traffic expected: {other:?}"),
            Ok(None) => panic!("the server ended the stream"),
            Err(e) => panic!("the connection did not survive 6 s idle with wal_sender_timeout=2s: {e}"),
        }
    }
    assert!(requests >= 2, "the server should have asked for replies ~every second, asked {requests} times");
    fx.insert(&["after idle"]).await;
    let mut dec = decoder(&stream);
    assert_eq!(payloads(&next_txn(&mut stream, &mut dec).await), ["after idle"]);
    within("stop", stream.stop()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_status_keeps_a_busy_caller_alive() {
    let fx = Fixture::new("repl_busy").await;
    let slot = slot_name();
    let mut stream = start(&fx, &slot, &[("wal_sender_timeout", "2s")], |o| {
        o.status_interval = Duration::from_millis(300);
    })
    .await;
    // The caller does not read for 6 s (say, a long Kafka commit); the background status updates answer for it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    fx.insert(&["after busy"]).await;
    let mut dec = decoder(&stream);
    assert_eq!(payloads(&next_txn(&mut stream, &mut dec).await), ["after busy"]);
    within("stop", stream.stop()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_by_wal_sender_timeout() {
    // The control for the two tests above: neither replies nor periodic updates, and the server hangs up.
    let fx = Fixture::new("repl_silent").await;
    let slot = slot_name();
    let mut stream = start(&fx, &slot, &[("wal_sender_timeout", "2s")], |o| {
        o.status_interval = Duration::from_secs(3600);
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let err = within("stream error", async {
        loop {
            match stream.next().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    })
    .await
    .expect("the server should have dropped a client that never answers");
    assert!(err.is_transient(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_flush_is_exactly_the_acknowledged_lsn() {
    let fx = Fixture::new("repl_ack").await;
    let slot = slot_name();
    let mut client = fx.connect(&[]).await;
    let created = client.create_replication_slot(&slot, false, SnapshotAction::Nothing).await.unwrap();
    let options = ReplicationOptions::new(&slot, [PUBLICATION]);
    let mut stream = client.start_replication(&options).await.unwrap();
    for p in ["a", "b", "c"] {
        fx.insert(&[p]).await;
    }
    let mut dec = decoder(&stream);
    let ends: Vec<Lsn> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(commit_end(&next_txn(&mut stream, &mut dec).await));
        }
        v
    };

    // Received but not acknowledged: the server hears about it (write), the slot does not move (flush).
    within("status", stream.send_status()).await.unwrap();
    let admin = fx.db.client().await;
    let pid = stream.server_info().backend_pid;
    within("write_lsn", async {
        loop {
            let row = admin
                .query_opt("SELECT write_lsn::text FROM pg_stat_replication WHERE pid = $1", &[&pid])
                .await
                .unwrap();
            let write: Option<String> = row.and_then(|r| r.get(0));
            if write.is_some_and(|w| w.parse::<Lsn>().unwrap() >= ends[2]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(fx.slot(&slot).await.1, created.consistent_point, "an unacknowledged position moved the slot");

    // Ack the second transaction, then a lower position: the flush position must not go back.
    stream.ack(ends[1]);
    fx.wait_confirmed(&slot, ends[1]).await;
    stream.ack(ends[0]);
    stream.ack_handle().ack(Lsn(ends[0].as_u64() - 1));
    assert_eq!(stream.last_flushed_lsn(), ends[1]);
    within("status", stream.send_status()).await.unwrap();
    let mut client = within("stop", stream.stop()).await.unwrap_or_else(|e| panic!("stop: {e}"));
    let (active, confirmed) = fx.slot(&slot).await;
    assert_eq!(confirmed, ends[1], "confirmed_flush_lsn must be exactly the acknowledged LSN");
    assert!(!active, "stop() must release the slot");

    // The connection stays usable for commands, but not for a second stream (the server would end it at once).
    let _ = client.identify_system().await.unwrap();
    let err = client.start_replication(&options).await.expect_err("one stream per connection");
    assert!(matches!(err, ReplicationError::Unsupported(_)), "{err:?}");

    // A new connection streams from the acknowledged position: only "c" is left.
    let mut stream = fx.connect(&[]).await.start_replication(&options).await.unwrap();
    let mut dec = decoder(&stream);
    let txn = next_txn(&mut stream, &mut dec).await;
    assert_eq!(payloads(&txn), ["c"]);
    assert_eq!(commit_end(&txn), ends[2]);
    within("stop", stream.stop()).await.unwrap();
    assert_eq!(fx.slot(&slot).await.1, ends[1], "stopping without a new ack must not move the slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_terminate_resumes_from_acked_lsn() {
    let fx = Fixture::new("repl_reconnect").await;
    let slot = slot_name();
    let mut stream = start(&fx, &slot, &[], |_| {}).await;
    let mut dec = decoder(&stream);
    fx.insert(&["one"]).await;
    let first = next_txn(&mut stream, &mut dec).await;
    assert_eq!(payloads(&first), ["one"]);
    stream.ack(commit_end(&first));
    fx.wait_confirmed(&slot, commit_end(&first)).await;
    fx.insert(&["two"]).await;
    let _ = next_xlog(&mut stream).await; // "two" is on its way, unacknowledged

    let pid = stream.server_info().backend_pid;
    let admin = fx.db.client().await;
    let killed: bool = admin.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap().get(0);
    assert!(killed);
    let err = within("stream error after pg_terminate_backend", async {
        loop {
            match stream.next().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("a terminated walsender must surface as an error, not a clean end"),
                Err(e) => return e,
            }
        }
    })
    .await;
    eprintln!("after pg_terminate_backend: {err}");
    assert!(err.is_transient(), "pg_terminate_backend must be transient: {err}");
    assert!(matches!(err, ReplicationError::ServerShutdown(_)), "unexpected error kind: {err:?}");
    assert_eq!(err.code(), Some("57P01"));
    assert!(matches!(stream.next().await, Err(ReplicationError::StreamFailed)), "a failed stream stays failed");

    fx.wait_slot_inactive(&slot).await;
    let config = fx.relay_config(&[]);
    let options = ReplicationOptions::new(&slot, [PUBLICATION]);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut stream = loop {
        let attempt = async { ReplicationClient::connect(&config).await?.start_replication(&options).await };
        match within("reconnect", attempt).await {
            Ok(s) => break s,
            Err(e) if e.is_transient() && backoff.attempts() < 10 => tokio::time::sleep(backoff.next_delay()).await,
            Err(e) => panic!("reconnect failed: {e}"),
        }
    };
    let mut dec = decoder(&stream);
    let txn = next_txn(&mut stream, &mut dec).await;
    assert_eq!(payloads(&txn), ["two"], "resume must start after the acknowledged transaction, and lose nothing");
    within("stop", stream.stop()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_with_each_authentication_method() {
    let fx = Fixture::new("repl_auth").await;
    for (user, password, method) in [
        ("relay", Some("relay-secret"), "scram-sha-256"),
        ("relay_md5", Some("md5-secret"), "md5"),
        ("relay_plain", Some("plain-secret"), "password"),
        ("relay_trust", None, "trust"),
    ] {
        let config = ConnInfo::from_url(&fx.url(user, password, "sslmode=disable")).unwrap();
        let mut client = within(method, ReplicationClient::connect(&config))
            .await
            .unwrap_or_else(|e| panic!("{method} login as {user}: {e}"));
        let system = client.identify_system().await.unwrap_or_else(|e| panic!("{method}: {e}"));
        assert_eq!(system.dbname.as_deref(), Some(fx.db.name.as_str()));
        assert!(!client.server_info().tls);
        client.close().await.unwrap();
    }

    for (user, password) in [("relay", "wrong"), ("relay_md5", "wrong"), ("relay_plain", "wrong")] {
        let config = ConnInfo::from_url(&fx.url(user, Some(password), "sslmode=disable")).unwrap();
        let err = within("bad login", ReplicationClient::connect(&config)).await.expect_err("wrong password");
        assert!(matches!(err, ReplicationError::AuthFailed { .. }), "{user}: {err:?}");
        assert_eq!(err.code(), Some("28P01"), "{err}");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("password"), "{err}");
    }
    let config = ConnInfo::from_url(&fx.url("relay", None, "sslmode=disable")).unwrap();
    let err = within("no password", ReplicationClient::connect(&config)).await.expect_err("no password");
    assert!(matches!(err, ReplicationError::PasswordMissing { .. }), "{err:?}");

    // application_name reaches the server.
    let config =
        ConnInfo::from_url(&fx.url("relay", Some("relay-secret"), "sslmode=disable&application_name=relay-auth-test"))
            .unwrap();
    let client = within("application_name", ReplicationClient::connect(&config)).await.unwrap();
    let row = fx
        .db
        .client()
        .await
        .query_one("SELECT application_name FROM pg_stat_activity WHERE pid = $1", &[&client.backend_pid()])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "relay-auth-test");
    client.close().await.unwrap();

    // Nobody listening: a transient error naming the address.
    let port = services::closed_port();
    let config = ConnInfo::from_url(&format!("postgres://relay:x@127.0.0.1:{port}/db?sslmode=disable")).unwrap();
    let err = within("closed port", ReplicationClient::connect(&config)).await.expect_err("nothing listens");
    assert!(matches!(err, ReplicationError::Connect { .. }) && err.is_transient(), "{err:?}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

fn wrong_root_cert() -> tempfile::NamedTempFile {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509Builder, X509NameBuilder};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut cert = X509Builder::new().unwrap();
    cert.set_version(2).unwrap();
    cert.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap()).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), cert.build().to_pem().unwrap()).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_against_the_self_signed_server() {
    let fx = Fixture::new("repl_tls").await;
    let cert = required_var("PG_SSL_CERT");
    let localhost = |query: &str| {
        let url = fx.url("relay", Some("relay-secret"), query).replacen(&fx.host, "localhost", 1);
        ConnInfo::from_url(&url).unwrap()
    };

    // require: TLS without verification; SCRAM binds to the TLS channel.
    let mut client = within("require", ReplicationClient::connect(&localhost("sslmode=require"))).await.unwrap();
    assert!(client.server_info().tls && client.server_info().channel_bound, "{:?}", client.server_info());
    client.identify_system().await.unwrap();
    client.close().await.unwrap();

    // verify-full against the server's own certificate, host name localhost.
    let config = localhost(&format!("sslmode=verify-full&sslrootcert={cert}&channel_binding=require"));
    let mut client =
        within("verify-full", ReplicationClient::connect(&config)).await.unwrap_or_else(|e| panic!("verify-full: {e}"));
    assert!(client.server_info().tls);
    client.identify_system().await.unwrap();
    // Streaming works over TLS too.
    let slot = slot_name();
    client.create_replication_slot(&slot, true, SnapshotAction::Nothing).await.unwrap();
    let mut stream = client.start_replication(&ReplicationOptions::new(&slot, [PUBLICATION])).await.unwrap();
    fx.insert(&["over tls"]).await;
    let mut dec = decoder(&stream);
    assert_eq!(payloads(&next_txn(&mut stream, &mut dec).await), ["over tls"]);
    within("stop", stream.stop()).await.unwrap().close().await.unwrap();

    // verify-ca with a root that did not sign the server certificate.
    let wrong = wrong_root_cert();
    let config = localhost(&format!("sslmode=verify-ca&sslrootcert={}", wrong.path().display()));
    assert_eq!(config.ssl_mode, SslMode::VerifyCa);
    let err = within("verify-ca wrong root", ReplicationClient::connect(&config)).await.expect_err("must not verify");
    assert!(matches!(err, ReplicationError::TlsHandshake { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(shown.contains("certificate verification failed") && shown.contains("sslrootcert"), "{shown}");
    assert!(!err.is_transient());

    // channel_binding=require cannot be met without TLS.
    let config =
        ConnInfo::from_url(&fx.url("relay", Some("relay-secret"), "sslmode=disable&channel_binding=require")).unwrap();
    let err = within("binding without TLS", ReplicationClient::connect(&config)).await.expect_err("no TLS");
    assert!(matches!(err, ReplicationError::ChannelBindingRequired(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definite_errors_are_named() {
    let fx = Fixture::new("repl_errors").await;
    let slot = slot_name();
    let stream = start(&fx, &slot, &[], |_| {}).await;

    // The slot is active for the stream above.
    let client = fx.connect(&[]).await;
    let err = within("busy slot", client.start_replication(&ReplicationOptions::new(&slot, [PUBLICATION])))
        .await
        .expect_err("slot is in use");
    assert!(matches!(err, ReplicationError::SlotInUse(_)), "{err:?}");
    assert_eq!(err.code(), Some("55006"));
    assert!(!err.is_transient());
    assert!(err.to_string().contains(&format!("PID {}", stream.server_info().backend_pid)), "{err}");

    let client = fx.connect(&[]).await;
    let err = within("missing slot", client.start_replication(&ReplicationOptions::new("no_such_slot", [PUBLICATION])))
        .await
        .expect_err("slot does not exist");
    assert!(matches!(err, ReplicationError::SlotNotFound(_)), "{err:?}");
    assert_eq!(err.code(), Some("42704"));
    assert!(!err.is_transient());

    // A missing publication is noticed when the first change is decoded (PostgreSQL 18 skips it with a WARNING
    // instead, which the client logs as a notice).
    let other_slot = slot_name();
    let mut client = fx.connect(&[]).await;
    let version = client.server_version_num();
    client.create_replication_slot(&other_slot, true, SnapshotAction::Nothing).await.unwrap();
    let mut bad = client.start_replication(&ReplicationOptions::new(&other_slot, ["no_such_pub"])).await.unwrap();
    if version < 180_000 {
        fx.insert(&["x"]).await;
        let err = within("missing publication", async {
            loop {
                match bad.next().await {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("stream ended"),
                    Err(e) => return e,
                }
            }
        })
        .await;
        assert!(matches!(err, ReplicationError::PublicationNotFound(_)), "{err:?}");
        assert!(!err.is_transient());
    }

    // A role without REPLICATION.
    let role = unique_name("norepl");
    fx.db.execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'")).await;
    let config = ConnInfo::from_url(&fx.url(&role, Some("pw"), "sslmode=disable")).unwrap();
    let err = within("no replication role", ReplicationClient::connect(&config)).await.expect_err("not allowed");
    fx.db.execute(&format!("DROP ROLE {role}")).await;
    assert!(matches!(err, ReplicationError::PermissionDenied(_)), "{err:?}");
    assert!(!err.is_transient());

    within("stop", stream.stop()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_server_streams_with_protocol_4_in_parallel_mode() {
    let Some(url) = infra_var("PG_LATEST_URL") else {
        let required = std::env::var("OUTBOX_RELAY_REQUIRE_PG_LATEST").is_ok_and(|v| v == "1" || v == "true");
        assert!(
            !required,
            "OUTBOX_RELAY_REQUIRE_PG_LATEST=1 but PG_LATEST_URL is not set: start the newer server with \
             `bash tests/infra/up.sh --with-pg-latest`"
        );
        eprintln!("not run: PG_LATEST_URL is not set (start it with `bash tests/infra/up.sh --with-pg-latest`)");
        return;
    };
    let fx = Fixture::on(url.clone(), "repl_latest").await;
    // The newer server's superuser; replication needs no other role there.
    let mut config = ConnInfo::from_url(&services::with_database(&url, &fx.db.name)).unwrap();
    config.add_guc("logical_decoding_work_mem", "64kB");
    let mut client = within("connect", ReplicationClient::connect(&config)).await.unwrap();
    assert!(client.server_version_num() >= 160_000, "PG_LATEST_URL is {}", client.server_version_num());
    let slot = slot_name();
    client.create_replication_slot(&slot, true, SnapshotAction::Nothing).await.unwrap();
    let mut options = ReplicationOptions::new(&slot, [PUBLICATION]);
    options.streaming = Streaming::Parallel;
    let mut stream = within("start", client.start_replication(&options)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stream.proto_version(), 4);
    fx.db.execute("INSERT INTO outbox (payload) SELECT repeat('y', 200) || i FROM generate_series(1, 3000) i").await;
    let mut dec = Decoder::new(DecoderOptions::new(4).unwrap().with_parallel_streaming(true).unwrap());
    let txn = next_txn(&mut stream, &mut dec).await;
    assert!(tags(&txn).starts_with('S') && tags(&txn).ends_with('c'), "streamed transaction expected");
    assert_eq!(payloads(&txn).len(), 3000);
    within("stop", stream.stop()).await.unwrap();
}
