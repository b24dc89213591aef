//! The lock registry: orchestration only. It ties kernel locks (`kernel`), holder
//! records and history (`store`) and the rules (`policy`) together; each submodule owns
//! one part of it:
//!
//! - `backend`: the store interface the registry sits on, with its SQLite and
//!   PostgreSQL implementations (every record operation that differs between them);
//! - [`report`]: status and listing (reads only);
//! - [`grant`]: library holders in this process and their guards;
//! - [`lease`]: service leases, whose kernel lock the service holds;
//! - [`clear`]: safe and forced clearing; `clear_look`: a clear with a fresh look after;
//! - `closing`: closing a grant's record (holder row and closing event) on SQLite;
//! - [`upkeep`]: reconciliation and history retention;
//! - [`waitq`]: arrival-order queues of waiting acquirers.
//!
//! Invariants:
//! - Exclusion comes from the kernel only. A holder row is written after its flock is
//!   taken and deleted before the flock is released, so a row without a flock means the
//!   holder let go without saying so (it died): that is what `holder_dead` detects.
//! - Every grant gets a fencing token strictly greater than all earlier grants of that
//!   lock (persisted in `locks.last_token`); a force clear bumps it too, so a revoked
//!   holder's token is never current again.
//! - Every `acquired` event is closed by exactly one of released / expired / cleared /
//!   force_cleared / reconciled. A force-cleared holder that later lets go writes no
//!   second closing event.
//! - Clearing re-checks each lock inside one IMMEDIATE transaction, performs the
//!   filesystem step (closing a lease's handle) there, and commits; a live holder is never
//!   touched by a safe clear, and nothing here ever deletes a lock file.
//! - A status read changes nothing: no file is created, no row is written.

mod backend;
mod busy;
pub mod clear;
mod clear_look;
mod closing;
mod dist;
mod dist_clear;
mod dist_guard;
mod dist_register;
mod dist_wait;
pub mod error;
pub mod grant;
pub mod guard;
mod holdings;
pub mod lease;
pub mod lockdir;
mod observe;
pub mod register;
pub mod report;
pub mod upkeep;
pub mod waitq;
mod words;
mod writes;

pub use clear::{ClearOutcome, ClearedLock, ForceCleared, SkipKind, SkippedLock};
pub use clear_look::{ClearReport, LockOutcome};
pub use error::RegistryError;
pub use grant::AcquireOptions;
pub use guard::LockGuard;
pub use holdings::LeaseInfo;
pub use lease::{LeaseGrant, LeaseRequest};
pub use register::Registration;
pub use report::{
    describe_holder, without_paths, ConflictingHolder, LockReport, OwnerStatus, RecordedCounts,
};
pub use upkeep::ReconcileReport;
pub use words::{html_safe, remaining_note};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Namespace};
use crate::ids::{self, LockKey};
use crate::kernel::process;
use crate::policy::stale::Policy;
use crate::store::ceiling::Ceiling;
use crate::store::db::{self, Access};
use crate::store::history::{self, HistoryQuery};
use crate::store::{ReadPool, StoreError, Watch, Writer};
use closing::{close_record, renewal_is_sampled, LockRef};
use holdings::{holdings_for, Holdings};
use rusqlite::Connection;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use waitq::WaitQueues;

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FenceCheck {
    pub current: bool,
    pub newest_token: i64,
}

/// Longest a registry read may run before it is interrupted.
pub const READ_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest holder label / operation name kept (longer ones are refused).
pub const MAX_LABEL_LEN: usize = 200;

fn check_label(what: &str, value: &str) -> Result<(), RegistryError> {
    if value.len() > MAX_LABEL_LEN || value.chars().any(|c| c.is_control()) {
        return Err(RegistryError::BadRequest(format!(
            "{what} must be at most {MAX_LABEL_LEN} bytes of printable text"
        )));
    }
    Ok(())
}

#[derive(Debug)]
struct Inner {
    config: Config,
    locks_dir: PathBuf,
    clock: Arc<dyn Clock>,
    /// None when opened read-only (`Registry::open_read_only`) or on PostgreSQL.
    writer: Option<Writer>,
    /// None on PostgreSQL (no `registry.db` is opened there).
    readers: Option<ReadPool>,
    /// Is the database still the one opened? (None when read-only.)
    watch: Option<Arc<Watch>>,
    /// Covers every token issued (None when read-only).
    ceiling: Option<Ceiling>,
    holdings: Arc<Mutex<Holdings>>,
    waiters: Arc<WaitQueues>,
    busy: busy::BusyLog,
    lock_dir: lockdir::LockDir,
    /// When a write last failed because another process held the database's write lock,
    /// and the words it failed with (for `/healthz`).
    last_write_busy: Mutex<Option<(std::time::Instant, String)>>,
    me: (i32, Option<u64>),
    /// The store the records live in: SQLite here, or the shared PostgreSQL database
    /// (`Config::database`).
    backend: Box<dyn backend::Backend>,
}

