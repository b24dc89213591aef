//! Configuration: where the registry lives, which locks exist, and the time limits.
//!
//! Owns the layering `defaults < storage/lockledger.toml (or --config) < environment`,
//! and validates the result once, so the rest of the crate can trust it:
//! every namespace has a file pattern containing `{owner}` and `{field}`, no field is
//! called `main` (paths use `main` for the main lock `""`), and fields obey the same
//! character rules as owner ids (see `ids`).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the optional configuration file inside the storage directory.
pub const CONFIG_FILE_NAME: &str = "lockledger.toml";

/// Conversation lock keys exactly as the chat app's `Conversation.py` uses them (seven
/// since `artefacts` was added in 2026). A lock file of a conversation whose key is not
/// configured is still reported (see `registry::lockdir`).
pub const CONVERSATION_FIELDS: [&str; 7] = [
    "",
    "all",
    "message_operations",
    "memory",
    "messages",
    "uploaded_documents_list",
    "artefacts",
];

/// Document fields of the chat app's `DocIndex.py`.
pub const DOCUMENT_FIELDS: [&str; 6] = [
    "",
    "all",
    "indices",
    "raw_data",
    "review_data",
    "static_data",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// One family of locks sharing a file-name pattern, e.g. conversations.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    pub name: String,
    /// File name pattern inside the locks directory, e.g. `{owner}_{field}.lock`.
    pub pattern: String,
    pub fields: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub storage_dir: PathBuf,
    pub namespaces: Vec<Namespace>,
    /// A live holder that has not renewed for this long is `held_too_long`.
    pub max_hold: Duration,
    /// Lease time-to-live when a client does not ask for one.
    pub default_lease_ttl: Duration,
    /// Longest lease a client may ask for.
    pub max_lease_ttl: Duration,
    /// When true the reaper ends expired leases; when false they stay `stale` until cleared.
    pub auto_expire: bool,
    /// How often the service reaps expired leases and dead clients' leases.
    pub reaper_period: Duration,
    /// How often the service reconciles records of dead holders (None: only at start-up
    /// and on demand, so they stay `stale` until someone clears them).
    pub reconcile_period: Option<Duration>,
    /// History older than this is pruned (None keeps everything).
    pub retention_age: Option<Duration>,
    /// At most this many history rows are kept (None: no cap).
    pub retention_max_events: Option<u64>,
    /// How long a pooled read connection may be waited for.
    pub pool_timeout: Duration,
    /// SQLite busy timeout for every connection.
    pub busy_timeout: Duration,
    /// Most acquirers that may wait for one lock in this process (more: 503).
    pub max_waiters_per_lock: usize,
    /// Most acquirers that may wait in this process in all (more: 503).
    pub max_waiters: usize,
    /// Mode of a storage directory lockledger creates (an existing one keeps its own).
    pub storage_dir_mode: u32,
    /// Mode of a locks directory lockledger creates (an existing one keeps its own).
    pub locks_dir_mode: u32,
    /// Mode of a lock file lockledger creates, whatever the umask (it is set with
    /// `fchmod` after the file is created; an existing file keeps its own).
    pub lock_file_mode: u32,
    /// A PostgreSQL URL (`postgres://USER@HOST:PORT/DB`): lease records, grants and
    /// history live there, shared by the services of several hosts (None: SQLite in the
    /// storage directory, the embedded default).
    pub database: Option<String>,
}

/// The modes of what lockledger creates: the storage directory, the locks directory and
/// lock files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    pub storage_dir: u32,
    pub locks_dir: u32,
    pub lock_file: u32,
}

/// Private to the service's user: the default.
pub const PRIVATE_MODES: Modes = Modes {
    storage_dir: 0o700,
    locks_dir: 0o700,
    lock_file: 0o600,
};

/// For a chat app running as another user of the service's group (`shared_group =
/// true`): the storage directory lets the group through to `locks/` (but not list it or
/// read `registry.db`, which stays 0600); the locks directory is group-writable with
/// setgid, so lock files keep the group; lock files are group-readable and writable
/// (Python's `filelock` opens them read-write), whatever the umask.
pub const SHARED_GROUP_MODES: Modes = Modes {
    storage_dir: 0o710,
    locks_dir: 0o2770,
    lock_file: 0o660,
};

/// The file form of [`Config`]; every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    max_hold_ms: Option<u64>,
    default_lease_ttl_ms: Option<u64>,
    max_lease_ttl_ms: Option<u64>,
    auto_expire: Option<bool>,
    reaper_period_ms: Option<u64>,
    reconcile_period_ms: Option<u64>,
    retention_days: Option<u64>,
    retention_max_events: Option<u64>,
    pool_timeout_ms: Option<u64>,
    busy_timeout_ms: Option<u64>,
    max_waiters_per_lock: Option<usize>,
    max_waiters: Option<usize>,
    /// Let a chat app running as another user of the service's group use the locks
    /// directory (see [`SHARED_GROUP_MODES`]).
    shared_group: Option<bool>,
    namespaces: Option<Vec<Namespace>>,
}

