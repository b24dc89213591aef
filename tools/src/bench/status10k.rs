//! Group `status10k`: one owner's status while 10,000 flocks are held on the machine, in
//! process and over HTTP, and what one read of `/proc/locks` costs meanwhile.
//!
//! A helper process (this benchmark started with the hidden `--hold-flocks DIR --count
//! N`) opens and flocks N lock files of other owners in the service's own locks
//! directory, as a busy chat app would, and holds them until its stdin closes. The owners
//! asked about (20, 5 of them with a lease held by the service) have their lock files and
//! records; status is timed before the 10,000 are held (a short control series) and while
//! they are.
//!
//! Why: `/proc/locks` is printed a 4 KiB page per `read`, each page taking a machine-wide
//! lock; with 10,000 flocks a whole read took ~50 ms here. Status must not depend on it
//! then (the service reads it only while it is small, else it probes with a gated flock).
//!
//! Invariants: the helper is killed (and its flocks go) when its guard drops, on every
//! path; its file-descriptor limit is raised to the hard limit first, and a hard limit
//! too small for N is an error naming it.

use crate::bigdb::series;
use crate::ctx::Ctx;
use crate::floor::round_trip_us;
use crate::load::LeaseClient;
use crate::machine::{other_work, raise_nofile};
use crate::report::{median, ms, Data, Floor, Series, Verdict};
use crate::services::Service;
use crate::R;
use lockledger::{Config, Registry};
use lockledger_harness::ChildGuard;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Flocks held by the helper.
pub const HELD: usize = 10_000;
const OWNERS: usize = 20;
const LEASED: usize = 5;

