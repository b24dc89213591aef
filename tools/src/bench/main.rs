//! lockledger-bench: the performance targets of DESIGN.md §10, measured side by side in
//! one run.
//!
//! For each target it prints the measured numbers next to their comparison (Python
//! `filelock`, redis-py's `Lock` against a local `redis-server`, one HTTP client against
//! sixteen, or a fixed limit), the ratio or limit, and PASS / FAIL / SKIP; rows without a
//! target (the PostgreSQL backend's) say INFO and never fail the run; a summary closes
//! the run. Comparisons are interleaved round by round (A B, B A, A B, ...) and each side's
//! median over the rounds is compared, because the machine is small and shared.
//!
//! Run: `cargo run --release -p lockledger-tools --bin lockledger-bench -- [--quick]
//! [--only NAME[,NAME]]` (`scripts/bench.sh` installs redis-server, filelock and redis-py
//! first). Exit code: 0 when every target that ran passed (or was skipped), 1 when a
//! target failed, 2 when a measurement could not be taken (harness error).
//!
//! This file owns the command line, the choice of groups, the run's header and summary
//! and `--json`; each group is a module (`inproc`, `http`, `concurrent`, `pg`, `bigdb`,
//! `status10k`, `release`, `limits`, `rss`), the run's state is `ctx`, services and
//! scratch space are `services`, the floors each path is compared with are `floor`.
//!
//! Invariants: nothing here changes the library. The service is the real `lockledger
//! serve` binary of this tree (started through `lockledger-harness`), the in-process
//! numbers use the public `Registry` API, and databases are filled through the library's
//! store code (`lockledger::store::records`), never with SQL of the benchmark's own.

mod bigdb;
mod concurrent;
mod ctx;
mod floor;
mod http;
mod inproc;
mod limits;
mod load;
mod machine;
mod pg;
mod release;
mod report;
mod rss;
mod services;
mod status10k;

use clap::Parser;
use ctx::{Ctx, Settings};
use lockledger_tools::rng::Rng;
use machine::{command_line, cpu_model, loadavg, other_work, python_module};
use report::{now_ms, Verdict};
use services::Scratch;
use std::path::PathBuf;
use std::time::{Duration, Instant};

type R<T> = Result<T, String>;

