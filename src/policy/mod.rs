//! Decisions, as pure functions of facts and an injected clock: nothing here reads the
//! clock, the disk or the database, so every rule is a unit test.
//!
//! - [`stale`]: the state of a lock (free, held, stale and why);
//! - [`clear`]: what a safe or forced clear may do with it, what reconciliation repairs
//!   and when a lease ends.

pub mod clear;
pub mod stale;
