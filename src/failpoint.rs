//! Named failpoints: crash the process at an exact step, for the crash-consistency tests.
//!
//! Invariant: with `OUTBOX_RELAY_FAILPOINT` unset (production) a failpoint is one relaxed atomic load; nothing else
//! changes. With `OUTBOX_RELAY_FAILPOINT=<name>[:<n>]` the process aborts — no destructors, no flush, like a SIGKILL —
//! the `n`-th time (default first) execution reaches the failpoint called `<name>`.
//!
//! Failpoints in the code:
//! - `after_produce_before_commit`: the transaction's events and checkpoint are queued, the commit is not sent.
//! - `after_commit_before_ack`: Kafka committed, PostgreSQL has not been told.
//! - `between_overlapping_commits` (pipelined commits): the previous transaction's commit is running on one
//!   transactional id, this one's records and checkpoint are acknowledged under the other, neither is known to be
//!   committed. Armed, each commit waits 50 ms before its EndTxn, so the overlap happens on every batch.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable that arms a failpoint (tests only).
pub const ENV: &str = "OUTBOX_RELAY_FAILPOINT";

static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn armed() -> &'static Option<(String, u64)> {
    ARMED.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        let (name, n) = match v.split_once(':') {
            Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((name, n.max(1)))
    })
}

/// Whether the failpoint `name` is the armed one: code may then widen the window it guards (never in production,
/// where nothing is armed).
pub fn is_armed(name: &str) -> bool {
    armed().as_ref().is_some_and(|(armed_name, _)| armed_name == name)
}

/// Aborts the process if the failpoint `name` is armed and reached for the configured time.
#[inline]
pub fn hit(name: &str) {
    if let Some((armed_name, n)) = armed() {
        if armed_name == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            eprintln!("failpoint {name} reached: aborting");
            std::process::abort();
        }
    }
}
