//! The `outbox-relay` binary: command line, logging and exit codes.
//!
//! Exit codes: 0 success, 1 runtime failure (a service unreachable, a failed check), 2 configuration or usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use outbox_relay::check::{self, CheckOptions};
use outbox_relay::config::Config;
use tracing_subscriber::EnvFilter;

/// Exit code of a runtime failure.
const EXIT_FAILURE: u8 = 1;
/// Exit code of a configuration or usage error.
const EXIT_CONFIG: u8 = 2;

/// Exactly-once relay of transactional outbox rows from PostgreSQL (logical replication) to Avro records on Kafka.
///
/// Configuration comes from a TOML file (--config) and environment variables, which override it: every key is
/// OUTBOX_RELAY_ + its path in upper case with sections separated by __ (kafka.max_batch_ms is
/// OUTBOX_RELAY_KAFKA__MAX_BATCH_MS, outbox.tables[0].table is OUTBOX_RELAY_OUTBOX__TABLES__0__TABLE); a name ending
/// in _FILE reads the value from that file. Exit codes: 0 success, 1 runtime failure, 2 configuration or usage
/// error.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, about, long_about)]
struct Cli {
    /// Configuration file (TOML). Without one, the defaults plus the OUTBOX_RELAY_* environment variables are used.
    #[arg(long, short = 'c', env = "OUTBOX_RELAY_CONFIG", global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Log filter, e.g. `info` or `outbox_relay=debug,rdkafka=warn`. Overrides RUST_LOG; without either, `info`.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,

    /// Log line format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relay outbox events from PostgreSQL to Kafka until stopped.
    Run(RunArgs),
    /// Check that PostgreSQL, Kafka and the schema registry are reachable and set up for the relay; prints one line
    /// per service and exits 1 if any check failed. Changes nothing.
    Check(CheckArgs),
    /// Print the effective configuration (file, environment and derived defaults) as TOML, secrets redacted.
    PrintConfig,
    /// Read a topic back as a consumer would (read_committed, values decoded through the schema registry) and
    /// print one JSON object per record on standard output.
    Tail(TailArgs),
    /// Where the connector stands, read from the services (works with or without a running relay): checkpoint
    /// (LSN, age), slot (confirmed position, pending and retained WAL, wal_status, streaming backend), the replica
    /// leading, consumer-group lag. Exits 1 when a part could not be read.
    Status(StatusArgs),
    /// Value mode `registered`: check every local schema against its subject's compatibility level in the schema
    /// registry (exit 1 when one would be refused, naming field, rule and safe path), or register them all (only
    /// when every one passes). A CI gate before deploying a schema change.
    #[command(subcommand)]
    Schemas(SchemasCommand),
    /// Convert a Debezium PostgreSQL connector's Kafka Connect configuration (JSON, with the Outbox Event Router)
    /// into this relay's TOML on standard output; what could not be mapped, and the steps left (secrets, brokers),
    /// are listed at its top and on standard error.
    ImportDebezium(ImportArgs),
    /// Ask the relay running on this host (at metrics.listen) whether it is healthy (`/health`) or, with --ready,
    /// ready (`/ready`); exits 0 when it answers 200, else 1. A container HEALTHCHECK or exec probe without curl.
    Health(HealthArgs),
}

/// Options of `status`.
#[derive(Debug, Args)]
struct StatusArgs {
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Time limit of each part, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    timeout_ms: u64,
}

/// `schemas check` / `schemas register`.
#[derive(Debug, Subcommand)]
enum SchemasCommand {
    /// Check the local schemas against the registry; changes nothing.
    Check(SchemasArgs),
    /// Check, then register the local schemas under their subjects.
    Register(SchemasArgs),
}

/// Options of `schemas`.
#[derive(Debug, Args)]
struct SchemasArgs {
    /// Also check (and register) under this topic's subject, even if it does not exist yet (TopicNameStrategy and
    /// TopicRecordNameStrategy; repeatable).
    #[arg(long = "topic", value_name = "TOPIC")]
    topics: Vec<String>,
}

/// Options of `import-debezium`.
#[derive(Debug, Args)]
struct ImportArgs {
    /// The connector configuration: `{"name": ..., "config": {...}}` as posted to Kafka Connect, or the flat config.
    file: PathBuf,
}

