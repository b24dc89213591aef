//! The `lockledger` command line: argument parsing, human and JSON output, exit codes.
//!
//! Thin by design: every command is one registry call plus rendering. Exit codes:
//! 0 success; 1 runtime error (database, filesystem); 2 bad usage or invalid input;
//! 3 a clear left something uncleared (skipped locks, token mismatch, not clearable);
//! 4 the lock was busy (`hold` gave up waiting) ; 5 the held lock was revoked (`hold`).

use crate::clock;
use crate::config::Config;
use crate::export;
use crate::ids::LockKey;
use crate::policy::stale::LockState;
use crate::registry::{display_field, AcquireOptions, LockReport, Registry, RegistryError};
use crate::store::console as sql_console;
use crate::store::records::{EventKind, HistoryQuery};
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every lock of one owner: free, held or stale, and by whom
    Status {
        owner: String,
        /// Print the per-lock JSON objects of the API
        #[arg(long)]
        json: bool,
    },
    /// Locks the registry knows, optionally only those in one state
    List {
        #[arg(long, value_parser = ["free", "held", "stale"])]
        state: Option<String>,
        #[arg(long)]
        owner_prefix: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Safe clear (default) or force clear of one owner's stuck locks
    Clear {
        owner: String,
        /// Also revoke a live holder (admin); needs --token and --reason
        #[arg(long)]
        force: bool,
        /// Field to force-clear (may be omitted when the token identifies one lock)
        #[arg(long)]
        field: Option<String>,
        /// The exact token shown by `status` (force clear)
        #[arg(long)]
        token: Option<i64>,
        /// Why (recorded in history; required with --force)
        #[arg(long)]
        reason: Option<String>,
        /// Safe clear only if FIELD still has TOKEN (repeatable), e.g. --expect messages=7
        #[arg(long, value_name = "FIELD=TOKEN")]
        expect: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Lock history, newest first
    History {
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        field: Option<String>,
        #[arg(long)]
        event: Option<String>,
        #[arg(long)]
        holder: Option<String>,
        /// RFC 3339 time or epoch milliseconds
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only events older than this event id (paging)
        #[arg(long)]
        cursor: Option<i64>,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
    /// Run one read-only SQL statement against the registry
    Sql {
        sql: String,
        #[arg(long, default_value_t = 1000)]
        max_rows: usize,
        #[arg(long)]
        json: bool,
    },
    /// Repair records whose holders are gone (idempotent)
    Reconcile {
        #[arg(long)]
        json: bool,
    },
    /// Prune history by the configured retention now
    Prune,
    /// Run the HTTP service
    Serve {
        /// Address to listen on (port 0 picks a free port)
        #[arg(long, env = "LOCKLEDGER_BIND", default_value = "127.0.0.1:8787")]
        bind: std::net::SocketAddr,
        /// User token (required for a non-loopback bind)
        #[arg(long, env = "LOCKLEDGER_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Admin token (default: generated into STORAGE/admin-token)
        #[arg(long, env = "LOCKLEDGER_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Extra Host names this service answers to (repeatable), e.g. chat.internal:8787
        #[arg(long)]
        allow_host: Vec<String>,
        /// Demo mode: streamed chat replies hold leases; simulated stuck holders
        #[arg(long)]
        demo: bool,
    },
    /// Hold a lock until killed (SIGTERM/SIGINT release it); for demos and tests
    Hold {
        owner: String,
        field: String,
        #[arg(long, default_value = "hold")]
        operation: String,
        #[arg(long, default_value = "lockledger-cli")]
        holder: String,
        /// How long to wait for the lock
        #[arg(long, default_value_t = 10_000)]
        wait_ms: u64,
        /// Renew this often (0: never) so a live holder is not held_too_long
        #[arg(long, default_value_t = 1_000)]
        renew_ms: u64,
        /// Release after this long instead of waiting for a signal
        #[arg(long)]
        for_ms: Option<u64>,
        /// Take only the kernel lock, with no record, like a process lockledger does not
        /// manage (for demos and tests of external holders)
        #[arg(long, hide = true)]
        external: bool,
    },
}

/// What a command produced: text for stdout and an exit code.
struct Outcome {
    code: i32,
}

fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            // SAFETY: getuid has no preconditions and cannot fail.
            format!("uid{}", unsafe { libc::getuid() })
        });
    format!("cli:{user}@{}", crate::kernel::process::hostname())
}

