//! Service metrics, kept and rendered by `prometheus-client` (OpenMetrics text).
//!
//! Owns the numbers the service itself produces (grants and releases by kind — lease or
//! registration —, busy answers, expiries, clears, responses by status class, wait and
//! hold times). Gauges that describe
//! the registry (held, stale, waiting, leases) are set by the caller at scrape time from
//! what the registry reports, just before rendering.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds in seconds, shared by both histograms.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusClass {
    class: &'static str,
}

/// What kind of grant a grant or release counter counts: the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// A lease this service granted (and holds the flock for).
    Lease,
    /// A process that took the flock itself, recorded by `POST …/register`.
    Registration,
}

impl GrantKind {
    const ALL: [GrantKind; 2] = [GrantKind::Lease, GrantKind::Registration];
    fn label(self) -> KindLabel {
        KindLabel {
            kind: match self {
                GrantKind::Lease => "lease",
                GrantKind::Registration => "registration",
            },
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    kind: &'static str,
}

/// Registry gauges, read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub held: u64,
    pub stale: u64,
    /// Holders whose lock file was deleted or replaced at its path.
    pub file_replaced: u64,
    /// Locks where a process holds the new file at the path of a live holder's lock.
    pub conflicts: u64,
    pub waiting: u64,
    pub leases: u64,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    grants: Family<KindLabel, Counter>,
    pub busy: Counter,
    releases: Family<KindLabel, Counter>,
    pub expiries: Counter,
    pub clears: Counter,
    pub force_clears: Counter,
    pub reconciled: Counter,
    responses: Family<StatusClass, Counter>,
    acquire_wait: Histogram,
    hold_time: Histogram,
    held: Gauge,
    stale: Gauge,
    file_replaced: Gauge,
    conflicts: Gauge,
    waiting: Gauge,
    leases: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let histogram = || Histogram::new(BUCKETS);
        let mut m = Metrics {
            registry: Registry::with_prefix("lockledger"),
            grants: Family::default(),
            busy: Counter::default(),
            releases: Family::default(),
            expiries: Counter::default(),
            clears: Counter::default(),
            force_clears: Counter::default(),
            reconciled: Counter::default(),
            responses: Family::default(),
            acquire_wait: histogram(),
            hold_time: histogram(),
            held: Gauge::default(),
            stale: Gauge::default(),
            file_replaced: Gauge::default(),
            conflicts: Gauge::default(),
            waiting: Gauge::default(),
            leases: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "locks_held",
            "Locks with a live recorded holder",
            m.held.clone(),
        );
        r.register(
            "locks_stale",
            "Locks whose recorded holder is stale",
            m.stale.clone(),
        );
        r.register(
            "locks_file_replaced",
            "Holders whose lock file was deleted or replaced at its path",
            m.file_replaced.clone(),
        );
        r.register(
            "locks_conflicting",
            "Locks where another process holds the new file at a live holder's lock path",
            m.conflicts.clone(),
        );
        r.register(
            "waiting_acquirers",
            "Acquirers waiting in this service",
            m.waiting.clone(),
        );
        r.register("leases", "Leases this service holds", m.leases.clone());
        r.register(
            "grants",
            "Grants made by this service, by kind: lease (a lease granted) or registration \
             (a process that took the flock itself, recorded)",
            m.grants.clone(),
        );
        r.register(
            "acquire_busy",
            "Acquires that gave up waiting",
            m.busy.clone(),
        );
        r.register(
            "releases",
            "Grants ended by their holder through this service, by kind: lease (released \
             by its client) or registration (unregistered)",
            m.releases.clone(),
        );
        r.register("expiries", "Leases ended by the reaper", m.expiries.clone());
        r.register("clears", "Locks cleared by safe clears", m.clears.clone());
        r.register(
            "force_clears",
            "Locks force-cleared",
            m.force_clears.clone(),
        );
        r.register(
            "reconciled",
            "Records repaired by reconciliation",
            m.reconciled.clone(),
        );
        r.register(
            "http_responses",
            "HTTP responses by status class",
            m.responses.clone(),
        );
        r.register(
            "acquire_wait_seconds",
            "Time acquirers waited for a lease",
            m.acquire_wait.clone(),
        );
        r.register(
            "hold_seconds",
            "How long released leases were held",
            m.hold_time.clone(),
        );
        // Every kind is rendered, 0 until it happens.
        for kind in GrantKind::ALL {
            let _ = m.grants.get_or_create(&kind.label());
            let _ = m.releases.get_or_create(&kind.label());
        }
        m
    }
}

impl Metrics {
    pub fn count_response(&self, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.responses.get_or_create(&StatusClass { class }).inc();
    }

    /// A grant of `kind` was made.
    pub fn count_grant(&self, kind: GrantKind) {
        self.grants.get_or_create(&kind.label()).inc();
    }

    /// A grant of `kind` was ended by its holder (released, unregistered).
    pub fn count_release(&self, kind: GrantKind) {
        self.releases.get_or_create(&kind.label()).inc();
    }

    pub fn observe_wait_ms(&self, ms: f64) {
        self.acquire_wait.observe(ms / 1000.0);
    }

    pub fn observe_hold_ms(&self, ms: f64) {
        self.hold_time.observe(ms / 1000.0);
    }

    /// OpenMetrics text with the registry gauges set to `g`.
    pub fn render(&self, g: Gauges) -> String {
        let as_gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.held.set(as_gauge(g.held));
        self.stale.set(as_gauge(g.stale));
        self.file_replaced.set(as_gauge(g.file_replaced));
        self.conflicts.set(as_gauge(g.conflicts));
        self.waiting.set(as_gauge(g.waiting));
        self.leases.set(as_gauge(g.leases));
        let mut out = String::with_capacity(4096);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            log::error!("metrics: cannot encode: {e}");
        }
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_histograms_and_status_classes_render() {
        let m = Metrics::default();
        m.count_grant(GrantKind::Lease);
        m.count_grant(GrantKind::Registration);
        m.count_grant(GrantKind::Registration);
        m.count_release(GrantKind::Lease);
        m.observe_wait_ms(0.2);
        m.observe_wait_ms(20.0);
        m.observe_wait_ms(2_000_000.0);
        for status in [200, 204, 302, 404, 503] {
            m.count_response(status);
        }
        let out = m.render(Gauges {
            held: 3,
            ..Gauges::default()
        });
        assert!(
            out.contains("lockledger_grants_total{kind=\"lease\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("lockledger_grants_total{kind=\"registration\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("lockledger_releases_total{kind=\"lease\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("lockledger_releases_total{kind=\"registration\"} 0"),
            "{out}"
        );
        assert!(
            !out.contains("# HELP lockledger_grants Leases granted"),
            "{out}"
        );
        assert!(out.contains("lockledger_locks_held 3"), "{out}");
        assert!(
            out.contains("lockledger_acquire_wait_seconds_bucket{le=\"0.0005\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("lockledger_acquire_wait_seconds_bucket{le=\"0.05\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("lockledger_acquire_wait_seconds_bucket{le=\"+Inf\"} 3"),
            "{out}"
        );
        assert!(
            out.contains("lockledger_acquire_wait_seconds_count 3"),
            "{out}"
        );
        assert!(
            out.contains("lockledger_http_responses_total{class=\"2xx\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("lockledger_http_responses_total{class=\"3xx\"} 1"),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
