//! The store interface the registry sits on: every operation whose records differ
//! between the two databases is one method of [`Backend`], with two implementations:
//!
//! - [`sqlite::Sqlite`] (the embedded default): `registry.db` in the storage directory.
//!   This host's flock is the grant; the rows record it (holder rows, history, tokens
//!   under the token ceiling), written through the one group-committing writer.
//! - [`postgres::Shared`] (`--database postgres://…`, DESIGN §9): one PostgreSQL
//!   database shared by the services of several hosts. The row is the grant; this host's
//!   flock is taken first, so local `FileLock` users are still excluded and seen.
//!
//! The registry's public methods validate their input, then make one call here; the
//! HTTP layer, the UI, the CLI and the Python package call the registry and never learn
//! which database runs. What both backends share (the kernel view, staleness and clear
//! policy, the wait queues of this process, the holdings) stays in the registry and is
//! reached through the `&Registry` every method is given.
//!
//! Invariants (both implementations):
//! - a grant's holder row and `acquired` event are committed before it is answered, and
//!   a release commits its closing event before this process lets go of the flock;
//! - fencing tokens strictly increase per lock, across every grant the database knows;
//! - reads change nothing; `admin_sql` runs one read-only statement under the caps;
//! - what a backend cannot do answers [`RegistryError::Unsupported`] and changes nothing.

mod postgres;
mod sqlite;

pub(super) use postgres::Shared;
pub(super) use sqlite::Sqlite;

use super::clear::{ClearOutcome, ForceCleared};
use super::grant::{GrantSpec, Granted};
use super::lease::LeaseGrant;
use super::register::{Registrant, Registration};
use super::upkeep::ReconcileReport;
use super::{Registry, RegistryError};
use crate::config::Namespace;
use crate::ids::LockKey;
use crate::store::console::{Limits, SqlError, SqlResult};
use crate::store::history::{EventRow, HistoryQuery};
use crate::store::records::LockRow;
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::time::Duration;

/// A future of the registry's, answered with its result.
pub(super) type Answer<'a, T> = BoxFuture<'a, Result<T, RegistryError>>;

/// One page of the list of every known lock, by lock id.
#[derive(Debug, Clone, Copy)]
pub(super) struct Page<'a> {
    pub owner_prefix: Option<&'a str>,
    /// Lock ids after this one.
    pub after: i64,
    /// Only locks with a holder row.
    pub only_recorded: bool,
    pub limit: usize,
}

/// A registration whose registrant was checked (it holds this host's flock now).
#[derive(Debug)]
pub(super) struct Registering<'a> {
    pub key: &'a LockKey,
    pub who: Registrant,
    pub holder: &'a str,
    pub operation: &'a str,
}

pub(super) trait Backend: Send + Sync + std::fmt::Debug {
    /// `sqlite` or `postgresql`.
    fn name(&self) -> &'static str;

    /// May a holder row name a holder granted by another service (another host)?
    fn holders_elsewhere(&self) -> bool;

    // Reads.

    /// The recorded locks of one owner in one namespace.
    fn owner_rows(
        &self,
        reg: &Registry,
        namespace: &str,
        owner: &str,
    ) -> Result<Vec<LockRow>, RegistryError>;

    /// The record of one lock, if it has one.
    fn lock_row(&self, reg: &Registry, key: &LockKey) -> Result<Option<LockRow>, RegistryError>;

