//! Test helpers for the real services started by `tests/infra/up.sh`: where they are, a uniquely named database per
//! test (dropped on `Drop`), closed ports, and a throwaway PostgreSQL cluster with custom settings.
//!
//! Include with `#[path = "common/services.rs"] mod services;`. A test that needs the services and finds them
//! missing panics with a message saying how to start them: it never skips.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Where the services are.
#[derive(Clone, Debug)]
pub struct Services {
    /// Superuser URL of the test PostgreSQL (`PG_URL`).
    pub pg_url: String,
    /// `KAFKA_BOOTSTRAP`.
    pub kafka_bootstrap: String,
    /// `SCHEMA_REGISTRY_URL`.
    pub schema_registry_url: String,
    /// `PG_BIN_DIR`: initdb, pg_ctl, ... of the same PostgreSQL.
    pub pg_bin_dir: Option<PathBuf>,
    /// `PG_SSL_CERT`: the test server's self-signed certificate (its own CA), when the server has TLS.
    pub pg_ssl_cert: Option<PathBuf>,
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads `export NAME='value'` lines of `.infra/env`.
fn infra_env() -> HashMap<String, String> {
    let path = repo_root().join(".infra/env");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(name, value)| {
            let value = value.trim();
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(value);
            (name.trim().to_owned(), value.to_owned())
        })
        .collect()
}

/// A variable from the environment, else from `.infra/env`.
pub fn infra_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).or_else(|| infra_env().remove(name))
}

/// [`infra_var`], or a panic saying how to start the services.
pub fn required_var(name: &str) -> String {
    infra_var(name).unwrap_or_else(|| {
        panic!(
            "{name} is not set and .infra/env does not define it: start the test services with \
             `bash tests/infra/up.sh` (it writes .infra/env)"
        )
    })
}

/// The services, from the environment or else `.infra/env`; panics with instructions when they are not running.
pub fn services() -> Services {
    let file = infra_env();
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty()).or_else(|| file.get(name).cloned());
    let require = |name: &str| {
        get(name).unwrap_or_else(|| {
            panic!(
                "{name} is not set and .infra/env does not define it: start the test services with \
                 `bash tests/infra/up.sh` (it writes .infra/env)"
            )
        })
    };
    let services = Services {
        pg_url: require("PG_URL"),
        kafka_bootstrap: require("KAFKA_BOOTSTRAP"),
        schema_registry_url: require("SCHEMA_REGISTRY_URL"),
        pg_bin_dir: get("PG_BIN_DIR").map(PathBuf::from),
        pg_ssl_cert: get("PG_SSL_CERT").filter(|p| Path::new(p).is_file()).map(PathBuf::from),
    };
    let pg = url::Url::parse(&services.pg_url).expect("PG_URL is a URL");
    let pg_addr = format!("{}:{}", pg.host_str().unwrap_or("127.0.0.1"), pg.port().unwrap_or(5432));
    let registry = url::Url::parse(&services.schema_registry_url).expect("SCHEMA_REGISTRY_URL is a URL");
    let registry_addr =
        format!("{}:{}", registry.host_str().unwrap_or("127.0.0.1"), registry.port_or_known_default().unwrap_or(80));
    for (what, addr) in [
        ("PostgreSQL (PG_URL)", pg_addr),
        ("Kafka (KAFKA_BOOTSTRAP)", services.kafka_bootstrap.split(',').next().unwrap_or_default().to_owned()),
        ("the schema registry (SCHEMA_REGISTRY_URL)", registry_addr),
    ] {
        assert!(
            accepts_connections(&addr),
            "{what} at {addr} does not accept connections: start the test services with `bash tests/infra/up.sh`"
        );
    }
    services
}

fn accepts_connections(addr: &str) -> bool {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok())
}

/// A TCP port on 127.0.0.1 that nothing listens on now, for a server a test starts later.
///
/// Taken below the kernel's ephemeral range (32768 and up on Linux): a port the OS hands out for `bind(0)` is also
/// what outgoing connections use, so between this call and the server's bind a Kafka or PostgreSQL client could
/// take it (the server then fails with "address in use"). Below the range only explicit binds compete, and a
/// per-process counter keeps the tests of one binary apart.
pub fn closed_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = u16::try_from(port).expect("below 32768");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in 20000..32000 on 127.0.0.1")
}

