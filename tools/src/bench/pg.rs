//! Group `pg`: lease acquire+release over HTTP on the PostgreSQL backend (`lockledger
//! serve --database URL`, issue #13 point 7), beside the SQLite service and redis-py in
//! the same run: one keep-alive client on each, and 16 clients on 16 locks against one
//! on the PostgreSQL service (beside the SQLite service's `http_16_clients` when the
//! `concurrent` group ran earlier in the run; it is not measured again here).
//!
//! The cluster is a throwaway one of the harness started with PostgreSQL's durable
//! defaults ([`PgCluster::start_durable`]: fsync, synchronous_commit and
//! full_page_writes on, never the tests' tuning), in the temp dir on this machine's disk;
//! the settings it really runs with are read back from the server (`current_setting`) and
//! printed on the result line.
//!
//! Invariants: the rows are informational (DESIGN §10 sets no PostgreSQL target): their
//! verdict is INFO and never fails the run; when initdb/pg_ctl are missing both rows are
//! SKIPped with what to install, never faked. The sides are interleaved round by round
//! (the order rotates each round) and each side's median is reported. The PostgreSQL
//! service is stopped before its cluster (locals drop in reverse order).

use crate::ctx::Ctx;
use crate::floor::round_trip_us;
use crate::http::REDIS_PY;
use crate::load::{http_load, Load};
use crate::machine::{cpu_seconds, json_f64, other_work, run_python, wait_idle};
use crate::report::{median, rate, spread, us_fine, Data, Floor, Verdict};
use crate::services::{Redis, Service};
use crate::R;
use lockledger_harness::pg::{connect_url, describe, find_bin};
use lockledger_harness::PgCluster;
use std::path::Path;
use std::time::{Duration, Instant};

const SINGLE: &str = "pg_http_single_client";
const SIXTEEN: &str = "pg_http_16_clients";

/// The sides of one round, in the order of round 0 (later rounds rotate it).
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Pg1,
    Sqlite1,
    Redis,
    Pg16,
}

const SIDES: [Side; 4] = [Side::Pg1, Side::Sqlite1, Side::Redis, Side::Pg16];

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Pg1 => "postgres",
            Side::Sqlite1 => "sqlite",
            Side::Redis => "redis_py",
            Side::Pg16 => "postgres x16",
        }
    }
}

