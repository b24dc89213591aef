//! Throwaway PostgreSQL clusters for the tests of lockledger's PostgreSQL mode: the same
//! recipe as `scripts/pg.sh`, in Rust.
//!
//! A [`PgCluster`] is `initdb` + `pg_ctl start` in a fresh directory under the temp dir
//! (`lockledger-pg-<pid>-<n>`), listening on 127.0.0.1 on a free port with its unix
//! sockets in that directory and trust authentication, tuned for tests (no fsync). Each
//! test makes its own database with [`PgCluster::create_database`], so tests run in
//! parallel against one cluster; [`PgCluster::shared`] is that one cluster of a test
//! process. [`PgCluster::start_durable`] starts one with PostgreSQL's durable defaults
//! instead (fsync, synchronous_commit and full_page_writes on), for measurements that
//! must not be flattered by the test tuning.
//!
//! Invariants:
//! - every wait ends at a deadline: initdb, pg_ctl (its own `-t` and our kill-on-timeout),
//!   connecting (connect timeout, bounded retries) and the harness's own statements (a
//!   `statement_timeout` on its connections);
//! - as root, initdb, pg_ctl and so the server run as the user `postgres` (they refuse
//!   root), through `runuser`; the cluster's directory then belongs to `postgres`;
//! - a cluster is stopped (`pg_ctl stop -m immediate`, then SIGKILL of a postmaster that
//!   is still there) and its directory removed when its [`PgCluster`] is dropped; the
//!   [`PgCluster::shared`] one, which a `static` never drops, by an `atexit` hook at the
//!   exit of the test process. A process killed outright leaves its cluster behind: the
//!   next [`PgCluster::start`] on the machine stops and removes the clusters whose
//!   creating process is gone;
//! - when the server programs cannot be found, starting fails with an error that says to
//!   run `scripts/setup.sh --tests` (tests report it as a failure, never a skip).

use crate::process::try_run;
use crate::wait::wait_exit;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Longest wait for initdb.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for the server to start (pg_ctl's `-t`; our own limit is a bit longer).
const START_TIMEOUT_S: u64 = 60;
/// Longest wait for the server to stop.
const STOP_TIMEOUT_S: u64 = 30;
/// Longest wait for a connection of the harness (each attempt).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest any statement of the harness runs (ms), e.g. `CREATE DATABASE`.
const STATEMENT_TIMEOUT_MS: u64 = 60_000;
/// Name prefix of the clusters' directories in the temp dir.
const DIR_PREFIX: &str = "lockledger-pg-";
/// Marker file in a cluster directory made here (or by `scripts/pg.sh start`).
const MARKER: &str = ".lockledger-pg";

/// Where to get the server programs, told by every error about them.
pub const INSTALL_HINT: &str = "run scripts/setup.sh --tests (it installs Debian's postgresql; \
     scripts/test.sh runs it), or set LOCKLEDGER_PG_BIN to the directory holding initdb";

/// How a cluster trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgDurability {
    /// Tuned for tests: `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`
    /// (what [`PgCluster::start`] and [`PgCluster::shared`] use).
    Tests,
    /// PostgreSQL's durable defaults: none of the settings above is overridden, so each
    /// commit waits for its WAL to be flushed to disk (for benchmarks).
    Durable,
}

/// A running throwaway PostgreSQL cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    durability: PgDurability,
    /// initdb and pg_ctl run as `postgres` through runuser (we are root).
    as_postgres: bool,
    stopped: AtomicBool,
}

static SHARED: OnceLock<Result<PgCluster, String>> = OnceLock::new();

extern "C" fn stop_shared_at_exit() {
    if let Some(Ok(cluster)) = SHARED.get() {
        cluster.stop();
    }
}

impl PgCluster {
    /// Starts a new cluster tuned for tests (no fsync, see [`PgDurability::Tests`]) in a
    /// fresh temp directory and waits (bounded) until it accepts connections.
    pub fn start() -> Result<PgCluster, String> {
        PgCluster::start_with(PgDurability::Tests)
    }

    /// As [`PgCluster::start`], with PostgreSQL's durable defaults (fsync,
    /// synchronous_commit and full_page_writes on; see [`PgDurability::Durable`]).
    pub fn start_durable() -> Result<PgCluster, String> {
        PgCluster::start_with(PgDurability::Durable)
    }

    /// As [`PgCluster::start`], with the durability asked for.
    pub fn start_with(durability: PgDurability) -> Result<PgCluster, String> {
        let bin = find_bin()?;
        let as_postgres = is_root();
        reap_abandoned(&bin, as_postgres);
        let dir = make_dir(as_postgres)?;
        // From here on, dropping `cluster` on an error path stops and removes what exists.
        let mut cluster = PgCluster {
            dir,
            bin,
            port: 0,
            durability,
            as_postgres,
            stopped: AtomicBool::new(false),
        };
        cluster.initdb()?;
        cluster.port = cluster.start_server()?;
        cluster.wait_accepting(Instant::now() + Duration::from_secs(START_TIMEOUT_S))?;
        Ok(cluster)
    }

