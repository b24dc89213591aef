//! lockledger-bench: the performance targets of DESIGN.md §10, measured side by side in
//! one run.
//!
//! For each target it prints the measured numbers next to their comparison (Python
//! `filelock`, redis-py's `Lock` against a local `redis-server`, one HTTP client against
//! sixteen, or a fixed limit), the ratio or limit, and PASS / FAIL / SKIP; a summary closes
//! the run. Comparisons are interleaved round by round (A B, B A, A B, ...) and each side's
//! median over the rounds is compared, because the machine is small and shared.
//!
//! Run: `cargo run --release --bin lockledger-bench -- [--quick] [--only NAME[,NAME]]`
//! (`scripts/bench.sh` installs redis-server, filelock and redis-py first). Exit code: 0
//! when every target that ran passed (or was skipped), 1 when a target failed, 2 when a
//! measurement could not be taken (harness error).
//!
//! Nothing here changes the library: the service is the real `lockledger serve` binary of
//! this tree, the in-process numbers use the public `Registry` API, and the large database
//! is filled with rusqlite after a `Registry::open` has migrated it.

// Shared with the chaos run, which uses all of it.
#[allow(dead_code)]
#[path = "common/rng.rs"]
mod rng;
use clap::Parser;
use lockledger::config::CONVERSATION_FIELDS;
use lockledger::store::history::HistoryQuery;
use lockledger::{AcquireOptions, Config, LockKey, Registry};
use rng::Rng;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type R<T> = Result<T, String>;

#[derive(Debug, Parser)]
#[command(about = "lockledger benchmarks: the DESIGN.md §10 targets, side by side in one run")]
struct Args {
    /// Short run: one round per comparison, 10,000 owners and 200,000 events
    #[arg(long)]
    quick: bool,
    /// Run only these (comma-separated or repeated): inproc, http, concurrent, bigdb,
    /// release, rss, or a result name such as in_process_pairs
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Rounds per side-by-side comparison (default 5, quick 1)
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per measurement (default 3, quick 2)
    #[arg(long)]
    seconds: Option<f64>,
    /// Owners in the large database (default 100000, quick 10000)
    #[arg(long)]
    owners: Option<u64>,
    /// Events in the large database (default 10000000, quick 200000)
    #[arg(long)]
    events: Option<u64>,
    /// Release-latency repetitions per case (default 20, quick 8)
    #[arg(long)]
    repeat: Option<usize>,
    /// The `lockledger` binary to serve with (default: built from this tree next to this
    /// benchmark)
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// RUST_LOG for the service (default: unset, so `serve` logs each request at info)
    #[arg(long)]
    server_rust_log: Option<String>,
    /// Parent directory for the scratch directory (default: the system temp dir)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the scratch directory (databases, service logs) afterwards
    #[arg(long)]
    keep: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Groups of targets and the names `--only` accepts for each.
const GROUPS: [(&str, &[&str]); 6] = [
    ("inproc", &["in_process_pairs", "in_process"]),
    ("http", &["http_single_client", "redis"]),
    ("concurrent", &["http_16_clients", "concurrency"]),
    (
        "bigdb",
        &["owner_status_p99", "owner_history_p99", "status", "history"],
    ),
    (
        "release",
        &[
            "dropped_stream_release",
            "dead_pid_release",
            "expired_lease_release",
        ],
    ),
    ("rss", &["idle_rss", "idle_rss_demo", "idle_rss_bigdb"]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
    Skip,
    Error,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
            Verdict::Error => "ERROR",
        }
    }
    fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    }
}

struct Outcome {
    name: String,
    line: String,
    verdict: Verdict,
}

struct Settings {
    quick: bool,
    rounds: usize,
    secs: f64,
    owners: u64,
    events: u64,
    samples: usize,
    repeat: usize,
    series_cap: Duration,
}

// ------------------------------------------------------------------ small helpers

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn us(v: f64) -> String {
    format!("{v:.0} µs")
}

fn rate(v: f64) -> String {
    format!("{v:.0}/s")
}

fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.0}..{hi:.0}")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// CPU seconds (user + system) a process has used; `pid` may be "self".
fn cpu_seconds(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz.max(1.0))
}

/// Cores kept busy by everything on the machine over `window` (call it while this
/// benchmark is idle to see how much other work is running).
fn machine_busy_cores(window: Duration) -> f64 {
    fn sample() -> Option<(f64, f64)> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<f64> = s
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4)?;
        let busy = v.iter().take(8).sum::<f64>() - idle;
        Some((busy, idle))
    }
    let (Some((b0, _)), t0) = (sample(), Instant::now()) else {
        return f64::NAN;
    };
    std::thread::sleep(window);
    let Some((b1, _)) = sample() else {
        return f64::NAN;
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (b1 - b0) / hz.max(1.0) / t0.elapsed().as_secs_f64()
}

/// How busy the rest of the machine is, apart from this benchmark and its services.
fn other_work(own: &[u32]) -> String {
    let ids: Vec<String> = std::iter::once("self".to_string())
        .chain(own.iter().map(|p| p.to_string()))
        .collect();
    let mine = || ids.iter().filter_map(|p| cpu_seconds(p)).sum::<f64>();
    let (t, a) = (Instant::now(), mine());
    let busy = machine_busy_cores(Duration::from_millis(700));
    let own_cores = (mine() - a) / t.elapsed().as_secs_f64();
    format!(
        "other work on the machine: {:.2} cores busy, besides this benchmark's {:.2}",
        (busy - own_cores).max(0.0),
        own_cores
    )
}

/// Sizes of a storage directory's database and its WAL.
fn db_sizes(storage: &Path) -> String {
    let mb = |f: &str| std::fs::metadata(storage.join(f)).map_or(0.0, |m| m.len() as f64 / 1e6);
    format!(
        "registry.db {:.1} MB, registry.db-wal {:.1} MB, registry.db-shm {:.1} MB",
        mb("registry.db"),
        mb("registry.db-wal"),
        mb("registry.db-shm")
    )
}

/// A `kB` field of /proc/PID/status, e.g. VmRSS.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn vm_rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS")
}

/// Waits until a process uses under 5% of a core over 300 ms (or `max` passes).
fn wait_idle(pid: u32, max: Duration) -> f64 {
    let start = Instant::now();
    let id = pid.to_string();
    while start.elapsed() < max {
        let Some(a) = cpu_seconds(&id) else { break };
        std::thread::sleep(Duration::from_millis(300));
        let Some(b) = cpu_seconds(&id) else { break };
        if b - a < 0.015 {
            break;
        }
    }
    start.elapsed().as_secs_f64()
}