pub fn bench_pg(ctx: &mut Ctx) -> R<()> {
    println!("\n[pg] acquire+release over HTTP on the PostgreSQL backend (serve --database, a durable throwaway cluster) beside the SQLite service and redis-py; 16 clients vs 1");
    println!("  ({})", other_work(&ctx.pids()));
    if let Err(e) = find_bin() {
        let body = "not measured: PostgreSQL's initdb and pg_ctl are missing; install them with scripts/pg.sh install (or scripts/setup.sh --tests)".to_string();
        ctx.detail(e);
        ctx.report(SINGLE, body.clone(), Verdict::Skip);
        ctx.report(SIXTEEN, body, Verdict::Skip);
        return Ok(());
    }
    let sqlite_port = ctx.main_service()?;
    let sqlite_pid = ctx.main_pid();

    // The cluster before the service: locals drop in reverse order, so the service stops
    // first.
    let t = Instant::now();
    let cluster = PgCluster::start_durable()?;
    let url = cluster.create_database("lockledger_bench")?;
    let settings = ClusterSettings::read(&url, cluster.dir())?;
    let storage = ctx.dir("pg-service")?;
    let svc = Service::start_with(
        &ctx.server_bin,
        &storage,
        "postgres",
        ctx.rust_log.as_deref(),
        &["--database", &url],
    )
    .map_err(|e| format!("{e}; cluster log:\n{}", cluster.log_tail(20)))?;
    // Start-up work done (migrations, first reap); no idle second: no RSS is taken here.
    wait_idle(svc.pid(), Duration::from_secs(30));
    let (pg_port, pg_pid) = (svc.port, svc.pid());
    let postmaster = cluster.postmaster_pid();
    ctx.detail(format!(
        "started a PostgreSQL cluster ({}) and lockledger serve --database (pid {pg_pid}, port {pg_port}) in {:.1} s",
        settings.describe(),
        t.elapsed().as_secs_f64()
    ));

    let (redis, missing) = match Redis::start_if_installed(|| ctx.dir("redis-pg"))? {
        Ok(r) => (Some(r), String::new()),
        Err(missing) => (None, missing),
    };

    let dur = ctx.dur();
    let mut got: Vec<(Side, Vec<f64>)> = SIDES.iter().map(|s| (*s, Vec::new())).collect();
    let (mut svc_cpu1, mut pg_cpu1, mut svc_cpu16, mut pg_cpu16) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ctx.set.rounds {
        let mut order = SIDES;
        order.rotate_left(round % SIDES.len());
        let mut line = Vec::new();
        for side in order {
            let r = match side {
                Side::Pg1 | Side::Pg16 => {
                    let clients = if side == Side::Pg1 { 1 } else { 16 };
                    let (l, pg_cores) = load_pg(pg_port, pg_pid, postmaster, clients, dur)?;
                    let per_pair = |cores: f64| cores * 1e6 / l.rate();
                    if clients == 1 {
                        svc_cpu1.push(per_pair(l.server_cores));
                        pg_cpu1.push(per_pair(pg_cores));
                    } else {
                        svc_cpu16.push(per_pair(l.server_cores));
                        pg_cpu16.push(per_pair(pg_cores));
                    }
                    l.rate()
                }
                Side::Sqlite1 => http_load(sqlite_port, sqlite_pid, 1, "pgcmp", dur)?.rate(),
                Side::Redis => match &redis {
                    Some(redis) => {
                        let v = run_python(
                            REDIS_PY,
                            &[
                                redis.port.to_string(),
                                format!("{}", ctx.set.secs),
                                "500".into(),
                            ],
                        )?;
                        json_f64(&v, "rate")?
                    }
                    None => continue,
                },
            };
            if let Some((_, v)) = got.iter_mut().find(|(s, _)| *s == side) {
                v.push(r);
            }
            line.push(format!("{} {}", side.name(), rate(r)));
        }
        ctx.detail(format!("round {}: {}", round + 1, line.join("  ")));
    }
    drop(redis);
    let m = |side: Side| {
        got.iter()
            .find(|(s, _)| *s == side)
            .map_or(f64::NAN, |(_, v)| median(v))
    };
    let (pg1, sq1, rd, pg16) = (
        m(Side::Pg1),
        m(Side::Sqlite1),
        m(Side::Redis),
        m(Side::Pg16),
    );
    // The SQLite service's 16 clients, if the `concurrent` group measured them this run.
    let sq16 = ctx
        .results
        .iter()
        .find(|o| o.name == "http_16_clients")
        .and_then(|o| o.data.value);

    // The floor of a pair: two of the service's own HTTP round trips and two durable
    // one-row commits on one connection (a grant and a release each commit at least once;
    // both take more statements than that).
    let healthz = round_trip_us(pg_port, "/healthz", Duration::from_millis(500))?;
    let db = PgFloors::measure(&cluster, Duration::from_millis(500))?;
    let floor = Floor {
        what: format!(
            "2 round trips of the service's GET /healthz of {:.0} µs + 2 durable one-row commits of {} (a SELECT 1 round trip: {})",
            healthz.0,
            us_fine(db.commit_us),
            us_fine(db.select1_us)
        ),
        us: 2.0 * (healthz.0 + db.commit_us),
        measured_us: 1e6 / pg1,
    };

    let redis_text = if !rd.is_finite() {
        format!("redis_py not measured (missing {missing}; scripts/bench.sh installs it)")
    } else {
        format!("redis_py {}", rate(rd))
    };
    let mut data = Data::new(pg1, "pairs/s")
        .compare("sqlite", sq1, "pairs/s")
        .ratio(pg1 / sq1)
        .floor(Some(floor.clone()));
    if rd.is_finite() {
        data = data
            .more("redis_py", rd)
            .more("postgres_over_redis_py", pg1 / rd);
    }
    data = data
        .more("fsync_on", f64::from(u8::from(settings.fsync == "on")))
        .more(
            "synchronous_commit_on",
            f64::from(u8::from(settings.synchronous_commit == "on")),
        );
    ctx.report_with(
        SINGLE,
        format!(
            "postgres {}  sqlite {}  {redis_text}  postgres/sqlite {:.2}{} (no target; cluster fsync={} synchronous_commit={})",
            rate(pg1),
            rate(sq1),
            pg1 / sq1,
            if rd.is_finite() {
                format!("  postgres/redis_py {:.2}", pg1 / rd)
            } else {
                String::new()
            },
            settings.fsync,
            settings.synchronous_commit
        ),
        Verdict::Info,
        data,
    );
    ctx.floor_line(SINGLE, "pair", &floor);

    let ratio = pg16 / pg1;
    let mut data = Data::new(pg16, "pairs/s")
        .compare("1 client", pg1, "pairs/s")
        .ratio(ratio);
    let sqlite_text = match sq16 {
        Some(sq16) => {
            data = data
                .more("sqlite_16_clients", sq16)
                .more("postgres_over_sqlite_at_16", pg16 / sq16);
            format!(
                "  sqlite 16 clients {} (http_16_clients above)  postgres/sqlite at 16 {:.2}",
                rate(sq16),
                pg16 / sq16
            )
        }
        None => "  (sqlite's 16 clients: the concurrent group, not run)".to_string(),
    };
    ctx.report_with(
        SIXTEEN,
        format!(
            "postgres 16 clients {}  1 client {}  ratio {ratio:.2}{sqlite_text} (no target)",
            rate(pg16),
            rate(pg1),
        ),
        Verdict::Info,
        data,
    );

    let spreads: Vec<String> = got
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(s, v)| format!("{} {}", s.name(), spread(v)))
        .collect();
    ctx.detail(format!(
        "medians of {} rounds (order rotated each round; the 1-client postgres number is shared by both rows); range {}",
        ctx.set.rounds,
        spreads.join("  ")
    ));
    ctx.detail(format!(
        "CPU per pair (µs, over warm-up and measurement): 1 client: lockledger {:.0} + postgres processes {:.0}; 16 clients: lockledger {:.0} + postgres {:.0}",
        median(&svc_cpu1),
        median(&pg_cpu1),
        median(&svc_cpu16),
        median(&pg_cpu16)
    ));
    ctx.detail(format!(
        "floors here: the PostgreSQL service's GET /healthz p50 {:.0} µs p99 {:.0} µs; SELECT 1 on one connection p50 {}; durable one-row INSERT commit p50 {} (a scratch table in a scratch database of the same cluster); the SQLite service commits with WAL and synchronous=NORMAL (no sync per commit), the cluster with synchronous_commit={}",
        healthz.0,
        healthz.1,
        us_fine(db.select1_us),
        us_fine(db.commit_us),
        settings.synchronous_commit
    ));
    drop(svc);
    drop(cluster);
    Ok(())
}