#[derive(Debug, Parser)]
#[command(about = "lockledger benchmarks: the DESIGN.md §10 targets, side by side in one run")]
struct Args {
    /// Short run: one round per comparison, 10,000 owners and 200,000 events
    #[arg(long)]
    quick: bool,
    /// Run only these (comma-separated or repeated): inproc, http, concurrent, pg, bigdb,
    /// status10k, release, limits, rss, or a result name such as in_process_pairs
    /// (`limits` is not part of a --quick run unless named here)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write every result as JSON to this file: {run, results: [{name, value, unit,
    /// comparison, ratio, target, pass, verdict, floor, more, line}]}; run.counts has
    /// the number of results of each verdict (INFO rows have no target)
    #[arg(long)]
    json: Option<PathBuf>,
    /// (internal) hold N flocks on lock files in DIR until stdin closes
    #[arg(long, hide = true)]
    hold_flocks: Option<PathBuf>,
    #[arg(long, hide = true, default_value_t = 0)]
    count: usize,
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
    /// The `lockledger` binary to serve with (default: $LOCKLEDGER_BIN, else built from
    /// this tree next to this benchmark)
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

/// Groups of targets and the names `--only` accepts for each, in the order they run.
const GROUPS: [(&str, &[&str]); 9] = [
    ("inproc", &["in_process_pairs", "in_process"]),
    ("http", &["http_single_client", "redis"]),
    ("concurrent", &["http_16_clients", "concurrency"]),
    (
        "pg",
        &["pg_http_single_client", "pg_http_16_clients", "postgres"],
    ),
    (
        "bigdb",
        &["owner_status_p99", "owner_history_p99", "status", "history"],
    ),
    ("status10k", &["owner_status_10k_flocks_p99"]),
    (
        "release",
        &[
            "dropped_stream_release",
            "dead_pid_release",
            "expired_lease_release",
        ],
    ),
    ("limits", &[]),
    ("rss", &["idle_rss", "idle_rss_demo", "idle_rss_bigdb"]),
];

/// Groups a `--quick` run leaves out unless `--only` names them.
const NOT_QUICK: [&str; 1] = ["limits"];

/// The repository root (this package is `tools/` in the workspace).
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The service binary: `--server-bin`, else `LOCKLEDGER_BIN`, else built from this tree
/// next to this benchmark (a no-op when up to date).
fn server_binary(args: &Args) -> R<PathBuf> {
    if let Some(p) = &args.server_bin {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let release = exe
        .parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "release");
    if !release {
        println!("warning: this is not a release build; run with `cargo run --release`");
    }
    lockledger_tools::service_binary(true)
}

fn selected(args: &Args) -> R<Vec<&'static str>> {
    if args.only.is_empty() {
        return Ok(GROUPS
            .iter()
            .map(|(g, _)| *g)
            .filter(|g| !(args.quick && NOT_QUICK.contains(g)))
            .collect());
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

fn settings(args: &Args) -> Settings {
    let q = args.quick;
    Settings {
        quick: q,
        rounds: args.rounds.unwrap_or(if q { 1 } else { 5 }).max(1),
        secs: args.seconds.unwrap_or(if q { 2.0 } else { 3.0 }).max(0.1),
        owners: args
            .owners
            .unwrap_or(if q { 10_000 } else { 100_000 })
            .max(1),
        events: args
            .events
            .unwrap_or(if q { 200_000 } else { 10_000_000 })
            .max(2),
        samples: 2000,
        repeat: args.repeat.unwrap_or(if q { 8 } else { 20 }).max(1),
        series_cap: Duration::from_secs(if q { 15 } else { 30 }),
    }
}

/// `git describe` of the tree, and what differs from the commit among the files the
/// binaries are built from.
fn tree_description() -> String {
    let tree = command_line("git", &["-C", ROOT, "describe", "--always", "--dirty"])
        .unwrap_or_else(|| "unknown".into());
    let modified: Vec<String> = command_line(
        "git",
        &[
            "-C",
            ROOT,
            "diff",
            "--name-only",
            "HEAD",
            "--",
            "src",
            "migrations",
            "tools",
            "tests/support",
            "Cargo.toml",
            "Cargo.lock",
        ],
    )
    .map(|s| s.lines().map(str::to_string).collect())
    .unwrap_or_default();
    match modified.len() {
        0 => format!("{tree} (src, migrations, Cargo.* as committed)"),
        1..=4 => format!("{tree} (uncommitted: {})", modified.join(", ")),
        n => format!("{tree} ({n} uncommitted source files)"),
    }
}

fn print_header(set: &Settings, args: &Args, groups: &[&str]) {
    println!(
        "lockledger-bench {} ({}) | tree {} | sqlite {}",
        if set.quick { "--quick" } else { "full run" },
        lockledger::clock::rfc3339(now_ms()),
        tree_description(),
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
}

/// Prints the summary and returns the exit code.
fn summary(ctx: &Ctx, started: Instant) -> i32 {
    println!("\n== summary ==");
    for o in &ctx.results {
        println!("{}", o.line);
    }
    for f in &ctx.floors {
        println!("{f}");
    }
    let count = |v: Verdict| ctx.results.iter().filter(|o| o.verdict == v).count();
    let failed: Vec<&str> = ctx
        .results
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Fail | Verdict::Error))
        .map(|o| o.name.as_str())
        .collect();
    println!(
        "summary: {} PASS, {} FAIL, {} SKIP, {} ERROR of {} targets, {} INFO (no target) in {:.0} s (load average now {}; {}){}",
        count(Verdict::Pass),
        count(Verdict::Fail),
        count(Verdict::Skip),
        count(Verdict::Error),
        ctx.results.len() - count(Verdict::Info),
        count(Verdict::Info),
        started.elapsed().as_secs_f64(),
        loadavg(),
        other_work(&[]),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; not met: {}", failed.join(", "))
        }
    );
    if count(Verdict::Error) > 0 {
        2
    } else if count(Verdict::Fail) > 0 {
        1
    } else {
        0
    }
}

