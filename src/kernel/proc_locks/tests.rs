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