impl Config {
    /// Built-in defaults for a storage directory; nothing is read from disk.
    pub fn defaults(storage_dir: impl Into<PathBuf>) -> Config {
        Config {
            storage_dir: storage_dir.into(),
            namespaces: vec![
                Namespace {
                    name: "conversation".into(),
                    pattern: "{owner}_{field}.lock".into(),
                    fields: CONVERSATION_FIELDS.iter().map(|f| f.to_string()).collect(),
                },
                Namespace {
                    name: "document".into(),
                    pattern: "{owner}-{field}.lock".into(),
                    fields: DOCUMENT_FIELDS.iter().map(|f| f.to_string()).collect(),
                },
            ],
            max_hold: Duration::from_secs(600),
            default_lease_ttl: Duration::from_secs(30),
            max_lease_ttl: Duration::from_secs(3600),
            auto_expire: true,
            reaper_period: Duration::from_millis(250),
            reconcile_period: Some(Duration::from_secs(5)),
            retention_age: Some(Duration::from_secs(90 * 24 * 3600)),
            retention_max_events: Some(10_000_000),
            pool_timeout: Duration::from_millis(500),
            busy_timeout: Duration::from_secs(5),
            max_waiters_per_lock: 2_000,
            max_waiters: 10_000,
            storage_dir_mode: PRIVATE_MODES.storage_dir,
            locks_dir_mode: PRIVATE_MODES.locks_dir,
            lock_file_mode: PRIVATE_MODES.lock_file,
            database: None,
        }
    }

    /// Defaults, then the config file (explicit path, or `lockledger.toml` in the storage
    /// directory if present), then `LOCKLEDGER_*` environment variables.
    pub fn load(storage_dir: &Path, explicit_file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = Config::defaults(storage_dir);
        let implicit = storage_dir.join(CONFIG_FILE_NAME);
        let file = match explicit_file {
            Some(p) => Some(p.to_path_buf()),
            None if implicit.is_file() => Some(implicit),
            None => None,
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            config
                .apply_toml(&text)
                .map_err(|message| ConfigError::Parse {
                    path: path.display().to_string(),
                    message,
                })?;
        }
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()?;
        Ok(config)
    }