    /// The cluster of this test process, started by the first caller; every later call
    /// gets the same one (or the same error). It is stopped and deleted at process exit
    /// (an `atexit` hook; a process killed by a signal leaves it to the next
    /// [`PgCluster::start`], see the module's invariants).
    pub fn shared() -> Result<&'static PgCluster, String> {
        SHARED
            .get_or_init(|| {
                let started = PgCluster::start();
                if started.is_ok() {
                    // SAFETY: registers a plain `extern "C" fn` without arguments; it only
                    // reads the initialised static and never unwinds (stop does not panic).
                    unsafe { libc::atexit(stop_shared_at_exit) };
                }
                started
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data in `data/`, log in `server.log`, unix sockets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How the cluster was started (tuned for tests, or durable).
    pub fn durability(&self) -> PgDurability {
        self.durability
    }

    /// The pid of the cluster's postmaster (from `data/postmaster.pid`), while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        postmaster_pid(&self.dir.join("data").join("postmaster.pid")).map(|p| p as u32)
    }

    /// URL of the cluster's `postgres` database (for administration: tests make their
    /// own database with [`PgCluster::create_database`]).
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// URL of database `db` on this cluster.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A connection to database `db` (bounded connect; statements limited to a minute).
    pub fn connect(&self, db: &str) -> Result<postgres::Client, String> {
        connect_url(&self.url_for(db))
    }

    /// A fresh database `name` on the [shared](PgCluster::shared) cluster, for a test:
    /// its URL, or a panic naming what failed.
    pub fn test_database(name: &str) -> String {
        let cluster = PgCluster::shared().unwrap_or_else(|e| panic!("{e}"));
        cluster
            .create_database(name)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates database `name` (lowercase letters, digits and `_`, starting with a
    /// letter or `_`, at most 63 bytes; unique on the cluster) and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, String> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(format!(
                "database name {name:?}: use 1-63 of [a-z0-9_], not starting with a digit"
            ));
        }
        let mut client = self.connect("postgres")?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| format!("CREATE DATABASE {name} on {}: {}", self.url(), describe(&e)))?;
        Ok(self.url_for(name))
    }

    /// The server's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir.join("server.log"), lines)
    }

    /// Stops the server (`pg_ctl stop -m immediate`, bounded; SIGKILL if it is still
    /// there) and removes the directory. Idempotent; never panics.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        stop_dir(&self.bin, &self.dir, self.as_postgres);
    }

    /// `initdb` of `data/`: superuser `postgres`, trust authentication, UTF8 (initdb's
    /// own final sync is skipped in either durability: it concerns only the files initdb
    /// writes, not the server's commits).
    fn initdb(&self) -> Result<(), String> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync");
        let out = try_run(cmd, INITDB_TIMEOUT)?;
        if out.code != 0 {
            let who = if self.as_postgres {
                " (as root it runs as the user postgres, which must be able to reach that \
                 directory: set TMPDIR to a directory it can write, such as /tmp)"
            } else {
                ""
            };
            return Err(format!(
                "initdb in {} failed{who}: {}{}",
                self.dir.display(),
                out.stdout,
                out.stderr
            ));
        }
        Ok(())
    }

    /// Starts the server on a free port (another port if that one was taken meanwhile);
    /// returns the port.
    fn start_server(&self) -> Result<u16, String> {
        let log = self.dir.join("server.log");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let mut options = format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {}",
                self.dir.display()
            );
            if self.durability == PgDurability::Tests {
                options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
            }
            let mut cmd = self.command("pg_ctl");
            cmd.arg("-D")
                .arg(self.dir.join("data"))
                // -l matters beyond the log: the server's output goes there, not into
                // try_run's pipes (which would then never reach end of file).
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", &START_TIMEOUT_S.to_string(), "-o", &options])
                .arg("start");
            let out = try_run(cmd, Duration::from_secs(START_TIMEOUT_S + 15))?;
            if out.code == 0 {
                return Ok(port);
            }
            last = format!(
                "pg_ctl start failed: {}{}; server log:\n{}",
                out.stdout,
                out.stderr,
                log_tail(&log, 20)
            );
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if !text.contains("could not bind") && !text.contains("Address already in use") {
                break;
            }
        }
        Err(last)
    }

    /// Connects until the server answers or `deadline` passes.
    fn wait_accepting(&self, deadline: Instant) -> Result<(), String> {
        loop {
            match self.connect("postgres") {
                Ok(mut client) => match client.simple_query("SELECT 1") {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!(
                            "the server at {} does not answer: {}",
                            self.url(),
                            describe(&e)
                        ))
                    }
                    Err(_) => {}
                },
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("{e}; server log:\n{}", self.log_tail(20)))
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn command(&self, program: &str) -> Command {
        owner_command(&self.bin.join(program), self.as_postgres)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client for `url` with the harness's bounds (connect timeout, statement timeout).
pub fn connect_url(url: &str) -> Result<postgres::Client, String> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| format!("bad PostgreSQL URL {url}: {e}"))?;
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .options(&format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
    config
        .connect(postgres::NoTls)
        .map_err(|e| format!("cannot connect to {url}: {}", describe(&e)))
}

