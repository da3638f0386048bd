//! PostgreSQL: positions, the pgoutput decoder, the replication client, transaction assembly, slot management,
//! and which server a checkpoint belongs to.

pub mod config;
pub mod conninfo;
pub mod identity;
pub mod lsn;
pub mod pgoutput;
pub mod replication;
pub mod slot;
pub mod txn;

/// Whether a server error of SQLSTATE `code` may go away by itself: 08 connection exception, 53 insufficient
/// resources (too many connections, out of memory or disk), 40 transaction rollback (serialization, deadlock), 58
/// system error (I/O on the server), 57P01-03 and 57P05 (shutdown, `pg_terminate_backend`, starting up, idle
/// session timeout; not 57P04, the database was dropped).
/// Everything else (28 authentication, 42 privileges or missing objects, ...) needs a person.
pub fn is_transient_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "40" | "58")) || matches!(code, "57P01" | "57P02" | "57P03" | "57P05")
}

/// Whether an error of an ordinary SQL connection may go away by itself: no SQLSTATE means the connection broke
/// (I/O, closed, timeout); otherwise [`is_transient_sqlstate`].
pub fn is_transient_sql_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_none_or(|c| is_transient_sqlstate(c.code()))
}
