//! Parser for the kernel's `/proc/locks` table, used to name the external
//! process that holds a `flock(2)` on one of our lock files.
//!
//! Owns: the text format of `/proc/locks` (tokenising, the `->` waiter
//! marker, hex `major:minor` devices, decimal inodes) and the rule for
//! matching an entry to a file on disk.
//!
//! Invariants:
//! - Parsing is total: any input yields a (possibly empty) list and never
//!   panics. Lines that do not have every field up to and including the lock
//!   range are dropped, so a truncated line can never produce a half-read
//!   inode that matches the wrong file.
//! - Blocked waiters (`->`) are recorded but are never reported as holders.
//! - Reported pids are always `> 0`. The kernel shows 0 when the owner is not
//!   visible from our pid namespace (or its pid was already freed) and -1 for
//!   OFD locks, which have no owning process.
//! - A pid from `/proc/locks` is a hint, not an identity: for flock it is the
//!   process that *took* the lock, and the lock lives on as long as any
//!   process (e.g. a forked child) still has that open file description.

use super::flock::FileId;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PROC_LOCKS: &str = "/proc/locks";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcLockKind {
    Flock,
    Posix,
    OfdLock,
    Lease,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcLockMode {
    Read,
    Write,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcLock {
    pub kind: ProcLockKind,
    pub mode: ProcLockMode,
    pub pid: i32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    pub blocked: bool,
    /// First byte of the locked range (0 for flock).
    pub start: i64,
    /// Last byte of the range, None for "to the end of the file" (EOF).
    pub end: Option<i64>,
}

/// Parses the whole text; skips malformed lines; never panics on any input
/// (including huge numbers, non-UTF8-ish junk, empty lines).
pub fn parse(text: &str) -> Vec<ProcLock> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<ProcLock> {
    let mut tokens = line.split_whitespace();

    let ordinal = tokens.next()?.strip_suffix(':')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }

    // Waiters are printed under the lock they wait on, indented one extra
    // space per nesting level, so the marker is always its own token.
    let mut kind_token = tokens.next()?;
    let blocked = kind_token == "->";
    if blocked {
        kind_token = tokens.next()?;
    }
    let kind = match kind_token {
        "FLOCK" => ProcLockKind::Flock,
        "POSIX" => ProcLockKind::Posix,
        "OFDLCK" => ProcLockKind::OfdLock,
        "LEASE" => ProcLockKind::Lease,
        _ => ProcLockKind::Other,
    };

    // ADVISORY / ACTIVE / BREAKING / ...: nothing we decide on.
    tokens.next()?;

    let mode = match tokens.next()? {
        "READ" => ProcLockMode::Read,
        "WRITE" => ProcLockMode::Write,
        _ => ProcLockMode::Other,
    };
    let pid: i32 = tokens.next()?.parse().ok()?;
    let (dev_major, dev_minor, inode) = parse_dev_inode(tokens.next()?)?;

    // Requiring the range is also what proves the line was not cut off in the middle of
    // the inode number.
    let start = tokens.next()?.parse::<i64>().ok()?;
    let end = match tokens.next()? {
        "EOF" => None,
        n => Some(n.parse::<i64>().ok()?),
    };

    Some(ProcLock {
        kind,
        mode,
        pid,
        dev_major,
        dev_minor,
        inode,
        blocked,
        start,
        end,
    })
}

/// `fd:01:1234567` → (0xfd, 0x01, 1234567). Lock entries without an inode
/// are printed as `<none>:0` and are rejected here.
fn parse_dev_inode(token: &str) -> Option<(u32, u32, u64)> {
    let mut parts = token.splitn(3, ':');
    let major = u32::from_str_radix(parts.next()?, 16).ok()?;
    let minor = u32::from_str_radix(parts.next()?, 16).ok()?;
    let inode = parts.next()?.parse().ok()?;
    Some((major, minor, inode))
}

/// Pids (deduplicated, in file order) of non-blocked FLOCK entries on that
/// inode. If `dev` is Some((major, minor)) entries whose device differs are
/// still accepted when NO entry matches the device exactly (overlayfs
/// reports a different st_dev than /proc/locks), i.e. prefer exact device
/// matches, fall back to inode-only matches. Pids <= 0 are dropped.
///
/// The inode-only fallback can name a process locking an unrelated file
/// that happens to share the inode number on another filesystem; callers
/// should treat the result as "probably", not "certainly".
pub fn flock_holders(locks: &[ProcLock], inode: u64, dev: Option<(u32, u32)>) -> Vec<i32> {
    let candidates = || {
        locks
            .iter()
            .filter(move |l| l.kind == ProcLockKind::Flock && !l.blocked && l.inode == inode)
    };
    let on_dev = |l: &ProcLock, d: (u32, u32)| (l.dev_major, l.dev_minor) == d;

    // Decided before dropping pid <= 0: an exact-device holder we cannot see
    // is still the real holder, and falling back would blame a stranger.
    let exact = dev.filter(|&d| candidates().any(|l| on_dev(l, d)));

    let mut pids = Vec::new();
    for lock in candidates() {
        if exact.is_some_and(|d| !on_dev(lock, d)) {
            continue;
        }
        if lock.pid > 0 && !pids.contains(&lock.pid) {
            pids.push(lock.pid);
        }
    }
    pids
}

/// Reads /proc/locks and returns flock_holders for the file at `path` (stat
/// it for st_ino / st_dev; use libc::major/minor on st_dev).
pub fn read_flock_holders(path: &Path) -> std::io::Result<Vec<i32>> {
    let meta = std::fs::symlink_metadata(path)?;
    let id = FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    Ok(Snapshot::read()?.holders(id))
}

/// Reading more than this much of /proc/locks is expensive (see [`Snapshot::take`]).
const CHEAP_BYTES: usize = 64 * 1024;
/// ... or taking longer than this.
const CHEAP_TIME: Duration = Duration::from_millis(2);
/// After an expensive read, /proc/locks is not read for status decisions for this long.
const BACK_OFF: Duration = Duration::from_secs(10);

/// Monotonic milliseconds (since [`epoch`]) until which /proc/locks counts as expensive.
static EXPENSIVE_UNTIL_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// One read of `/proc/locks`, to decide many locks at once.
///
/// The kernel prints the table a 4 KiB page per `read`, and every page takes the
/// machine-wide `file_rwsem` for writing (which waits for an RCU grace period and stalls
/// every `flock` on the machine meanwhile): measured here, 14 µs with 5 locks held,
/// ~1 ms with 1,000 and ~50 ms (p99 360 ms) with 10,000. So it is read for status only
/// while it is small; see [`Snapshot::take`].
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    locks: Vec<ProcLock>,
}

