//! Facts about processes on this host, read from `/proc` and a few syscalls.
//!
//! Owns: how a process is identified (pid + start time in clock ticks since
//! boot, because pids are recycled), how we decide it is alive, and the
//! human-facing labels (cmdline, hostname, thread label) stored with locks.
//!
//! Invariants:
//! - Nothing here panics; a question `/proc` cannot answer yields `None` or
//!   the conservative answer.
//! - Liveness errs toward `Alive`: a lock must never look abandoned merely
//!   because we lacked permission to inspect its owner (EPERM, hidepid).
//! - A zombie counts as `Dead`: the kernel released its file locks when it
//!   exited, whether or not its parent has reaped it yet.
//! - `hostname()` is computed once per process; `current()` is cached per
//!   pid, so a forked child never reports its parent's identity.

use std::sync::OnceLock;

/// Bounded so a process with a huge argv cannot bloat every row it owns.
const CMDLINE_MAX_CHARS: usize = 512;

/// Start time of a process in clock ticks since boot (field 22 of
/// /proc/PID/stat; parse after the LAST ')' because comm may contain spaces
/// and parens). None if absent/unreadable.
pub fn start_ticks(pid: i32) -> Option<u64> {
    read_stat(pid).map(|(_, start)| start)
}

fn read_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // comm is arbitrary bytes; lossy decoding cannot invent a ')' so the
    // fields after the last one are unaffected.
    parse_stat(&String::from_utf8_lossy(&raw))
}

/// (state, starttime) from the text of `/proc/PID/stat`.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    let (_, after_comm) = text.rsplit_once(')')?;
    let mut fields = after_comm.split_whitespace();
    let state_field = fields.next()?;
    let mut state_chars = state_field.chars();
    let state = state_chars.next()?;
    if state_chars.next().is_some() {
        return None;
    }
    // State is field 3 and starttime field 22: skip fields 4..=21.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    Reused,
}

/// Dead if kill(pid,0) gives ESRCH, or the process is a zombie (state 'Z' or
/// 'X' in /proc/PID/stat) — a zombie's flocks are already released. EPERM
/// counts as alive. Reused if alive but `expected_start` is Some and differs
/// from start_ticks(pid). pid <= 0 → Dead.
pub fn liveness(pid: i32, expected_start: Option<u64>) -> Liveness {
    if pid <= 0 || !pid_exists(pid) {
        return Liveness::Dead;
    }
    match read_stat(pid) {
        Some(('Z' | 'X', _)) => Liveness::Dead,
        Some((_, start)) if expected_start.is_some_and(|e| e != start) => Liveness::Reused,
        Some(_) => Liveness::Alive,
        // Either it exited between the two probes, or /proc is hidden from
        // us; only the former may be reported as Dead, and an unknown start
        // time is no evidence of reuse.
        None if pid_exists(pid) => Liveness::Alive,
        None => Liveness::Dead,
    }
}

fn pid_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only performs the existence and permission checks;
    // nothing is delivered.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    // Anything but ESRCH (notably EPERM) means something owns this pid.
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// /proc/PID/cmdline with NULs turned into spaces, trimmed, lossy UTF-8,
/// capped at 512 chars (append "…" when cut); None if unavailable or empty
/// (kernel threads).
///
/// The cap includes the "…", so the result is never longer than 512 chars.
/// A process that is still inside execve (e.g. one just returned from
/// `Command::spawn`) briefly reads as empty, so expect None for it.
pub fn cmdline(pid: i32) -> Option<String> {
    if pid <= 0 {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    render_cmdline(&raw)
}

fn render_cmdline(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw).replace('\0', " ");
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return None;
    }
    if trimmed.chars().nth(CMDLINE_MAX_CHARS).is_none() {
        return Some(trimmed.to_owned());
    }
    let keep = trimmed
        .char_indices()
        .nth(CMDLINE_MAX_CHARS - 1)
        .map_or(trimmed.len(), |(at, _)| at);
    Some(format!("{}…", trimmed[..keep].trim_end()))
}