fn fail(e: String) -> ! {
    eprintln!("lockledger-bench: {e}");
    std::process::exit(2);
}

/// Writes the run's results as JSON (see `--json`).
fn write_json(path: &std::path::Path, ctx: &Ctx, started: Instant, code: i32) -> R<()> {
    let count = |v: Verdict| ctx.results.iter().filter(|o| o.verdict == v).count();
    let doc = serde_json::json!({
        "run": {
            "tool": "lockledger-bench",
            "quick": ctx.set.quick,
            "finished_at": lockledger::clock::rfc3339(now_ms()),
            "tree": tree_description(),
            "seconds": started.elapsed().as_secs_f64(),
            "exit_code": code,
            "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "load_average": loadavg(),
            "counts": {
                "pass": count(Verdict::Pass),
                "fail": count(Verdict::Fail),
                "skip": count(Verdict::Skip),
                "error": count(Verdict::Error),
                "info": count(Verdict::Info),
            },
        },
        "results": ctx.results.iter().map(|o| o.json()).collect::<Vec<_>>(),
    });
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))
}

fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.hold_flocks {
        match status10k::hold_flocks_main(dir, args.count) {
            Ok(()) => std::process::exit(0),
            Err(e) => fail(e),
        }
    }
    let groups = selected(&args).unwrap_or_else(|e| fail(e));
    let set = settings(&args);
    let server_bin = server_binary(&args).unwrap_or_else(|e| fail(e));
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = parent.join(format!(
        "lockledger-bench-{}-{}",
        std::process::id(),
        now_ms()
    ));
    if let Err(e) = std::fs::create_dir_all(&work) {
        fail(format!("cannot create {}: {e}", work.display()));
    }
    // From here on the scratch directory is removed however the run ends (a panic, e.g.
    // stdout closed by `| head`, unwinds through it).
    let work = Scratch {
        path: work,
        keep: args.keep,
    };
    let started = Instant::now();
    print_header(&set, &args, &groups);
    let mut ctx = Ctx {
        set,
        server_bin,
        rust_log: args.server_rust_log.clone(),
        rng: Rng::new(args.seed),
        results: Vec::new(),
        floors: Vec::new(),
        bare: None,
        main: None,
        demo: None,
        bigdb: None,
        work,
    };
    for group in &groups {
        machine::settle_writeback();
        let result = match *group {
            "inproc" => inproc::bench_inproc(&mut ctx),
            "http" => http::bench_http(&mut ctx),
            "concurrent" => concurrent::bench_concurrent(&mut ctx),
            "pg" => pg::bench_pg(&mut ctx),
            "bigdb" => bigdb::bench_bigdb(&mut ctx),
            "status10k" => status10k::bench_status10k(&mut ctx),
            "limits" => limits::bench_limits(&mut ctx),
            "release" => release::bench_release(&mut ctx),
            "rss" => rss::bench_rss(&mut ctx),
            _ => Ok(()),
        };
        if let Err(e) = result {
            ctx.report(group, format!("could not measure: {e}"), Verdict::Error);
        }
    }
    ctx.main = None;
    ctx.demo = None;
    ctx.bigdb = None;
    ctx.bare = None;
    let mut code = summary(&ctx, started);
    if let Some(path) = &args.json {
        match write_json(path, &ctx, started, code) {
            Ok(()) => println!("results written to {}", path.display()),
            Err(e) => {
                eprintln!("lockledger-bench: cannot write --json: {e}");
                code = 2;
            }
        }
    }
    drop(ctx);
    std::process::exit(code);
}
