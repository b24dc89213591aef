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
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    const SAMPLE: &str = "\
1: FLOCK  ADVISORY  WRITE 812 fd:01:1234567 0 EOF
2: POSIX  ADVISORY  READ 99 00:2f:1234 0 EOF
3: OFDLCK ADVISORY  WRITE -1 08:02:777 0 EOF
1: -> FLOCK  ADVISORY  WRITE 813 fd:01:1234567 0 EOF
4: LEASE  ACTIVE    READ 1 00:14:22 0 EOF
5: DELEG  ...
";

    fn flock(pid: i32, dev: (u32, u32), inode: u64, blocked: bool) -> ProcLock {
        ProcLock {
            kind: ProcLockKind::Flock,
            mode: ProcLockMode::Write,
            pid,
            dev_major: dev.0,
            dev_minor: dev.1,
            inode,
            blocked,
            start: 0,
            end: None,
        }
    }

    #[test]
    fn parses_sample_lines() {
        let locks = parse(SAMPLE);
        assert_eq!(
            locks,
            vec![
                flock(812, (0xfd, 0x01), 1_234_567, false),
                ProcLock {
                    kind: ProcLockKind::Posix,
                    mode: ProcLockMode::Read,
                    pid: 99,
                    dev_major: 0,
                    dev_minor: 0x2f,
                    inode: 1234,
                    blocked: false,
                    start: 0,
                    end: None,
                },
                ProcLock {
                    kind: ProcLockKind::OfdLock,
                    mode: ProcLockMode::Write,
                    pid: -1,
                    dev_major: 8,
                    dev_minor: 2,
                    inode: 777,
                    blocked: false,
                    start: 0,
                    end: None,
                },
                flock(813, (0xfd, 0x01), 1_234_567, true),
                ProcLock {
                    kind: ProcLockKind::Lease,
                    mode: ProcLockMode::Read,
                    pid: 1,
                    dev_major: 0,
                    dev_minor: 0x14,
                    inode: 22,
                    blocked: false,
                    start: 0,
                    end: None,
                },
            ]
        );
    }

    #[test]
    fn parses_ranges_nested_waiters_and_unknown_kinds() {
        let text = "\
7: POSIX  ADVISORY  WRITE 5 103:2a5:9 100 199
7:  -> POSIX  ADVISORY  WRITE 6 103:2a5:9 100 199
8: DELEG  ACTIVE    UNLCK 4 00:31:5 0 EOF\r
";
        let locks = parse(text);
        assert_eq!(locks.len(), 3);
        assert_eq!((locks[0].dev_major, locks[0].dev_minor), (0x103, 0x2a5));
        assert!(!locks[0].blocked);
        assert!(locks[1].blocked, "deeper waiter levels are still waiters");
        assert_eq!(locks[2].kind, ProcLockKind::Other);
        assert_eq!(locks[2].mode, ProcLockMode::Other);
    }

    #[test]
    fn blocked_waiters_are_not_holders() {
        let locks = parse(SAMPLE);
        assert_eq!(flock_holders(&locks, 1_234_567, Some((0xfd, 1))), vec![812]);
        assert_eq!(flock_holders(&locks, 1_234_567, None), vec![812]);

        let only_waiter = parse("1: -> FLOCK  ADVISORY  WRITE 813 fd:01:5 0 EOF\n");
        assert_eq!(only_waiter.len(), 1);
        assert!(flock_holders(&only_waiter, 5, None).is_empty());
    }

    #[test]
    fn non_flock_kinds_are_ignored() {
        let locks = parse(SAMPLE);
        assert!(flock_holders(&locks, 1234, None).is_empty());
        assert!(flock_holders(&locks, 777, None).is_empty());
        assert!(flock_holders(&locks, 22, None).is_empty());
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "\
\n\
   \n\
garbage\n\
1 FLOCK  ADVISORY  WRITE 812 fd:01:1 0 EOF\n\
x: FLOCK  ADVISORY  WRITE 812 fd:01:1 0 EOF\n\
1: FLOCK  ADVISORY  WRITE abc fd:01:1 0 EOF\n\
1: FLOCK  ADVISORY  WRITE 99999999999 fd:01:1 0 EOF\n\
1: FLOCK  ADVISORY  WRITE 812 zz:01:1 0 EOF\n\
1: FLOCK  ADVISORY  WRITE 812 fd:01 0 EOF\n\
1: FLOCK  ADVISORY  WRITE 812 fd:01:-1 0 EOF\n\
1: FLOCK  ADVISORY  WRITE 812 fd:01:18446744073709551616 0 EOF\n\
1: FLOCK  ADVISORY  WRITE 812 100000000:01:1 0 EOF\n\
1: FLOCK  ADVISORY  WRITE 812 <none>:0 0 EOF\n\
1: FLOCK  ADVISORY  WRITE 812 fd:01:1 0\n\
1: FLOCK  ADVISORY  WRITE 812 fd:01:1 0 EOX\n\
1: FLOCK  ADVISORY  WRITE 812 fd:01:123\n\
1: ->\n\
2: FLOCK  ADVISORY  WRITE 900 fd:01:1 0 EOF\n";
        let locks = parse(text);
        assert_eq!(locks, vec![flock(900, (0xfd, 1), 1, false)]);
    }

    #[test]
    fn device_match_preferred_with_inode_only_fallback() {
        let overlay_only = vec![flock(10, (0, 0x32), 42, false)];
        assert_eq!(
            flock_holders(&overlay_only, 42, Some((253, 1))),
            vec![10],
            "no exact device match: fall back to inode"
        );

        let mixed = vec![
            flock(10, (0, 0x32), 42, false),
            flock(11, (253, 1), 42, false),
            flock(11, (253, 1), 42, false),
            flock(12, (253, 1), 43, false),
        ];
        assert_eq!(flock_holders(&mixed, 42, Some((253, 1))), vec![11]);
        assert_eq!(flock_holders(&mixed, 42, None), vec![10, 11]);
        assert!(flock_holders(&mixed, 44, Some((253, 1))).is_empty());
    }

    #[test]
    fn non_positive_pids_dropped_but_still_claim_the_device() {
        let locks = vec![
            flock(0, (253, 1), 42, false),
            flock(-1, (253, 1), 42, false),
            flock(10, (0, 0x32), 42, false),
        ];
        // The invisible holder on the right device is the real one; pid 10
        // locks some other file that shares the inode number.
        assert!(flock_holders(&locks, 42, Some((253, 1))).is_empty());
        assert_eq!(flock_holders(&locks, 42, None), vec![10]);
    }

    #[test]
    fn dedup_keeps_file_order() {
        let locks = vec![
            flock(30, (1, 1), 7, false),
            flock(20, (1, 1), 7, false),
            flock(30, (1, 1), 7, false),
            flock(10, (1, 1), 7, false),
        ];
        assert_eq!(flock_holders(&locks, 7, Some((1, 1))), vec![30, 20, 10]);
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn exercise(text: &str) -> Vec<ProcLock> {
        let locks = parse(text);
        for lock in &locks {
            let _ = flock_holders(&locks, lock.inode, Some((lock.dev_major, lock.dev_minor)));
            let _ = flock_holders(&locks, lock.inode, None);
        }
        locks
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..5_000 {
            let len = rng.below(200);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            exercise(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn random_token_soup_never_panics() {
        const VOCAB: &[&str] = &[
            "1:",
            "0:",
            ":",
            "::",
            "->",
            "-> ",
            "FLOCK",
            "POSIX",
            "OFDLCK",
            "LEASE",
            "DELEG",
            "ADVISORY",
            "ACTIVE",
            "BREAKING",
            "READ",
            "WRITE",
            "UNLCK",
            "812",
            "-1",
            "0",
            "EOF",
            "fd:01:1234567",
            "ffffffff:ffffffff:18446744073709551615",
            "fffffffff:0:1",
            "1:2:99999999999999999999999",
            "<none>:0",
            "2147483648",
            "-2147483649",
            "18446744073709551616",
            "-9223372036854775809",
            "é",
            "\u{fffd}",
            "\0",
            "\r",
            "\n",
            " ",
            "\t",
            "",
        ];
        let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
        for _ in 0..5_000 {
            let n = rng.below(16);
            let mut line = String::new();
            for _ in 0..n {
                line.push_str(VOCAB[rng.below(VOCAB.len())]);
                if rng.below(3) != 0 {
                    line.push(' ');
                }
            }
            exercise(&line);
        }
    }

    #[test]
    fn truncated_lines_are_skipped() {
        for line in SAMPLE.lines().filter(|l| !parse(l).is_empty()) {
            for (cut, _) in line.char_indices() {
                assert!(
                    exercise(&line[..cut]).is_empty(),
                    "prefix {:?} must not parse",
                    &line[..cut]
                );
            }
        }
    }

    #[test]
    fn real_flock_is_visible_with_our_pid() {
        let file = tempfile::NamedTempFile::new().expect("tempfile");
        // SAFETY: the fd is owned by `file`, which outlives this call.
        let rc = unsafe { libc::flock(file.as_file().as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock failed: {}", std::io::Error::last_os_error());

        let me = i32::try_from(std::process::id()).expect("pid fits in i32");
        let holders = read_flock_holders(file.path()).expect("read /proc/locks");
        assert!(holders.contains(&me), "{holders:?} should contain {me}");
    }

    #[test]
    fn missing_path_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read_flock_holders(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn snapshots_say_held_free_or_cannot_tell() {
        let snap = Snapshot {
            locks: parse(SAMPLE),
        };
        let dev = libc::makedev(0xfd, 1);
        assert_eq!(
            snap.is_held(FileId {
                dev,
                ino: 1_234_567
            }),
            Some(true)
        );
        assert_eq!(
            snap.holders(FileId {
                dev,
                ino: 1_234_567
            }),
            vec![812]
        );
        assert_eq!(snap.is_held(FileId { dev, ino: 42 }), Some(false));
        let other = libc::makedev(8, 2);
        assert_eq!(
            snap.is_held(FileId {
                dev: other,
                ino: 1_234_567
            }),
            None
        );
        // A POSIX lock is not a flock.
        assert_eq!(
            snap.is_held(FileId {
                dev: libc::makedev(0, 0x2f),
                ino: 1234
            }),
            Some(false)
        );

        let file = tempfile::NamedTempFile::new().expect("tempfile");
        let meta = file.as_file().metadata().unwrap();
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        assert_eq!(Snapshot::read().unwrap().is_held(id), Some(false));
        // SAFETY: the fd is owned by `file`, which outlives this call.
        let rc = unsafe { libc::flock(file.as_file().as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0);
        assert_eq!(Snapshot::read().unwrap().is_held(id), Some(true));
    }

    #[test]
    fn posix_writers_cover_their_byte_range() {
        let text = "\
1: POSIX  ADVISORY  WRITE 4242 fd:01:99 120 120
2: POSIX  ADVISORY  READ 4343 fd:01:99 120 120
3: POSIX  ADVISORY  WRITE 4444 fd:01:99 128 EOF
4: POSIX  ADVISORY  WRITE 4545 fd:01:98 0 EOF
";
        let snap = Snapshot { locks: parse(text) };
        let id = FileId {
            dev: libc::makedev(0xfd, 1),
            ino: 99,
        };
        assert_eq!(snap.posix_writers(id, 120), vec![4242]);
        assert_eq!(snap.posix_writers(id, 200), vec![4444]);
        assert!(snap.posix_writers(id, 0).is_empty());
    }
}