/// Options of `health`.
#[derive(Debug, Args)]
struct HealthArgs {
    /// Probe `/ready` (streaming and committing) instead of `/health` (alive).
    #[arg(long)]
    ready: bool,
    /// Give up after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 3_000)]
    timeout_ms: u64,
}

/// Options of `tail`.
#[derive(Debug, Args)]
struct TailArgs {
    /// Topic to read, e.g. outbox.event.order.
    topic: String,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    max: Option<usize>,
    /// Keep waiting for new records instead of stopping at the end of the topic.
    #[arg(long)]
    follow: bool,
    /// With --follow, stop when nothing arrived for this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    idle_timeout_ms: u64,
}

/// Options of `run`.
#[derive(Debug, Args)]
struct RunArgs {
    /// Start even if the replication slot is ahead of the checkpoint stored in Kafka. The transactions in between
    /// are NOT relayed: use only after deciding that this gap is acceptable.
    #[arg(long)]
    accept_gap: bool,
    /// Start replication at this LSN (e.g. 16/B374D848) instead of the stored checkpoint.
    #[arg(long, value_name = "LSN")]
    start_lsn: Option<String>,
}

/// Options of `check`.
#[derive(Debug, Args)]
struct CheckArgs {
    /// Time limit of each step of each probe (connect, query, Kafka metadata, init_transactions, HTTP request), in
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    timeout_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = init_tracing(cli.log_level.as_deref(), cli.log_format) {
        eprintln!("error: {error:#}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Command::ImportDebezium(args) = &cli.command {
        // Needs no configuration of its own: it writes one.
        return import_debezium(args);
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok((config, ignored)) => {
            for warning in ignored {
                tracing::warn!(%warning, "configuration");
            }
            config
        }
        Err(error) => {
            report_failure(cli.log_format, "configuration error", &anyhow::Error::new(error));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for warning in config.warnings() {
        tracing::warn!(%warning, "configuration");
    }
    let result = match cli.command {
        Command::Run(args) => run(config, args).await,
        Command::Check(args) => run_check(&config, &args).await,
        Command::PrintConfig => print_config(&config),
        Command::Tail(args) => run_tail(&config, &args).await,
        Command::Health(args) => run_health(&config, &args).await,
        Command::Status(args) => run_status(&config, &args).await,
        Command::ImportDebezium(_) => Ok(()),
        Command::Schemas(command) => {
            if config.schema_registry.value_mode != outbox_relay::avro::config::ValueMode::Registered {
                let error = anyhow::anyhow!(
                    "schemas works with schema_registry.value_mode = \"registered\" (this configuration has {:?})",
                    config.schema_registry.value_mode
                );
                report_failure(cli.log_format, "configuration error", &error);
                return ExitCode::from(EXIT_CONFIG);
            }
            // A schema file that cannot be read or compiled is a configuration error (exit 2), like the rest.
            match outbox_relay::avro::Encoders::new(
                &config,
                &outbox_relay::avro::RegistrySettings::from_config(&config.schema_registry),
            ) {
                Err(e @ outbox_relay::avro::EncodeError::Settings(_)) => {
                    report_failure(cli.log_format, "configuration error", &anyhow::Error::new(e));
                    return ExitCode::from(EXIT_CONFIG);
                }
                _ => run_schemas(&config, command).await,
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report_failure(cli.log_format, "failed", &error);
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn init_tracing(level: Option<&str>, format: LogFormat) -> anyhow::Result<()> {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).with_context(|| format!("invalid --log-level `{level}`"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // Colour codes only for a person at a terminal, never into files or log collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// Prints a fatal error: a plain `error: ...` line for people, a log record for JSON log collectors.
fn report_failure(format: LogFormat, what: &str, error: &anyhow::Error) {
    match format {
        LogFormat::Text => eprintln!("error: {error:#}"),
        LogFormat::Json => tracing::error!(error = format!("{error:#}"), "{what}"),
    }
}

/// The relay: metrics endpoint, signal handling with a bounded drain, and the pipeline until it stops.
async fn run(config: Config, args: RunArgs) -> anyhow::Result<()> {
    let start_lsn = match args.start_lsn.as_deref() {
        Some(s) => Some(s.parse::<outbox_relay::pg::lsn::Lsn>().context("--start-lsn")?),
        None => None,
    };
    // One line that says what this relay is, with nothing secret in it.
    let tables: Vec<String> = config.outbox.tables.iter().map(|t| t.table.to_string()).collect();
    let topics: Vec<&str> = config.outbox.tables.iter().map(|t| t.route_topic_replacement.as_str()).collect();
    tracing::info!(
        connector = %config.connector_name,
        postgres = %outbox_relay::config::redact_url(&config.postgres.url),
        slot = %config.postgres.slot,
        publication = %config.postgres.publication,
        tables = ?tables,
        topics = ?topics,
        messages = config.outbox.messages.enabled,
        kafka = %config.kafka.bootstrap_servers,
        checkpoint_topic = %config.kafka.checkpoint_topic,
        value_mode = ?config.schema_registry.value_mode,
        errors = ?config.errors.mode,
        leader_lease = config.leader.enabled,
        accept_gap = args.accept_gap,
        start_lsn = args.start_lsn.as_deref(),
        "starting"
    );
    let stats = Arc::new(outbox_relay::metrics::Stats::new());
    let up = Arc::new(AtomicBool::new(true));
    if let Some(addr) = config.metrics.listen_addr() {
        outbox_relay::metrics::serve(addr, Arc::clone(&stats), Arc::clone(&up), config.metrics.unhealthy_after_ms)
            .await
            .with_context(|| format!("binding the metrics endpoint to {addr} (metrics.listen)"))?;
    }
    // The slot as the server sees it, on a connection of its own: reported even while replication is down.
    let monitor = outbox_relay::monitor::spawn(config.postgres.clone(), Arc::clone(&stats));
    // How far the consumers downstream are behind, for every replica (a standby too).
    let lag = config.consumer_lag.enabled.then(|| {
        let patterns = config
            .outbox
            .tables
            .iter()
            .map(|t| outbox_relay::kafka::lag::TopicPattern::new(&t.route_topic_replacement));
        outbox_relay::kafka::lag::spawn(
            outbox_relay::kafka::KafkaSettings::from_config(&config.kafka).client_config(),
            patterns.collect(),
            config.consumer_lag.clone(),
            Duration::from_secs(10),
            Arc::clone(&stats),
        )
    });
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; stopping (finishing or aborting the open transaction)");
        let _ = shutdown_tx.send(true);
        // A bounded stop: if the pipeline cannot finish (broker unreachable), do not hang the orchestrator.
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::error!(grace_secs = SHUTDOWN_GRACE.as_secs(), "shutdown did not finish in time; exiting");
        std::process::exit(1);
    });
    let opts = outbox_relay::pipeline::RunOptions { accept_gap: args.accept_gap, start_lsn, ..Default::default() };
    let result = run_pipeline(config, opts, stats, shutdown_rx)
        .await
        .map_err(|e| anyhow::anyhow!("pipeline task failed: {e}"))?;
    up.store(false, Ordering::Relaxed);
    monitor.abort();
    if let Some(lag) = lag {
        lag.abort();
    }
    result.map_err(anyhow::Error::from)
}

/// Runs the pipeline (lease, replication, Kafka) on a thread of its own with a single-threaded runtime, and waits
/// for its end without holding up this runtime.
///
/// Why a thread of its own: the replication reader, the Kafka sink and the tasks between them hand each other
/// every event; on a multi-threaded runtime each hand-over may wake another thread (a futex and a context switch),
/// which cost a third of the relay's CPU per event in bulk (benches/README.md, "Problems found", 2). On one
/// thread the hand-overs are plain task switches. Why not the whole process on one thread: a call that blocks the
/// pipeline's thread (librdkafka's `begin_transaction`, a local request to its own thread, 0.1 ms typically) must
/// not hold up the signal handler, the bounded-shutdown timer or the metrics endpoint, which stay on this runtime.
async fn run_pipeline(
    config: Config,
    opts: outbox_relay::pipeline::RunOptions,
    stats: Arc<outbox_relay::metrics::Stats>,
    shutdown_rx: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Result<(), outbox_relay::pipeline::PipelineError>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("pipeline".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = done_tx.send(Err(anyhow::anyhow!("cannot start the pipeline's runtime: {e}")));
                    return;
                }
            };
            let result = runtime.block_on(outbox_relay::leader::run(config, opts, stats, shutdown_rx));
            let _ = done_tx.send(Ok(result));
        })
        .context("cannot start the pipeline's thread")?;
    // A panic on that thread drops the sender.
    done_rx.await.map_err(|_| anyhow::anyhow!("the pipeline's thread panicked"))?
}

/// How long a SIGTERM/SIGINT may take before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run_check(config: &Config, args: &CheckArgs) -> anyhow::Result<()> {
    let options = CheckOptions { timeout: Duration::from_millis(args.timeout_ms) };
    let report = check::run(config, &options).await;
    print!("{report}");
    let failed: Vec<String> = report.services.iter().filter(|r| !r.is_ok()).map(|r| r.service.to_string()).collect();
    if failed.is_empty() { Ok(()) } else { anyhow::bail!("check failed for {}", failed.join(", ")) }
}

fn import_debezium(args: &ImportArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: {e}", args.file.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let import = match outbox_relay::debezium::import(&text) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {}: {e}", args.file.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut header = String::new();
    for note in &import.notes {
        header.push_str(&format!("# TODO: {note}\n"));
        eprintln!("todo: {note}");
    }
    for (key, why) in &import.unmapped {
        header.push_str(&format!("# not mapped: {key}: {why}\n"));
        eprintln!("not mapped: {key}: {why}");
    }
    print!("{header}{}", import.toml);
    ExitCode::SUCCESS
}

async fn run_schemas(config: &Config, command: SchemasCommand) -> anyhow::Result<()> {
    use outbox_relay::avro::{Encoders, RegistrySettings, schemas};
    let (register, args) = match command {
        SchemasCommand::Check(args) => (false, args),
        SchemasCommand::Register(args) => (true, args),
    };
    let encoders = Encoders::new(config, &RegistrySettings::from_config(&config.schema_registry))?;
    let encoder = encoders.registered.as_ref().context("value mode registered has no schemas")?;
    let mut verdicts = schemas::check(&encoders.registry, config, encoder, &args.topics).await?;
    if register && !verdicts.iter().any(schemas::Verdict::is_refused) {
        schemas::register(&encoders.registry, config, encoder, &mut verdicts).await?;
    }
    for v in &verdicts {
        println!("{v}");
    }
    let local = encoder.schemas().values().filter(|s| s.local.is_some()).count();
    let refused = verdicts.iter().filter(|v| v.is_refused()).count();
    if verdicts.is_empty() {
        println!(
            "{local} local schema(s), no subject to compare with yet (they are registered at their first event; name \
             topics with --topic to check or register them now)"
        );
    }
    if refused > 0 {
        anyhow::bail!(
            "{refused} subject(s) would refuse a local schema{}",
            if register { "; nothing was registered" } else { "" }
        );
    }
    Ok(())
}

async fn run_tail(config: &Config, args: &TailArgs) -> anyhow::Result<()> {
    let opts = outbox_relay::tail::TailOptions {
        topic: args.topic.clone(),
        max_records: args.max,
        follow: args.follow,
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
    };
    let n = outbox_relay::tail::tail(config, &opts, |line| println!("{line}")).await?;
    tracing::info!(records = n, topic = %args.topic, "tail finished");
    Ok(())
}

async fn run_status(config: &Config, args: &StatusArgs) -> anyhow::Result<()> {
    let status = outbox_relay::status::read(config, Duration::from_millis(args.timeout_ms)).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status).context("serializing the status")?);
    } else {
        print!("{status}");
    }
    if status.complete() { Ok(()) } else { anyhow::bail!("part of the status could not be read (see above)") }
}

async fn run_health(config: &Config, args: &HealthArgs) -> anyhow::Result<()> {
    let addr =
        config.metrics.listen_addr().context("metrics.listen is empty: the relay serves no endpoint to probe")?;
    let path = if args.ready { "/ready" } else { "/health" };
    let status = outbox_relay::metrics::probe(addr, path, Duration::from_millis(args.timeout_ms))
        .await
        .with_context(|| format!("probing {path} at {addr} (metrics.listen)"))?;
    if status == 200 {
        println!("{path}: 200");
        Ok(())
    } else {
        anyhow::bail!("{path} at {addr} answered {status}")
    }
}

fn print_config(config: &Config) -> anyhow::Result<()> {
    print!("{}", config.to_redacted_toml().context("serializing the configuration")?);
    Ok(())
}
