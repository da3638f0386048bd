//! Positions and clocks of the PostgreSQL WAL: [`Lsn`], [`Xid`] and [`PgTimestamp`].
//!
//! Invariant: an [`Lsn`] is an opaque, totally ordered 64-bit byte position. It prints and parses in PostgreSQL's own
//! `XXXXXXXX/XXXXXXXX` form (upper-case hex, high and low 32-bit halves) so that every log line can be pasted into
//! `pg_replication_slots` queries unchanged. Arithmetic saturates instead of wrapping: a wrapped LSN would compare as
//! "older" and could move an acknowledgement backwards.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A write-ahead-log position (byte offset into the WAL stream).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid / "no position" LSN, `0/0`.
    pub const ZERO: Lsn = Lsn(0);

    /// The raw 64-bit value.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// `true` for `0/0`, which PostgreSQL uses for "unset".
    #[inline]
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// This position plus `bytes`, saturating at the maximum.
    #[inline]
    #[must_use]
    pub const fn saturating_add(self, bytes: u64) -> Lsn {
        Lsn(self.0.saturating_add(bytes))
    }

    /// Bytes from `earlier` to `self`, or 0 if `earlier` is not earlier.
    #[inline]
    pub const fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(v: Lsn) -> Self {
        v.0
    }
}

/// Error parsing an [`Lsn`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected two hexadecimal numbers separated by '/', like 16/B374D848")]
pub struct ParseLsnError {
    input: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError { input: s.to_owned() };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        // PostgreSQL's pg_lsn_in accepts 1..=8 hex digits on each side and nothing else.
        let valid = |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A PostgreSQL transaction id as carried by pgoutput (32-bit, wraps around).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Xid(pub u32);

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Xid({})", self.0)
    }
}

/// Seconds between the Unix epoch and PostgreSQL's epoch, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;

/// A PostgreSQL timestamp: microseconds since 2000-01-01 00:00:00 UTC, as sent on the replication protocol.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// The timestamp for `t`, saturating for times outside the representable range.
    pub fn from_system_time(t: SystemTime) -> PgTimestamp {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECS);
        match t.duration_since(pg_epoch) {
            Ok(d) => PgTimestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => PgTimestamp(i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |v| -v)),
        }
    }

    /// The current time.
    pub fn now() -> PgTimestamp {
        PgTimestamp::from_system_time(SystemTime::now())
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECS);
        if self.0 >= 0 {
            pg_epoch + Duration::from_micros(self.0.unsigned_abs())
        } else {
            pg_epoch - Duration::from_micros(self.0.unsigned_abs())
        }
    }

    /// Microseconds since the Unix epoch (what Avro's `timestamp-micros` wants).
    pub const fn unix_micros(self) -> i64 {
        self.0.saturating_add(PG_EPOCH_OFFSET_SECS as i64 * 1_000_000)
    }

    /// Milliseconds since the Unix epoch (what Kafka record timestamps want).
    pub const fn unix_millis(self) -> i64 {
        self.unix_micros().div_euclid(1000)
    }
}

impl fmt::Debug for PgTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTimestamp({}us)", self.0)
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lsn_prints_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn lsn_parses_and_rejects() {
        assert_eq!("16/B374D848".parse::<Lsn>(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("0/1".parse::<Lsn>(), Ok(Lsn(1)));
        assert_eq!("a/b".parse::<Lsn>(), Ok(Lsn((0xA << 32) | 0xB)));
        for bad in ["", "/", "16", "16/", "/1", "1/2/3", "G/0", "123456789/0", "0/123456789", "-1/0", "+1/0"] {
            let e = bad.parse::<Lsn>().expect_err(bad);
            assert!(e.to_string().contains("16/B374D848"), "{e}");
        }
    }

    #[test]
    fn lsn_order_and_arithmetic() {
        assert!(Lsn(1) < Lsn(2));
        assert_eq!(Lsn(10).saturating_add(5), Lsn(15));
        assert_eq!(Lsn(u64::MAX).saturating_add(5), Lsn(u64::MAX));
        assert_eq!(Lsn(10).bytes_since(Lsn(4)), 6);
        assert_eq!(Lsn(4).bytes_since(Lsn(10)), 0);
    }

    proptest::proptest! {
        #[test]
        fn lsn_text_round_trip(v: u64) {
            proptest::prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
        }

        #[test]
        fn timestamp_round_trip(us in -3_000_000_000_000_000i64..3_000_000_000_000_000i64) {
            let t = PgTimestamp(us);
            proptest::prop_assert_eq!(PgTimestamp::from_system_time(t.to_system_time()), t);
        }
    }

    #[test]
    fn timestamp_epoch() {
        let t = PgTimestamp(0).to_system_time();
        assert_eq!(t.duration_since(UNIX_EPOCH).ok(), Some(Duration::from_secs(946_684_800)));
        assert_eq!(PgTimestamp(1_000).unix_millis(), 946_684_800_001);
    }
}
