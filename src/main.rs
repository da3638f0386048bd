//! The `outbox-relay` binary (to be written).
fn main() {}
