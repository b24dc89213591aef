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
    /// A measurement without a target (informational): never fails the run, counted
    /// apart from the targets.
    Info,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
            Verdict::Error => "ERROR",
            Verdict::Info => "INFO",
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
    pub data: Data,
}

/// What a result line says, as numbers (for `--json`).
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// The headline number of the line (a rate, a latency, a size).
    pub value: Option<f64>,
    pub unit: &'static str,
    /// What it is compared with, side by side in the same run.
    pub comparison: Option<Comparison>,
    /// `value / comparison` (or as the line defines it).
    pub ratio: Option<f64>,
    /// The target, as the line states it (`>= 1.0`, `p99 < 2 ms`).
    pub target: Option<String>,
    /// The floor of this path, measured in the same run.
    pub floor: Option<Floor>,
    /// Other numbers of the line, by name.
    pub more: Vec<(String, f64)>,
}

#[derive(Debug, Clone)]
pub struct Comparison {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
}

/// The least time one operation of a path can take here, measured in the same run, and
/// how far the measured path is from it.
#[derive(Debug, Clone)]
pub struct Floor {
    /// What the floor is made of, in words.
    pub what: String,
    /// Time per operation at the floor (µs).
    pub us: f64,
    /// Time per operation measured (µs).
    pub measured_us: f64,
}

impl Floor {
    /// Measured time per operation over the floor's (1.0 = at the floor).
    pub fn ratio(&self) -> f64 {
        self.measured_us / self.us
    }

    /// What the ratio to a comparison running at `other_rate` operations per second would
    /// be if this path cost exactly its floor: the most this path can show on this
    /// machine without doing less work per operation.
    pub fn ceiling_line(&self, name: &str, other: &str, other_rate: f64, target: f64) -> String {
        let at_floor = 1e6 / self.us;
        let best = at_floor / other_rate;
        let reach = if best >= target {
            "reachable here"
        } else {
            "out of reach here even at the floor"
        };
        format!(
            "ceiling: {name}: at its floor a pair would run {at_floor:.0}/s, {best:.2}x {other}: \
             target {target:.1} is {reach}"
        )
    }

    /// `NAME: X µs per OP vs floor Y µs (WHAT): Z× the floor`
    pub fn line(&self, name: &str, op: &str) -> String {
        format!(
            "floor: {name}: {} per {op} vs floor {} ({}): {:.1}x the floor",
            us_fine(self.measured_us),
            us_fine(self.us),
            self.what,
            self.ratio()
        )
    }
}

impl Data {
    pub fn new(value: f64, unit: &'static str) -> Data {
        Data {
            value: Some(value),
            unit,
            ..Data::default()
        }
    }
    pub fn compare(mut self, name: &str, value: f64, unit: &'static str) -> Data {
        self.comparison = Some(Comparison {
            name: name.to_string(),
            value,
            unit,
        });
        self
    }
    pub fn ratio(mut self, ratio: f64) -> Data {
        self.ratio = Some(ratio);
        self
    }
    pub fn target(mut self, target: &str) -> Data {
        self.target = Some(target.to_string());
        self
    }
    pub fn floor(mut self, floor: Option<Floor>) -> Data {
        self.floor = floor;
        self
    }
    pub fn more(mut self, name: &str, value: f64) -> Data {
        self.more.push((name.to_string(), value));
        self
    }
}

/// A finite number as JSON, anything else as null.
fn num(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

impl Outcome {
    /// `{name, value, unit, comparison, ratio, target, pass, verdict, floor, more, line}`;
    /// `pass` is null for a SKIP, an ERROR or an INFO (no target).
    pub fn json(&self) -> serde_json::Value {
        use serde_json::{json, Value};
        let d = &self.data;
        let opt = |v: Option<f64>| v.map_or(Value::Null, num);
        json!({
            "name": self.name,
            "value": opt(d.value),
            "unit": if d.unit.is_empty() { Value::Null } else { d.unit.into() },
            "comparison": d.comparison.as_ref().map_or(Value::Null, |c| json!({
                "name": c.name, "value": num(c.value), "unit": c.unit,
            })),
            "ratio": opt(d.ratio),
            "target": d.target.clone(),
            "pass": match self.verdict {
                Verdict::Pass => Value::Bool(true),
                Verdict::Fail => Value::Bool(false),
                Verdict::Skip | Verdict::Error | Verdict::Info => Value::Null,
            },
            "verdict": self.verdict.word(),
            "floor": d.floor.as_ref().map_or(Value::Null, |f| json!({
                "what": f.what,
                "floor_us": num(f.us),
                "measured_us": num(f.measured_us),
                "ratio": num(f.ratio()),
            })),
            "more": Value::Object(d.more.iter().map(|(k, v)| (k.clone(), num(*v))).collect()),
            "line": self.line,
        })
    }
}

/// µs with one decimal below 100 (floors are often a few µs).
pub fn us_fine(v: f64) -> String {
    if v < 100.0 {
        format!("{v:.1} µs")
    } else {
        format!("{v:.0} µs")
    }
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
pub fn lat_line(v: &[f64], target: f64, what: &str) -> (String, Verdict, Data) {
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
    let data = Data::new(max, "ms")
        .target(&format!("each < {target:.0} ms"))
        .more("p50_ms", pct(&s, 0.5))
        .more("n", s.len() as f64);
    (body, Verdict::of(!s.is_empty() && max < target), data)
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
        let (body, v, _) = lat_line(&[1.0, f64::INFINITY], 50.0, "x");
        assert_eq!(v, Verdict::Fail);
        let f = Floor {
            what: "two commits".into(),
            us: 10.0,
            measured_us: 25.0,
        };
        assert_eq!(f.ratio(), 2.5);
        assert!(
            f.line("p", "pair").ends_with("2.5x the floor"),
            "{}",
            f.line("p", "pair")
        );
        let o = Outcome {
            name: "n".into(),
            line: "n: x  SKIP".into(),
            verdict: Verdict::Skip,
            data: Data::new(f64::NAN, "ms").floor(Some(f)),
        };
        let j = o.json();
        assert!(j["value"].is_null() && j["pass"].is_null(), "{j}");
        let info = Outcome {
            name: "i".into(),
            line: "i: x  INFO".into(),
            verdict: Verdict::Info,
            data: Data::new(5.0, "pairs/s"),
        };
        let ji = info.json();
        assert!(ji["pass"].is_null() && ji["verdict"] == "INFO", "{ji}");
        assert_eq!(j["floor"]["ratio"], 2.5);
        assert!(body.contains("never (timed out)"), "{body}");
        assert!(body.contains("1 never freed"), "{body}");
    }
}