fn color_enabled() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn paint(text: &str, state: LockState, color: bool) -> String {
    if !color {
        return text.to_string();
    }
    let code = match state {
        LockState::Free => "32",
        LockState::Held => "33",
        LockState::Stale => "31",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

fn lock_rows(
    locks: &[LockReport],
    with_owner: bool,
    color: bool,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut headers = vec![
        "FIELD",
        "STATE",
        "REASON",
        "KIND",
        "HOLDER",
        "OPERATION",
        "PID",
        "AGE",
        "TOKEN",
    ];
    if with_owner {
        headers.insert(0, "OWNER");
    }
    let rows = locks
        .iter()
        .map(|l| {
            let state = l.state.as_str().to_uppercase();
            // Pad before painting so escape codes do not skew the column widths.
            let state = paint(&format!("{state:<5}"), l.state, color);
            let mut row = vec![
                display_field(&l.field).to_string(),
                state,
                l.stale_reason
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_default(),
                l.kind.map(|k| k.as_str().to_string()).unwrap_or_default(),
                l.holder
                    .clone()
                    .or_else(|| l.command.clone())
                    .unwrap_or_default(),
                l.operation.clone().unwrap_or_default(),
                l.pid.map(|p| p.to_string()).unwrap_or_default(),
                l.age_s.map(|a| format!("{a:.1}s")).unwrap_or_default(),
                l.token.map(|t| t.to_string()).unwrap_or_default(),
            ];
            if with_owner {
                row.insert(0, l.owner.clone());
            }
            row
        })
        .collect();
    (headers, rows)
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), RegistryError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| RegistryError::BadRequest(format!("cannot render JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

fn exit_code_of(e: &RegistryError) -> i32 {
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
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();
    match run(cli) {
        Ok(o) => o.code,
        Err(e) => {
            eprintln!("lockledger: {e}");
            exit_code_of(&e)
        }
    }
}

fn open(global: &GlobalOpts) -> Result<Registry, RegistryError> {
    let config = Config::load(&global.storage, global.config.as_deref())
        .map_err(|e| RegistryError::BadRequest(e.to_string()))?;
    Registry::open(config)
}

fn run(cli: Cli) -> Result<Outcome, RegistryError> {
    let ns = cli.global.namespace.clone();
    let ns = ns.as_deref();
    let color = color_enabled();
    match cli.command {
        Command::Status { owner, json } => {
            let reg = open(&cli.global)?;
            let status = reg.status(ns, &owner)?;
            if json {
                print_json(&status.locks)?;
            } else {
                println!("{} {}", status.namespace, status.owner);
                let (h, rows) = lock_rows(&status.locks, false, color);
                print!("{}", export::table(&h, &rows));
                for l in status.locks.iter().filter(|l| l.state != LockState::Free) {
                    println!("  {}", l.note);
                }
            }
            Ok(Outcome { code: EXIT_OK })
        }
        Command::List {
            state,
            owner_prefix,
            limit,
            json,
        } => {
            let reg = open(&cli.global)?;
            let state = state.as_deref().and_then(LockState::parse);
            let (locks, _next) = reg.list(state, owner_prefix.as_deref(), 0, limit)?;
            if json {
                print_json(&locks)?;
            } else {
                let (h, rows) = lock_rows(&locks, true, color);
                print!("{}", export::table(&h, &rows));
            }
            Ok(Outcome { code: EXIT_OK })
        }
        Command::Clear {
            owner,
            force,
            field,
            token,
            reason,
            expect,
            json,
        } => {
            let reg = open(&cli.global)?;
            if force {
                return force_clear(&reg, ns, &owner, field, token, reason, json);
            }
            if token.is_some() || field.is_some() || reason.is_some() {
                return Err(RegistryError::BadRequest(
                    "--field, --token and --reason go with --force; a safe clear takes --expect FIELD=TOKEN".into(),
                ));
            }
            let mut tokens = BTreeMap::new();
            for pair in &expect {
                let (f, t) = pair
                    .split_once('=')
                    .and_then(|(f, t)| t.parse::<i64>().ok().map(|t| (f, t)))
                    .ok_or_else(|| {
                        RegistryError::BadRequest(format!("--expect {pair:?} is not FIELD=TOKEN"))
                    })?;
                tokens.insert(f.to_string(), t);
            }
            let tokens = (!tokens.is_empty()).then_some(tokens);
            let out = reg.clear(ns, &owner, tokens, &actor())?;
            if json {
                print_json(&out)?;
            } else {
                for c in &out.cleared {
                    println!(
                        "cleared  {} ({}, token {})",
                        c.file,
                        c.reason.as_str(),
                        c.token
                    );
                }
                for s in &out.skipped {
                    println!("skipped  {}: {}", s.file, s.reason);
                }
                if out.cleared.is_empty() && out.skipped.is_empty() {
                    println!("nothing to clear: no lock of {owner} is stale");
                }
            }
            let code = if out.skipped.is_empty() {
                EXIT_OK
            } else {
                EXIT_NOT_CLEARED
            };
            Ok(Outcome { code })
        }
        Command::History {
            owner,
            field,
            event,
            holder,
            since,
            until,
            limit,
            cursor,
            json,
            csv,
        } => {
            let reg = open(&cli.global)?;
            let parse_t = |s: &Option<String>, what: &str| -> Result<Option<i64>, RegistryError> {
                s.as_deref()
                    .map(|v| {
                        clock::parse_time(v).ok_or_else(|| {
                            RegistryError::BadRequest(format!(
                                "--{what} {v:?} is not an RFC 3339 time or epoch ms"
                            ))
                        })
                    })
                    .transpose()
            };
            let event = event
                .as_deref()
                .map(|e| {
                    EventKind::parse(e)
                        .ok_or_else(|| RegistryError::BadRequest(format!("unknown event {e:?}")))
                })
                .transpose()?;
            let field = match (&owner, field) {
                (_, None) => None,
                (Some(o), Some(f)) => Some(
                    LockKey::in_config(reg.config(), ns, o, &f)?
                        .field()
                        .to_string(),
                ),
                (None, Some(f)) => Some(if f == "main" { String::new() } else { f }),
            };
            let q = HistoryQuery {
                namespace: ns.map(str::to_string),
                owner,
                field,
                event,
                holder,
                since_ms: parse_t(&since, "since")?,
                until_ms: parse_t(&until, "until")?,
                before_event_id: cursor,
                limit,
            };
            let rows = reg.history(&q)?;
            if json {
                print_json(&rows)?;
            } else if csv {
                print!("{}", export::history_csv(&rows));
            } else {
                let table_rows: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.event_id.to_string(),
                            clock::rfc3339(r.at),
                            format!("{}/{}", r.owner, display_field(&r.field)),
                            r.event.clone(),
                            r.token.map(|t| t.to_string()).unwrap_or_default(),
                            r.pid.map(|t| t.to_string()).unwrap_or_default(),
                            r.holder.clone().unwrap_or_default(),
                            r.operation.clone().unwrap_or_default(),
                            r.actor.clone().unwrap_or_default(),
                            r.reason.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    export::table(
                        &[
                            "ID",
                            "AT",
                            "LOCK",
                            "EVENT",
                            "TOKEN",
                            "PID",
                            "HOLDER",
                            "OPERATION",
                            "ACTOR",
                            "REASON"
                        ],
                        &table_rows
                    )
                );
            }
            Ok(Outcome { code: EXIT_OK })
        }
        Command::Sql {
            sql,
            max_rows,
            json,
        } => {
            // Make sure the database exists and is migrated; then query it read-only.
            let reg = open(&cli.global)?;
            let limits = sql_console::Limits {
                max_rows: max_rows.clamp(1, 100_000),
                ..sql_console::Limits::default()
            };
            let result = sql_console::run(&reg.db_path(), &sql, limits)
                .map_err(|e| RegistryError::BadRequest(e.to_string()))?;
            if json {
                print_json(&result)?;
            } else {
                let rows: Vec<Vec<String>> = result
                    .rows
                    .iter()
                    .map(|r| {
                        r.iter()
                            .map(|v| match v {
                                serde_json::Value::String(s) => s.clone(),
                                serde_json::Value::Null => "NULL".into(),
                                other => other.to_string(),
                            })
                            .collect()
                    })
                    .collect();
                let headers: Vec<&str> = result.columns.iter().map(String::as_str).collect();
                print!("{}", export::table(&headers, &rows));
                if result.truncated {
                    println!("(truncated at {} rows)", result.rows.len());
                }
            }
            Ok(Outcome { code: EXIT_OK })
        }
        Command::Reconcile { json } => {
            let reg = open(&cli.global)?;
            let report = reg.reconcile(&actor())?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "checked {} held record(s); reconciled {}{}",
                    report.checked,
                    report.reconciled.len(),
                    if report.reconciled.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", report.reconciled.join(", "))
                    }
                );
            }
            Ok(Outcome { code: EXIT_OK })
        }
        Command::Prune => {
            let reg = open(&cli.global)?;
            let n = reg.prune_history()?;
            println!("pruned {n} history row(s)");
            Ok(Outcome { code: EXIT_OK })
        }
        Command::Serve {
            bind,
            token,
            admin_token,
            allow_host,
            demo,
        } => {
            let mut config = Config::load(&cli.global.storage, cli.global.config.as_deref())
                .map_err(|e| RegistryError::BadRequest(e.to_string()))?;
            if demo {
                // A hung holder should turn stale while someone is watching.
                config.max_hold = Duration::from_secs(15);
            }
            let reg = Registry::open(config)?;
            let opts = crate::http::ServeOptions {
                bind,
                user_token: token,
                admin_token,
                allowed_hosts: allow_host,
                demo,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| {
                    RegistryError::BadRequest(format!("cannot start the async runtime: {e}"))
                })?;
            match runtime.block_on(crate::http::serve(reg, opts)) {
                Ok(()) => Ok(Outcome { code: EXIT_OK }),
                Err(e) => {
                    eprintln!("lockledger: {e}");
                    Ok(Outcome { code: EXIT_ERROR })
                }
            }
        }
        Command::Hold {
            owner,
            field,
            operation,
            holder,
            wait_ms,
            renew_ms,
            for_ms,
            external,
        } => {
            if external {
                hold_external(&cli.global, ns, &owner, &field, wait_ms, for_ms)
            } else {
                hold(
                    &cli.global,
                    ns,
                    &owner,
                    &field,
                    operation,
                    holder,
                    wait_ms,
                    renew_ms,
                    for_ms,
                )
            }
        }
    }
}