/// "pid 812 (python3 app.py, stopped)": a process as errors name it, with its command
/// line (paths cut) and its state when it is not simply running or sleeping.
pub fn describe(pid: i32) -> String {
    let cmd = cmdline(pid).map(|c| {
        c.split(' ')
            .map(|w| w.rsplit('/').next().unwrap_or(w))
            .collect::<Vec<_>>()
            .join(" ")
    });
    let state = match read_stat(pid).map(|(s, _)| s) {
        Some('T') => Some("stopped"),
        Some('t') => Some("stopped by a debugger"),
        Some('D') => Some("in uninterruptible sleep"),
        Some('Z') => Some("a zombie"),
        None => Some("gone"),
        _ => None,
    };
    match (cmd, state) {
        (Some(c), Some(s)) => format!("pid {pid} ({c}, {s})"),
        (Some(c), None) => format!("pid {pid} ({c})"),
        (None, Some(s)) => format!("pid {pid} ({s})"),
        (None, None) => format!("pid {pid}"),
    }
}

/// This host's name via libc::gethostname (lossy UTF-8), falling back to
/// "localhost" on error. Cache it in a std::sync::OnceLock.
pub fn hostname() -> &'static str {
    static HOSTNAME: OnceLock<String> = OnceLock::new();
    HOSTNAME.get_or_init(|| {
        read_hostname().unwrap_or_else(|| {
            log::warn!("gethostname failed; recording locks as host \"localhost\"");
            "localhost".to_owned()
        })
    })
}

