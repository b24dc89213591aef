//! Errors of the PostgreSQL store ([`PgError`]) and the refusal a busy lock answers with
//! ([`Busy`]).
//!
//! Invariants: messages are lowercase sentences that name the lock (`owner/field`, the
//! main lock as `owner/(main)`) and, when it is held, who holds it, on which host, since
//! when (UTC, RFC 3339, by the database's clock); they never carry a database URL or a
//! password. PostgreSQL's own timeouts (`lock_timeout`, `statement_timeout`) get variants
//! of their own so callers can answer "busy, try again" rather than "broken".

use super::describe;
use super::migrate::MigrateError;
use crate::clock::rfc3339;
use crate::policy::stale::HolderKind;
use postgres::error::SqlState;
use std::fmt;

/// The holder that made a grant refuse, as recorded when it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyHolder {
    pub token: i64,
    pub kind: HolderKind,
    pub holder: String,
    pub operation: String,
    pub pid: Option<i32>,
    pub host: String,
    pub acquired_at: i64,
    /// Leases: when the lease ends unless renewed (database clock).
    pub expires_at: Option<i64>,
}

/// Why a grant was refused: the lock is held, or free but promised to earlier waiters
/// (arrival order across services, `lock_waiters`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub lock_id: i64,
    /// `owner/field` (`owner/(main)` for the main lock).
    pub lock: String,
    /// None when the lock is free and only earlier waiters stand in the way.
    pub holder: Option<BusyHolder>,
    /// Live waiters ahead of the caller (all of them for a plain try).
    pub waiters_ahead: i64,
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.holder {
            Some(h) => {
                let who = match h.pid {
                    Some(pid) => format!("pid {pid}"),
                    None => format!("{:?}", h.holder),
                };
                write!(
                    f,
                    "lock {} is held by {who} ({}) on host {} since {}",
                    self.lock,
                    h.operation,
                    h.host,
                    rfc3339(h.acquired_at)
                )?;
                if let Some(end) = h.expires_at {
                    write!(f, "; its lease ends at {}", rfc3339(end))?;
                }
                if self.waiters_ahead > 0 {
                    write!(f, "; {} earlier waiter(s) are queued", self.waiters_ahead)?;
                }
                Ok(())
            }
            None => write!(
                f,
                "lock {} is free but {} earlier waiter(s) are queued for it; it goes to them first",
                self.lock, self.waiters_ahead
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The lock is held (or promised to earlier waiters); nothing was written.
    #[error("{0}")]
    Busy(Box<Busy>),
    /// `acquire_waiting` reached its deadline; the last refusal says why.
    #[error("{busy}; gave up after {waited_ms} ms")]
    WaitTimeout { busy: Box<Busy>, waited_ms: u64 },
    /// The lease was released, expired (by the database clock) or cleared.
    #[error("lease {lease_id} has ended: {why}")]
    LeaseGone { lease_id: String, why: String },
    /// No holder of that lock carries that token (any more).
    #[error(
        "lock {lock_id} has no holder with token {token}: it was released, expired or cleared"
    )]
    NotHolding { lock_id: i64, token: i64 },
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No pooled connection became free in time (or none could be made).
    #[error("no postgresql connection within {wait_ms} ms: {why}")]
    Pool { wait_ms: u64, why: String },
    /// Asked for a connection inside the store's no-wait mode (an async thread): the
    /// blocking client would stall or panic there, so nothing was run; the caller makes
    /// the call again on the blocking pool.
    #[error("a postgresql call would block an async thread; made again off it")]
    WouldWait,
    /// A row this needed stayed locked by another transaction past `lock_timeout`.
    #[error("the registry database is busy: a row stayed locked past lock_timeout ({0})")]
    LockTimeout(String),
    /// A statement ran past `statement_timeout`.
    #[error("the registry database is slow: a statement ran past statement_timeout ({0})")]
    StatementTimeout(String),
    #[error("postgresql error: {0}")]
    Postgres(String),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("cannot generate a lease id: {0}")]
    Random(String),
}

impl PgError {
    /// The refusal, for `Busy` and `WaitTimeout`.
    pub fn busy(&self) -> Option<&Busy> {
        match self {
            PgError::Busy(b) | PgError::WaitTimeout { busy: b, .. } => Some(b),
            _ => None,
        }
    }

    /// Worth trying again soon: refused, or the database was busy or slow.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PgError::Busy(_) | PgError::LockTimeout(_) | PgError::StatementTimeout(_)
        )
    }
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> PgError {
        let text = describe(&e);
        match e.code() {
            Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE => PgError::LockTimeout(text),
            Some(c) if *c == SqlState::QUERY_CANCELED => PgError::StatementTimeout(text),
            _ => PgError::Postgres(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::lock_name;

    fn holder(pid: Option<i32>, expires_at: Option<i64>) -> BusyHolder {
        BusyHolder {
            token: 7,
            kind: HolderKind::Lease,
            holder: "chat".into(),
            operation: "send_message".into(),
            pid,
            host: "h1".into(),
            acquired_at: 1_764_530_000_123,
            expires_at,
        }
    }

    #[test]
    fn busy_names_the_lock_the_holder_its_host_and_since_when() {
        let busy = Busy {
            lock_id: 1,
            lock: lock_name("conv42", "messages"),
            holder: Some(holder(Some(812), None)),
            waiters_ahead: 0,
        };
        assert_eq!(
            busy.to_string(),
            "lock conv42/messages is held by pid 812 (send_message) on host h1 since \
             2025-11-30T19:13:20.123Z"
        );
        let lease = Busy {
            holder: Some(holder(None, Some(1_764_530_030_123))),
            waiters_ahead: 2,
            lock: lock_name("conv42", ""),
            ..busy
        };
        assert_eq!(
            PgError::Busy(Box::new(lease)).to_string(),
            "lock conv42/(main) is held by \"chat\" (send_message) on host h1 since \
             2025-11-30T19:13:20.123Z; its lease ends at 2025-11-30T19:13:50.123Z; \
             2 earlier waiter(s) are queued"
        );
    }

    #[test]
    fn a_free_lock_promised_to_waiters_says_so() {
        let busy = Busy {
            lock_id: 1,
            lock: "d1/summary".into(),
            holder: None,
            waiters_ahead: 1,
        };
        let e = PgError::WaitTimeout {
            busy: Box::new(busy),
            waited_ms: 250,
        };
        assert_eq!(
            e.to_string(),
            "lock d1/summary is free but 1 earlier waiter(s) are queued for it; it goes to \
             them first; gave up after 250 ms"
        );
    }
}