fn force_clear(
    reg: &Registry,
    ns: Option<&str>,
    owner: &str,
    field: Option<String>,
    token: Option<i64>,
    reason: Option<String>,
    json: bool,
) -> Result<Outcome, RegistryError> {
    let token = token.ok_or_else(|| {
        RegistryError::BadRequest(
            "--force needs --token (the token `lockledger status` shows)".into(),
        )
    })?;
    let reason =
        reason.ok_or_else(|| RegistryError::BadRequest("--force needs --reason".into()))?;
    let field = match field {
        Some(f) => f,
        None => {
            let status = reg.status(ns, owner)?;
            let matching: Vec<&LockReport> = status
                .locks
                .iter()
                .filter(|l| l.token == Some(token))
                .collect();
            match matching.as_slice() {
                [one] => one.field.clone(),
                [] => {
                    return Err(RegistryError::NotClearable {
                        lock: owner.to_string(),
                        reason: format!(
                            "no lock of {owner} has token {token} now (it changed since you looked); run `lockledger status {owner}`"
                        ),
                    })
                }
                _ => {
                    return Err(RegistryError::BadRequest(format!(
                        "several locks of {owner} have token {token}; name one with --field"
                    )))
                }
            }
        }
    };
    let key = reg.key(ns, owner, &field)?;
    let done = reg.force_clear(&key, token, &reason, &actor())?;
    if json {
        print_json(&done)?;
    } else if done.revocation_pending {
        println!(
            "force-cleared {} (token {} -> {}); the live holder was asked to let go and its writes are now refused",
            done.file, done.token, done.new_token
        );
    } else {
        println!(
            "force-cleared {} (token {} -> {})",
            done.file, done.token, done.new_token
        );
    }
    Ok(Outcome { code: EXIT_OK })
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts later), so they
/// can be taken synchronously with `sigtimedwait`.
fn block_exit_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it, and
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits up to `timeout` for SIGINT/SIGTERM; true if one arrived.
fn wait_for_exit_signal(set: &libc::sigset_t, timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is an initialised signal set; a null siginfo pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    sig == libc::SIGINT || sig == libc::SIGTERM
}