/// Runs one of Kafka's own command-line tools (`class` from the jars `tests/infra/up.sh` fetched, e.g.
/// `org.apache.kafka.tools.AclCommand`) against `bootstrap`; panics with its output unless it succeeds, else returns
/// its standard output.
pub fn kafka_tool(class: &str, bootstrap: &str, args: &[&str]) -> String {
    kafka_tool_with_input(class, bootstrap, args, "")
}

/// Like [`kafka_tool`], writing `input` to the tool's standard input (e.g. Kafka's console producer).
pub fn kafka_tool_with_input(class: &str, bootstrap: &str, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let libs = required_var("KAFKA_LIBS_DIR");
    let java = infra_var("KAFKA_JAVA").unwrap_or_else(|| "java".into());
    let mut child = std::process::Command::new(java)
        .args(["-Xmx128m", "-cp", &format!("{libs}/*"), class, "--bootstrap-server", bootstrap])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{class}: {e}"));
    // Closing standard input ends the tool's input.
    child.stdin.take().expect("piped").write_all(input.as_bytes()).unwrap_or_else(|e| panic!("{class}: {e}"));
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("{class}: {e}"));
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{class} {args:?} failed:\n{out}\n{}", String::from_utf8_lossy(&output.stderr));
    out
}

/// Kafka's `kafka-consumer-groups` tool, for [`kafka_tool`].
pub const CONSUMER_GROUPS: &str = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand";

/// A name unique to this process and call, usable as a PostgreSQL identifier.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}_{}_{}_{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// `url` with its database (path) replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let mut url = url::Url::parse(url).expect("a URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

async fn admin_client(admin_url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL ({admin_url}): {e}"));
    tokio::spawn(connection);
    client
}

/// A database created for one test and dropped (with `FORCE`) when this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    admin_url: String,
    /// The database name.
    pub name: String,
    /// Superuser URL of the database.
    pub url: String,
}

impl TestDb {
    /// Creates a uniquely named database.
    pub async fn create(services: &Services, prefix: &str) -> TestDb {
        let name = unique_name(prefix);
        admin_client(&services.pg_url)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        TestDb { admin_url: services.pg_url.clone(), url: with_database(&services.pg_url, &name), name }
    }

    /// A superuser connection to this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        admin_client(&self.url).await
    }

    /// Runs SQL statements in this database.
    pub async fn execute(&self, sql: &str) {
        self.client().await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot block on its own futures: use a fresh thread + runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let client = admin_client(&admin_url).await;
                // Slots pin the database; drop the ones a test left behind first.
                let _ = client
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                         WHERE database = $1 AND NOT active",
                        &[&name],
                    )
                    .await;
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// Whether this process runs as root (then PostgreSQL commands run as the `postgres` OS user).
fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A command that runs `program` as the PostgreSQL OS user when we are root.
fn pg_command(program: &Path) -> Command {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command.current_dir("/");
    command
}

