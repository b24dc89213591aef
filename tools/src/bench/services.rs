//! The processes and scratch space a benchmark run owns: `lockledger serve` children
//! (through the harness), a throwaway `redis-server`, and the scratch directory.
//!
//! Invariants: a [`Service`] is stopped (SIGTERM, then SIGKILL after a grace period) when
//! dropped and a [`Redis`] is killed; both are dropped before the [`Scratch`] directory
//! they live in is removed (the context declares them first).

use crate::machine::{vm_rss_kb, wait_idle};
use crate::R;
use lockledger_harness::wait::wait_until_every;
use lockledger_harness::{ChildGuard, Server, ServerOpts, StderrTo};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A `lockledger serve` child whose stderr goes to `STORAGE/service.log`.
pub struct Service {
    pub label: &'static str,
    server: Server,
    pub port: u16,
    pub storage: PathBuf,
    pub rss_start_kb: Option<u64>,
}

impl Service {
    /// Starts the service (with `--demo` when asked); RUST_LOG is `rust_log` or unset.
    pub fn start(
        bin: &Path,
        storage: &Path,
        demo: bool,
        label: &'static str,
        rust_log: Option<&str>,
    ) -> R<Service> {
        let args: &[&str] = if demo { &["--demo"] } else { &[] };
        Service::start_with(bin, storage, label, rust_log, args)
    }

    /// Starts the service with more `serve` arguments; RUST_LOG is `rust_log` or unset.
    pub fn start_with(
        bin: &Path,
        storage: &Path,
        label: &'static str,
        rust_log: Option<&str>,
        args: &[&str],
    ) -> R<Service> {
        std::fs::create_dir_all(storage).map_err(|e| format!("mkdir: {e}"))?;
        let mut opts = ServerOpts::default()
            .stderr(StderrTo::File(storage.join("service.log")))
            .start_timeout(Duration::from_secs(120))
            .args(args);
        if let Some(level) = rust_log {
            opts = opts.env("RUST_LOG", level);
        }
        let server = Server::try_start(bin, storage, &opts, None)
            .map_err(|e| format!("service did not start: {e}"))?;
        Ok(Service {
            label,
            port: server.port,
            server,
            storage: storage.to_path_buf(),
            rss_start_kb: None,
        })
    }

    /// Waits until the start-up work is done, idles one second and notes the RSS
    /// ("after start-up").
    pub fn settle(&mut self) {
        wait_idle(self.pid(), Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(1));
        self.rss_start_kb = vm_rss_kb(self.pid());
    }

    pub fn pid(&self) -> u32 {
        self.server.pid() as u32
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.server.stop();
    }
}

pub fn free_port() -> R<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// A throwaway `redis-server` (no persistence) on a free port; killed when dropped.
pub struct Redis {
    _child: ChildGuard,
    pub port: u16,
}

impl Redis {
    /// A redis-server for the redis-py comparison, started in `dir` when both redis-server
    /// and redis-py are installed; otherwise what is missing, with its install command.
    pub fn start_if_installed(dir: impl FnOnce() -> R<PathBuf>) -> R<Result<Redis, String>> {
        let mut missing = Vec::new();
        if crate::machine::command_line("redis-server", &["--version"]).is_none() {
            missing.push("redis-server (apt-get install -y redis-server)");
        }
        if crate::machine::python_module("redis").is_none() {
            missing.push("redis-py (python3 -m pip install redis)");
        }
        if !missing.is_empty() {
            return Ok(Err(missing.join(" and ")));
        }
        Ok(Ok(Redis::start(&dir()?)?))
    }

    pub fn start(dir: &Path) -> R<Redis> {
        let port = free_port()?;
        let p = port.to_string();
        let log = dir.join("redis.log");
        let child = ChildGuard::spawn(
            Command::new("redis-server")
                .args([
                    "--port",
                    &p,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--daemonize", "no", "--logfile"])
                .arg(&log)
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let redis = Redis {
            _child: child,
            port,
        };
        let pong = || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 7];
            s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && &buf == b"+PONG\r\n"
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        if wait_until_every(deadline, Duration::from_millis(50), pong) {
            Ok(redis)
        } else {
            Err(format!(
                "redis-server did not answer on port {port}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }
}

/// The scratch directory; removed when dropped unless kept.
pub struct Scratch {
    pub path: PathBuf,
    pub keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            println!("scratch directory kept: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