/// Holds only the flock, with no registry record: an "external" holder.
fn hold_external(
    global: &GlobalOpts,
    ns: Option<&str>,
    owner: &str,
    field: &str,
    wait_ms: u64,
    for_ms: Option<u64>,
) -> Result<Outcome, RegistryError> {
    let signals = block_exit_signals();
    let config = Config::load(&global.storage, global.config.as_deref())
        .map_err(|e| RegistryError::BadRequest(e.to_string()))?;
    let key = LockKey::in_config(&config, ns, owner, field)?;
    let namespace = crate::ids::namespace_of(&config, ns)?;
    let dir = crate::kernel::flock::ensure_dir(&config.locks_dir())
        .map_err(crate::store::StoreError::Io)?;
    let deadline = std::time::Instant::now() + Duration::from_millis(wait_ms);
    let held =
        crate::kernel::flock::acquire_until(&dir.join(key.file_name(namespace)), deadline, &|| {
            false
        })
        .map_err(|e| RegistryError::Busy {
            message: e.to_string(),
            holder: None,
        })?;
    println!(
        "{}",
        serde_json::json!({"event": "held", "owner": key.owner(), "field": key.field(), "pid": std::process::id(), "external": true})
    );
    let _ = std::io::stdout().flush();
    wait_for_exit_signal(
        &signals,
        Duration::from_millis(for_ms.unwrap_or(u64::MAX / 4)),
    );
    drop(held);
    Ok(Outcome { code: EXIT_OK })
}

