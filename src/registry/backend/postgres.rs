//! The shared backend: one PostgreSQL database for the services of several hosts
//! (DESIGN §9). No `registry.db` is opened in this mode.
//!
//! Invariants: the row is the grant (`store::pg`); this host's flock is taken before the
//! shared grant is asked for and goes only after the lease's end is committed; lease
//! ends are judged by the database clock, pids only by the service of their host. The
//! bodies live in `registry::dist*` (named `dist_*`); this file is their one door. What
//! is not on PostgreSQL yet answers `unsupported` and changes nothing.

use super::{Answer, Backend, Page, Registering};
use crate::config::Namespace;
use crate::ids::LockKey;
use crate::registry::clear::{ClearOutcome, ForceCleared};
use crate::registry::dist::{off_thread, pg_error, Dist};
use crate::registry::grant::{GrantSpec, Granted};
use crate::registry::lease::LeaseGrant;
use crate::registry::register::Registration;
use crate::registry::upkeep::ReconcileReport;
use crate::registry::{Registry, RegistryError};
use crate::store::console::{Limits, SqlError, SqlResult};
use crate::store::history::{EventRow, HistoryQuery};
use crate::store::records::LockRow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Most locks with a holder row one count reads.
const MAX_HELD_ROWS: usize = 100_000;

#[derive(Debug)]
pub(in crate::registry) struct Shared(pub Arc<Dist>);

fn unsupported(what: &str) -> RegistryError {
    RegistryError::Unsupported(format!(
        "{what} is not available with a PostgreSQL registry yet"
    ))
}