/// The SQLite parts of a registry (each None where not opened: read-only, or on
/// PostgreSQL).
#[derive(Default)]
struct Sqlite {
    writer: Option<Writer>,
    readers: Option<ReadPool>,
    watch: Option<Arc<Watch>>,
    ceiling: Option<Ceiling>,
}

/// The registry. Cheap to clone; all clones share one writer, pool and lease table.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    /// Opens the registry on the real clock, migrating the database if needed.
    pub fn open(config: Config) -> Result<Registry, RegistryError> {
        Registry::open_with_clock(config, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Registry, RegistryError> {
        config
            .validate()
            .map_err(|e| RegistryError::BadRequest(e.to_string()))?;
        // Before the store creates the storage directory (privately): the configured
        // modes decide, and `shared_group` lets the group through.
        let locks_dir = lockdir::ensure_storage(&config).map_err(StoreError::Io)?;
        if let Some(url) = config.database.clone() {
            // The shared database holds every record: no registry.db is opened.
            let shared = backend::Shared(Arc::new(dist::Dist::open(&url)?));
            let parts = Sqlite::default();
            return Ok(Registry::assemble(
                config,
                locks_dir,
                clock,
                parts,
                Box::new(shared),
            ));
        }
        let conn = db::open_and_migrate(&config)?;
        let ceiling = Ceiling::open(&conn, config.ceiling_path())?;
        let watch = Arc::new(Watch::new(&config.db_path())?);
        let writer = Writer::start(conn, Some(Arc::clone(&watch)), Some(history::tidy))?;
        let readers = db::read_pool(&config, 8, Access::ReadWrite)?;
        let parts = Sqlite {
            writer: Some(writer),
            readers: Some(readers),
            watch: Some(watch),
            ceiling: Some(ceiling),
        };
        Ok(Registry::assemble(
            config,
            locks_dir,
            clock,
            parts,
            Box::new(backend::Sqlite),
        ))
    }

    /// Opens the registry for reading only, for a user who may read the storage but not
    /// write it: no migration, no directory or file is created, and every write is
    /// refused (`StoreError::ReadOnly`). Status, lists, history and SQL work.
    pub fn open_read_only(config: Config) -> Result<Registry, RegistryError> {
        config
            .validate()
            .map_err(|e| RegistryError::BadRequest(e.to_string()))?;
        if !config.db_path().is_file() {
            return Err(RegistryError::BadRequest(
                "there is no registry database in this storage directory yet".into(),
            ));
        }
        let locks_dir = config.locks_dir();
        let readers = db::read_pool(&config, 2, Access::ReadOnly)?;
        let parts = Sqlite {
            readers: Some(readers),
            ..Sqlite::default()
        };
        Ok(Registry::assemble(
            config,
            locks_dir,
            Arc::new(SystemClock),
            parts,
            Box::new(backend::Sqlite),
        ))
    }

    fn assemble(
        config: Config,
        locks_dir: PathBuf,
        clock: Arc<dyn Clock>,
        sqlite: Sqlite,
        backend: Box<dyn backend::Backend>,
    ) -> Registry {
        let Sqlite {
            writer,
            readers,
            watch,
            ceiling,
        } = sqlite;
        let holdings = holdings_for(&config.storage_dir);
        let lock_dir = lockdir::LockDir::new(locks_dir.clone());
        let waiters = Arc::new(WaitQueues::new(
            config.max_waiters_per_lock,
            config.max_waiters,
        ));
        Registry {
            inner: Arc::new(Inner {
                config,
                locks_dir,
                clock,
                writer,
                readers,
                watch,
                ceiling,
                waiters,
                holdings,
                busy: busy::BusyLog::default(),
                lock_dir,
                last_write_busy: Mutex::new(None),
                me: process::current(),
                backend,
            }),
        }
    }

    /// Is the database this registry opened still there? Once it is deleted or replaced,
    /// every call fails with `StoreError::Lost` naming why.
    pub fn check_store(&self) -> Result<(), RegistryError> {
        match &self.inner.watch {
            Some(w) => Ok(w.check()?),
            None => Ok(()),
        }
    }

    /// Why the database counts as lost, if it does (without checking again).
    pub fn store_lost(&self) -> Option<String> {
        self.inner.watch.as_ref()?.lost().map(str::to_string)
    }

    /// Mode for lock files this registry creates.
    fn file_mode(&self) -> u32 {
        self.inner.config.lock_file_mode
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Monotonic now, for deadlines (see `clock`).
    fn monotonic(&self) -> std::time::Instant {
        self.inner.clock.monotonic()
    }

    fn policy(&self) -> Policy {
        Policy {
            max_hold_ms: self.inner.config.max_hold.as_millis() as i64,
        }
    }

    fn holdings(&self) -> MutexGuard<'_, Holdings> {
        // A panic while holding this lock cannot leave the table half-updated (every
        // mutation is a single insert/remove pair), so a poisoned lock is still usable.
        self.inner
            .holdings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn namespace(&self, name: &str) -> Result<&Namespace, RegistryError> {
        Ok(ids::namespace_of(&self.inner.config, Some(name))?)
    }

    pub fn key(
        &self,
        namespace: Option<&str>,
        owner: &str,
        field: &str,
    ) -> Result<LockKey, RegistryError> {
        Ok(LockKey::in_config(
            &self.inner.config,
            namespace,
            owner,
            field,
        )?)
    }

    pub fn file_of(&self, key: &LockKey) -> Result<String, RegistryError> {
        Ok(key.file_name(self.namespace(key.namespace())?))
    }

    fn path_of_file(&self, file: &str) -> PathBuf {
        self.inner.locks_dir.join(file)
    }

    fn read<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, RegistryError>,
    ) -> Result<R, RegistryError> {
        self.check_store()?;
        let Some(readers) = &self.inner.readers else {
            return Err(RegistryError::Unsupported(
                "registry.db is not open: this registry runs on PostgreSQL".into(),
            ));
        };
        let conn = readers.get()?;
        // A read transaction is short by construction; one that is not (a huge history
        // page, a slow disk) is stopped, so readers never hold the WAL back for long.
        let deadline = std::time::Instant::now() + READ_TIME_LIMIT;
        conn.progress_handler(10_000, Some(move || std::time::Instant::now() >= deadline))?;
        let out = f(&conn);
        conn.progress_handler(0, None::<fn() -> bool>)?;
        out
    }

    /// Why writes are failing now, if one failed in the last 10 s because another
    /// process holds the database's write lock (named, with its state, when it can be).
    pub fn write_trouble(&self) -> Option<String> {
        let last = self
            .inner
            .last_write_busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (at, words) = last?;
        (at.elapsed() < std::time::Duration::from_secs(10)).then_some(words)
    }

    /// Makes sure `token`, just issued in this transaction, is covered by the token
    /// ceiling (see `store::ceiling`).
    fn cover_token(&self, conn: &Connection, token: i64) -> Result<(), RegistryError> {
        match &self.inner.ceiling {
            Some(c) => Ok(c.cover(conn, token)?),
            None => Err(StoreError::ReadOnly.into()),
        }
    }

    pub fn history(&self, q: &HistoryQuery) -> Result<Vec<history::EventRow>, RegistryError> {
        let mut q = q.clone();
        q.limit = q.limit.clamp(1, 10_000);
        self.backend().history(self, &q)
    }

    pub fn fence_check(&self, key: &LockKey, token: i64) -> Result<FenceCheck, RegistryError> {
        let row = self.backend().lock_row(self, key)?;
        let Some(row) = row else {
            return Ok(FenceCheck {
                current: false,
                newest_token: 0,
            });
        };
        let current = token == row.last_token
            && row
                .holder
                .as_ref()
                .is_some_and(|h| h.token == token && h.revoked_at.is_none());
        Ok(FenceCheck {
            current,
            newest_token: row.last_token,
        })
    }

    /// Admin SQL: one read-only statement on the registry's database (SQLite's
    /// `store::console`, or PostgreSQL's `store::pg::console`), capped by `limits`.
    pub fn admin_sql(
        &self,
        sql: &str,
        limits: crate::store::console::Limits,
    ) -> Result<crate::store::console::SqlResult, crate::store::console::SqlError> {
        self.backend().admin_sql(self, sql, limits)
    }

    /// Which database the records live in: `sqlite` or `postgresql`.
    pub fn backend_name(&self) -> &'static str {
        self.backend().name()
    }

    fn backend(&self) -> &dyn backend::Backend {
        &*self.inner.backend
    }

    /// The SQLite database's path in the storage directory (admin SQL opens its own
    /// read-only connection there).
    pub fn db_path(&self) -> PathBuf {
        self.inner.config.db_path()
    }
}
