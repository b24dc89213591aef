//! The `lockledger` command line: argument parsing and dispatch. Each command group lives
//! in its own file and is one registry call plus rendering:
//!
//! - [`status`]: `status`, `list`; [`clear`]: `clear` (safe and forced);
//! - [`history`]: `history`; [`admin`]: `sql`, `reconcile`, `prune`;
//! - [`hold`]: `hold` (for demos and tests); [`serve`]: the HTTP service.
//!
//! Exit codes: 0 success; 1 runtime error (database, filesystem); 2 bad usage or invalid
//! input; 3 a clear left something uncleared (skipped locks, token mismatch, not
//! clearable); 4 the lock was busy (`hold` gave up waiting); 5 the held lock was revoked
//! (`hold`).

pub mod admin;
pub mod clear;
pub mod history;
pub mod hold;
pub mod serve;
pub mod status;

use crate::config::Config;
use crate::registry::{Registry, RegistryError};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_NOT_CLEARED: i32 = 3;
pub const EXIT_BUSY: i32 = 4;
pub const EXIT_REVOKED: i32 = 5;

#[derive(Debug, Parser)]
#[command(
    name = "lockledger",
    version,
    about = "See, explain and safely clear file locks"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalOpts {
    /// Storage directory (holds locks/ and registry.db)
    #[arg(
        long,
        global = true,
        env = "LOCKLEDGER_STORAGE",
        default_value = "storage"
    )]
    pub storage: PathBuf,
    /// Configuration file (default: STORAGE/lockledger.toml if present)
    #[arg(long, global = true, env = "LOCKLEDGER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Lock namespace (default: the first configured, `conversation`)
    #[arg(long, global = true, env = "LOCKLEDGER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Shared registry database for several hosts: postgres://USER@HOST:PORT/DB (default:
    /// SQLite in the storage directory)
    #[arg(
        long,
        global = true,
        env = "LOCKLEDGER_DATABASE",
        hide_env_values = true
    )]
    pub database: Option<String>,
}

impl GlobalOpts {
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub fn config(&self) -> Result<Config, RegistryError> {
        let mut config = Config::load(&self.storage, self.config.as_deref())
            .map_err(|e| RegistryError::BadRequest(e.to_string()))?;
        if let Some(url) = self.database.as_deref().filter(|u| !u.is_empty()) {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(RegistryError::BadRequest(
                    "--database takes a postgres://USER@HOST:PORT/DB URL".into(),
                ));
            }
            config.database = Some(url.to_string());
        }
        Ok(config)
    }

    /// The registry on the configured storage.
    pub fn open(&self) -> Result<Registry, RegistryError> {
        Registry::open(self.config()?)
    }

    /// The registry for a command that only reads: opened read-only when this user may
    /// read the storage but not write it (an operator looking at the service's locks).
    pub fn open_for_reading(&self) -> Result<Registry, RegistryError> {
        let config = self.config()?;
        let writable = |p: &std::path::Path| {
            let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
                return false;
            };
            // SAFETY: c is a valid NUL-terminated path for the duration of the call.
            unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
        };
        let db = config.db_path();
        if db.is_file() && !(writable(&config.storage_dir) && writable(&db)) {
            return Registry::open_read_only(config);
        }
        Registry::open(config)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every lock of one owner: free, held or stale, and by whom
    Status(status::StatusArgs),
    /// Locks the registry knows, optionally only those in one state
    List(status::ListArgs),
    /// Safe clear (default) or force clear of one owner's stuck locks
    Clear(clear::ClearArgs),
    /// Lock history, newest first
    History(history::HistoryArgs),
    /// Run one read-only SQL statement against the registry
    Sql(admin::SqlArgs),
    /// Repair records whose holders are gone (idempotent)
    Reconcile(admin::ReconcileArgs),
    /// Prune history by the configured retention now
    Prune,
    /// Run the HTTP service
    Serve(serve::ServeArgs),
    /// Hold a lock until killed (SIGTERM/SIGINT release it); for demos and tests
    Hold(hold::HoldArgs),
}

/// Who is acting, for history: `cli:user@host`.
pub fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            // SAFETY: getuid has no preconditions and cannot fail.
            format!("uid{}", unsafe { libc::getuid() })
        });
    format!("cli:{user}@{}", crate::kernel::process::hostname())
}

pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), RegistryError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| RegistryError::BadRequest(format!("cannot render JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

pub fn exit_code_of(e: &RegistryError) -> i32 {
    match e {
        RegistryError::InvalidId(_) | RegistryError::BadRequest(_) => EXIT_USAGE,
        RegistryError::Busy { .. } => EXIT_BUSY,
        RegistryError::Revoked { .. } => EXIT_REVOKED,
        RegistryError::TokenMismatch { .. }
        | RegistryError::NotClearable { .. }
        | RegistryError::NotHeld { .. } => EXIT_NOT_CLEARED,
        _ => EXIT_ERROR,
    }
}

/// Runs the CLI with the process arguments; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lockledger: {e}");
            exit_code_of(&e)
        }
    }
}

/// Runs one command; returns its exit code.
fn run(cli: Cli) -> Result<i32, RegistryError> {
    let g = &cli.global;
    match cli.command {
        Command::Status(a) => status::status(g, a),
        Command::List(a) => status::list(g, a),
        Command::Clear(a) => clear::clear(g, a),
        Command::History(a) => history::history(g, a),
        Command::Sql(a) => admin::sql(g, a),
        Command::Reconcile(a) => admin::reconcile(g, a),
        Command::Prune => admin::prune(g),
        Command::Serve(a) => serve::serve(g, a),
        Command::Hold(a) => hold::hold(g, a),
    }
}
