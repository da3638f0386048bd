//! replication (to be written).
