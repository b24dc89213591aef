//! Group `concurrent`: 16 keep-alive HTTP clients on 16 distinct locks against one
//! client, interleaved round by round, with the CPU each side used.
//!
//! Invariant: both loads run against the same shared service for the same `--seconds`,
//! each client on a lock of its own (so the ratio measures the service's concurrency,
//! not lock contention).

use crate::ctx::Ctx;
use crate::load::http_load;
use crate::machine::other_work;
use crate::report::{median, rate, Data, Floor, Verdict};
use crate::R;

pub fn bench_concurrent(ctx: &mut Ctx) -> R<()> {
    println!("\n[concurrent] 16 keep-alive HTTP clients on 16 distinct locks vs 1 client");
    println!("  ({})", other_work(&ctx.pids()));
    let port = ctx.main_service()?;
    let spid = ctx.main_pid();
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
    // The floor: the bare warp route (same runtime and accept loop) under the same 16 and
    // 1 clients; a pair is two round trips (commits, which 16 callers can share, are not
    // counted).
    let secs = ctx.dur().min(std::time::Duration::from_secs(2));
    let bare = ctx.bare()?;
    let (bare16, bare16_cores) = bare.load(16, secs)?;
    let (bare1, bare1_cores) = bare.load(1, secs)?;
    let floor = Floor {
        what: format!(
            "2 round trips at the bare warp route's {} round trips of 16 clients",
            rate(bare16)
        ),
        us: 2e6 / bare16,
        measured_us: 1e6 / m16,
    };
    ctx.report_with(
        "http_16_clients",
        format!(
            "16 clients {}  1 client {}  ratio {ratio:.2} (target >= 4.0)",
            rate(m16),
            rate(m1)
        ),
        Verdict::of(ratio >= 4.0),
        Data::new(m16, "pairs/s")
            .compare("1 client", m1, "pairs/s")
            .ratio(ratio)
            .target(">= 4.0")
            .floor(Some(floor.clone()))
            .more("bare_route_16_over_1", bare16 / bare1),
    );
    ctx.floor_line("http_16_clients", "pair (aggregate)", &floor);
    ctx.detail(format!(
        "the bare warp route itself: 1 client {} round trips ({bare1_cores:.2} cores), 16 clients {} ({bare16_cores:.2} cores, clients included): {:.2}x from 16 clients on this machine",
        rate(bare1),
        rate(bare16),
        bare16 / bare1
    ));
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
