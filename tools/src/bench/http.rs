//! Group `http`: lease acquire+release over HTTP with one keep-alive client against
//! redis-py's `Lock` on a local `redis-server`, interleaved round by round, and where the
//! time goes (the bare HTTP round trip, each call, the service's CPU per pair).
//!
//! Invariants: both sides run for the same `--seconds` per round; when redis-server or
//! redis-py is missing the comparison is SKIPped with what to install, never faked.

use crate::ctx::Ctx;
use crate::floor::HttpFloors;
use crate::load::{http_load, LeaseClient, PAIR_BODY};
use crate::machine::{json_f64, other_work, run_python};
use crate::report::{median, pct, rate, spread, us, Data, Floor, Verdict};
use crate::services::Redis;
use crate::R;
use std::time::{Duration, Instant};

/// redis-py Lock pairs: argv = port, seconds, warm-up iterations.
pub(crate) const REDIS_PY: &str = r#"
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

pub fn bench_http(ctx: &mut Ctx) -> R<()> {
    println!("\n[http] acquire+release over HTTP, one keep-alive client, vs redis-py Lock on a local redis-server");
    println!("  ({})", other_work(&ctx.pids()));
    let port = ctx.main_service()?;
    let spid = ctx.main_pid();
    let (redis, missing) = match Redis::start_if_installed(|| ctx.dir("redis"))? {
        Ok(r) => (Some(r), String::new()),
        Err(missing) => (None, missing),
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
    let mut c = LeaseClient::new(port);
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

    let floors_dir = ctx.dir("floors")?;
    let floors = HttpFloors::measure(ctx.bare()?, Some(port), &floors_dir, "http-commit-floor")?;

    let m_ll = median(&ll);
    // The floor of a pair over HTTP: two bare round trips and two one-row commits.
    let floor = Floor {
        what: format!(
            "2 bare warp round trips of {:.0} µs + 2 one-row commits of {:.1} µs",
            floors.bare.0, floors.commit_us
        ),
        us: 2.0 * (floors.bare.0 + floors.commit_us),
        measured_us: 1e6 / m_ll,
    };
    let (body, verdict, data) = if !rd.is_empty() {
        let m_rd = median(&rd);
        let ratio = m_ll / m_rd;
        (
            format!(
                "lockledger {}  redis_py {}  ratio {ratio:.2} (target >= 2.0)",
                rate(m_ll),
                rate(m_rd)
            ),
            Verdict::of(ratio >= 2.0),
            Data::new(m_ll, "pairs/s")
                .compare("redis_py", m_rd, "pairs/s")
                .ratio(ratio),
        )
    } else {
        (
            format!(
                "lockledger {}  redis_py not measured: missing {missing}; scripts/bench.sh installs both",
                rate(m_ll),
            ),
            Verdict::Skip,
            Data::new(m_ll, "pairs/s"),
        )
    };
    let data = data.target(">= 2.0").floor(Some(floor.clone()));
    ctx.report_with("http_single_client", body, verdict, data);
    ctx.floor_line("http_single_client", "pair", &floor);
    if !rd.is_empty() {
        ctx.detail(floor.ceiling_line("http_single_client", "redis_py", median(&rd), 2.0));
    }
    ctx.detail(format!("floors here: {}", floors.describe()));
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