#[allow(clippy::too_many_arguments)]
fn hold(
    global: &GlobalOpts,
    ns: Option<&str>,
    owner: &str,
    field: &str,
    operation: String,
    holder: String,
    wait_ms: u64,
    renew_ms: u64,
    for_ms: Option<u64>,
) -> Result<Outcome, RegistryError> {
    let signals = block_exit_signals();
    let reg = open(global)?;
    let key = reg.key(ns, owner, field)?;
    let opts = AcquireOptions::new(holder, operation).wait(Duration::from_millis(wait_ms));
    let guard = reg.acquire(&key, &opts)?;
    let line = serde_json::json!({
        "event": "held",
        "owner": key.owner(),
        "field": key.field(),
        "token": guard.token(),
        "pid": std::process::id(),
    });
    println!("{line}");
    let _ = std::io::stdout().flush();
    let started = std::time::Instant::now();
    let tick = if renew_ms == 0 {
        Duration::from_secs(3600)
    } else {
        Duration::from_millis(renew_ms)
    };
    loop {
        let remaining = for_ms.map(|f| Duration::from_millis(f).saturating_sub(started.elapsed()));
        if remaining.is_some_and(|r| r.is_zero()) {
            break;
        }
        let wait = remaining.map_or(tick, |r| r.min(tick));
        if wait_for_exit_signal(&signals, wait) {
            break;
        }
        if renew_ms > 0 {
            if let Err(e) = guard.renew() {
                eprintln!("lockledger: {e}");
                let code = exit_code_of(&e);
                drop(guard);
                return Ok(Outcome { code });
            }
        }
    }
    guard.release()?;
    println!(
        "{}",
        serde_json::json!({"event": "released", "owner": key.owner(), "field": key.field()})
    );
    Ok(Outcome { code: EXIT_OK })
}