/// A PostgreSQL error with its causes (`postgres::Error` alone shows only its kind, such
/// as "db error"; the server's message is its source).
pub fn describe(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// `program` run as `postgres` through runuser when `as_postgres`, else as ourselves.
fn owner_command(program: &Path, as_postgres: bool) -> Command {
    let mut cmd = if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    };
    // A working directory closed to `postgres` (say under /root) makes initdb fail.
    cmd.current_dir("/");
    cmd
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The directory holding initdb and pg_ctl: `LOCKLEDGER_PG_BIN`, else where PATH finds
/// initdb, else Debian's `/usr/lib/postgresql/<newest>/bin`.
pub fn find_bin() -> Result<PathBuf, String> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("LOCKLEDGER_PG_BIN") {
        let dir = PathBuf::from(dir);
        if usable(&dir) {
            return Ok(dir);
        }
        return Err(format!(
            "LOCKLEDGER_PG_BIN={} holds no initdb and pg_ctl; {INSTALL_HINT}",
            dir.display()
        ));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in on_path {
        let initdb = dir.join("initdb");
        if initdb.is_file() {
            // Debian's are symlinks into /usr/lib/postgresql/N/bin, beside the server.
            if let Some(real) = std::fs::canonicalize(&initdb)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
            {
                if usable(&real) {
                    return Ok(real);
                }
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| usable(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        format!(
            "PostgreSQL's server programs (initdb, pg_ctl) are not installed: not on PATH \
             nor in /usr/lib/postgresql/*/bin; {INSTALL_HINT}"
        )
    })
}

/// A fresh directory `<temp>/lockledger-pg-<pid>-<n>` (mode 0700, with the marker),
/// owned by `postgres` when `as_postgres`.
fn make_dir(as_postgres: bool) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let tmp = std::env::temp_dir();
    let dir = loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = tmp.join(format!("{DIR_PREFIX}{}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => break dir,
            // Left by an earlier process with our pid: take the next number.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
    };
    let marker = dir.join(MARKER);
    std::fs::write(&marker, b"").map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    if as_postgres {
        let (uid, gid) = postgres_ids()?;
        for path in [&dir, &marker] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("cannot give {} to postgres: {e}", path.display()))?;
        }
    }
    Ok(dir)
}

/// The uid and gid of the user `postgres` (Debian's package creates it).
fn postgres_ids() -> Result<(u32, u32), String> {
    let name = CString::new("postgres").map_err(|e| e.to_string())?;
    // SAFETY: an all-zero passwd is a valid value for getpwnam_r to overwrite.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf's length is passed with it; the
    // strings pwd points to live in buf, which we do not read.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(format!(
            "running as root, the server must run as the user postgres, which does not \
             exist; {INSTALL_HINT}"
        ));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// Stops the server of the cluster in `dir`, if one runs, and removes `dir`. Bounded;
/// never panics.
fn stop_dir(bin: &Path, dir: &Path, as_postgres: bool) {
    let data = dir.join("data");
    let pid_file = data.join("postmaster.pid");
    if pid_file.exists() {
        let mut cmd = owner_command(&bin.join("pg_ctl"), as_postgres);
        cmd.arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "-t", &STOP_TIMEOUT_S.to_string()])
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Ok(mut child) = cmd.spawn() {
            if wait_exit(&mut child, Duration::from_secs(STOP_TIMEOUT_S + 10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Still there (pg_ctl timed out or failed): end it for good.
        if let Some(pid) = postmaster_pid(&pid_file) {
            // SAFETY: kill has no memory-safety preconditions; the pid is the postmaster's
            // as its own pid file still names it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The pid in a `postmaster.pid` that is still there, if it names a live process.
fn postmaster_pid(pid_file: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    (pid > 0 && Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// Stops and removes the clusters in the temp dir whose creating process is gone (a test
/// process killed outright). Clusters of live processes, and directories without the
/// marker, are left alone.
fn reap_abandoned(bin: &Path, as_postgres: bool) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let dir = entry.path();
        if pid == me || Path::new(&format!("/proc/{pid}")).exists() || !dir.join(MARKER).exists() {
            continue;
        }
        stop_dir(bin, &dir, as_postgres);
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