impl Snapshot {
    /// Reads the whole table now.
    pub fn read() -> std::io::Result<Snapshot> {
        // Lossy because the table is ASCII by construction; a stray byte must cost at
        // most its own line, not the whole read.
        let raw = std::fs::read(PROC_LOCKS)?;
        Ok(Snapshot {
            locks: parse(&String::from_utf8_lossy(&raw)),
        })
    }

    /// Reads the table (at most [`CHEAP_BYTES`] of it) unless it was found expensive in
    /// the last [`BACK_OFF`]; `None` then, when it is bigger, or when it cannot be read,
    /// and the caller decides another way. A read that turns out big or slow starts a
    /// back-off.
    pub fn take() -> Option<Snapshot> {
        let now_ms = epoch().elapsed().as_millis() as u64;
        if now_ms < EXPENSIVE_UNTIL_MS.load(Ordering::Relaxed) {
            return None;
        }
        use std::io::Read;
        let started = Instant::now();
        let back_off = || {
            let until = epoch().elapsed() + BACK_OFF;
            EXPENSIVE_UNTIL_MS.store(until.as_millis() as u64, Ordering::Relaxed);
        };
        // Never more than the cheap size plus one byte: each page read takes the kernel's
        // file-lock semaphore, so a full read of a big table stalls every flock on the
        // machine. A table past that size is not used (a truncated one would miss holders).
        let mut raw = Vec::with_capacity(CHEAP_BYTES + 1);
        std::fs::File::open(PROC_LOCKS)
            .ok()?
            .take(CHEAP_BYTES as u64 + 1)
            .read_to_end(&mut raw)
            .ok()?;
        if raw.len() > CHEAP_BYTES {
            back_off();
            return None;
        }
        if started.elapsed() > CHEAP_TIME {
            back_off();
        }
        Some(Snapshot {
            locks: parse(&String::from_utf8_lossy(&raw)),
        })
    }

    /// Pids of the processes holding a flock on the file `id` (see [`flock_holders`]).
    pub fn holders(&self, id: FileId) -> Vec<i32> {
        flock_holders(&self.locks, id.ino, Some(device(id.dev)))
    }

    /// Does anyone hold a flock on the file `id`? `Some(true)` when an entry matches its
    /// device and inode (a holder in another pid namespace, shown with pid 0, counts),
    /// `Some(false)` when no entry has its inode, `None` when entries have its inode only
    /// on other devices (overlayfs shows another device than `stat`; or another file
    /// system's inode): then only a probe can tell.
    pub fn is_held(&self, id: FileId) -> Option<bool> {
        let dev = device(id.dev);
        let mut on_inode = self
            .locks
            .iter()
            .filter(|l| l.kind == ProcLockKind::Flock && !l.blocked && l.inode == id.ino)
            .peekable();
        if on_inode.peek().is_none() {
            return Some(false);
        }
        on_inode
            .any(|l| (l.dev_major, l.dev_minor) == dev)
            .then_some(true)
    }
}

impl Snapshot {
    /// Pids holding a granted POSIX (fcntl) write lock on `byte` of the file `id`: how
    /// SQLite's WAL write lock (byte 120 of the `-shm` file) shows who is writing.
    pub fn posix_writers(&self, id: FileId, byte: i64) -> Vec<i32> {
        let dev = device(id.dev);
        let mut pids: Vec<i32> = self
            .locks
            .iter()
            .filter(|l| {
                l.kind == ProcLockKind::Posix
                    && l.mode == ProcLockMode::Write
                    && !l.blocked
                    && l.inode == id.ino
                    && (l.dev_major, l.dev_minor) == dev
                    && l.start <= byte
                    && l.end.is_none_or(|e| byte <= e)
                    && l.pid > 0
            })
            .map(|l| l.pid)
            .collect();
        pids.dedup();
        pids
    }
}

fn device(dev: u64) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
}

#[cfg(test)]
mod tests;
