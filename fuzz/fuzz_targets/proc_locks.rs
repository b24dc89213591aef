//! The `/proc/locks` parser and holder matching (`src/proc_locks.rs`).
//!
//! Input: any bytes, read lossily as the table's text (as `read_flock_holders` does).
//!
//! Properties:
//! - `parse` never panics and yields at most one entry per line;
//! - `flock_holders` never panics, for the parsed inodes with and without a device and
//!   for a few fixed ones; every pid it returns is > 0, appears once, and belongs to a
//!   non-blocked FLOCK entry on that inode (on the asked device whenever some entry
//!   matches it exactly);
//! - a prefix of a line (a truncated read) either parses to nothing or to the same
//!   kind, pid, device and inode as the whole line: never a half-read number.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lockledger::kernel::proc_locks::{flock_holders, parse, ProcLock, ProcLockKind};

fn check_holders(locks: &[ProcLock], inode: u64, dev: Option<(u32, u32)>) {
    let pids = flock_holders(locks, inode, dev);
    let holder = |l: &&ProcLock| l.kind == ProcLockKind::Flock && !l.blocked && l.inode == inode;
    let exact = dev.filter(|&d| {
        locks
            .iter()
            .filter(holder)
            .any(|l| (l.dev_major, l.dev_minor) == d)
    });
    for (i, &pid) in pids.iter().enumerate() {
        assert!(pid > 0, "pid {pid} reported for inode {inode}");
        assert!(!pids[..i].contains(&pid), "pid {pid} twice: {pids:?}");
        assert!(
            locks
                .iter()
                .filter(holder)
                .any(|l| l.pid == pid && exact.is_none_or(|d| (l.dev_major, l.dev_minor) == d)),
            "pid {pid} holds no FLOCK on inode {inode} (dev {dev:?})"
        );
    }
}

fn check_prefixes(line: &str) {
    let [whole] = &parse(line)[..] else {
        return;
    };
    for (cut, _) in line.char_indices() {
        if let [part] = &parse(&line[..cut])[..] {
            assert_eq!(
                (
                    part.kind,
                    part.pid,
                    part.dev_major,
                    part.dev_minor,
                    part.inode
                ),
                (
                    whole.kind,
                    whole.pid,
                    whole.dev_major,
                    whole.dev_minor,
                    whole.inode
                ),
                "prefix {:?} of {line:?} reads differently",
                &line[..cut]
            );
            assert_eq!(part.blocked, whole.blocked);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let locks = parse(&text);
    assert!(locks.len() <= text.lines().count());

    for lock in locks.iter().take(16) {
        check_holders(&locks, lock.inode, Some((lock.dev_major, lock.dev_minor)));
        check_holders(&locks, lock.inode, None);
    }
    for inode in [0, 1, 1_234_567, u64::MAX] {
        check_holders(&locks, inode, None);
        check_holders(&locks, inode, Some((0xfd, 0x01)));
        check_holders(&locks, inode, Some((0, 0)));
    }
    for line in text.lines().filter(|l| l.len() <= 256).take(4) {
        check_prefixes(line);
    }
});
