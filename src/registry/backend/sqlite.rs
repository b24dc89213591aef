//! The embedded backend: `registry.db` (SQLite) in the storage directory, one host.
//!
//! Invariants: this host's flock is the grant and the rows record it; every write goes
//! through the registry's one group-committing writer (`Registry::write`, IMMEDIATE
//! transactions), every read through the read pool under `READ_TIME_LIMIT`. The bodies
//! of the longer operations live beside their policy (`lease`, `clear`, `upkeep`,
//! `register`), named `sqlite_*`; this file is their one door.

use super::{Answer, Backend, Page, Registering};
use crate::config::Namespace;
use crate::ids::LockKey;
use crate::registry::clear::{ClearOutcome, ForceCleared};
use crate::registry::grant::{GrantSpec, Granted};
use crate::registry::lease::LeaseGrant;
use crate::registry::register::Registration;
use crate::registry::upkeep::ReconcileReport;
use crate::registry::{Registry, RegistryError};
use crate::store::console::{self, Limits, SqlError, SqlResult};
use crate::store::history::{self, EventRow, HistoryQuery};
use crate::store::records::{self, LockRow};
use crate::store::StoreError;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug)]
pub(in crate::registry) struct Sqlite;

impl Backend for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn holders_elsewhere(&self) -> bool {
        false
    }

    fn owner_rows(
        &self,
        reg: &Registry,
        namespace: &str,
        owner: &str,
    ) -> Result<Vec<LockRow>, RegistryError> {
        reg.read(|c| Ok(records::owner_locks(c, namespace, owner)?))
    }

    fn lock_row(&self, reg: &Registry, key: &LockKey) -> Result<Option<LockRow>, RegistryError> {
        reg.read(|c| Ok(records::find_lock(c, key)?))
    }

    fn list_page(&self, reg: &Registry, p: Page<'_>) -> Result<Vec<LockRow>, RegistryError> {
        reg.read(|c| {
            Ok(records::list_locks(
                c,
                p.owner_prefix,
                p.after,
                p.only_recorded,
                p.limit,
            )?)
        })
    }

    fn held_rows(&self, reg: &Registry) -> Result<Vec<LockRow>, RegistryError> {
        reg.read(|c| Ok(records::all_held(c)?))
    }

    fn history(&self, reg: &Registry, q: &HistoryQuery) -> Result<Vec<EventRow>, RegistryError> {
        reg.read(|c| Ok(history::history(c, q)?))
    }

    fn admin_sql(&self, reg: &Registry, sql: &str, limits: Limits) -> Result<SqlResult, SqlError> {
        console::run(&reg.db_path(), sql, limits)
    }

    fn acquire_guard(
        &self,
        reg: &Registry,
        key: &LockKey,
        spec: &GrantSpec,
        wait: Duration,
    ) -> Result<Granted, RegistryError> {
        reg.grant_waiting(key, spec, wait, &|| false)
    }

    fn renew_guard(
        &self,
        reg: &Registry,
        key: &LockKey,
        lock_id: i64,
        token: i64,
    ) -> Result<(), RegistryError> {
        reg.sqlite_renew_guard(key, lock_id, token)
    }

    fn release_guard(
        &self,
        reg: &Registry,
        key: &LockKey,
        lock_id: i64,
        token: i64,
    ) -> Result<(), RegistryError> {
        reg.sqlite_release_guard(key, lock_id, token)
    }

    fn acquire_lease(
        &self,
        reg: &Registry,
        key: &LockKey,
        spec: &GrantSpec,
        wait: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<LeaseGrant, RegistryError> {
        let granted = reg.grant_waiting(key, spec, wait, cancelled)?;
        Ok(reg.lease_grant(&granted))
    }

    fn acquire_lease_async<'a>(
        &'a self,
        reg: &'a Registry,
        key: &'a LockKey,
        spec: &'a GrantSpec,
        wait: Duration,
    ) -> Answer<'a, LeaseGrant> {
        Box::pin(async move {
            let granted = reg.grant_waiting_async(key, spec, wait).await?;
            Ok(reg.lease_grant(&granted))
        })
    }

    fn renew_lease(&self, reg: &Registry, lease_id: &str) -> Result<LeaseGrant, RegistryError> {
        reg.sqlite_renew_lease(lease_id)
    }

    fn release_lease(&self, reg: &Registry, lease_id: &str) -> Result<Option<i64>, RegistryError> {
        reg.sqlite_release_lease(lease_id)
    }

    fn release_lease_async<'a>(
        &'a self,
        reg: &'a Registry,
        lease_id: &'a str,
    ) -> Answer<'a, Option<i64>> {
        Box::pin(reg.sqlite_release_lease_async(lease_id))
    }

    fn release_all_leases(&self, reg: &Registry, why: &str) -> Result<usize, RegistryError> {
        reg.sqlite_release_all_leases(why)
    }

    fn reap(&self, reg: &Registry) -> Result<Vec<String>, RegistryError> {
        reg.sqlite_reap()
    }

    fn register(&self, reg: &Registry, r: Registering<'_>) -> Result<Registration, RegistryError> {
        reg.sqlite_register(r.key, r.who, r.holder, r.operation)
    }

    fn register_async<'a>(
        &'a self,
        reg: &'a Registry,
        r: Registering<'a>,
        _deadline: tokio::time::Instant,
    ) -> Answer<'a, Registration> {
        // The registrant's own flock is the grant: nothing to wait for, only the commit
        // (off the async thread).
        let (me, key, who) = (reg.clone(), r.key.clone(), r.who);
        let (holder, operation) = (r.holder.to_string(), r.operation.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || me.sqlite_register(&key, who, &holder, &operation))
                .await
                .map_err(|_| RegistryError::Store(StoreError::JobPanicked))?
        })
    }

    fn unregister(
        &self,
        reg: &Registry,
        registration_id: &str,
    ) -> Result<Option<i64>, RegistryError> {
        reg.sqlite_unregister(registration_id)
    }

    fn clear(
        &self,
        reg: &Registry,
        ns: &Namespace,
        owner: &str,
        expected: BTreeMap<String, i64>,
        actor: &str,
    ) -> Result<ClearOutcome, RegistryError> {
        reg.sqlite_clear(ns, owner, expected, actor)
    }

    fn force_clear(
        &self,
        reg: &Registry,
        key: &LockKey,
        token: i64,
        reason: &str,
        actor: &str,
    ) -> Result<ForceCleared, RegistryError> {
        reg.sqlite_force_clear(key, token, reason, actor)
    }

    fn reconcile(&self, reg: &Registry, actor: &str) -> Result<ReconcileReport, RegistryError> {
        reg.sqlite_reconcile(actor)
    }

    fn prune_events(
        &self,
        reg: &Registry,
        cutoff: Option<i64>,
        max: Option<u64>,
        batch: usize,
    ) -> Result<usize, RegistryError> {
        reg.write(move |_, conn| Ok(history::prune_events(conn, cutoff, max, batch)?))
    }

    fn flush_busy(&self, reg: &Registry) -> Result<(), RegistryError> {
        // Every write carries the busy answers noted since the last one: an empty write
        // is the flush.
        reg.write(|_, _| Ok(()))
    }
}
