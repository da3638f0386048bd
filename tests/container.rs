//! The runtime image of `docker/Dockerfile`, run for real with podman against the local services: configuration from
//! environment variables and connection strings only, rows read back with the image's own `tail`, SIGTERM exits 0
//! within the grace period, and a new container resumes from the stored LSN with nothing lost or repeated. Also: the
//! healthcheck works, the process is not root, metrics answer from outside the container.
//!
//! Run by `bash tests/container.sh` (it builds the image and sets `OUTBOX_RELAY_IMAGE`); ignored by `cargo test`
//! because it needs podman and an image. The README's "Running in a container" describes it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "common/services.rs"]
mod services;

#[path = "common/relay.rs"]
mod relay;

use std::collections::HashSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use relay::{Harness, Options};

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().expect("podman runs")
}

fn ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn logs(name: &str) -> String {
    let out = podman(&["logs", name]);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn wait_log(name: &str, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !logs(name).contains(needle) {
        assert!(Instant::now() < deadline, "`{needle}` not in the log of {name} within {timeout:?}:\n{}", logs(name));
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The container's configuration: environment variables only, no file.
fn env_args(h: &Harness, metrics_port: u16) -> Vec<String> {
    let vars = [
        ("OUTBOX_RELAY_CONNECTOR_NAME", h.connector.clone()),
        ("OUTBOX_RELAY_POSTGRES__URL", h.db.url.clone()),
        ("OUTBOX_RELAY_KAFKA__BOOTSTRAP_SERVERS", h.services.kafka_bootstrap.clone()),
        ("OUTBOX_RELAY_KAFKA__CHECKPOINT_TOPIC", h.checkpoint_topic.clone()),
        ("OUTBOX_RELAY_SCHEMA_REGISTRY__URL", h.services.schema_registry_url.clone()),
        ("OUTBOX_RELAY_OUTBOX__TABLES__0__ROUTE_TOPIC_REPLACEMENT", format!("{}.${{routedByValue}}", h.topic_prefix)),
        // The image listens on 0.0.0.0:9187; with host networking each test picks a free port.
        ("OUTBOX_RELAY_METRICS__LISTEN", format!("0.0.0.0:{metrics_port}")),
        ("OUTBOX_RELAY_POSTGRES__STATUS_INTERVAL_MS", "1000".to_owned()),
    ];
    vars.iter().flat_map(|(k, v)| ["-e".to_owned(), format!("{k}={v}")]).collect()
}

fn run_container(image: &str, name: &str, volume: &str, env: &[String], extra: &[&str]) {
    let mut args: Vec<String> =
        ["run", "-d", "--name", name, "--network", "host", "-v"].iter().map(|s| (*s).to_owned()).collect();
    args.push(format!("{volume}:/var/lib/outbox-relay"));
    args.extend(env.iter().cloned());
    args.push(image.to_owned());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&refs);
}

/// Reads `topic` with the image's own `tail` (read_committed, decoded through the registry): the event ids.
fn tail_ids(image: &str, env: &[String], topic: &str) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--rm", "--network", "host"].iter().map(|s| (*s).to_owned()).collect();
    args.extend(env.iter().cloned());
    args.extend([image.to_owned(), "tail".to_owned(), topic.to_owned()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&refs);
    out.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            v["headers"]["id"].as_str().map(str::to_owned).unwrap_or_else(|| panic!("no id header: {line}"))
        })
        .collect()
}

struct Cleanup(Vec<String>, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = podman(&["rm", "-f", "-t", "0", name]);
        }
        let _ = podman(&["volume", "rm", "-f", &self.1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs podman and the image: run `bash tests/container.sh`"]
async fn the_image_runs_from_environment_variables_stops_cleanly_and_resumes_exactly_once() {
    let image = std::env::var("OUTBOX_RELAY_IMAGE").expect("OUTBOX_RELAY_IMAGE names the image (tests/container.sh)");
    let h = Harness::new("container", Options::default()).await;
    let port = services::closed_port();
    let env = env_args(&h, port);
    let (first, second) = (format!("{}-1", h.connector), format!("{}-2", h.connector));
    let volume = format!("{}-spill", h.connector);
    let _cleanup = Cleanup(vec![first.clone(), second.clone()], volume.clone());

    run_container(&image, &first, &volume, &env, &[]);
    wait_log(&first, "replication started", Duration::from_secs(90));
    // Not root; metrics from outside the container; the image's healthcheck passes.
    assert_eq!(ok(&["exec", &first, "id", "-u"]).trim(), "10001", "the relay does not run as root");
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay::http_get(port, "/ready").map(|(status, _)| status) != Some(200) {
        assert!(Instant::now() < deadline, "/ready not 200 from outside:\n{}", logs(&first));
        std::thread::sleep(Duration::from_millis(300));
    }
    let health = podman(&["healthcheck", "run", &first]);
    assert!(health.status.success(), "healthcheck: {}{}", String::from_utf8_lossy(&health.stdout), logs(&first));

    let mut c = h.db.client().await;
    let mut expected: HashSet<String> = h.insert_rows(&mut c, "order", 50).await.into_iter().collect();
    h.wait_for_records(&[h.topic("order")], expected.len(), Duration::from_secs(60));
    let read = tail_ids(&image, &env, &h.topic("order"));
    assert_eq!(read.iter().cloned().collect::<HashSet<_>>(), expected, "tail reads every row");
    assert_eq!(read.len(), expected.len(), "no row twice");

    // SIGTERM with the documented stop timeout: a clean exit 0, well inside the grace period.
    let stopping = Instant::now();
    ok(&["stop", "-t", "40", &first]);
    let took = stopping.elapsed();
    let code = ok(&["inspect", "--format", "{{.State.ExitCode}}", &first]);
    assert_eq!(code.trim(), "0", "SIGTERM exits 0:\n{}", logs(&first));
    assert!(took < Duration::from_secs(30), "stopped in {took:?}");
    println!("container stopped by SIGTERM in {took:?}, exit code 0");
    let acked = logs(&first);
    let acked = acked
        .lines()
        .find_map(|l| l.split("stopped cleanly acked=").nth(1).map(|s| s.trim().to_owned()))
        .unwrap_or_else(|| panic!("no `stopped cleanly` line:\n{acked}"));

    // Rows written while no relay runs; a new container resumes from the stored LSN.
    expected.extend(h.insert_rows(&mut c, "order", 30).await);
    run_container(&image, &second, &volume, &env, &[]);
    wait_log(&second, "replication started", Duration::from_secs(90));
    let second_log = logs(&second);
    assert!(second_log.contains(&format!("resume={acked}")), "resumes from the stored LSN {acked}:\n{second_log}");
    expected.extend(h.insert_rows(&mut c, "order", 20).await);
    h.wait_for_records(&[h.topic("order")], expected.len(), Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let read = tail_ids(&image, &env, &h.topic("order"));
    assert_eq!(read.len(), expected.len(), "nothing repeated");
    assert_eq!(read.into_iter().collect::<HashSet<_>>(), expected, "nothing lost");
    let records = h.read_committed(&[h.topic("order")]);
    assert_eq!(records.len(), expected.len(), "the test's own read_committed reader agrees");
    ok(&["stop", "-t", "40", &second]);
    assert_eq!(ok(&["inspect", "--format", "{{.State.ExitCode}}", &second]).trim(), "0");
    assert!(!logs(&second).contains(" ERROR "), "{}", logs(&second));
}
