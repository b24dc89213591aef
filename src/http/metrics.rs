//! Service counters and histograms, rendered as Prometheus text.
//!
//! Owns only numbers the service itself produces (grants, expiries, clears, waits,
//! hold times, HTTP responses). Gauges that describe the registry (held, stale,
//! waiting) are computed at scrape time by the caller and passed to [`Metrics::render`].

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds in seconds, shared by both histograms.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe_ms(&self, ms: f64) {
        let secs = ms / 1000.0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((ms * 1000.0).max(0.0) as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub grants: AtomicU64,
    pub busy: AtomicU64,
    pub releases: AtomicU64,
    pub expiries: AtomicU64,
    pub clears: AtomicU64,
    pub force_clears: AtomicU64,
    pub reconciled: AtomicU64,
    pub responses_2xx: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    pub acquire_wait: Histogram,
    pub hold_time: Histogram,
}

/// Gauges read from the registry at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub held: u64,
    pub stale: u64,
    pub waiting: u64,
    pub leases: u64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    pub fn count_response(&self, status: u16) {
        let c = match status {
            200..=399 => &self.responses_2xx,
            400..=499 => &self.responses_4xx,
            _ => &self.responses_5xx,
        };
        Metrics::inc(c, 1);
    }

    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "lockledger_locks_held",
            "Locks with a live recorded holder.",
            g.held,
        );
        gauge(
            &mut out,
            "lockledger_locks_stale",
            "Locks whose recorded holder is stale.",
            g.stale,
        );
        gauge(
            &mut out,
            "lockledger_waiting_acquirers",
            "Acquirers waiting in this service.",
            g.waiting,
        );
        gauge(
            &mut out,
            "lockledger_leases",
            "Leases this service holds.",
            g.leases,
        );
        let counter = |out: &mut String, name: &str, help: &str, c: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Ordering::Relaxed)
            );
        };
        counter(
            &mut out,
            "lockledger_grants_total",
            "Leases granted.",
            &self.grants,
        );
        counter(
            &mut out,
            "lockledger_acquire_busy_total",
            "Acquires that gave up waiting.",
            &self.busy,
        );
        counter(
            &mut out,
            "lockledger_releases_total",
            "Leases released by their client.",
            &self.releases,
        );
        counter(
            &mut out,
            "lockledger_expiries_total",
            "Leases ended by the reaper.",
            &self.expiries,
        );
        counter(
            &mut out,
            "lockledger_clears_total",
            "Locks cleared by safe clears.",
            &self.clears,
        );
        counter(
            &mut out,
            "lockledger_force_clears_total",
            "Locks force-cleared.",
            &self.force_clears,
        );
        counter(
            &mut out,
            "lockledger_reconciled_total",
            "Records repaired by reconciliation.",
            &self.reconciled,
        );
        let _ = writeln!(out, "# HELP lockledger_http_responses_total HTTP responses by status class.\n# TYPE lockledger_http_responses_total counter");
        for (class, c) in [
            ("2xx", &self.responses_2xx),
            ("4xx", &self.responses_4xx),
            ("5xx", &self.responses_5xx),
        ] {
            let _ = writeln!(
                out,
                "lockledger_http_responses_total{{class=\"{class}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        self.acquire_wait.render(
            "lockledger_acquire_wait_seconds",
            "Time acquirers waited for a lease.",
            &mut out,
        );
        self.hold_time.render(
            "lockledger_hold_seconds",
            "How long released leases were held.",
            &mut out,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe_ms(0.2);
        h.observe_ms(20.0);
        h.observe_ms(2_000_000.0);
        let mut out = String::new();
        h.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.05\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"600\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count 3"), "{out}");
    }
}
