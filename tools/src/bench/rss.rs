//! Group `rss`: the idle resident memory of every service this run started, after its
//! start-up and again after its benchmarks plus 2 s of idling, against the 30 MB target.
//!
//! Invariant: when no other group started the main service, this one starts it and puts
//! 2 s of 16-client load on it first, so "after its benchmarks" is never an idle-only
//! number.

use crate::ctx::Ctx;
use crate::load::http_load;
use crate::machine::{db_sizes, other_work, status_kb, vm_rss_kb};
use crate::report::{Data, Verdict};
use crate::R;
use std::time::Duration;

pub fn bench_rss(ctx: &mut Ctx) -> R<()> {
    println!("\n[rss] idle service RSS after start-up and after the benchmarks + 2 s idle");
    println!("  ({})", other_work(&ctx.pids()));
    if ctx.main.is_none() {
        let port = ctx.main_service()?;
        let spid = ctx.main_pid();
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
        ctx.report_with(
            name,
            format!("{label}: {a:.1} MB after start-up, {b:.1} MB after its benchmarks + 2 s idle (target < 30 MB)"),
            Verdict::of(a < 30.0 && b < 30.0),
            Data::new(b, "MB")
                .target("< 30 MB")
                .more("after_start_up_mb", a),
        );
    }
    Ok(())
}