    /// One page of known locks.
    fn list_page(&self, reg: &Registry, page: Page<'_>) -> Result<Vec<LockRow>, RegistryError>;

    /// Every lock with a holder row.
    fn held_rows(&self, reg: &Registry) -> Result<Vec<LockRow>, RegistryError>;

    /// History, newest first (`q.limit` already clamped).
    fn history(&self, reg: &Registry, q: &HistoryQuery) -> Result<Vec<EventRow>, RegistryError>;

    /// One read-only admin statement, capped by `limits`.
    fn admin_sql(&self, reg: &Registry, sql: &str, limits: Limits) -> Result<SqlResult, SqlError>;

    // Grants and their ends.

    /// An in-process library holder (blocking the caller's thread up to `wait`).
    fn acquire_guard(
        &self,
        reg: &Registry,
        key: &LockKey,
        spec: &GrantSpec,
        wait: Duration,
    ) -> Result<Granted, RegistryError>;

    /// Renews an in-process library holder (`LockGuard::renew`); `Revoked` once a clear
    /// ended or revoked it.
    fn renew_guard(
        &self,
        reg: &Registry,
        key: &LockKey,
        lock_id: i64,
        token: i64,
    ) -> Result<(), RegistryError>;

    /// Commits an in-process library holder's `released` event; the guard lets go of
    /// its flock after this, whatever it answers.
    fn release_guard(
        &self,
        reg: &Registry,
        key: &LockKey,
        lock_id: i64,
        token: i64,
    ) -> Result<(), RegistryError>;

    /// A lease taken by the library or the CLI, blocking the caller's thread.
    fn acquire_lease(
        &self,
        reg: &Registry,
        key: &LockKey,
        spec: &GrantSpec,
        wait: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<LeaseGrant, RegistryError>;

    /// A lease for the service: waiting is a future that holds no thread.
    fn acquire_lease_async<'a>(
        &'a self,
        reg: &'a Registry,
        key: &'a LockKey,
        spec: &'a GrantSpec,
        wait: Duration,
    ) -> Answer<'a, LeaseGrant>;

    fn renew_lease(&self, reg: &Registry, lease_id: &str) -> Result<LeaseGrant, RegistryError>;

    /// Commits the lease's `released` event, then its flock goes. Returns how long it
    /// was held.
    fn release_lease(&self, reg: &Registry, lease_id: &str) -> Result<Option<i64>, RegistryError>;

    /// [`Backend::release_lease`] for the service's async threads.
    fn release_lease_async<'a>(
        &'a self,
        reg: &'a Registry,
        lease_id: &'a str,
    ) -> Answer<'a, Option<i64>>;

    /// Releases every lease of this process (shutdown), recording why.
    fn release_all_leases(&self, reg: &Registry, why: &str) -> Result<usize, RegistryError>;

    /// Ends the leases past their end and those whose client died; names the locks.
    fn reap(&self, reg: &Registry) -> Result<Vec<String>, RegistryError>;

    /// Records a checked registrant's grant, blocking.
    fn register(&self, reg: &Registry, r: Registering<'_>) -> Result<Registration, RegistryError>;

    /// [`Backend::register`] for the service; on a shared database it waits as a
    /// future, up to `deadline`, while another host holds the lock.
    fn register_async<'a>(
        &'a self,
        reg: &'a Registry,
        r: Registering<'a>,
        deadline: tokio::time::Instant,
    ) -> Answer<'a, Registration>;

    fn unregister(
        &self,
        reg: &Registry,
        registration_id: &str,
    ) -> Result<Option<i64>, RegistryError>;

    // Clearing and upkeep.

    /// Safe clear of one owner; `expected` maps a field to the token its caller saw.
    fn clear(
        &self,
        reg: &Registry,
        ns: &Namespace,
        owner: &str,
        expected: BTreeMap<String, i64>,
        actor: &str,
    ) -> Result<ClearOutcome, RegistryError>;

    /// Force clear of exactly the grant with `token` (reason already checked).
    fn force_clear(
        &self,
        reg: &Registry,
        key: &LockKey,
        token: i64,
        reason: &str,
        actor: &str,
    ) -> Result<ForceCleared, RegistryError>;

    /// Ends the records whose holders are gone.
    fn reconcile(&self, reg: &Registry, actor: &str) -> Result<ReconcileReport, RegistryError>;

    /// Deletes up to `batch` history rows older than `cutoff` or beyond the newest
    /// `max`; returns how many went.
    fn prune_events(
        &self,
        reg: &Registry,
        cutoff: Option<i64>,
        max: Option<u64>,
        batch: usize,
    ) -> Result<usize, RegistryError>;

    /// Writes the busy answers noted since the last write.
    fn flush_busy(&self, reg: &Registry) -> Result<(), RegistryError>;
}