/// The helper's side (`--hold-flocks DIR --count N`): flock N lock files of other owners
/// in DIR, print `ready N`, and hold them until stdin closes.
pub fn hold_flocks_main(dir: &Path, n: usize) -> R<()> {
    let limit = raise_nofile();
    if limit < n as u64 + 64 {
        return Err(format!(
            "the file-descriptor limit is {limit}; holding {n} flocks needs more (ulimit -n)"
        ));
    }
    let mut files = Vec::with_capacity(n);
    for i in 0..n {
        let p = dir.join(format!("other{i:05}_messages.lock"));
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|e| format!("open {}: {e}", p.display()))?;
        // SAFETY: the descriptor belongs to `f`, which lives until the end of this
        // function.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "flock {}: {}",
                p.display(),
                std::io::Error::last_os_error()
            ));
        }
        files.push(f);
    }
    println!("ready {}", files.len());
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// Starts the helper and waits (up to 60 s) until it holds them all.
fn start_helper(dir: &Path, n: usize) -> R<ChildGuard> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = ChildGuard::spawn(
        Command::new(exe)
            .arg("--hold-flocks")
            .arg(dir)
            .args(["--count", &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .map_err(|e| format!("cannot start the flock helper: {e}"))?;
    let out = child.stdout.take().ok_or("no helper stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) if line.trim() == format!("ready {n}") => Ok(child),
        Ok(line) => Err(format!("the flock helper said {line:?}")),
        Err(_) => Err("the flock helper did not get ready within 60 s".into()),
    }
}

/// Times `n` whole reads of /proc/locks: (ms each, bytes, lines).
fn proc_locks_reads(n: usize) -> R<(Vec<f64>, usize, usize)> {
    let mut times = Vec::new();
    let mut size = (0, 0);
    for _ in 0..n {
        let t = Instant::now();
        let raw = std::fs::read("/proc/locks").map_err(|e| format!("/proc/locks: {e}"))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        size = (raw.len(), raw.iter().filter(|b| **b == b'\n').count());
    }
    Ok((times, size.0, size.1))
}

fn max_of(s: &Series) -> f64 {
    s.sorted.last().copied().unwrap_or(f64::NAN)
}

pub fn bench_status10k(ctx: &mut Ctx) -> R<()> {
    println!("\n[status10k] one owner's status while {HELD} flocks are held on the machine");
    println!("  ({})", other_work(&ctx.pids()));
    let storage = ctx.dir("status10k")?;
    let mut svc = Service::start(
        &ctx.server_bin,
        &storage,
        false,
        "status10k service",
        ctx.rust_log.as_deref(),
    )?;
    svc.settle();
    let port = svc.port;
    let locks = storage.join("locks");
    std::fs::create_dir_all(&locks).map_err(|e| format!("mkdir: {e}"))?;

    // The owners asked about: each lock known and its file on disk; a few held.
    let owners: Vec<String> = (0..OWNERS).map(|i| format!("s10k{i:02}")).collect();
    let mut c = LeaseClient::new(port);
    for o in &owners {
        c.pair(o)?;
    }
    let mut leases = Vec::new();
    for o in owners.iter().take(LEASED) {
        let (id, _) = c.acquire(
            o,
            "messages",
            br#"{"holder":"bench","operation":"status10k","ttl_ms":600000}"#,
        )?;
        leases.push(id);
    }
    let reg = Registry::open(Config::load(&storage, None).map_err(|e| e.to_string())?)
        .map_err(|e| format!("open: {e}"))?;
    // A sanity check of the answers (a fast wrong answer is not a result).
    let check = |reg: &Registry, c: &mut LeaseClient| -> R<()> {
        for (i, o) in owners.iter().enumerate().take(LEASED + 1) {
            let want = if i < LEASED { "held" } else { "free" };
            let v: serde_json::Value =
                serde_json::from_slice(&c.ok("GET", &format!("/api/v1/locks/{o}"), None)?)
                    .map_err(|e| e.to_string())?;
            let http = v["locks"]
                .as_array()
                .and_then(|ls| ls.iter().find(|l| l["field"] == "messages"))
                .map(|l| l["state"].as_str().unwrap_or("?").to_string());
            let inproc = reg
                .status(None, o)
                .map_err(|e| e.to_string())?
                .locks
                .iter()
                .find(|l| l.field == "messages")
                .map(|l| l.state.as_str().to_string());
            if http.as_deref() != Some(want) || inproc.as_deref() != Some(want) {
                return Err(format!(
                    "{o}/messages should be {want}: HTTP says {http:?}, in-process {inproc:?}"
                ));
            }
        }
        Ok(())
    };
    let pick: Vec<String> = (0..ctx.set.samples + 20)
        .map(|i| owners[i % OWNERS].clone())
        .collect();
    let cap = ctx.set.series_cap;
    let control: Vec<String> = pick.iter().take(520).cloned().collect();

    // Control: the same owners before the flocks are held.
    check(&reg, &mut c)?;
    let (before_reads, before_bytes, _) = proc_locks_reads(3)?;
    let in0 = series(&control, 20, cap, |o| {
        reg.status(None, o).map(|_| ()).map_err(|e| e.to_string())
    })?;
    let http0 = series(&control, 20, cap, |o| {
        c.ok("GET", &format!("/api/v1/locks/{o}"), None).map(|_| ())
    })?;
    ctx.detail(format!(
        "before: /proc/locks {} bytes, read in {}; status in-process {}, HTTP {}",
        before_bytes,
        ms(median(&before_reads)),
        in0.summary(),
        http0.summary()
    ));

    let t = Instant::now();
    let helper = start_helper(&locks, HELD)?;
    ctx.detail(format!(
        "helper (pid {}) holds {HELD} flocks on lock files of other owners in the service's locks directory ({:.1} s to take them)",
        helper.pid(),
        t.elapsed().as_secs_f64()
    ));
    let (reads, bytes, lines) = proc_locks_reads(5)?;
    check(&reg, &mut c)?;
    let st_in = series(&pick, 20, cap, |o| {
        reg.status(None, o).map(|_| ()).map_err(|e| e.to_string())
    })?;
    let st_http = series(&pick, 20, cap, |o| {
        c.ok("GET", &format!("/api/v1/locks/{o}"), None).map(|_| ())
    })?;
    check(&reg, &mut c)?;
    // A full run also spreads status reads over 12 s, longer than the service's 10 s
    // back-off after an expensive /proc/locks read, to see what the read costs when the
    // back-off runs out.
    let spread = if ctx.set.quick {
        None
    } else {
        let (mut h, mut i) = (Vec::new(), Vec::new());
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(12) {
            for (k, o) in owners.iter().enumerate().take(4) {
                let a = Instant::now();
                c.ok("GET", &format!("/api/v1/locks/{o}"), None)?;
                h.push(a.elapsed().as_secs_f64() * 1e3);
                if k % 2 == 0 {
                    let a = Instant::now();
                    reg.status(None, o).map_err(|e| e.to_string())?;
                    i.push(a.elapsed().as_secs_f64() * 1e3);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some((h, i))
    };
    let (reads_after, _, _) = proc_locks_reads(3)?;
    let bare_p99 = {
        let bport = ctx.bare()?.port;
        round_trip_us(bport, "/bare", Duration::from_millis(700))?.1
    };
    drop(helper);
    for id in &leases {
        c.release(id)?;
    }
    drop(reg);
    drop(svc);

    let mut all_reads = reads.clone();
    all_reads.extend(&reads_after);
    let read_ms = median(&all_reads);
    let read_max = all_reads.iter().copied().fold(0.0, f64::max);
    ctx.detail(format!(
        "one read of /proc/locks with {HELD} flocks held: p50 {} max {} over {} reads ({} KiB, {} lines); 5 held before: {}",
        ms(read_ms),
        ms(read_max),
        all_reads.len(),
        bytes / 1024,
        lines,
        ms(median(&before_reads))
    ));
    ctx.detail(format!(
        "in-process Registry::status {} max {}",
        st_in.summary(),
        ms(max_of(&st_in))
    ));
    ctx.detail(format!(
        "HTTP GET /api/v1/locks/{{owner}} {} max {}",
        st_http.summary(),
        ms(max_of(&st_http))
    ));
    if let Some((h, i)) = &spread {
        let over = |v: &[f64]| v.iter().filter(|x| **x > 5.0).count();
        let top = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(|a, b| b.total_cmp(a));
            v.iter()
                .take(3)
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        ctx.detail(format!(
            "spread over 12 s: HTTP {} status reads, {} over 5 ms (slowest {} ms); in-process {}, {} over 5 ms (slowest {} ms)",
            h.len(),
            over(h),
            top(h),
            i.len(),
            over(i),
            top(i)
        ));
    }
    let floor = Floor {
        what: format!("bare warp round trip p99 {bare_p99:.0} µs"),
        us: bare_p99,
        measured_us: st_http.p99() * 1e3,
    };
    ctx.report_with(
        "owner_status_10k_flocks_p99",
        format!(
            "http p99 {}  in-process p99 {}  (target p99 < 2 ms; {HELD} flocks held on the machine; one /proc/locks read {})",
            ms(st_http.p99()),
            ms(st_in.p99()),
            ms(read_ms)
        ),
        Verdict::of(st_http.p99() < 2.0 && st_in.p99() < 2.0),
        Data::new(st_http.p99(), "ms")
            .target("p99 < 2 ms (http and in-process)")
            .floor(Some(floor.clone()))
            .more("in_process_p99_ms", st_in.p99())
            .more("http_max_ms", max_of(&st_http))
            .more("in_process_max_ms", max_of(&st_in))
            .more("proc_locks_read_ms", read_ms)
            .more("proc_locks_read_max_ms", read_max)
            .more("proc_locks_bytes", bytes as f64)
            .more("flocks_held", HELD as f64),
    );
    ctx.floor_line(
        "owner_status_10k_flocks_p99",
        "status over HTTP (p99)",
        &floor,
    );
    Ok(())
}
