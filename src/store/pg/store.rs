//! [`PgStore`]: a small pool of PostgreSQL connections to one registry database, with the
//! session settings every connection of lockledger uses.
//!
//! Invariants:
//! - nothing waits without a bound: connecting (`connect_timeout`), a free pooled
//!   connection ([`POOL_WAIT`]), a row lock held by another transaction (`lock_timeout`,
//!   [`LOCK_TIMEOUT_MS`]), a statement (`statement_timeout`, [`STATEMENT_TIMEOUT_MS`]) and
//!   a transaction left open by a stalled process (`idle_in_transaction_session_timeout`)
//!   are all limited; the settings are startup options, so every connection has them
//!   from its first statement, the listener's too;
//! - a store is usable only once [`migrate`](super::migrate) brought the schema up to
//!   date ([`PgStore::open`] runs it);
//! - "now" is always the database's clock ([`NOW_MS`]): hosts' clocks never judge a
//!   lease;
//! - connections are not pinged on checkout (one round trip less per call): a broken one
//!   fails its call once and is dropped by the pool (`has_broken`);
//! - the statements of the grant, renewal and release paths are prepared once per
//!   connection ([`Cached`]): each call then skips parsing and planning its CTEs, which
//!   the bench showed to be most of the database's CPU per lease pair. A connection's
//!   cache holds only those fixed statements (never text built from user input).

use super::error::PgError;
use super::migrate::migrate;
use super::request::Param;
use postgres::types::ToSql;
use postgres::{GenericClient, Row, Statement};
use r2d2_postgres::PostgresConnectionManager;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The database clock in UTC milliseconds, as the views read it.
pub const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Longest a statement may run.
pub const STATEMENT_TIMEOUT_MS: u64 = 5_000;
/// Longest a statement waits for a row lock another transaction holds.
pub const LOCK_TIMEOUT_MS: u64 = 3_000;
/// A session idle inside a transaction this long is ended by the server (its row locks
/// with it): a stalled process cannot keep a lock row locked.
pub const IDLE_IN_TRANSACTION_MS: u64 = 10_000;
/// Longest wait to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a free pooled connection.
pub const POOL_WAIT: Duration = Duration::from_secs(5);
/// Most connections one store keeps.
pub const MAX_CONNS: u32 = 64;

/// A pooled connection and the statements prepared on it.
pub(crate) struct Session {
    pub(crate) client: postgres::Client,
    cache: HashMap<String, Statement>,
}

impl std::ops::Deref for Session {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        &self.client
    }
}

impl std::ops::DerefMut for Session {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

impl Session {
    /// This connection with its statement cache.
    pub(crate) fn cached(&mut self) -> Cached<'_, postgres::Client> {
        Cached {
            c: &mut self.client,
            cache: &mut self.cache,
        }
    }

    /// A transaction with this connection's statement cache.
    pub(crate) fn cached_transaction(
        &mut self,
    ) -> Result<(postgres::Transaction<'_>, &mut HashMap<String, Statement>), postgres::Error> {
        Ok((self.client.transaction()?, &mut self.cache))
    }
}

/// The pool's manager: r2d2_postgres's, with a statement cache per connection.
pub(crate) struct Manager(PostgresConnectionManager<postgres::NoTls>);

impl r2d2::ManageConnection for Manager {
    type Connection = Session;
    type Error = postgres::Error;
    fn connect(&self) -> Result<Session, postgres::Error> {
        Ok(Session {
            client: self.0.connect()?,
            cache: HashMap::new(),
        })
    }
    fn is_valid(&self, s: &mut Session) -> Result<(), postgres::Error> {
        self.0.is_valid(&mut s.client)
    }
    fn has_broken(&self, s: &mut Session) -> bool {
        self.0.has_broken(&mut s.client)
    }
}

pub(crate) type Conn = r2d2::PooledConnection<Manager>;

/// A client (or transaction) whose statements are prepared once per connection; the same
/// calls as `postgres`'s `*_typed` ones.
pub(crate) struct Cached<'a, C> {
    pub(crate) c: &'a mut C,
    pub(crate) cache: &'a mut HashMap<String, Statement>,
}