fn run_checked(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A PostgreSQL cluster of its own (initdb into a temporary directory, trust authentication, superuser
/// `postgres`), started on a free port with extra settings and stopped on `Drop`.
#[derive(Debug)]
pub struct ThrowawayCluster {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

/// A temporary directory for a cluster, owned by the postgres OS user when running as root.
fn cluster_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("temporary directory");
    if is_root() {
        let mut chown = Command::new("chown");
        chown.arg("-R").arg("postgres:").arg(dir.path());
        run_checked(chown, "chown of the cluster directory");
    }
    dir
}

impl ThrowawayCluster {
    /// Starts a cluster with `settings` (`name=value` passed as `-c`).
    pub fn start(services: &Services, settings: &[&str]) -> ThrowawayCluster {
        let bin_dir = services.pg_bin_dir.clone().unwrap_or_else(|| {
            panic!("PG_BIN_DIR is not set and .infra/env does not define it: run `bash tests/infra/up.sh`")
        });
        let dir = cluster_dir("outbox-relay-pg-");
        let mut initdb = pg_command(&bin_dir.join("initdb"));
        initdb.arg("-D").arg(dir.path().join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run_checked(initdb, "initdb");
        ThrowawayCluster::run(dir, bin_dir, settings)
    }

    /// A hot standby of `primary`: a base backup over streaming replication (`pg_basebackup -R`, so it follows the
    /// primary), started read-only on a port of its own. It answers `transaction_read_only = on`, as a standby
    /// behind a multi-host URL does.
    pub fn standby_of(primary: &ThrowawayCluster) -> ThrowawayCluster {
        let dir = cluster_dir("outbox-relay-pg-standby-");
        let mut backup = pg_command(&primary.bin_dir.join("pg_basebackup"));
        backup
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", "postgres", "-R", "-X", "stream"])
            .arg("--no-sync");
        run_checked(backup, "pg_basebackup");
        ThrowawayCluster::run(dir, primary.bin_dir.clone(), &["hot_standby=on"])
    }

    /// Starts the server of `dir`/data on a free port of 127.0.0.1 with `settings` (`name=value` passed as `-c`).
    fn run(dir: tempfile::TempDir, bin_dir: PathBuf, settings: &[&str]) -> ThrowawayCluster {
        let port = closed_port();
        let mut options =
            format!("-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}", dir.path().display());
        for setting in settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        let mut start = pg_command(&bin_dir.join("pg_ctl"));
        start
            .arg("-D")
            .arg(dir.path().join("data"))
            .arg("-l")
            .arg(dir.path().join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        run_checked(start, "pg_ctl start");
        ThrowawayCluster { dir, bin_dir, port }
    }

    /// Restarts the server (fast shutdown: every connection is terminated, as in a real restart).
    pub fn restart(&self) {
        let mut restart = pg_command(&self.bin_dir.join("pg_ctl"));
        // With -l: a server inheriting our output pipe would keep `output()` waiting forever.
        restart
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-w", "-t", "60", "-m", "fast", "restart"]);
        run_checked(restart, "pg_ctl restart");
    }

    /// Superuser URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let mut stop = pg_command(&self.bin_dir.join("pg_ctl"));
        stop.arg("-D").arg(self.dir.path().join("data")).args(["-w", "-m", "immediate", "stop"]);
        if !stop.output().is_ok_and(|o| o.status.success()) {
            eprintln!("warning: could not stop the throwaway cluster in {}", self.dir.path().display());
        }
    }
}

/// The relay's configuration file, written the one way tests and benchmarks share: one connector on the local
/// services. Section fields hold `key = value` lines (TOML literals, as the caller writes them).
#[derive(Clone, Debug, Default)]
pub struct RelayToml {
    pub connector: String,
    pub pg_url: String,
    /// `[postgres]` lines after `url`.
    pub postgres: String,
    /// `[[outbox.tables]]` blocks.
    pub outbox: String,
    pub kafka_bootstrap: String,
    pub checkpoint_topic: String,
    /// `[kafka]` lines after `bootstrap_servers` and `checkpoint_topic`.
    pub kafka: String,
    /// `[kafka.properties]` entries (librdkafka names and values).
    pub kafka_properties: Vec<(String, String)>,
    pub schema_registry_url: String,
    /// `[metrics]` lines; no section when empty.
    pub metrics: String,
    /// Further sections, verbatim.
    pub extra: String,
}

impl RelayToml {
    /// The file's text.
    pub fn render(&self) -> String {
        let line =
            |text: &str| if text.is_empty() || text.ends_with('\n') { text.to_owned() } else { format!("{text}\n") };
        let mut s = format!(
            "connector_name = \"{}\"\n[postgres]\nurl = \"{}\"\n{}{}[kafka]\nbootstrap_servers = \"{}\"\n\
             checkpoint_topic = \"{}\"\n{}",
            self.connector,
            self.pg_url,
            line(&self.postgres),
            line(&self.outbox),
            self.kafka_bootstrap,
            self.checkpoint_topic,
            line(&self.kafka)
        );
        if !self.kafka_properties.is_empty() {
            s.push_str("[kafka.properties]\n");
            for (k, v) in &self.kafka_properties {
                s.push_str(&format!("\"{k}\" = \"{v}\"\n"));
            }
        }
        s.push_str(&format!("[schema_registry]\nurl = \"{}\"\n", self.schema_registry_url));
        if !self.metrics.is_empty() {
            s.push_str("[metrics]\n");
            s.push_str(&line(&self.metrics));
        }
        s.push_str(&line(&self.extra));
        s
    }
}

/// Runs `openssl` with `args` in `dir`, panicking with its output on failure.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A private CA (`ca.crt`, `ca.key`) in `dir` that signed a server certificate for localhost and 127.0.0.1
/// (`server.crt`, `server.key`) and a client certificate with common name `client_cn` (`client.crt`, `client.key`);
/// keys are unencrypted PKCS#8 PEM, valid one day.
pub fn test_pki(dir: &std::path::Path, client_cn: &str) {
    let days = ["-days", "1"];
    openssl(
        dir,
        &[
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes"][..],
            &days,
            &["-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat(),
    );
    for (name, cn) in [("server", "localhost"), ("client", client_cn)] {
        let (key, csr, crt, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        openssl(
            dir,
            &["req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={cn}"), "-keyout", &key, "-out", &csr],
        );
        std::fs::write(dir.join(&ext), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        openssl(
            dir,
            &[
                &["x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"][..],
                &days,
                &["-out", &crt, "-extfile", &ext],
            ]
            .concat(),
        );
    }
}

/// One HTTP call with Python's standard library (no client of ours in between): (status, body). `content_type`
/// goes with the body.
pub fn http_call(method: &str, url: &str, body: Option<&str>, content_type: &str) -> (u16, String) {
    const SCRIPT: &str = r#"
import sys, urllib.request, urllib.error
method, url, content_type = sys.argv[1], sys.argv[2], sys.argv[3]
data = sys.argv[4].encode() if len(sys.argv) > 4 else None
request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type})
try:
    with urllib.request.urlopen(request, timeout=30) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"#;
    let out = Command::new("python3").args(["-c", SCRIPT, method, url, content_type]).args(body).output().unwrap();
    assert!(out.status.success(), "{method} {url}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, rest) = text.split_once('\n').unwrap_or((&text, ""));
    (status.trim().parse().unwrap(), rest.trim().to_owned())
}

/// The Kafka Connect worker with Debezium of `tests/infra/connect.sh`, started when it does not run (bounded by the
/// script: 180 s).
#[derive(Debug)]
pub struct ConnectWorker {
    /// Its REST API.
    pub url: String,
    /// Its `offset.storage.topic`.
    pub offsets_topic: String,
    /// The JVM's pid.
    pub pid: u32,
    /// Whether this call started it (else it was running).
    pub started_here: bool,
}

/// Runs `tests/infra/connect.sh ACTION`.
pub fn connect_sh(action: &str) -> std::process::Output {
    Command::new("bash").arg(repo_root().join("tests/infra/connect.sh")).arg(action).output().unwrap()
}

/// Starts the worker unless it runs and reads where it is from `.infra/connect/env`.
pub fn connect_worker() -> Result<ConnectWorker, String> {
    let started_here = !connect_sh("status").status.success();
    let out = connect_sh("start");
    if !out.status.success() {
        return Err(format!(
            "tests/infra/connect.sh start:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let dir = repo_root().join(".infra/connect");
    let env = std::fs::read_to_string(dir.join("env")).map_err(|e| format!(".infra/connect/env: {e}"))?;
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(|v| v.trim_matches('\'').to_owned())
            .ok_or_else(|| format!("{name} missing from .infra/connect/env"))
    };
    let pid = std::fs::read_to_string(dir.join("connect.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or("no pid in .infra/connect/connect.pid")?;
    Ok(ConnectWorker { url: var("CONNECT_URL")?, offsets_topic: var("CONNECT_OFFSETS_TOPIC")?, pid, started_here })
}

/// A Debezium 3.6 PostgreSQL connector configuration as users run it with the outbox: Outbox Event Router routing to
/// `route_replacement`, string keys, Confluent's AvroConverter against `registry_url`, exactly-once, no snapshot, on
/// the given slot and an existing publication of `public.outbox`.
pub fn debezium_connector_config(
    db_url: &str,
    topic_prefix: &str,
    slot: &str,
    publication: &str,
    route_replacement: &str,
    registry_url: &str,
) -> serde_json::Value {
    let db = url::Url::parse(db_url).unwrap();
    serde_json::json!({
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "database.hostname": db.host_str().unwrap_or("127.0.0.1"),
        "database.port": db.port().unwrap_or(5432).to_string(),
        "database.user": db.username(),
        "database.password": db.password().unwrap_or(""),
        "database.dbname": db.path().trim_start_matches('/'),
        "database.sslmode": "disable",
        "topic.prefix": topic_prefix,
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "publication.name": publication,
        "publication.autocreate.mode": "disabled",
        "table.include.list": "public.outbox",
        "snapshot.mode": "no_data",
        "exactly.once.support": "required",
        "transforms": "outbox",
        "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
        "transforms.outbox.route.topic.replacement": route_replacement,
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "io.confluent.connect.avro.AvroConverter",
        "value.converter.schema.registry.url": registry_url,
    })
}
