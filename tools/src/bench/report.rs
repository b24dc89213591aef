//! How the benchmark judges and prints: verdicts, result lines, and the statistics and
//! number formats every group uses.
//!
//! Invariants: a result line is `NAME: BODY  VERDICT` and is printed once when measured
//! and once more in the summary (scripts and BENCHMARKS.md read these lines); percentiles
//! are nearest-rank over sorted values, medians of an even count average the middle two.

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
    Error,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
            Verdict::Error => "ERROR",
        }
    }
    pub fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    }
}

/// One measured target.
pub struct Outcome {
    pub name: String,
    pub line: String,
    pub verdict: Verdict,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile of sorted values.
pub fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

pub fn us(v: f64) -> String {
    format!("{v:.0} µs")
}

pub fn rate(v: f64) -> String {
    format!("{v:.0}/s")
}

pub fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.0}..{hi:.0}")
}

/// A latency result: p50 and max against a limit in ms (an infinite value is a lock that
/// was never freed within its timeout).
pub fn lat_line(v: &[f64], target: f64, what: &str) -> (String, Verdict) {
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

/// Sorted latencies (ms) of one series.
pub struct Series {
    pub sorted: Vec<f64>,
    pub capped: bool,
}

impl Series {
    pub fn summary(&self) -> String {
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
    pub fn p99(&self) -> f64 {
        pct(&self.sorted, 0.99)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&s, 0.5), 50.0);
        assert_eq!(pct(&s, 0.99), 99.0);
        assert_eq!(pct(&s, 0.0), 1.0);
        let (body, v) = lat_line(&[1.0, f64::INFINITY], 50.0, "x");
        assert_eq!(v, Verdict::Fail);
        assert!(body.contains("never (timed out)"), "{body}");
        assert!(body.contains("1 never freed"), "{body}");
    }
}
