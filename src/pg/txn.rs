//! txn (to be written).
