//! Child processes: commands with a clean environment, bounded runs, and handles that
//! kill what they own when dropped.
//!
//! Invariants:
//! - every handle here ([`ChildGuard`], [`Proc`]) SIGKILLs and reaps its child on drop if
//!   it is still running (SIGKILL also ends a SIGSTOPped process), so a failing test or
//!   tool leaves no process behind; a [`ChildGuard::spawn_group`] child is the leader of
//!   its own process group and the whole group is killed;
//! - [`run`] never waits longer than its timeout: a command still running then is
//!   killed and reported;
//! - [`lockledger`] commands see none of this environment's `LOCKLEDGER_*` or `RUST_LOG`,
//!   so a developer's settings cannot change what a test observes.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::wait::wait_exit;

/// Removes every `LOCKLEDGER_*` variable and `RUST_LOG` from what `cmd` will inherit.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LOCKLEDGER_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env_remove("RUST_LOG")
}

/// `BIN --storage STORAGE ARGS...` with a clean environment (see [`clean_env`]).
pub fn lockledger(bin: &Path, storage: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--storage").arg(storage).args(args);
    clean_env(&mut cmd);
    cmd
}

/// kill(2); the pid must be a child the caller has not reaped yet.
pub fn signal(pid: i32, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// [`signal`] that must succeed.
pub fn send_signal(pid: i32, sig: libc::c_int) {
    if let Err(e) = signal(pid, sig) {
        panic!("kill({pid}, {sig}): {e}");
    }
}

/// The exit code, or 128+signal for a process killed by a signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// What a finished command produced.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    /// [`exit_code`] of `status`.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

fn read_all_in_thread(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` to completion with stdin closed; kills it and panics after `timeout`.
pub fn run(cmd: Command, timeout: Duration) -> Output {
    try_run(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` to completion with stdin closed; after `timeout` it is killed and the
/// error names it.
pub fn try_run(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot spawn {cmd:?}: {e}"))?;
    let mut child = ChildGuard::new(child);
    let out = read_all_in_thread(child.stdout.take().expect("stdout"));
    let err = read_all_in_thread(child.stderr.take().expect("stderr"));
    let Some(status) = wait_exit(&mut child, timeout) else {
        child.kill_and_wait();
        let (out, err) = (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        );
        return Err(format!(
            "{cmd:?} did not finish within {timeout:?}; stdout {out:?}; stderr {err:?}"
        ));
    };
    child.reaped();
    Ok(Output {
        status,
        code: exit_code(status),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A child process killed (SIGKILL) and reaped on drop, whatever happened meanwhile.
/// Derefs to the [`Child`].
pub struct ChildGuard {
    child: Child,
    /// The child leads its own process group: kill the group, not only the child.
    group: bool,
    done: bool,
}

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard {
            child,
            group: false,
            done: false,
        }
    }

    pub fn spawn(cmd: &mut Command) -> std::io::Result<ChildGuard> {
        cmd.spawn().map(ChildGuard::new)
    }

    /// Spawns `cmd` as the leader of a new process group (`setpgid(0, 0)`); on drop the
    /// whole group is killed, grandchildren included.
    pub fn spawn_group(cmd: &mut Command) -> std::io::Result<ChildGuard> {
        let mut guard = ChildGuard::new(cmd.process_group(0).spawn()?);
        guard.group = true;
        Ok(guard)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL (the group too, for a group leader) and reap.
    pub fn kill_and_wait(&mut self) {
        if self.done {
            return;
        }
        if self.group {
            // SAFETY: killpg has no memory-safety preconditions; the group is led by our
            // unreaped child, so its id cannot have been reused.
            unsafe { libc::killpg(self.pid(), libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.done = true;
    }

    /// Bounded wait for the exit; marks the child reaped when it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_exit(&mut self.child, timeout);
        if status.is_some() {
            self.reaped();
        }
        status
    }

    /// The caller reaped the child itself (e.g. through `wait`): nothing left to kill.
    pub fn reaped(&mut self) {
        if self.group {
            // Members of its group may outlive the leader.
            // SAFETY: as in `kill_and_wait`; a group id stays reserved while any member
            // lives, and an empty group makes this a harmless ESRCH.
            unsafe { libc::killpg(self.pid(), libc::SIGKILL) };
        }
        self.done = true;
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.done {
            // try_wait first: a child the caller already waited for must not be killed
            // by pid (the pid may belong to someone else by now).
            if let Ok(Some(_)) = self.child.try_wait() {
                self.reaped();
            } else {
                self.kill_and_wait();
            }
        }
    }
}

/// Where a [`Proc`]'s stderr goes.
#[derive(Debug, Clone, Default)]
pub enum StderrTo {
    /// Collected in memory (the newest 4 MiB), see [`Proc::stderr_text`].
    #[default]
    Capture,
    /// Collected and also copied to this process's stderr as it comes.
    CaptureAndEcho,
    /// Appended to a file (its tail is what [`Proc::stderr_tail`] shows).
    File(PathBuf),
}

const STDERR_CAP: usize = 4 << 20;

/// A long-running child with its stdout read line by line in the background and its
/// stderr collected. Killed (SIGKILL) and reaped on drop if still running.
pub struct Proc {
    name: String,
    child: ChildGuard,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_file: Option<PathBuf>,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Spawns with stdin, stdout and stderr piped (stderr captured); panics when the
    /// command cannot start.
    pub fn spawn(cmd: Command, name: &str) -> Proc {
        Proc::try_spawn(cmd, name, StderrTo::Capture).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_spawn(mut cmd: Command, name: &str, stderr_to: StderrTo) -> Result<Proc, String> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let stderr_file = match &stderr_to {
            StderrTo::File(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                cmd.stderr(Stdio::from(f));
                Some(path.clone())
            }
            _ => {
                cmd.stderr(Stdio::piped());
                None
            }
        };
        let mut child = ChildGuard::spawn(&mut cmd)
            .map_err(|e| format!("cannot spawn {name} ({:?}): {e}", cmd.get_program()))?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            let echo = matches!(stderr_to, StderrTo::CaptureAndEcho);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if echo {
                        let _ = std::io::stderr().write_all(&buf[..n]);
                    }
                    let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if s.len() > STDERR_CAP {
                        let cut = s.len() - STDERR_CAP / 2;
                        let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                        s.drain(..cut);
                    }
                }
            });
        }
        Ok(Proc {
            name: name.to_string(),
            child,
            lines,
            stderr,
            stderr_file,
            exited: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Everything collected from stderr so far (or the file's content).
    pub fn stderr_text(&self) -> String {
        match &self.stderr_file {
            Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
            None => self
                .stderr
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// The last `n` lines of stderr, joined with " | " (for one-line reports).
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = self.stderr_text();
        let mut tail: Vec<&str> = text.lines().rev().take(n).collect();
        tail.reverse();
        tail.join(" | ")
    }

    /// The next stdout line within `timeout`; None on timeout or end of output.
    pub fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// A stdout line already printed, without waiting.
    pub fn line_now(&self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    /// Sends `sig`; panics if the process was already reaped (its pid may be reused).
    pub fn signal(&self, sig: libc::c_int) {
        assert!(
            self.exited.is_none(),
            "{} already exited; not signalling a reaped pid",
            self.name
        );
        send_signal(self.pid(), sig);
    }

    pub fn running(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
            if self.exited.is_some() {
                self.child.reaped();
            }
        }
        self.exited.is_none()
    }

    /// The exit status, once seen by [`Proc::running`] or a wait.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.exited
    }

    /// Bounded wait for the exit; None when still running at the deadline.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.wait_exit(timeout);
        }
        self.exited
    }

    /// Waits (bounded) for the process to exit; returns its exit code (128+signal), and
    /// panics with its stderr if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        match self.try_wait_exit(timeout) {
            Some(s) => exit_code(s),
            None => panic!(
                "{} (pid {}) did not exit within {timeout:?}; stderr: {}",
                self.name,
                self.pid(),
                self.stderr_text()
            ),
        }
    }

    /// SIGKILL and reap (no-op once exited).
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            self.child.kill_and_wait();
            self.exited = self.child.try_wait().ok().flatten();
        }
    }

    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }
}