impl<C: GenericClient> Cached<'_, C> {
    fn prepared(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let types: Vec<_> = params.iter().map(|(_, t)| t.clone()).collect();
        let s = self.c.prepare_typed(sql, &types)?;
        self.cache.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn values<'p>(params: &'p [Param<'p>]) -> Vec<&'p (dyn ToSql + Sync)> {
        params.iter().map(|(v, _)| *v).collect()
    }

    pub(crate) fn query_typed(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, postgres::Error> {
        let s = self.prepared(sql, params)?;
        self.c.query(&s, &Self::values(params))
    }

    pub(crate) fn query_typed_opt(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, postgres::Error> {
        let s = self.prepared(sql, params)?;
        self.c.query_opt(&s, &Self::values(params))
    }

    pub(crate) fn query_typed_one(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Row, postgres::Error> {
        let s = self.prepared(sql, params)?;
        self.c.query_one(&s, &Self::values(params))
    }

    pub(crate) fn execute_typed(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<u64, postgres::Error> {
        let s = self.prepared(sql, params)?;
        self.c.execute(&s, &Self::values(params))
    }
}

/// One service's handle on the shared registry database.
pub struct PgStore {
    pool: r2d2::Pool<Manager>,
    config: postgres::Config,
    service: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config may carry a password: never printed.
        f.debug_struct("PgStore")
            .field("service", &self.service)
            .field("max_conns", &self.pool.max_size())
            .finish()
    }
}

/// The connection settings of every lockledger session: `url`'s, plus the timeouts above
/// as startup options (added to any the URL gives), keepalives and an application name.
pub fn session_config(url: &str) -> Result<postgres::Config, PgError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| PgError::BadRequest(format!("not a postgresql url: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let ours = format!(
        "-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS} \
         -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
    );
    let options = match config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {ours}"),
        _ => ours,
    };
    config.options(&options);
    if config.get_application_name().is_none() {
        config.application_name("lockledger");
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .tcp_user_timeout(Duration::from_secs(15));
    Ok(config)
}

impl PgStore {
    /// Connects to the registry database at `url` with a pool of at most `max_conns`
    /// connections (1..=[`MAX_CONNS`]) and brings its schema up to date.
    pub fn open(url: &str, max_conns: u32) -> Result<PgStore, PgError> {
        if !(1..=MAX_CONNS).contains(&max_conns) {
            return Err(PgError::BadRequest(format!(
                "max_conns must be 1..={MAX_CONNS}, not {max_conns}"
            )));
        }
        let config = session_config(url)?;
        let pool = r2d2::Pool::builder()
            .max_size(max_conns)
            .min_idle(Some(1))
            .connection_timeout(POOL_WAIT)
            .test_on_check_out(false)
            .build(Manager(PostgresConnectionManager::new(
                config.clone(),
                postgres::NoTls,
            )))
            .map_err(pool_error)?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let service = format!(
            "{}:{}:{}",
            crate::kernel::process::hostname(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let store = PgStore {
            pool,
            config,
            service,
        };
        migrate(&mut *store.conn()?)?;
        Ok(store)
    }

    /// This store's name in `lock_waiters`: `host:pid:n`, unique among live stores.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The session settings of this store's connections (for a [`super::FreeListener`]).
    pub fn session_config(&self) -> &postgres::Config {
        &self.config
    }

    /// The database's clock now (UTC ms).
    pub fn now_ms(&self) -> Result<i64, PgError> {
        let row = self
            .conn()?
            .query_typed_one(&format!("SELECT {NOW_MS}"), &[])?;
        Ok(row.try_get(0)?)
    }

    /// A pooled connection, waiting at most [`POOL_WAIT`]. Every call of this store goes
    /// through here, so none blocks an async thread: inside the writer's no-wait mode this
    /// answers [`PgError::WouldWait`] and nothing runs.
    pub(crate) fn conn(&self) -> Result<Conn, PgError> {
        if crate::store::writer::in_no_wait() {
            return Err(PgError::WouldWait);
        }
        self.pool.get().map_err(pool_error)
    }
}

fn pool_error(e: r2d2::Error) -> PgError {
    PgError::Pool {
        wait_ms: POOL_WAIT.as_millis() as u64,
        why: e.to_string(),
    }
}
