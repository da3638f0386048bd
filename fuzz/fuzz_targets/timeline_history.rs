//! Arbitrary bytes as a timeline history file (`TIMELINE_HISTORY`'s content, server input) into
//! `parse_timeline_history`, and the result into `check_resumable`.
//!
//! Fails on: any panic, and any accepted history whose timelines are not strictly increasing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use outbox_relay::pg::identity::{SourceIdentity, check_resumable, parse_timeline_history};
use outbox_relay::pg::lsn::Lsn;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_timeline_history(&text) {
        Ok(history) => {
            assert!(history.windows(2).all(|w| w[0].timeline < w[1].timeline), "{history:?}");
            let id = |timeline| SourceIdentity { system_id: "1".into(), timeline, database: "d".into() };
            let at = history.first().map_or(Lsn(0), |e| e.switchpoint);
            let server = history.last().map_or(1, |e| e.timeline.saturating_add(1));
            for entry in &history {
                let _ = check_resumable(&id(entry.timeline), at, &id(server), Lsn(u64::MAX), &history);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
