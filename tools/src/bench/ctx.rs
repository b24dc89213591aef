//! The state of one benchmark run: its settings, results so far, the services it started
//! and its scratch directory.
//!
//! Invariants: services are fields before the scratch directory, so they stop before it
//! is removed; the main service is started once, on first use, and shared by the groups
//! that need it; every result goes through [`Ctx::report`], which prints it at once.

use crate::floor::BareServer;
use crate::report::{Data, Floor, Outcome, Verdict};
use crate::services::{Scratch, Service};
use crate::R;
use lockledger_tools::rng::Rng;
use std::path::PathBuf;
use std::time::Duration;

pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub secs: f64,
    pub owners: u64,
    pub events: u64,
    pub samples: usize,
    pub repeat: usize,
    pub series_cap: Duration,
}

pub struct Ctx {
    pub set: Settings,
    pub server_bin: PathBuf,
    pub rust_log: Option<String>,
    pub rng: Rng,
    pub results: Vec<Outcome>,
    /// The floor lines printed so far (repeated in the summary).
    pub floors: Vec<String>,
    // Services before the scratch directory: they stop before it is removed.
    /// The in-process bare warp server of the HTTP floors (started on first use).
    pub bare: Option<BareServer>,
    pub main: Option<Service>,
    pub demo: Option<Service>,
    pub bigdb: Option<Service>,
    pub work: Scratch,
}

impl Ctx {
    /// A result line without numbers for `--json` (an error, say).
    pub fn report(&mut self, name: &str, body: String, verdict: Verdict) {
        self.report_with(name, body, verdict, Data::default());
    }

    /// A result line and its numbers.
    pub fn report_with(&mut self, name: &str, body: String, verdict: Verdict, data: Data) {
        let line = format!("{name}: {body}  {}", verdict.word());
        println!("{line}");
        self.results.push(Outcome {
            name: name.to_string(),
            line,
            verdict,
            data,
        });
    }

    /// Prints a path's floor line (see [`Floor::line`]) and keeps it for the summary.
    pub fn floor_line(&mut self, name: &str, op: &str, floor: &Floor) {
        let line = floor.line(name, op);
        println!("  {line}");
        self.floors.push(line);
    }

    pub fn detail(&self, text: String) {
        println!("  {text}");
    }

    /// A subdirectory of the scratch directory, created if needed.
    pub fn dir(&self, name: &str) -> R<PathBuf> {
        let p = self.work.path.join(name);
        std::fs::create_dir_all(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
        Ok(p)
    }

    /// The shared service (started and settled on first use); its port.
    pub fn main_service(&mut self) -> R<u16> {
        if self.main.is_none() {
            let storage = self.dir("service")?;
            let mut svc = Service::start(
                &self.server_bin,
                &storage,
                false,
                "service",
                self.rust_log.as_deref(),
            )?;
            svc.settle();
            println!(
                "  started lockledger serve (pid {}, port {})",
                svc.pid(),
                svc.port
            );
            self.main = Some(svc);
        }
        Ok(self.main.as_ref().map(|s| s.port).unwrap_or(0))
    }

    /// The in-process bare HTTP server of the floors (started on first use).
    pub fn bare(&mut self) -> R<&BareServer> {
        if self.bare.is_none() {
            self.bare = Some(BareServer::start()?);
        }
        self.bare
            .as_ref()
            .ok_or_else(|| "no bare server".to_string())
    }

    pub fn main_pid(&self) -> u32 {
        self.main.as_ref().map(|s| s.pid()).unwrap_or(0)
    }

    /// The services this run has started (still running).
    pub fn pids(&self) -> Vec<u32> {
        [&self.main, &self.demo, &self.bigdb]
            .into_iter()
            .flatten()
            .map(Service::pid)
            .collect()
    }

    pub fn dur(&self) -> Duration {
        Duration::from_secs_f64(self.set.secs)
    }
}