impl Backend for Shared {
    fn name(&self) -> &'static str {
        "postgresql"
    }

    fn holders_elsewhere(&self) -> bool {
        true
    }

    fn owner_rows(
        &self,
        reg: &Registry,
        namespace: &str,
        owner: &str,
    ) -> Result<Vec<LockRow>, RegistryError> {
        reg.dist_owner_rows(&self.0, namespace, owner)
    }

    fn lock_row(&self, _: &Registry, key: &LockKey) -> Result<Option<LockRow>, RegistryError> {
        self.0
            .store
            .lock_by_key(key.namespace(), key.owner(), key.field())
            .map_err(pg_error)
    }

    fn list_page(&self, _: &Registry, p: Page<'_>) -> Result<Vec<LockRow>, RegistryError> {
        self.0
            .store
            .list_locks(p.owner_prefix, p.after, p.only_recorded, p.limit)
            .map_err(pg_error)
    }

    fn held_rows(&self, reg: &Registry) -> Result<Vec<LockRow>, RegistryError> {
        let page = Page {
            owner_prefix: None,
            after: 0,
            only_recorded: true,
            limit: MAX_HELD_ROWS,
        };
        self.list_page(reg, page)
    }

    fn history(&self, _: &Registry, q: &HistoryQuery) -> Result<Vec<EventRow>, RegistryError> {
        self.0.store.history(q).map_err(pg_error)
    }

    fn admin_sql(&self, _: &Registry, sql: &str, limits: Limits) -> Result<SqlResult, SqlError> {
        self.0.store.console(sql, limits)
    }

    fn acquire_guard(
        &self,
        reg: &Registry,
        key: &LockKey,
        spec: &GrantSpec,
        wait: Duration,
    ) -> Result<Granted, RegistryError> {
        reg.dist_grant_blocking(&self.0, key, spec, wait, &|| false)
    }

    fn renew_guard(
        &self,
        reg: &Registry,
        key: &LockKey,
        lock_id: i64,
        token: i64,
    ) -> Result<(), RegistryError> {
        reg.dist_renew_guard(&self.0, key, lock_id, token)
    }

    fn release_guard(
        &self,
        reg: &Registry,
        _: &LockKey,
        lock_id: i64,
        token: i64,
    ) -> Result<(), RegistryError> {
        reg.dist_release_guard(&self.0, lock_id, token)
    }

    fn acquire_lease(
        &self,
        reg: &Registry,
        key: &LockKey,
        spec: &GrantSpec,
        wait: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<LeaseGrant, RegistryError> {
        let granted = reg.dist_grant_blocking(&self.0, key, spec, wait, cancelled)?;
        Ok(reg.lease_grant(&granted))
    }

    fn acquire_lease_async<'a>(
        &'a self,
        reg: &'a Registry,
        key: &'a LockKey,
        spec: &'a GrantSpec,
        wait: Duration,
    ) -> Answer<'a, LeaseGrant> {
        Box::pin(reg.dist_acquire_lease(&self.0, key, spec, wait))
    }

    fn renew_lease(&self, reg: &Registry, lease_id: &str) -> Result<LeaseGrant, RegistryError> {
        // A lease of another service (or of this one before a restart) keeps its own
        // ttl: None asks the database to reuse it.
        let ttl = reg.holdings().lease(lease_id).map(|s| s.ttl);
        reg.dist_renew(&self.0, lease_id, ttl)
    }

    fn release_lease(&self, reg: &Registry, lease_id: &str) -> Result<Option<i64>, RegistryError> {
        reg.dist_release(&self.0, lease_id)
    }

    fn release_lease_async<'a>(
        &'a self,
        reg: &'a Registry,
        lease_id: &'a str,
    ) -> Answer<'a, Option<i64>> {
        let (me, d, id) = (reg.clone(), Arc::clone(&self.0), lease_id.to_string());
        Box::pin(off_thread(move || me.dist_release(&d, &id)))
    }

    fn release_all_leases(&self, reg: &Registry, why: &str) -> Result<usize, RegistryError> {
        reg.dist_release_all(&self.0, why)
    }

    fn reap(&self, reg: &Registry) -> Result<Vec<String>, RegistryError> {
        reg.dist_reap(&self.0)
    }

    fn register(&self, _: &Registry, _: Registering<'_>) -> Result<Registration, RegistryError> {
        // Here the registration is a grant that may have to wait for another host.
        Err(unsupported("a blocking FileLock registration"))
    }

    fn register_async<'a>(
        &'a self,
        reg: &'a Registry,
        r: Registering<'a>,
        deadline: tokio::time::Instant,
    ) -> Answer<'a, Registration> {
        Box::pin(reg.dist_register(&self.0, r.key, r.who, r.holder, r.operation, deadline))
    }

    fn unregister(
        &self,
        reg: &Registry,
        registration_id: &str,
    ) -> Result<Option<i64>, RegistryError> {
        reg.dist_unregister(&self.0, registration_id)
    }

    fn clear(
        &self,
        reg: &Registry,
        ns: &Namespace,
        owner: &str,
        expected: BTreeMap<String, i64>,
        actor: &str,
    ) -> Result<ClearOutcome, RegistryError> {
        reg.dist_clear(&self.0, ns, owner, &expected, actor)
    }

    fn force_clear(
        &self,
        reg: &Registry,
        key: &LockKey,
        token: i64,
        reason: &str,
        actor: &str,
    ) -> Result<ForceCleared, RegistryError> {
        reg.dist_force_clear(&self.0, key, token, reason, actor)
    }

    fn reconcile(&self, reg: &Registry, _: &str) -> Result<ReconcileReport, RegistryError> {
        // This host's dead holders are ended by the reap (only this host can judge their
        // pids); the rest end by the database clock.
        let ended = reg.dist_reap(&self.0)?;
        Ok(ReconcileReport {
            checked: ended.len(),
            reconciled: ended,
        })
    }

    fn prune_events(
        &self,
        _: &Registry,
        cutoff: Option<i64>,
        max: Option<u64>,
        batch: usize,
    ) -> Result<usize, RegistryError> {
        self.0
            .store
            .prune_events(cutoff, max, batch)
            .map_err(pg_error)
    }

    fn flush_busy(&self, reg: &Registry) -> Result<(), RegistryError> {
        // Written here, into the shared database (there is no local writer).
        if let Some(busy) = reg.take_busy() {
            let rows = reg.write_busy(&*self.0.store, &busy);
            reg.settle_busy(Some(busy), rows.map(|rows| ((), Some(rows))))?;
        }
        Ok(())
    }
}
