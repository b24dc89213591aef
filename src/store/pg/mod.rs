//! The PostgreSQL store (DESIGN §9, issue #13): one registry database shared by the
//! services of several hosts.
//!
//! - [`migrate`]: brings a database up to the schema of `migrations/postgres/`;
//! - [`store`]: [`PgStore`], a small connection pool with bounded session settings;
//! - [`request`]: what a grant asks for and returns;
//! - [`leases`]: grants (the grant is the row);
//! - [`ends`]: renewals, releases, expiry by the database clock, clears;
//! - [`waiters`]: waiting for a lock in one arrival order across services;
//! - [`listen`]: [`FreeListener`], `LISTEN lockledger_free` on a thread of its own;
//! - [`reads`]: current holders and history as the SQLite store's row types;
//! - [`error`]: [`PgError`] and the refusal of a busy lock.
//!
//! The registry does not use this store yet (neither does the HTTP layer).
//!
//! Invariants: as for the SQLite store, SQL lives here and nowhere else; the PostgreSQL
//! schema keeps SQLite's table and view names and each view's column names and order,
//! with times as integer milliseconds, so admins' SQL and rows are the same on both;
//! every time that judges a lease is the database's clock.

pub mod console;
pub mod ends;
pub mod error;
pub mod leases;
pub mod line;
pub mod listen;
pub mod migrate;
pub mod reads;
pub mod request;
pub mod retention;
pub mod store;
pub mod waiters;

pub use ends::{Cleared, Ended, Expired, HolderRenewal, Released, Renewed};
pub use error::{Busy, BusyHolder, PgError};
pub use listen::{FreeListener, CHANNEL};
pub use migrate::{migrate, MigrateError};
pub use request::{GrantRequest, Granted};
pub use store::PgStore;
pub use waiters::{Waited, Wake};

/// A PostgreSQL error with its causes, for messages: `postgres::Error` alone shows only
/// its kind ("db error"); the server's message is its source.
pub fn describe(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
