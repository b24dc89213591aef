//! The real `lockledger serve`, started for a test or a tool.
//!
//! The binary's path is always given by the caller: integration tests pass
//! `env!("CARGO_BIN_EXE_lockledger")`, the tools find it beside their own executable or
//! through `LOCKLEDGER_BIN`.
//!
//! Invariants:
//! - the service runs with a clean environment ([`crate::process::clean_env`]) plus what
//!   [`ServerOpts`] adds, so a developer's `LOCKLEDGER_*` cannot leak in;
//! - start-up waits for the `listening on http://ADDR` line at most
//!   [`ServerOpts::start_timeout`]; a service that exits or stays silent is reported with
//!   the tail of its stderr and is killed;
//! - the process is SIGKILLed and reaped when the [`Server`] is dropped (see
//!   [`crate::process::Proc`]); stdout keeps being drained, so the service never blocks
//!   on a full pipe.

use crate::group::ProcessGroup;
use crate::process::{lockledger, Proc, StderrTo};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// How long a service may take to print its listening line unless told otherwise.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a service may take to exit after SIGTERM in [`Server::stop`].
pub const STOP_GRACE: Duration = Duration::from_secs(8);

/// How to start one service.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    /// `--bind` (default `127.0.0.1:0`: a free port, read from the listening line).
    pub bind: String,
    /// More arguments after `serve --bind ADDR`.
    pub args: Vec<String>,
    /// Environment on top of the clean one.
    pub env: Vec<(String, String)>,
    pub stderr: StderrTo,
    pub start_timeout: Duration,
}

impl Default for ServerOpts {
    fn default() -> ServerOpts {
        ServerOpts {
            bind: "127.0.0.1:0".into(),
            args: Vec::new(),
            env: Vec::new(),
            stderr: StderrTo::Capture,
            start_timeout: START_TIMEOUT,
        }
    }
}

impl ServerOpts {
    pub fn bind(mut self, bind: &str) -> ServerOpts {
        self.bind = bind.to_string();
        self
    }
    pub fn arg(mut self, arg: &str) -> ServerOpts {
        self.args.push(arg.to_string());
        self
    }
    pub fn args(mut self, args: &[&str]) -> ServerOpts {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> ServerOpts {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    pub fn stderr(mut self, to: StderrTo) -> ServerOpts {
        self.stderr = to;
        self
    }
    pub fn start_timeout(mut self, timeout: Duration) -> ServerOpts {
        self.start_timeout = timeout;
        self
    }
}

/// A running `lockledger serve`; SIGKILLed on drop.
pub struct Server {
    proc: Option<Proc>,
    pub port: u16,
    pub storage: PathBuf,
}

/// Why a service did not come up, with the tail of its stderr.
#[derive(Debug, Clone)]
pub struct StartError {
    pub message: String,
    pub stderr_tail: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; stderr tail: {}", self.message, self.stderr_tail)
    }
}

const LISTENING: &str = "listening on http://";

impl Server {
    /// Starts the service and waits for its listening line; panics with its stderr when
    /// it does not come up.
    pub fn start(bin: &Path, storage: &Path, opts: &ServerOpts) -> Server {
        Server::try_start(bin, storage, opts, None).unwrap_or_else(|e| {
            panic!("the service did not come up: {e}");
        })
    }

    /// Starts the service (in `group`, when given) and waits for its listening line.
    pub fn try_start(
        bin: &Path,
        storage: &Path,
        opts: &ServerOpts,
        group: Option<&ProcessGroup>,
    ) -> Result<Server, StartError> {
        let mut args = vec!["serve", "--bind", opts.bind.as_str()];
        args.extend(opts.args.iter().map(String::as_str));
        let mut cmd = lockledger(bin, storage, &args);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some(g) = group {
            g.adopt(&mut cmd);
        }
        let mut proc =
            Proc::try_spawn(cmd, "lockledger serve", opts.stderr.clone()).map_err(|message| {
                StartError {
                    message,
                    stderr_tail: String::new(),
                }
            })?;
        let deadline = Instant::now() + opts.start_timeout;
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match proc.line(left) {
                Some(line) => {
                    let Some(i) = line.find(LISTENING) else {
                        continue;
                    };
                    let addr: Result<SocketAddr, _> = line[i + LISTENING.len()..].trim().parse();
                    match addr {
                        Ok(a) if a.ip().is_loopback() && a.port() != 0 => break a.port(),
                        _ => {
                            return Err(fail(proc, format!("bad listening line {line:?}")));
                        }
                    }
                }
                None if Instant::now() >= deadline => {
                    return Err(fail(
                        proc,
                        format!("no {LISTENING:?} line within {:?}", opts.start_timeout),
                    ));
                }
                None => {
                    let status = proc.try_wait_exit(Duration::from_secs(10));
                    // Let the stderr reader catch the last words.
                    std::thread::sleep(Duration::from_millis(50));
                    return Err(fail(
                        proc,
                        format!("the service exited ({status:?}) before listening"),
                    ));
                }
            }
        };
        Ok(Server {
            proc: Some(proc),
            port,
            storage: storage.to_path_buf(),
        })
    }

    fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("the service was stopped")
    }

    /// `serve --database url` on `storage` (created if missing), as one host of a shared
    /// registry: its stderr goes to `storage/service.log`; a panic names why it did not
    /// start within 60 s.
    pub fn on_database(bin: &Path, storage: &Path, url: &str) -> Server {
        std::fs::create_dir_all(storage)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", storage.display()));
        let opts = ServerOpts::default()
            .args(&["--database", url])
            .stderr(StderrTo::File(storage.join("service.log")))
            .start_timeout(Duration::from_secs(60));
        Server::try_start(bin, storage, &opts, None)
            .unwrap_or_else(|e| panic!("service on {} did not start: {e}", storage.display()))
    }

    pub fn pid(&self) -> i32 {
        self.proc().pid()
    }

    /// Everything the service wrote to stderr (or its log file) so far.
    pub fn stderr(&self) -> String {
        self.proc
            .as_ref()
            .map(Proc::stderr_text)
            .unwrap_or_default()
    }

    /// The last `n` lines of stderr, joined with " | ".
    pub fn stderr_tail(&self, n: usize) -> String {
        self.proc
            .as_ref()
            .map(|p| p.stderr_tail(n))
            .unwrap_or_default()
    }

    pub fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::running)
    }

    /// Sends `sig` to the service.
    pub fn signal(&self, sig: libc::c_int) {
        self.proc().signal(sig);
    }

    /// SIGTERM and a bounded wait for the exit (None: still running).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Bounded wait for the service to exit by itself (e.g. at a fault point).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.as_mut().and_then(|p| p.try_wait_exit(timeout))
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill();
        }
    }

    /// SIGTERM, up to [`STOP_GRACE`] for a clean exit, then SIGKILL.
    pub fn stop(&mut self) {
        if self.running() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(STOP_GRACE).is_none() {
                self.kill9();
            }
        }
    }
}

/// Kills a service that did not come up and describes it.
fn fail(mut proc: Proc, message: String) -> StartError {
    proc.kill();
    StartError {
        message,
        stderr_tail: proc.stderr_tail(20),
    }
}