fn read_hostname() -> Option<String> {
    // Linux caps names at 64 bytes; the slack covers other UTS limits.
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which is writable and
    // lives across the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    // POSIX leaves termination unspecified on truncation, so don't rely on it.
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// Label of the current thread: its name if it has one, else
/// "tid:<gettid>" (libc::gettid or syscall SYS_gettid).
pub fn thread_label() -> String {
    match std::thread::current().name() {
        Some(name) => name.to_owned(),
        None => {
            // SAFETY: gettid has no preconditions and cannot fail.
            let tid = unsafe { libc::gettid() };
            format!("tid:{tid}")
        }
    }
}

/// This process: (pid, start_ticks) cached in a OnceLock.
pub fn current() -> (i32, Option<u64>) {
    static CURRENT: OnceLock<(i32, Option<u64>)> = OnceLock::new();
    // SAFETY: getpid has no preconditions and cannot fail.
    let pid = unsafe { libc::getpid() };
    let cached = *CURRENT.get_or_init(|| (pid, start_ticks(pid)));
    // The cache survives fork(); a child must not claim its parent's locks.
    if cached.0 == pid {
        cached
    } else {
        (pid, start_ticks(pid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    /// Reaps the child even when an assertion fails mid-test.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn spawn_sleep() -> (Reaped, i32) {
        let child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id()).expect("pid fits in i32");
        (Reaped(child), pid)
    }

    #[test]
    fn own_process_is_alive_with_its_start_time() {
        let (pid, start) = current();
        assert_eq!(u32::try_from(pid).ok(), Some(std::process::id()));
        let start = start.expect("own start time");
        assert_eq!(start_ticks(pid), Some(start));
        assert_eq!(liveness(pid, Some(start)), Liveness::Alive);
        assert_eq!(liveness(pid, None), Liveness::Alive);
        assert_eq!(current(), (pid, Some(start)));
    }

    #[test]
    fn wrong_start_time_means_reused() {
        let (pid, start) = current();
        let start = start.expect("own start time");
        assert_eq!(liveness(pid, Some(start.wrapping_add(1))), Liveness::Reused);
    }

    #[test]
    fn non_positive_pids_are_dead() {
        for pid in [0, -1, -12345, i32::MIN] {
            assert_eq!(liveness(pid, None), Liveness::Dead, "pid {pid}");
            assert_eq!(start_ticks(pid), None);
            assert_eq!(cmdline(pid), None);
        }
    }

    #[test]
    fn child_alive_then_dead_after_reap() {
        let (mut child, pid) = spawn_sleep();
        let start = start_ticks(pid).expect("child start time");
        assert_eq!(liveness(pid, Some(start)), Liveness::Alive);

        child.0.kill().expect("kill child");
        child.0.wait().expect("wait child");
        assert_eq!(liveness(pid, Some(start)), Liveness::Dead);
        assert_eq!(start_ticks(pid), None);
    }

    #[test]
    fn unreaped_zombie_is_dead() {
        let (mut child, pid) = spawn_sleep();
        let start = start_ticks(pid).expect("child start time");
        child.0.kill().expect("kill child");

        // SIGKILL is asynchronous; wait for the exit to land without reaping.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(read_stat(pid), Some(('Z', _))) {
            assert!(Instant::now() < deadline, "child never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(pid_exists(pid), "zombie must still answer kill(pid, 0)");
        assert_eq!(liveness(pid, Some(start)), Liveness::Dead);
        assert_eq!(cmdline(pid), None, "zombies have no cmdline");
    }

    #[test]
    fn cmdline_of_child() {
        let (_child, pid) = spawn_sleep();
        // spawn() returns once exec has begun, but the kernel publishes the
        // new argv a few milliseconds later; until then cmdline reads empty.
        let deadline = Instant::now() + Duration::from_secs(10);
        let line = loop {
            if let Some(line) = cmdline(pid) {
                break line;
            }
            assert!(Instant::now() < deadline, "child cmdline never appeared");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(line.contains("sleep 30"), "{line:?}");
    }

    #[test]
    fn render_cmdline_rules() {
        assert_eq!(render_cmdline(b""), None);
        assert_eq!(render_cmdline(b"\0\0 \0"), None);
        assert_eq!(
            render_cmdline(b"sleep\x0030\0").as_deref(),
            Some("sleep 30")
        );
        assert_eq!(render_cmdline(b"a\xffb\0").as_deref(), Some("a\u{fffd}b"));

        let exact = "x".repeat(CMDLINE_MAX_CHARS);
        assert_eq!(
            render_cmdline(exact.as_bytes()).as_deref(),
            Some(exact.as_str())
        );

        let long = "é".repeat(CMDLINE_MAX_CHARS + 1);
        let cut = render_cmdline(long.as_bytes()).expect("non-empty");
        assert_eq!(cut.chars().count(), CMDLINE_MAX_CHARS);
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn parse_stat_survives_hostile_comm() {
        let line = "4242 (evil) (name) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1 2 0 0 20 0 1 0 987654 1234567 89 18446744073709551615\n";
        assert_eq!(parse_stat(line), Some(('S', 987_654)));

        let zombie = "7 ()) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert_eq!(parse_stat(zombie), Some(('Z', 55)));

        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("1 (no close paren S 1 2 3"), None);
        assert_eq!(parse_stat("1 (short) S 1 2 3"), None);
        assert_eq!(
            parse_stat("1 (x) SS 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55"),
            None
        );
        assert_eq!(
            parse_stat("1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 -5"),
            None
        );
    }

    #[test]
    fn start_ticks_matches_parse_of_real_stat() {
        let (pid, _) = current();
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("own stat");
        let (state, start) = parse_stat(&text).expect("parse own stat");
        assert!(matches!(state, 'R' | 'S' | 'D'), "state {state}");
        assert_eq!(start_ticks(pid), Some(start));
    }

    #[test]
    fn named_thread_label_is_its_name() {
        let label = std::thread::Builder::new()
            .name("ledger-worker".into())
            .spawn(thread_label)
            .expect("spawn thread")
            .join()
            .expect("join thread");
        assert_eq!(label, "ledger-worker");
    }

    #[test]
    fn unnamed_thread_label_is_its_tid() {
        let label = std::thread::spawn(thread_label)
            .join()
            .expect("join thread");
        let tid: i32 = label
            .strip_prefix("tid:")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("unexpected label {label:?}"));
        assert!(tid > 0);
        assert_ne!(tid, current().0, "a spawned thread is not the main thread");
    }

    #[test]
    fn hostname_is_stable_and_non_empty() {
        let first = hostname();
        assert!(!first.is_empty());
        assert!(std::ptr::eq(first, hostname()));
    }
}
