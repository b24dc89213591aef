//! A process group that owns every child of a run (the chaos orchestrator's service and
//! workers), so that all of them end together, however the run ends.
//!
//! The group is led by a placeholder child (`sleep`) that lives as long as the
//! [`ProcessGroup`]: the group id therefore stays valid (new children can join it even
//! after every worker died) and cannot be reused by an unrelated process while the group
//! is ours. Children join it through [`ProcessGroup::adopt`].
//!
//! Invariants:
//! - dropping the [`ProcessGroup`] — normal end, error return, panic unwinding — sends
//!   SIGKILL and then SIGCONT to the whole group (SIGKILL ends stopped members too; the
//!   SIGCONT is for anything that survived), then reaps the leader;
//! - with [`ProcessGroup::kill_on_signals`], SIGINT, SIGTERM and SIGHUP to this process do
//!   the same from the signal handler (only async-signal-safe calls: `killpg`, `signal`,
//!   `raise`) and then end this process by that signal, as it would have without a
//!   handler;
//! - members get `PR_SET_PDEATHSIG = SIGKILL`: if this process is killed outright (SIGKILL
//!   leaves no chance to clean up), the kernel ends them anyway. The death signal fires
//!   when the *thread* that spawned them exits, so spawn from a thread that lives as long
//!   as the run (the main thread).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

/// The group the signal handlers kill (0: none).
static SIGNAL_GROUP: AtomicI32 = AtomicI32::new(0);

const HANDLED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

pub struct ProcessGroup {
    leader: Child,
    pgid: i32,
}

fn set_death_signal(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
    // which is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl ProcessGroup {
    /// Starts the placeholder leader of a new process group.
    pub fn new() -> std::io::Result<ProcessGroup> {
        let mut cmd = Command::new("sleep");
        cmd.arg("2147483647")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        set_death_signal(&mut cmd);
        let leader = cmd.spawn()?;
        let pgid = leader.id() as i32;
        Ok(ProcessGroup { leader, pgid })
    }

    pub fn id(&self) -> i32 {
        self.pgid
    }

    /// Makes `cmd` spawn into this group (with the parent-death signal set).
    pub fn adopt<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.process_group(self.pgid);
        set_death_signal(cmd);
        cmd
    }

    /// Signals every member of the group.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: killpg has no memory-safety preconditions; the group is led by our
        // unreaped child, so its id is ours.
        unsafe { libc::killpg(self.pgid, sig) };
    }

    /// SIGKILL, then SIGCONT, to every member (the leader included).
    pub fn kill_all(&self) {
        self.signal(libc::SIGKILL);
        self.signal(libc::SIGCONT);
    }

    /// From now until this group is dropped, SIGINT, SIGTERM and SIGHUP kill the whole
    /// group before they end this process. One group at a time per process.
    pub fn kill_on_signals(&self) {
        SIGNAL_GROUP.store(self.pgid, Ordering::SeqCst);
        for sig in HANDLED {
            // SAFETY: installs a handler that only makes async-signal-safe calls.
            unsafe {
                libc::signal(
                    sig,
                    on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
                )
            };
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    let pgid = SIGNAL_GROUP.load(Ordering::SeqCst);
    // SAFETY: killpg, signal and raise are async-signal-safe. pgid 0 would mean "our own
    // group", so it is skipped.
    unsafe {
        if pgid > 0 {
            libc::killpg(pgid, libc::SIGKILL);
            libc::killpg(pgid, libc::SIGCONT);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // Stop the handlers from naming a group that is about to go.
        let _ = SIGNAL_GROUP.compare_exchange(self.pgid, 0, Ordering::SeqCst, Ordering::SeqCst);
        self.kill_all();
        let _ = self.leader.kill();
        let _ = self.leader.wait();
    }
}
