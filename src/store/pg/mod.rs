//! The PostgreSQL store (DESIGN §9, issue #13): one registry database shared by the
//! services of several hosts.
//!
//! So far this holds the groundwork only: the schema (`migrations/postgres/`) and
//! [`migrate`], which brings a database up to it. The registry does not use PostgreSQL
//! yet.
//!
//! Invariants: as for the SQLite store, SQL lives here and nowhere else; the PostgreSQL
//! schema keeps SQLite's table and view names and each view's column names and order,
//! with times as integer milliseconds, so admins' SQL and rows are the same on both.

pub mod migrate;

pub use migrate::{migrate, MigrateError};

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