/// One non-blocking `flock(LOCK_EX)` attempt, released at once: is the file free?
fn flock_free(file: &File) -> io::Result<bool> {
    let fd = file.as_raw_fd();
    // SAFETY: fd is a valid descriptor owned by `file` for the duration of these calls.
    let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        // SAFETY: as above; unlocks the lock just taken.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Polls a lock file until it is free; returns when (None: still held at `deadline`).
fn wait_free(path: &Path, deadline: Instant, every: Duration) -> R<Option<Instant>> {
    let file = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    loop {
        if flock_free(&file).map_err(|e| format!("flock: {e}"))? {
            return Ok(Some(Instant::now()));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}

fn is_held(path: &Path) -> R<bool> {
    match File::open(path) {
        Ok(f) => Ok(!flock_free(&f).map_err(|e| format!("flock: {e}"))?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("open {}: {e}", path.display())),
    }
}

fn free_port() -> R<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The version of a Python module, if python3 can import it.
fn python_module(module: &str) -> Option<String> {
    command_line(
        "python3",
        &[
            "-c",
            &format!("import {module}; print(getattr({module}, '__version__', '?'))"),
        ],
    )
}

fn run_python(script: &str, args: &[String]) -> R<serde_json::Value> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "python3 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("");
    serde_json::from_str(last).map_err(|e| format!("python3 printed {last:?}: {e}"))
}

fn json_f64(v: &serde_json::Value, key: &str) -> R<f64> {
    v[key]
        .as_f64()
        .ok_or_else(|| format!("no number {key:?} in {v}"))
}

/// filelock acquire/release pairs: argv = lock path, timed iterations, warm-up iterations.
const FILELOCK_PY: &str = r#"
import json, sys, time
from filelock import FileLock
path, n, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lock = FileLock(path)
for _ in range(warm):
    lock.acquire(); lock.release()
t = time.perf_counter()
for _ in range(n):
    lock.acquire(); lock.release()
el = time.perf_counter() - t
print(json.dumps({"pairs": n, "seconds": el, "rate": n / el}))
"#;

/// redis-py Lock pairs: argv = port, seconds, warm-up iterations.
const REDIS_PY: &str = r#"
import json, sys, time
import redis
port, dur, warm = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
r = redis.Redis(host="127.0.0.1", port=port)
r.ping()
def pair():
    lock = r.lock("lockledger-bench")
    lock.acquire()
    lock.release()
for _ in range(warm):
    pair()
n = 0
t = time.perf_counter()
end = t + dur
while True:
    for _ in range(50):
        pair()
    n += 50
    now = time.perf_counter()
    if now >= end:
        break
print(json.dumps({"pairs": n, "seconds": now - t, "rate": n / (now - t)}))
"#;

// ------------------------------------------------------------------ HTTP client

struct Head {
    status: u16,
    length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn eof(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what.to_string())
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn read_head<B: BufRead>(r: &mut B) -> io::Result<Head> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(eof("connection closed before a response"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut head = Head {
        status,
        length: None,
        chunked: false,
        close: line.starts_with("HTTP/1.0"),
    };
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(eof("connection closed inside the response head"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok(head);
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                head.length = v.parse().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = v.to_ascii_lowercase().contains("chunked");
            } else if k.eq_ignore_ascii_case("connection") {
                head.close = v.eq_ignore_ascii_case("close");
            }
        }
    }
}

/// Reads one chunk of a chunked body into `out`; false after the last (empty) chunk.
fn read_chunk<B: BufRead>(r: &mut B, out: &mut Vec<u8>) -> io::Result<bool> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(eof("connection closed inside a chunked body"));
    }
    let size_text = line.trim().split(';').next().unwrap_or("").trim();
    let size = usize::from_str_radix(size_text, 16)
        .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
    if size == 0 {
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                return Ok(false);
            }
        }
    }
    let start = out.len();
    out.resize(start + size, 0);
    r.read_exact(&mut out[start..])?;
    let mut crlf = [0u8; 2];
    r.read_exact(&mut crlf)?;
    Ok(true)
}

fn read_body<B: BufRead>(r: &mut B, head: &mut Head) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.chunked {
        while read_chunk(r, &mut body)? {}
    } else if let Some(n) = head.length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if head.status != 204 && head.status != 304 {
        r.read_to_end(&mut body)?;
        head.close = true;
    }
    Ok(body)
}

/// A minimal HTTP/1.1 keep-alive client: one connection, one request at a time.
struct Http {
    addr: SocketAddr,
    host: String,
    conn: Option<BufReader<TcpStream>>,
    buf: Vec<u8>,
}

fn connect(addr: SocketAddr) -> io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    Ok(BufReader::with_capacity(64 * 1024, s))
}

impl Http {
    fn new(port: u16) -> Http {
        Http {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            host: format!("127.0.0.1:{port}"),
            conn: None,
            buf: Vec::with_capacity(512),
        }
    }

