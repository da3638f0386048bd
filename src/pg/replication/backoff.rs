//! Reconnect delays: exponential growth, capped, with jitter so that many relays restarted together (after a server
//! restart) do not reconnect in lock-step.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with "equal jitter": the n-th delay is drawn uniformly from `[d/2, d]` where
/// `d = min(max, initial * 2^n)`. Half the delay is guaranteed, so a flapping server is never hammered; half is random,
/// so clients spread out.
///
/// ```
/// # use outbox_relay::pg::replication::Backoff;
/// # use std::time::Duration;
/// let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// let first = b.next_delay();
/// assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
/// b.reset(); // after a connection that worked
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// 250 ms doubling up to 30 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(30))
    }
}

impl Backoff {
    /// A backoff starting near `initial` and never above `max` (`max` is raised to `initial` if lower).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max: max.max(initial), attempt: 0 }
    }

    /// The delay before the next attempt; each call doubles the ceiling until `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 { 0 } else { rand::rng().random_range(0..=spread) };
        half + Duration::from_nanos(jitter)
    }

    /// Back to the initial delay; call after a connection has worked for a while.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts since creation or the last [`reset`](Self::reset).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    fn ceiling(&self) -> Duration {
        // 2^attempt overflows quickly; past 2^30 the cap has long applied.
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).map_or(self.max, |d| d.min(self.max))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(initial, max);
        let mut ceiling = initial;
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
            ceiling = (ceiling * 2).min(max);
        }
        assert_eq!(b.attempts(), 100);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay() <= initial);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 10, "jitter produced only {} distinct delays", seen.len());
    }

    #[test]
    fn degenerate_inputs() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.next_delay(), Duration::ZERO);
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        for _ in 0..40 {
            assert!(b.next_delay() <= Duration::from_secs(10));
        }
    }
}
