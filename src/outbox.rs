//! outbox (to be written).