    fn apply_toml(&mut self, text: &str) -> Result<(), String> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let ms = Duration::from_millis;
        if let Some(v) = file.max_hold_ms {
            self.max_hold = ms(v);
        }
        if let Some(v) = file.default_lease_ttl_ms {
            self.default_lease_ttl = ms(v);
        }
        if let Some(v) = file.max_lease_ttl_ms {
            self.max_lease_ttl = ms(v);
        }
        if let Some(v) = file.auto_expire {
            self.auto_expire = v;
        }
        if let Some(v) = file.reaper_period_ms {
            self.reaper_period = ms(v);
        }
        if let Some(v) = file.reconcile_period_ms {
            self.reconcile_period = (v > 0).then(|| ms(v));
        }
        if let Some(v) = file.retention_days {
            self.retention_age = (v > 0).then(|| Duration::from_secs(v * 24 * 3600));
        }
        if let Some(v) = file.retention_max_events {
            self.retention_max_events = (v > 0).then_some(v);
        }
        if let Some(v) = file.pool_timeout_ms {
            self.pool_timeout = ms(v);
        }
        if let Some(v) = file.busy_timeout_ms {
            self.busy_timeout = ms(v);
        }
        if let Some(v) = file.max_waiters_per_lock {
            self.max_waiters_per_lock = v;
        }
        if let Some(v) = file.max_waiters {
            self.max_waiters = v;
        }
        if let Some(shared) = file.shared_group {
            self.set_shared_group(shared);
        }
        if let Some(v) = file.namespaces {
            self.namespaces = v;
        }
        Ok(())
    }

    /// Environment overrides; `get` is injected so tests need not touch the process env.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let num = |key: &str| -> Result<Option<u64>, ConfigError> {
            match get(key) {
                None => Ok(None),
                Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                    ConfigError::Invalid(format!("{key}={v:?} is not a whole number"))
                }),
            }
        };
        if let Some(v) = num("LOCKLEDGER_MAX_HOLD_MS")? {
            self.max_hold = Duration::from_millis(v);
        }
        if let Some(v) = num("LOCKLEDGER_DEFAULT_LEASE_TTL_MS")? {
            self.default_lease_ttl = Duration::from_millis(v);
        }
        if let Some(v) = num("LOCKLEDGER_REAPER_PERIOD_MS")? {
            self.reaper_period = Duration::from_millis(v);
        }
        if let Some(v) = num("LOCKLEDGER_RECONCILE_PERIOD_MS")? {
            self.reconcile_period = (v > 0).then(|| Duration::from_millis(v));
        }
        if let Some(v) = num("LOCKLEDGER_RETENTION_DAYS")? {
            self.retention_age = (v > 0).then(|| Duration::from_secs(v * 24 * 3600));
        }
        if let Some(v) = num("LOCKLEDGER_BUSY_TIMEOUT_MS")? {
            self.busy_timeout = Duration::from_millis(v);
        }
        if let Some(v) = num("LOCKLEDGER_MAX_WAITERS_PER_LOCK")? {
            self.max_waiters_per_lock = v as usize;
        }
        if let Some(v) = num("LOCKLEDGER_MAX_WAITERS")? {
            self.max_waiters = v as usize;
        }
        if let Some(v) = num("LOCKLEDGER_RETENTION_MAX_EVENTS")? {
            self.retention_max_events = (v > 0).then_some(v);
        }
        if let Some(v) = get("LOCKLEDGER_SHARED_GROUP") {
            self.set_shared_group(parse_bool("LOCKLEDGER_SHARED_GROUP", &v)?);
        }
        if let Some(v) = get("LOCKLEDGER_AUTO_EXPIRE") {
            self.auto_expire = parse_bool("LOCKLEDGER_AUTO_EXPIRE", &v)?;
        }
        Ok(())
    }

    /// The modes of what lockledger creates.
    pub fn modes(&self) -> Modes {
        Modes {
            storage_dir: self.storage_dir_mode,
            locks_dir: self.locks_dir_mode,
            lock_file: self.lock_file_mode,
        }
    }

    fn set_shared_group(&mut self, shared: bool) {
        let m = if shared {
            SHARED_GROUP_MODES
        } else {
            PRIVATE_MODES
        };
        self.storage_dir_mode = m.storage_dir;
        self.locks_dir_mode = m.locks_dir;
        self.lock_file_mode = m.lock_file;
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.namespaces.is_empty() {
            return bad("at least one namespace is needed".into());
        }
        if self.max_hold.is_zero() || self.reaper_period.is_zero() {
            return bad("max_hold_ms and reaper_period_ms must be positive".into());
        }
        if self.default_lease_ttl.is_zero() || self.default_lease_ttl > self.max_lease_ttl {
            return bad(
                "default_lease_ttl_ms must be positive and at most max_lease_ttl_ms".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for ns in &self.namespaces {
            if !names.insert(ns.name.as_str()) {
                return bad(format!("namespace {:?} is defined twice", ns.name));
            }
            if !is_word(&ns.name) {
                return bad(format!("namespace name {:?} is not a plain word", ns.name));
            }
            let owners = ns.pattern.matches("{owner}").count();
            let fields = ns.pattern.matches("{field}").count();
            if owners != 1 || fields != 1 || ns.pattern.contains('/') || ns.pattern.contains('\0') {
                return bad(format!(
                    "namespace {:?}: pattern {:?} must contain {{owner}} and {{field}} once each and no '/'",
                    ns.name, ns.pattern
                ));
            }
            if ns.fields.is_empty() {
                return bad(format!("namespace {:?} has no fields", ns.name));
            }
            let mut seen = std::collections::HashSet::new();
            for f in &ns.fields {
                if f == "main" {
                    return bad(format!(
                        "namespace {:?}: no field may be called \"main\" (paths use main for the main lock \"\")",
                        ns.name
                    ));
                }
                if !f.is_empty() && !is_word(f) {
                    return bad(format!(
                        "namespace {:?}: field {f:?} has characters outside [a-z0-9_]",
                        ns.name
                    ));
                }
                if !seen.insert(f.as_str()) {
                    return bad(format!(
                        "namespace {:?}: field {f:?} is listed twice",
                        ns.name
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn locks_dir(&self) -> PathBuf {
        self.storage_dir.join("locks")
    }

    pub fn db_path(&self) -> PathBuf {
        self.storage_dir.join("registry.db")
    }

    /// Where the token ceiling is kept beside the database (see `store::ceiling`).
    pub fn ceiling_path(&self) -> PathBuf {
        self.storage_dir.join("token-ceiling")
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// The namespace used when a caller names none (the first configured, by default
    /// `conversation`, which is what the chat app's routes mean).
    pub fn default_namespace(&self) -> &Namespace {
        // validate() guarantees at least one namespace; `defaults()` has two.
        &self.namespaces[0]
    }
}

/// A boolean in the environment, spelled as clap's `BoolishValueParser` takes the
/// command line's (`serve --access-log`'s variable): `1/true/t/yes/y/on` or
/// `0/false/f/no/n/off`, in any case.
fn parse_bool(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Ok(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Ok(false),
        _ => Err(ConfigError::Invalid(format!(
            "{key}={:?} is not a boolean (use 1/true/yes/on or 0/false/no/off)",
            v.trim()
        ))),
    }
}

/// A plain word: `[a-z0-9_]{1,64}` (used for fields and namespace names).
pub fn is_word(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= 64
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests;