    /// Sends one request (JSON content type when there is a body) and reads the whole
    /// response. A kept-alive connection the server closed is reopened once.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<(u16, Vec<u8>)> {
        let reused = self.conn.is_some();
        match self.send_once(method, path, body) {
            Err(e)
                if reused
                    && matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::UnexpectedEof
                    ) =>
            {
                self.send_once(method, path, body)
            }
            other => other,
        }
    }

    fn send_once(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            self.conn = Some(connect(self.addr)?);
        }
        self.buf.clear();
        write!(
            self.buf,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n",
            self.host
        )?;
        if let Some(b) = body {
            write!(
                self.buf,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            )?;
        }
        self.buf.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            self.buf.extend_from_slice(b);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(eof("no connection"));
        };
        let buf = &self.buf;
        let result = (|| {
            conn.get_mut().write_all(buf)?;
            let mut head = read_head(conn)?;
            let body = read_body(conn, &mut head)?;
            Ok((head, body))
        })();
        match result {
            Ok((head, body)) => {
                if head.close {
                    self.conn = None;
                }
                Ok((head.status, body))
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    /// A request that must answer 200.
    fn ok(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> R<Vec<u8>> {
        let (status, body) = self
            .send(method, path, body)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if status != 200 {
            return Err(format!(
                "{method} {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ));
        }
        Ok(body)
    }

    /// Acquires a lease; returns (lease id, expires_at in ms).
    fn acquire(&mut self, owner: &str, field: &str, body: &[u8]) -> R<(String, i64)> {
        let path = format!("/api/v1/locks/{owner}/{field}/acquire");
        let body = self.ok("POST", &path, Some(body))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("acquire answer: {e}"))?;
        let id = v["lease_id"]
            .as_str()
            .ok_or_else(|| format!("no lease_id in {v}"))?
            .to_string();
        let expires = v["expires_at"]
            .as_str()
            .and_then(lockledger::clock::parse_time)
            .unwrap_or(0);
        Ok((id, expires))
    }

    fn release(&mut self, lease_id: &str) -> R<()> {
        self.ok("DELETE", &format!("/api/v1/leases/{lease_id}"), Some(b""))
            .map(|_| ())
    }

    /// One acquire+release pair of a lease.
    fn pair(&mut self, owner: &str) -> R<()> {
        let (id, _) = self.acquire(owner, "messages", PAIR_BODY)?;
        self.release(&id)
    }
}

const PAIR_BODY: &[u8] = br#"{"holder":"bench","operation":"pair","ttl_ms":30000}"#;

// ------------------------------------------------------------------ processes

/// A `lockledger serve` child; stopped (SIGTERM, then SIGKILL) when dropped.
struct Service {
    label: &'static str,
    child: Child,
    port: u16,
    storage: PathBuf,
    rss_start_kb: Option<u64>,
}

impl Service {
    fn start(
        bin: &Path,
        storage: &Path,
        demo: bool,
        label: &'static str,
        rust_log: Option<&str>,
    ) -> R<Service> {
        std::fs::create_dir_all(storage).map_err(|e| format!("mkdir: {e}"))?;
        let log_path = storage.join("service.log");
        let log = File::create(&log_path).map_err(|e| format!("log file: {e}"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--storage")
            .arg(storage)
            .args(["serve", "--bind", "127.0.0.1:0"]);
        if demo {
            cmd.arg("--demo");
        }
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LOCKLEDGER_") {
                cmd.env_remove(&k);
            }
        }
        match rust_log {
            Some(level) => cmd.env("RUST_LOG", level),
            None => cmd.env_remove("RUST_LOG"),
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        // Keep draining stdout so the service can never block on it.
        std::thread::spawn(move || {
            let _ = io::copy(&mut out, &mut io::sink());
        });
        let port = line
            .trim()
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .filter(|_| line.contains("listening on http://"));
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "service did not start (stdout {line:?}); log tail: {}",
                log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            ));
        };
        Ok(Service {
            label,
            child,
            port,
            storage: storage.to_path_buf(),
            rss_start_kb: None,
        })
    }

    /// Waits until the start-up work is done, idles one second and notes the RSS
    /// ("after start-up").
    fn settle(&mut self) {
        wait_idle(self.pid(), Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(1));
        self.rss_start_kb = vm_rss_kb(self.pid());
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(8);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throwaway `redis-server` (no persistence) on a free port; killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(dir: &Path) -> R<Redis> {
        let port = free_port()?;
        let p = port.to_string();
        let log = dir.join("redis.log");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &p,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--logfile"])
            .arg(&log)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return Ok(redis);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not answer on port {port}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child `sleep` that is killed when dropped (if the test did not already).
struct Sleeper(Child);
impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The scratch directory; removed when dropped unless kept.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            println!("scratch directory kept: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ------------------------------------------------------------------ the run

struct Ctx {
    set: Settings,
    server_bin: PathBuf,
    rust_log: Option<String>,
    rng: Rng,
    results: Vec<Outcome>,
    // Services before the scratch directory: they stop before it is removed.
    main: Option<Service>,
    demo: Option<Service>,
    bigdb: Option<Service>,
    work: Scratch,
}

impl Ctx {
    fn report(&mut self, name: &str, body: String, verdict: Verdict) {
        let line = format!("{name}: {body}  {}", verdict.word());
        println!("{line}");
        self.results.push(Outcome {
            name: name.to_string(),
            line,
            verdict,
        });
    }

    fn detail(&self, text: String) {
        println!("  {text}");
    }

    fn dir(&self, name: &str) -> R<PathBuf> {
        let p = self.work.path.join(name);
        std::fs::create_dir_all(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
        Ok(p)
    }

    fn main_service(&mut self) -> R<u16> {
        if self.main.is_none() {
            let storage = self.dir("service")?;
            let mut svc = Service::start(
                &self.server_bin,
                &storage,
                false,
                "service",
                self.rust_log.as_deref(),
            )?;
            svc.settle();
            println!(
                "  started lockledger serve (pid {}, port {})",
                svc.pid(),
                svc.port
            );
            self.main = Some(svc);
        }
        Ok(self.main.as_ref().map(|s| s.port).unwrap_or(0))
    }

    /// The services this run has started (still running).
    fn pids(&self) -> Vec<u32> {
        [&self.main, &self.demo, &self.bigdb]
            .into_iter()
            .flatten()
            .map(Service::pid)
            .collect()
    }

    fn dur(&self) -> Duration {
        Duration::from_secs_f64(self.set.secs)
    }
}

/// A timed run of `clients` keep-alive HTTP clients, each on its own lock.
struct Load {
    pairs: u64,
    secs: f64,
    server_cores: f64,
    bench_cores: f64,
}

impl Load {
    fn rate(&self) -> f64 {
        self.pairs as f64 / self.secs
    }
}

fn http_load(port: u16, server_pid: u32, clients: usize, prefix: &str, dur: Duration) -> R<Load> {
    let barrier = Barrier::new(clients + 1);
    let stop = AtomicBool::new(false);
    let warm = Duration::from_millis(500);
    let spid = server_pid.to_string();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let (barrier, stop) = (&barrier, &stop);
                let owner = format!("{prefix}{i}");
                s.spawn(move || -> R<u64> {
                    let mut c = Http::new(port);
                    let warm_end = Instant::now() + warm;
                    let mut warmed = Ok(());
                    while Instant::now() < warm_end {
                        warmed = c.pair(&owner);
                        if warmed.is_err() {
                            break;
                        }
                    }
                    barrier.wait();
                    warmed?;
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        c.pair(&owner)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        barrier.wait();
        let (cpu0, me0) = (cpu_seconds(&spid), cpu_seconds("self"));
        let t0 = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        let mut pairs = 0;
        let mut err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(n)) => pairs += n,
                Ok(Err(e)) => err = Some(e),
                Err(_) => err = Some("a client thread panicked".into()),
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let (cpu1, me1) = (cpu_seconds(&spid), cpu_seconds("self"));
        if let Some(e) = err {
            return Err(e);
        }
        let cores = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (b - a) / secs,
            _ => f64::NAN,
        };
        Ok(Load {
            pairs,
            secs,
            server_cores: cores(cpu0, cpu1),
            bench_cores: cores(me0, me1),
        })
    })
}

// ------------------------------------------------------------------ 1. in-process

fn inproc_round(reg: &Registry, key: &LockKey, opts: &AcquireOptions, n: u64, warm: u64) -> R<f64> {
    let pair = || -> R<()> {
        reg.acquire(key, opts)
            .map_err(|e| format!("acquire: {e}"))?
            .release()
            .map_err(|e| format!("release: {e}"))
    };
    for _ in 0..warm {
        pair()?;
    }
    let t = Instant::now();
    for _ in 0..n {
        pair()?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// µs per open + flock + unlock + close of a lock file (the floor of any file lock).
fn raw_flock_us(path: &Path) -> R<f64> {
    let n = 20_000;
    let t = Instant::now();
    for _ in 0..n {
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("open: {e}"))?;
        if !flock_free(&f).map_err(|e| format!("flock: {e}"))? {
            return Err("raw flock file is held".into());
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// A scratch database with the registry's settings (WAL, synchronous=NORMAL).
fn floor_db(path: &Path) -> R<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if mode != "wal" {
        return Err(format!("journal_mode {mode}"));
    }
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, at INTEGER, what TEXT);",
    )
    .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// µs per one-row SQLite commit on the calling thread.
fn raw_commit_us(dir: &Path) -> R<f64> {
    let conn = floor_db(&dir.join("commit-floor.db"))?;
    let mut stmt = conn
        .prepare("INSERT INTO t (at, what) VALUES (?1, 'released')")
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_secs(1) {
        stmt.execute([n as i64]).map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// µs per one-row commit handed to a dedicated writer thread and answered over a reply
/// channel: the shape of the registry's writer, without the registry. With `spin`, a
/// thread spins meanwhile, so no core is idle: on a VM, waking an idle vCPU for each
/// hand-off costs far more than a hand-off to a running one.
fn raw_writer_commit_us(dir: &Path, spin: bool) -> R<f64> {
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let spinner = spin.then(|| {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    });
    let result = writer_round_trips(dir);
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = spinner {
        let _ = h.join();
    }
    result
}

fn writer_round_trips(dir: &Path) -> R<f64> {
    use std::sync::mpsc;
    let conn = floor_db(&dir.join("writer-floor.db"))?;
    let (jobs, queue) = mpsc::channel::<mpsc::SyncSender<Result<(), String>>>();
    let writer = std::thread::spawn(move || {
        while let Ok(reply) = queue.recv() {
            let r = conn
                .execute_batch(
                    "BEGIN IMMEDIATE; INSERT INTO t (at, what) VALUES (1, 'released'); COMMIT;",
                )
                .map_err(|e| e.to_string());
            let _ = reply.send(r);
        }
    });
    let t = Instant::now();
    let mut n = 0u64;
    let mut result = Ok(());
    while t.elapsed() < Duration::from_secs(1) {
        let (tx, rx) = mpsc::sync_channel(1);
        if jobs.send(tx).is_err() {
            result = Err("writer thread stopped".to_string());
            break;
        }
        match rx.recv() {
            Ok(Ok(())) => n += 1,
            Ok(Err(e)) => {
                result = Err(e);
                break;
            }
            Err(e) => {
                result = Err(e.to_string());
                break;
            }
        }
    }
    let el = t.elapsed().as_secs_f64();
    drop(jobs);
    let _ = writer.join();
    result.map(|()| el * 1e6 / n.max(1) as f64)
}

fn bench_inproc(ctx: &mut Ctx) -> R<()> {
    println!("\n[in-process] Registry::acquire + LockGuard::release vs Python filelock.FileLock");
    println!("  ({})", other_work(&ctx.pids()));
    let storage = ctx.dir("inproc")?;
    let reg = Registry::open(Config::defaults(&storage)).map_err(|e| format!("open: {e}"))?;
    let key = reg
        .key(None, "bench", "messages")
        .map_err(|e| e.to_string())?;
    let opts = AcquireOptions::new("bench", "pair");
    let py_lock = ctx.dir("py")?.join("bench.lock");
    let py_lock_s = py_lock.to_string_lossy().into_owned();
    let filelock = python_module("filelock");

    // Calibrate so that the faster side runs for about `secs` with the same N.
    let ll_cal = inproc_round(&reg, &key, &opts, 500, 100)?;
    let py_cal = match &filelock {
        Some(_) => json_f64(
            &run_python(
                FILELOCK_PY,
                &[py_lock_s.clone(), "3000".into(), "300".into()],
            )?,
            "rate",
        )?,
        None => 0.0,
    };
    let fastest = ll_cal.max(py_cal);
    let slowest = if py_cal > 0.0 {
        ll_cal.min(py_cal)
    } else {
        ll_cal
    };
    let n = ((fastest * ctx.set.secs) as u64)
        .min((slowest * ctx.set.secs * 4.0) as u64)
        .max(1000);
    ctx.detail(format!(
        "calibration: lockledger {} python_filelock {} -> N = {n} pairs per side per round",
        rate(ll_cal),
        if py_cal > 0.0 {
            rate(py_cal)
        } else {
            "-".into()
        }
    ));
    let (mut ll, mut py) = (Vec::new(), Vec::new());
    for round in 0..ctx.set.rounds {
        let mut r_ll = 0.0;
        let mut r_py = f64::NAN;
        for side in 0..2 {
            if (side == 0) == (round % 2 == 0) {
                r_ll = inproc_round(&reg, &key, &opts, n, 300)?;
            } else if filelock.is_some() {
                let v = run_python(
                    FILELOCK_PY,
                    &[py_lock_s.clone(), n.to_string(), "500".into()],
                )?;
                r_py = json_f64(&v, "rate")?;
            }
        }
        ll.push(r_ll);
        if filelock.is_some() {
            py.push(r_py);
        }
        ctx.detail(format!(
            "round {}: lockledger {}  python_filelock {}  ({} first)",
            round + 1,
            rate(r_ll),
            if r_py.is_nan() {
                "-".into()
            } else {
                rate(r_py)
            },
            if round % 2 == 0 {
                "lockledger"
            } else {
                "python"
            }
        ));
    }

    // Where the time goes: each call separately, and the floors under them.
    let (mut acq, mut rel) = (Vec::new(), Vec::new());
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        let a = Instant::now();
        let g = reg.acquire(&key, &opts).map_err(|e| e.to_string())?;
        let b = Instant::now();
        g.release().map_err(|e| e.to_string())?;
        acq.push((b - a).as_secs_f64() * 1e6);
        rel.push(b.elapsed().as_secs_f64() * 1e6);
    }
    acq.sort_by(f64::total_cmp);
    rel.sort_by(f64::total_cmp);
    let sizes = db_sizes(&storage);
    let flock_us = raw_flock_us(&storage.join("raw-floor.lock"))?;
    let commit_us = raw_commit_us(&storage)?;
    let writer_us = raw_writer_commit_us(&storage, false)?;
    let writer_spin_us = raw_writer_commit_us(&storage, true)?;
    drop(reg);

    let m_ll = median(&ll);
    let (body, verdict) = if filelock.is_some() {
        let m_py = median(&py);
        let ratio = m_ll / m_py;
        (
            format!(
                "lockledger {}  python_filelock {}  ratio {ratio:.2} (target >= 1.0)",
                rate(m_ll),
                rate(m_py)
            ),
            Verdict::of(ratio >= 1.0),
        )
    } else {
        (
            format!(
                "lockledger {}  python_filelock not installed (python3 -m pip install filelock, or scripts/bench.sh)",
                rate(m_ll)
            ),
            Verdict::Skip,
        )
    };
    ctx.report("in_process_pairs", body, verdict);
    ctx.detail(format!(
        "medians of {} rounds; range lockledger {}  python_filelock {}",
        ctx.set.rounds,
        spread(&ll),
        if py.is_empty() {
            "-".into()
        } else {
            spread(&py)
        }
    ));
    ctx.detail(format!(
        "breakdown: acquire p50 {} p99 {}; release p50 {} p99 {} (n={})",
        us(pct(&acq, 0.5)),
        us(pct(&acq, 0.99)),
        us(pct(&rel, 0.5)),
        us(pct(&rel, 0.99)),
        acq.len()
    ));
    ctx.detail(format!(
        "floors here: open+flock+unlock+close {:.1} µs; one-row SQLite commit (WAL, synchronous=NORMAL) {:.0} µs; the same commit through a writer thread + reply channel {:.0} µs (two per pair cap {}), {:.0} µs while another thread keeps the second core busy",
        flock_us,
        commit_us,
        writer_us,
        rate(1e6 / (2.0 * writer_us + flock_us)),
        writer_spin_us
    ));
    ctx.detail(format!("database after the rounds: {sizes}"));
    Ok(())
}

// ------------------------------------------------------------------ 2. HTTP vs redis

fn bench_http(ctx: &mut Ctx) -> R<()> {
    println!("\n[http] acquire+release over HTTP, one keep-alive client, vs redis-py Lock on a local redis-server");
    println!("  ({})", other_work(&ctx.pids()));
    let port = ctx.main_service()?;
    let spid = ctx.main.as_ref().map(|s| s.pid()).unwrap_or(0);
    let redis_py = python_module("redis");
    let have_server = command_line("redis-server", &["--version"]).is_some();
    let redis = if redis_py.is_some() && have_server {
        Some(Redis::start(&ctx.dir("redis")?)?)
    } else {
        None
    };
    let dur = ctx.dur();
    let (mut ll, mut rd, mut cpu_per_pair) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ctx.set.rounds {
        let mut r_ll = 0.0;
        let mut r_rd = f64::NAN;
        for side in 0..2 {
            if (side == 0) == (round % 2 == 0) {
                let load = http_load(port, spid, 1, "single", dur)?;
                r_ll = load.rate();
                cpu_per_pair.push(load.server_cores * load.secs * 1e6 / load.pairs as f64);
            } else if let Some(redis) = &redis {
                let v = run_python(
                    REDIS_PY,
                    &[
                        redis.port.to_string(),
                        format!("{}", ctx.set.secs),
                        "500".into(),
                    ],
                )?;
                r_rd = json_f64(&v, "rate")?;
            }
        }
        ll.push(r_ll);
        if redis.is_some() {
            rd.push(r_rd);
        }
        ctx.detail(format!(
            "round {}: lockledger {}  redis_py {}  ({} first)",
            round + 1,
            rate(r_ll),
            if r_rd.is_nan() {
                "-".into()
            } else {
                rate(r_rd)
            },
            if round % 2 == 0 {
                "lockledger"
            } else {
                "redis"
            }
        ));
    }
    drop(redis);

    // Where the time goes: the HTTP floor (healthz) and each call.
    let mut c = Http::new(port);
    let (mut hz, mut acq, mut rel) = (Vec::new(), Vec::new(), Vec::new());
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        let a = Instant::now();
        c.ok("GET", "/healthz", None)?;
        let b = Instant::now();
        let (id, _) = c.acquire("single0", "messages", PAIR_BODY)?;
        let d = Instant::now();
        c.release(&id)?;
        hz.push((b - a).as_secs_f64() * 1e6);
        acq.push((d - b).as_secs_f64() * 1e6);
        rel.push(d.elapsed().as_secs_f64() * 1e6);
    }
    for v in [&mut hz, &mut acq, &mut rel] {
        v.sort_by(f64::total_cmp);
    }

    let m_ll = median(&ll);
    let (body, verdict) = if !rd.is_empty() {
        let m_rd = median(&rd);
        let ratio = m_ll / m_rd;
        (
            format!(
                "lockledger {}  redis_py {}  ratio {ratio:.2} (target >= 1.5)",
                rate(m_ll),
                rate(m_rd)
            ),
            Verdict::of(ratio >= 1.5),
        )
    } else {
        let mut missing = Vec::new();
        if !have_server {
            missing.push("redis-server (apt-get install -y redis-server)");
        }
        if redis_py.is_none() {
            missing.push("redis-py (python3 -m pip install redis)");
        }
        (
            format!(
                "lockledger {}  redis_py not measured: missing {}; scripts/bench.sh installs both",
                rate(m_ll),
                missing.join(" and ")
            ),
            Verdict::Skip,
        )
    };
    ctx.report("http_single_client", body, verdict);
    ctx.detail(format!(
        "medians of {} rounds; range lockledger {}  redis_py {}",
        ctx.set.rounds,
        spread(&ll),
        if rd.is_empty() {
            "-".into()
        } else {
            spread(&rd)
        }
    ));
    ctx.detail(format!(
        "breakdown: round trip GET /healthz p50 {}; acquire p50 {} p99 {}; release p50 {} p99 {}; service CPU {:.0} µs per pair",
        us(pct(&hz, 0.5)),
        us(pct(&acq, 0.5)),
        us(pct(&acq, 0.99)),
        us(pct(&rel, 0.5)),
        us(pct(&rel, 0.99)),
        median(&cpu_per_pair)
    ));
    Ok(())
}

// ------------------------------------------------------------------ 3. concurrency

fn bench_concurrent(ctx: &mut Ctx) -> R<()> {
    println!("\n[concurrent] 16 keep-alive HTTP clients on 16 distinct locks vs 1 client");
    println!("  ({})", other_work(&ctx.pids()));
    let port = ctx.main_service()?;
    let spid = ctx.main.as_ref().map(|s| s.pid()).unwrap_or(0);
    let dur = ctx.dur();
    let (mut one, mut many) = (Vec::new(), Vec::new());
    let (mut cores1, mut cores16, mut bench16) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ctx.set.rounds {
        let mut r1 = 0.0;
        let mut r16 = 0.0;
        for side in 0..2 {
            if (side == 0) == (round % 2 == 0) {
                let l = http_load(port, spid, 1, "conc", dur)?;
                r1 = l.rate();
                cores1.push(l.server_cores);
            } else {
                let l = http_load(port, spid, 16, "conc", dur)?;
                r16 = l.rate();
                cores16.push(l.server_cores);
                bench16.push(l.bench_cores);
            }
        }
        one.push(r1);
        many.push(r16);
        ctx.detail(format!(
            "round {}: 1 client {}  16 clients {}  ({} first)",
            round + 1,
            rate(r1),
            rate(r16),
            if round % 2 == 0 {
                "1 client"
            } else {
                "16 clients"
            }
        ));
    }
    let (m1, m16) = (median(&one), median(&many));
    let ratio = m16 / m1;
    ctx.report(
        "http_16_clients",
        format!(
            "16 clients {}  1 client {}  ratio {ratio:.2} (target >= 4.0)",
            rate(m16),
            rate(m1)
        ),
        Verdict::of(ratio >= 4.0),
    );
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    ctx.detail(format!(
        "CPU (cores, of {ncpu}): service {:.2} with 1 client, {:.2} with 16 (+ bench clients {:.2}); service CPU per pair {:.0} µs (1) vs {:.0} µs (16)",
        median(&cores1),
        median(&cores16),
        median(&bench16),
        median(&cores1) * 1e6 / m1,
        median(&cores16) * 1e6 / m16
    ));
    Ok(())
}

// ------------------------------------------------------------------ 4. large database

fn owner_name(i: u64) -> String {
    format!("conv{i:06}")
}

/// Fills a migrated registry.db with `owners` × 6 lock rows and `events` history rows
/// (acquired/released pairs on random locks, oldest first, over the last 7 days).
fn fill_big_db(storage: &Path, owners: u64, events: u64, rng: &mut Rng) -> R<()> {
    drop(Registry::open(Config::defaults(storage)).map_err(|e| format!("open: {e}"))?);
    let db = storage.join("registry.db");
    let mut conn = rusqlite::Connection::open(&db).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    // A bulk load without a journal (the registry's writer thread may take a moment to
    // close its connection, hence the retries); WAL is switched back on afterwards, so
    // the file ends up exactly as the service expects it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mode = conn.query_row("PRAGMA journal_mode = OFF", [], |r| r.get::<_, String>(0));
        match mode {
            Ok(m) if m.eq_ignore_ascii_case("off") => break,
            other if Instant::now() > deadline => {
                return Err(format!(
                    "cannot turn the journal off for the bulk load: {other:?}"
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    conn.execute_batch(
        "PRAGMA synchronous = OFF; PRAGMA cache_size = -1000000; PRAGMA temp_store = MEMORY;",
    )
    .map_err(|e| e.to_string())?;
    // Indexes of lock_events are dropped for the load and re-created from their exact
    // migration SQL afterwards (sorting once is much faster than 10M random inserts).
    let indexes: Vec<(String, String)> = {
        let mut st = conn
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'lock_events' AND sql IS NOT NULL")
            .map_err(|e| e.to_string())?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())?
    };
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    for (name, _) in &indexes {
        tx.execute_batch(&format!("DROP INDEX \"{name}\""))
            .map_err(|e| e.to_string())?;
    }
    let fields = CONVERSATION_FIELDS;
    let nf = fields.len() as u64;
    let n_locks = owners * nf;
    let events = events / 2 * 2;
    // The locks of the acquired/released pairs, drawn first so that the lock rows (with
    // their newest tokens) can go in before the events that reference them.
    let pair_locks: Vec<u64> = (0..events / 2).map(|_| rng.below(n_locks)).collect();
    let mut tokens = vec![0u32; n_locks as usize];
    for &lock in &pair_locks {
        tokens[lock as usize] += 1;
    }
    let span: i64 = 7 * 24 * 3600 * 1000;
    let base = now_ms() - span - 60_000;
    let step = span / events.max(1) as i64;
    const OPS: [&str; 4] = [
        "send_message",
        "stream_reply",
        "save_memory",
        "index_documents",
    ];
    {
        let mut lk = tx
            .prepare(
                "INSERT INTO locks (lock_id, namespace, owner, field, file, last_token, created_at)
                 VALUES (?1, 'conversation', ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(|e| e.to_string())?;
        for o in 0..owners {
            let owner = owner_name(o);
            for (f, field) in fields.iter().enumerate() {
                let lock = o * nf + f as u64;
                lk.execute(rusqlite::params![
                    lock as i64 + 1,
                    owner,
                    field,
                    format!("{owner}_{field}.lock"),
                    tokens[lock as usize] as i64,
                    base
                ])
                .map_err(|e| e.to_string())?;
            }
        }
        let mut ev = tx
            .prepare(
                "INSERT INTO lock_events (event_id, at, lock_id, namespace, owner, field, event, token,
                     pid, host, holder, operation, actor, reason, held_ms)
                 VALUES (?1, ?2, ?3, 'conversation', ?4, ?5, ?6, ?7, ?8, 'bench-host', 'chat-app', ?9,
                     NULL, NULL, ?10)",
            )
            .map_err(|e| e.to_string())?;
        let mut issued = vec![0u32; n_locks as usize];
        for (i, &lock) in pair_locks.iter().enumerate() {
            let owner = owner_name(lock / nf);
            let field = fields[(lock % nf) as usize];
            let t = &mut issued[lock as usize];
            *t += 1;
            let token = *t as i64;
            let pid = 1000 + rng.below(60_000) as i64;
            let op = OPS[rng.below(4) as usize];
            let at = base + 2 * i as i64 * step;
            let held = 1 + rng.below((2 * step).clamp(1, 5000) as u64) as i64;
            let id = 2 * i as i64 + 1;
            ev.execute(rusqlite::params![
                id,
                at,
                lock as i64 + 1,
                owner,
                field,
                "acquired",
                token,
                pid,
                op,
                None::<i64>
            ])
            .map_err(|e| e.to_string())?;
            ev.execute(rusqlite::params![
                id + 1,
                at + held,
                lock as i64 + 1,
                owner,
                field,
                "released",
                token,
                pid,
                op,
                held
            ])
            .map_err(|e| e.to_string())?;
        }
    }
    for (_, sql) in &indexes {
        tx.execute_batch(sql).map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if mode != "wal" {
        return Err(format!(
            "could not switch back to WAL (journal_mode={mode})"
        ));
    }
    Ok(())
}

struct Series {
    sorted: Vec<f64>,
    capped: bool,
}

impl Series {
    fn summary(&self) -> String {
        format!(
            "p50 {} p99 {} (n={}{})",
            ms(pct(&self.sorted, 0.5)),
            ms(pct(&self.sorted, 0.99)),
            self.sorted.len(),
            if self.capped {
                ", stopped at the time cap"
            } else {
                ""
            }
        )
    }
    fn p99(&self) -> f64 {
        pct(&self.sorted, 0.99)
    }
}

/// Times `f` for each owner after a short warm-up, stopping early at `cap`.
fn series(
    owners: &[String],
    warm: usize,
    cap: Duration,
    mut f: impl FnMut(&str) -> R<()>,
) -> R<Series> {
    let t = Instant::now();
    for o in owners.iter().take(warm) {
        f(o)?;
        if t.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let start = Instant::now();
    let mut lat = Vec::with_capacity(owners.len());
    let mut capped = false;
    for o in owners.iter().skip(warm) {
        let a = Instant::now();
        f(o)?;
        lat.push(a.elapsed().as_secs_f64() * 1e3);
        if start.elapsed() > cap && lat.len() < owners.len() - warm {
            capped = true;
            break;
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok(Series {
        sorted: lat,
        capped,
    })
}

fn bench_bigdb(ctx: &mut Ctx) -> R<()> {
    let (owners, events) = (ctx.set.owners, ctx.set.events);
    println!(
        "\n[bigdb] one owner's status and newest 50 events with {owners} owners and {events} events"
    );
    println!("  ({})", other_work(&ctx.pids()));
    let storage = ctx.dir("bigdb")?;
    let t = Instant::now();
    fill_big_db(&storage, owners, events, &mut ctx.rng)?;
    let size: u64 = ["registry.db", "registry.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(storage.join(f)).ok())
        .map(|m| m.len())
        .sum();
    ctx.detail(format!(
        "filled {} lock rows and {} events in {:.1} s (database {:.0} MB)",
        owners * CONVERSATION_FIELDS.len() as u64,
        events / 2 * 2,
        t.elapsed().as_secs_f64(),
        size as f64 / 1e6
    ));
    let warm = 20;
    let n = ctx.set.samples + warm;
    let pick =
        |rng: &mut Rng| -> Vec<String> { (0..n).map(|_| owner_name(rng.below(owners))).collect() };
    let lists: Vec<Vec<String>> = (0..4).map(|_| pick(&mut ctx.rng)).collect();
    // Owners that were ever locked have their lock files on disk: create them for the
    // owners asked about, so status probes real files.
    let locks_dir = storage.join("locks");
    for owner in lists.iter().flatten() {
        for field in CONVERSATION_FIELDS {
            let p = locks_dir.join(format!("{owner}_{field}.lock"));
            File::options()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| format!("create {}: {e}", p.display()))?;
        }
    }
    let cap = ctx.set.series_cap;

    // In-process, through the public Registry API.
    let reg = Registry::open(Config::defaults(&storage)).map_err(|e| format!("open: {e}"))?;
    let st_in = series(&lists[0], warm, cap, |o| {
        reg.status(None, o).map(|_| ()).map_err(|e| e.to_string())
    })?;
    ctx.detail(format!("in-process Registry::status  {}", st_in.summary()));
    let hi_in = series(&lists[1], warm, cap, |o| {
        let q = HistoryQuery {
            owner: Some(o.to_string()),
            limit: 50,
            ..HistoryQuery::default()
        };
        let rows = reg.history(&q).map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Err(format!("no history for {o}"));
        }
        Ok(())
    })?;
    ctx.detail(format!("in-process Registry::history {}", hi_in.summary()));
    drop(reg);

    // Through the real service.
    let t = Instant::now();
    let svc = Service::start(
        &ctx.server_bin,
        &storage,
        false,
        "service on the large database",
        ctx.rust_log.as_deref(),
    )?;
    let start_s = t.elapsed().as_secs_f64();
    let port = svc.port;
    let pid = svc.pid();
    ctx.bigdb = Some(svc);
    // The first write right after start-up waits behind the start-up upkeep (reconcile,
    // history pruning) on this database.
    let mut c = Http::new(port);
    let t = Instant::now();
    c.pair(&owner_name(0))?;
    let first_write = t.elapsed().as_secs_f64() * 1e3;
    if let Some(s) = ctx.bigdb.as_mut() {
        s.settle();
    }
    ctx.detail(format!(
        "service (pid {pid}) listening {start_s:.1} s after launch; first acquire+release right after {}",
        ms(first_write)
    ));
    let st_http = series(&lists[2], warm, cap, |o| {
        c.ok("GET", &format!("/api/v1/locks/{o}"), None).map(|_| ())
    })?;
    ctx.detail(format!(
        "HTTP GET /api/v1/locks/{{owner}}          {}",
        st_http.summary()
    ));
    let hi_http = series(&lists[3], warm, cap, |o| {
        c.ok("GET", &format!("/api/v1/history?owner={o}&limit=50"), None)
            .map(|_| ())
    })?;
    ctx.detail(format!(
        "HTTP GET /api/v1/history?owner=&limit=50 {}",
        hi_http.summary()
    ));

    let scale = format!("{owners} owners, {events} events");
    ctx.report(
        "owner_status_p99",
        format!(
            "http p99 {}  in-process p99 {}  (target p99 < 2 ms; {scale})",
            ms(st_http.p99()),
            ms(st_in.p99())
        ),
        Verdict::of(st_http.p99() < 2.0 && st_in.p99() < 2.0),
    );
    ctx.report(
        "owner_history_p99",
        format!(
            "http p99 {}  in-process p99 {}  (target p99 < 5 ms; newest 50 events; {scale})",
            ms(hi_http.p99()),
            ms(hi_in.p99())
        ),
        Verdict::of(hi_http.p99() < 5.0 && hi_in.p99() < 5.0),
    );
    Ok(())
}

// ------------------------------------------------------------------ 5. release latency

fn lat_line(v: &[f64], target: f64, what: &str) -> (String, Verdict) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let max = s.last().copied().unwrap_or(f64::NAN);
    let misses = s.iter().filter(|x| !x.is_finite()).count();
    let body = format!(
        "p50 {} max {} over {} (target < {target:.0} ms {what}){}",
        ms(pct(&s, 0.5)),
        if max.is_finite() {
            ms(max)
        } else {
            "never (timed out)".into()
        },
        s.len(),
        if misses > 0 {
            format!("; {misses} never freed within the timeout")
        } else {
            String::new()
        }
    );
    (body, Verdict::of(!s.is_empty() && max < target))
}

/// Opens a streamed demo reply on conversation `c`, waits until its locks are held, drops
/// the connection and times until both lock files are free. Returns ms (messages, all).
fn dropped_stream_once(port: u16, locks: &Path, offset: Duration) -> R<(f64, f64)> {
    let files = [
        locks.join("c_messages.lock"),
        locks.join("c_message_operations.lock"),
    ];
    let sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let body = br#"{"message":"benchmark"}"#;
    let req = format!(
        "POST /demo/chat/c HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut reader = BufReader::new(sock);
    reader
        .get_mut()
        .write_all(&[req.as_bytes(), body].concat())
        .map_err(|e| e.to_string())?;
    let head = read_head(&mut reader).map_err(|e| e.to_string())?;
    if head.status != 200 || !head.chunked {
        return Err(format!(
            "demo chat answered HTTP {} (chunked: {})",
            head.status, head.chunked
        ));
    }
    let mut first = Vec::new();
    read_chunk(&mut reader, &mut first).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !(is_held(&files[0])? && is_held(&files[1])?) {
        if Instant::now() > deadline {
            return Err("the streamed reply's locks are not held".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(offset);
    // Read what has arrived so the close is a plain FIN (the slower case to notice), then
    // close.
    let s = reader.get_mut();
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut sink = [0u8; 8192];
    loop {
        match s.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let t0 = Instant::now();
    drop(reader);
    let deadline = t0 + Duration::from_secs(5);
    let every = Duration::from_micros(200);
    let a = wait_free(&files[0], deadline, every)?;
    let b = wait_free(&files[1], deadline, every)?;
    let since = |t: Option<Instant>| t.map_or(f64::INFINITY, |t| (t - t0).as_secs_f64() * 1e3);
    let wait_gone = Instant::now() + Duration::from_secs(6);
    // A lock never freed must not leak into the next round.
    while (a.is_none() || b.is_none()) && Instant::now() < wait_gone {
        if !is_held(&files[0])? && !is_held(&files[1])? {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((since(a), since(a).max(since(b))))
}

fn bench_release(ctx: &mut Ctx) -> R<()> {
    println!(
        "\n[release] how soon locks come free: dropped stream, dead client pid, expired lease"
    );
    println!("  ({})", other_work(&ctx.pids()));
    if ctx.demo.is_none() {
        let storage = ctx.dir("demo")?;
        let mut svc = Service::start(
            &ctx.server_bin,
            &storage,
            true,
            "demo service",
            ctx.rust_log.as_deref(),
        )?;
        svc.settle();
        println!(
            "  started lockledger serve --demo (pid {}, port {})",
            svc.pid(),
            svc.port
        );
        ctx.demo = Some(svc);
    }
    let (port, locks) = match &ctx.demo {
        Some(s) => (s.port, s.storage.join("locks")),
        None => return Err("no demo service".into()),
    };
    let n = ctx.set.repeat;

    // (a) a dropped streaming connection.
    let (mut first, mut all) = (Vec::new(), Vec::new());
    for i in 0..n {
        let offset = Duration::from_millis((i as u64 * 7) % 25);
        let (a, b) = dropped_stream_once(port, &locks, offset)?;
        first.push(a);
        all.push(b);
    }
    let (body, v) = lat_line(&all, 50.0, "from close to both locks free");
    ctx.report("dropped_stream_release", body, v);
    let mut f = first.clone();
    f.sort_by(f64::total_cmp);
    ctx.detail(format!(
        "messages lock alone: p50 {} max {}; each: {}",
        ms(pct(&f, 0.5)),
        ms(f.last().copied().unwrap_or(f64::NAN)),
        all.iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));

    // (b) a client pid that dies.
    let mut c = Http::new(port);
    let file = locks.join("deadpid_messages.lock");
    let mut dead = Vec::new();
    // The reaper runs periodically: spread the moments of death over its period instead
    // of always landing at the same phase.
    let phase = |i: usize| Duration::from_millis((i as u64 * 37) % 250);
    for i in 0..n {
        let child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("sleep: {e}"))?;
        let mut sleeper = Sleeper(child);
        let body = format!(
            r#"{{"holder":"bench","operation":"dead_pid","pid":{},"ttl_ms":60000}}"#,
            sleeper.0.id()
        );
        let (id, _) = c.acquire("deadpid", "messages", body.as_bytes())?;
        if !is_held(&file)? {
            return Err("the dead-pid lease's lock is not held".into());
        }
        std::thread::sleep(phase(i));
        let t0 = Instant::now();
        let _ = sleeper.0.kill();
        let _ = sleeper.0.wait();
        let freed = wait_free(&file, t0 + Duration::from_secs(5), Duration::from_millis(1))?;
        match freed {
            Some(t) => dead.push((t - t0).as_secs_f64() * 1e3),
            None => {
                dead.push(f64::INFINITY);
                let _ = c.release(&id);
            }
        }
    }
    let (body, v) = lat_line(&dead, 1500.0, "from SIGKILL to lock free");
    ctx.report("dead_pid_release", body, v);
    ctx.detail(format!(
        "each: {}",
        dead.iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));

    // (c) a lease that is not renewed.
    let file = locks.join("expiry_messages.lock");
    let mut expired = Vec::new();
    for i in 0..n {
        std::thread::sleep(phase(i));
        let (id, expires_ms) = c.acquire(
            "expiry",
            "messages",
            br#"{"holder":"bench","operation":"expiry","ttl_ms":300}"#,
        )?;
        if expires_ms == 0 {
            return Err("acquire answered no expires_at".into());
        }
        let until = Instant::now() + Duration::from_millis(300 + 5000);
        match wait_free(&file, until, Duration::from_millis(1))? {
            Some(_) => expired.push((now_ms() - expires_ms) as f64),
            None => {
                expired.push(f64::INFINITY);
                let _ = c.release(&id);
            }
        }
    }
    let (body, v) = lat_line(&expired, 1000.0, "from expires_at to lock free");
    ctx.report("expired_lease_release", body, v);
    ctx.detail(format!(
        "each: {} (clock resolution 1 ms)",
        expired
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    Ok(())
}

// ------------------------------------------------------------------ 6. idle RSS

fn bench_rss(ctx: &mut Ctx) -> R<()> {
    println!("\n[rss] idle service RSS after start-up and after the benchmarks + 2 s idle");
    println!("  ({})", other_work(&ctx.pids()));
    if ctx.main.is_none() {
        let port = ctx.main_service()?;
        let spid = ctx.main.as_ref().map(|s| s.pid()).unwrap_or(0);
        let l = http_load(port, spid, 16, "rss", Duration::from_secs(2))?;
        ctx.detail(format!(
            "load before idling: 16 clients, {} pairs in {:.1} s",
            l.pairs, l.secs
        ));
    }
    std::thread::sleep(Duration::from_secs(2));
    let rows: Vec<(&'static str, &'static str, Option<u64>, Option<u64>)> = [
        (&ctx.main, "idle_rss"),
        (&ctx.demo, "idle_rss_demo"),
        (&ctx.bigdb, "idle_rss_bigdb"),
    ]
    .into_iter()
    .filter_map(|(svc, name)| {
        svc.as_ref()
            .map(|s| (name, s.label, s.rss_start_kb, vm_rss_kb(s.pid())))
    })
    .collect();
    for svc in [&ctx.main, &ctx.demo, &ctx.bigdb].into_iter().flatten() {
        let kb = |f: &str| status_kb(svc.pid(), f).map_or(f64::NAN, |k| k as f64 / 1024.0);
        ctx.detail(format!(
            "{}: RSS now = anonymous {:.1} MB + file {:.1} MB + shared memory {:.1} MB; {}",
            svc.label,
            kb("RssAnon"),
            kb("RssFile"),
            kb("RssShmem"),
            db_sizes(&svc.storage)
        ));
    }
    for (name, label, start, now) in rows {
        let mb = |kb: Option<u64>| kb.map_or(f64::NAN, |k| k as f64 / 1024.0);
        let (a, b) = (mb(start), mb(now));
        ctx.report(
            name,
            format!("{label}: {a:.1} MB after start-up, {b:.1} MB after its benchmarks + 2 s idle (target < 30 MB)"),
            Verdict::of(a < 30.0 && b < 30.0),
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ main

/// Builds the service binary of this tree next to this benchmark (a no-op when up to
/// date) and returns its path.
fn server_binary(args: &Args) -> R<PathBuf> {
    if let Some(p) = &args.server_bin {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no exe dir")?.to_path_buf();
    let release = dir.file_name().is_some_and(|n| n == "release");
    if !release {
        println!("warning: this is not a release build; run with `cargo run --release`");
    }
    if let Some(target) = dir.parent() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--bin", "lockledger", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .env("CARGO_TARGET_DIR", target);
        if release {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => {}
            other => println!(
                "warning: could not build the lockledger binary ({other:?}); using what is there"
            ),
        }
    }
    let bin = dir.join("lockledger");
    if !bin.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release --bins`",
            bin.display()
        ));
    }
    Ok(bin)
}

fn selected(args: &Args) -> R<Vec<&'static str>> {
    if args.only.is_empty() {
        return Ok(GROUPS.iter().map(|(g, _)| *g).collect());
    }
    let mut out = Vec::new();
    for want in &args.only {
        let w = want.trim();
        let g = GROUPS
            .iter()
            .find(|(g, names)| *g == w || names.contains(&w))
            .map(|(g, _)| *g)
            .ok_or_else(|| {
                format!(
                    "unknown --only {w:?}: use {}",
                    GROUPS
                        .iter()
                        .map(|(g, _)| *g)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        if !out.contains(&g) {
            out.push(g);
        }
    }
    // Always in the canonical order, whatever order they were asked in.
    Ok(GROUPS
        .iter()
        .map(|(g, _)| *g)
        .filter(|g| out.contains(g))
        .collect())
}

fn main() {
    let args = Args::parse();
    let groups = match selected(&args) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("lockledger-bench: {e}");
            std::process::exit(2);
        }
    };
    let set = Settings {
        quick: args.quick,
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 5 }).max(1),
        secs: args
            .seconds
            .unwrap_or(if args.quick { 2.0 } else { 3.0 })
            .max(0.1),
        owners: args
            .owners
            .unwrap_or(if args.quick { 10_000 } else { 100_000 })
            .max(1),
        events: args
            .events
            .unwrap_or(if args.quick { 200_000 } else { 10_000_000 })
            .max(2),
        samples: 2000,
        repeat: args
            .repeat
            .unwrap_or(if args.quick { 8 } else { 20 })
            .max(1),
        series_cap: Duration::from_secs(if args.quick { 15 } else { 30 }),
    };
    let server_bin = match server_binary(&args) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("lockledger-bench: {e}");
            std::process::exit(2);
        }
    };
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = parent.join(format!(
        "lockledger-bench-{}-{}",
        std::process::id(),
        now_ms()
    ));
    if let Err(e) = std::fs::create_dir_all(&work) {
        eprintln!("lockledger-bench: cannot create {}: {e}", work.display());
        std::process::exit(2);
    }
    // From here on the scratch directory is removed however the run ends (a panic, e.g.
    // stdout closed by `| head`, unwinds through it).
    let work = Scratch {
        path: work,
        keep: args.keep,
    };
    let started = Instant::now();
    let tree = command_line(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ],
    )
    .unwrap_or_else(|| "unknown".into());
    // What differs from the commit among the files the binaries are built from.
    let modified: Vec<String> = command_line(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "diff",
            "--name-only",
            "HEAD",
            "--",
            "src",
            "migrations",
            "Cargo.toml",
            "Cargo.lock",
        ],
    )
    .map(|s| s.lines().map(str::to_string).collect())
    .unwrap_or_default();
    let tree = match modified.len() {
        0 => format!("{tree} (src, migrations, Cargo.* as committed)"),
        1..=4 => format!("{tree} (uncommitted: {})", modified.join(", ")),
        n => format!("{tree} ({n} uncommitted source files)"),
    };
    println!(
        "lockledger-bench {} ({}) | tree {tree} | sqlite {}",
        if set.quick { "--quick" } else { "full run" },
        lockledger::clock::rfc3339(now_ms()),
        rusqlite::version()
    );
    println!(
        "machine: nproc {} | cpu {} | load average {} | {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model(),
        loadavg(),
        other_work(&[])
    );
    println!(
        "comparisons: python3 {} | filelock {} | redis-py {} | {}",
        command_line(
            "python3",
            &["-c", "import platform; print(platform.python_version())"]
        )
        .unwrap_or_else(|| "missing".into()),
        python_module("filelock").unwrap_or_else(|| "missing".into()),
        python_module("redis").unwrap_or_else(|| "missing".into()),
        command_line("redis-server", &["--version"])
            .and_then(|v| v.split_whitespace().nth(2).map(str::to_string))
            .map(|v| format!("redis-server {v}"))
            .unwrap_or_else(|| "redis-server missing".into())
    );
    println!(
        "settings: {} round(s) per comparison, {:.1} s per measurement, service RUST_LOG {}, groups {}",
        set.rounds,
        set.secs,
        args.server_rust_log.as_deref().unwrap_or("unset (info)"),
        groups.join(",")
    );
    let mut ctx = Ctx {
        set,
        server_bin,
        rust_log: args.server_rust_log.clone(),
        rng: Rng::new(args.seed),
        results: Vec::new(),
        main: None,
        demo: None,
        bigdb: None,
        work,
    };
    for group in &groups {
        let result = match *group {
            "inproc" => bench_inproc(&mut ctx),
            "http" => bench_http(&mut ctx),
            "concurrent" => bench_concurrent(&mut ctx),
            "bigdb" => bench_bigdb(&mut ctx),
            "release" => bench_release(&mut ctx),
            "rss" => bench_rss(&mut ctx),
            _ => Ok(()),
        };
        if let Err(e) = result {
            ctx.report(group, format!("could not measure: {e}"), Verdict::Error);
        }
    }
    ctx.main = None;
    ctx.demo = None;
    ctx.bigdb = None;

    println!("\n== summary ==");
    for o in &ctx.results {
        println!("{}", o.line);
    }
    let count = |v: Verdict| ctx.results.iter().filter(|o| o.verdict == v).count();
    let failed: Vec<&str> = ctx
        .results
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Fail | Verdict::Error))
        .map(|o| o.name.as_str())
        .collect();
    println!(
        "summary: {} PASS, {} FAIL, {} SKIP, {} ERROR of {} targets in {:.0} s (load average now {}; {}){}",
        count(Verdict::Pass),
        count(Verdict::Fail),
        count(Verdict::Skip),
        count(Verdict::Error),
        ctx.results.len(),
        started.elapsed().as_secs_f64(),
        loadavg(),
        other_work(&[]),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; not met: {}", failed.join(", "))
        }
    );
    let code = if count(Verdict::Error) > 0 {
        2
    } else if count(Verdict::Fail) > 0 {
        1
    } else {
        0
    };
    drop(ctx);
    std::process::exit(code);
}
