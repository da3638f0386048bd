//! PostgreSQL: positions, the pgoutput decoder, the replication client, transaction assembly, slot management.

pub mod lsn;
pub mod pgoutput;
pub mod replication;
pub mod slot;
pub mod txn;
