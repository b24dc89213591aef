//! What a caller asks the PostgreSQL store for ([`GrantRequest`]), what a grant returns
//! ([`Granted`]), and the small conversions every statement shares.
//!
//! Invariants: a request reaches SQL only through [`GrantRequest::checked`], which
//! bounds the ttl, refuses external holders and gives every lease exactly one id (the
//! caller's, if well-formed, else 128 random bits from the OS), kept over all the tries
//! of one wait; pids are stored as BIGINT and read back as i32.

use super::ends::Ended;
use super::error::PgError;
use crate::policy::stale::HolderKind;
use postgres::types::{ToSql, Type};

/// Longest lease accepted (a day).
pub const MAX_TTL_MS: u64 = 86_400_000;

/// What a caller asks for: a lease (ended by release, expiry or clear) or a library
/// holder (ended by its guard).
#[derive(Debug, Clone)]
pub struct GrantRequest {
    pub namespace: String,
    pub owner: String,
    /// As stored: `""` for the main lock.
    pub field: String,
    /// Bare lock-file name, recorded in `locks.file`.
    pub file: String,
    /// Free-form label of the holder.
    pub holder: String,
    pub operation: String,
    /// The client process, if known.
    pub pid: Option<i32>,
    pub pid_start: Option<u64>,
    /// The holder's host: only the service on this host judges `pid`.
    pub host: String,
    pub thread: Option<String>,
    /// The process that holds the flock (the granting service for a lease).
    pub locker_pid: i32,
    pub locker_start: Option<u64>,
    /// Lease length (1..=[`MAX_TTL_MS`]); required for a lease, optional for a library
    /// holder (None: it never expires, it is released by token).
    pub ttl_ms: Option<u64>,
    /// Lease or library (external holders are never granted).
    pub kind: HolderKind,
    /// A lease's id (a bearer capability): given by the caller or made by the store (128
    /// random bits, hex). Library holders have none.
    pub lease_id: Option<String>,
}

impl GrantRequest {
    /// A lease on `owner/field` of `namespace` for this process on this host, with the
    /// default file name `{owner}_{field}.lock` (set `file` for other patterns).
    pub fn lease(
        namespace: &str,
        owner: &str,
        field: &str,
        holder: &str,
        operation: &str,
        ttl_ms: u64,
    ) -> GrantRequest {
        let me = std::process::id() as i32;
        GrantRequest {
            namespace: namespace.into(),
            owner: owner.into(),
            field: field.into(),
            file: format!("{owner}_{field}.lock"),
            holder: holder.into(),
            operation: operation.into(),
            pid: None,
            pid_start: None,
            host: crate::kernel::process::hostname().to_string(),
            thread: None,
            locker_pid: me,
            locker_start: crate::kernel::process::start_ticks(me),
            ttl_ms: Some(ttl_ms),
            kind: HolderKind::Lease,
            lease_id: None,
        }
    }

    /// The same request as a library holder without expiry.
    pub fn library(mut self) -> GrantRequest {
        self.kind = HolderKind::Library;
        self.ttl_ms = None;
        self.lease_id = None;
        self
    }

    /// Checks the request and gives a lease its id (made here when the caller gave none).
    pub(super) fn checked(&self) -> Result<GrantRequest, PgError> {
        let bad = |why: String| Err(PgError::BadRequest(why));
        if self.owner.is_empty() || self.namespace.is_empty() || self.file.is_empty() {
            return bad("namespace, owner and file must not be empty".into());
        }
        if let Some(ttl) = self.ttl_ms {
            if !(1..=MAX_TTL_MS).contains(&ttl) {
                return bad(format!("ttl_ms must be 1..={MAX_TTL_MS}, not {ttl}"));
            }
        }
        let mut req = self.clone();
        match (self.kind, &self.lease_id, self.ttl_ms) {
            (HolderKind::External, ..) => {
                return bad("external holders are observed, never granted".into())
            }
            (HolderKind::Lease, _, None) => return bad("a lease needs ttl_ms".into()),
            (HolderKind::Lease, Some(id), _) => {
                let ok = (16..=128).contains(&id.len())
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !ok {
                    return bad("a lease id is 16..=128 of [A-Za-z0-9_-]".into());
                }
            }
            (HolderKind::Lease, None, _) => {
                // 128 random bits: a lease id is a bearer capability for renew and release.
                req.lease_id =
                    Some(crate::random::hex(16).map_err(|e| PgError::Random(e.to_string()))?);
            }
            (HolderKind::Library, Some(_), _) => {
                return bad("library holders have no lease id".into())
            }
            (HolderKind::Library, None, _) => {}
        }
        Ok(req)
    }
}

/// A grant: the holder row is committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    pub lock_id: i64,
    pub token: i64,
    pub lease_id: Option<String>,
    /// Database clock, UTC ms.
    pub acquired_at: i64,
    pub expires_at: Option<i64>,
    /// Event id of the `acquired` event.
    pub acquired_event: i64,
    /// The expired holder this grant ended first (its `expired` event precedes ours).
    pub took_over: Option<Ended>,
}

/// A statement parameter with its type (`query_typed` runs a statement in one round trip
/// without preparing it first).
pub(super) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

pub(super) fn pid64(pid: Option<i32>) -> Option<i64> {
    pid.map(i64::from)
}

/// A pid read back: pids fit in i32 on Linux (pid_max <= 2^22); a value outside can only
/// come from hand-written SQL and reads as no pid.
pub(super) fn pid32(v: Option<i64>) -> Option<i32> {
    v.and_then(|v| i32::try_from(v).ok())
}