/// A timed HTTP load on the PostgreSQL service and the cores the cluster's processes
/// (postmaster and its children) used over the whole call (warm-up included).
fn load_pg(
    port: u16,
    pid: u32,
    postmaster: Option<u32>,
    clients: usize,
    dur: Duration,
) -> R<(Load, f64)> {
    let cpu0 = postmaster.and_then(tree_cpu_seconds);
    let t = Instant::now();
    let l = http_load(port, pid, clients, "pgbench", dur)?;
    let secs = t.elapsed().as_secs_f64();
    let cores = match (cpu0, postmaster.and_then(tree_cpu_seconds)) {
        (Some(a), Some(b)) => (b - a) / secs,
        _ => f64::NAN,
    };
    Ok((l, cores))
}

/// CPU seconds of a process and its direct children (a postmaster and its backends).
fn tree_cpu_seconds(root: u32) -> Option<f64> {
    let mut total = cpu_seconds(&root.to_string())?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(root) {
            total += cpu_seconds(pid).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// What the cluster really runs with, read back from the server.
struct ClusterSettings {
    version: String,
    fsync: String,
    synchronous_commit: String,
    full_page_writes: String,
    wal_sync_method: String,
    fs: String,
}

impl ClusterSettings {
    fn read(url: &str, dir: &Path) -> R<ClusterSettings> {
        let mut c = connect_url(url)?;
        let mut get = |name: &str| -> R<String> {
            c.query_one("SELECT current_setting($1)", &[&name])
                .map(|row| row.get::<_, String>(0))
                .map_err(|e| format!("current_setting({name}): {}", describe(&e)))
        };
        Ok(ClusterSettings {
            version: get("server_version")?,
            fsync: get("fsync")?,
            synchronous_commit: get("synchronous_commit")?,
            full_page_writes: get("full_page_writes")?,
            wal_sync_method: get("wal_sync_method")?,
            fs: fs_type(dir),
        })
    }

    fn describe(&self) -> String {
        format!(
            "PostgreSQL {}: fsync={} synchronous_commit={} full_page_writes={} wal_sync_method={}, data on {}",
            self.version,
            self.fsync,
            self.synchronous_commit,
            self.full_page_writes,
            self.wal_sync_method,
            self.fs
        )
    }
}

/// The filesystem type of the mount holding `path` (from /proc/mounts), or "?".
fn fs_type(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "?".into();
    };
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, at, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(at).then(|| (at.len(), ty.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "?".into(), |(_, ty)| ty)
}

/// The database floors of one moment (µs, p50 over the window).
struct PgFloors {
    select1_us: f64,
    commit_us: f64,
}

impl PgFloors {
    /// `SELECT 1` round trips and autocommitted one-row INSERTs on one connection to a
    /// scratch database of `cluster` (a table of the benchmark's own, never the
    /// registry's database).
    fn measure(cluster: &PgCluster, dur: Duration) -> R<PgFloors> {
        let url = cluster.create_database("bench_floor")?;
        let mut c = connect_url(&url)?;
        c.batch_execute("CREATE TABLE floor (id bigserial PRIMARY KEY, at bigint NOT NULL)")
            .map_err(|e| format!("CREATE TABLE floor: {}", describe(&e)))?;
        let mut timed = |sql: &str| -> R<f64> {
            let mut v = Vec::new();
            for _ in 0..50 {
                c.batch_execute(sql)
                    .map_err(|e| format!("{sql}: {}", describe(&e)))?;
            }
            let t = Instant::now();
            while t.elapsed() < dur {
                let a = Instant::now();
                c.batch_execute(sql)
                    .map_err(|e| format!("{sql}: {}", describe(&e)))?;
                v.push(a.elapsed().as_secs_f64() * 1e6);
            }
            Ok(median(&v))
        };
        Ok(PgFloors {
            select1_us: timed("SELECT 1")?,
            commit_us: timed("INSERT INTO floor (at) VALUES (1)")?,
        })
    }
}
