//! Exclusion that survives a hostile lock directory (DESIGN §5a), in-process: deleted and
//! replaced lock files under live holders, symlinks, FIFOs, a deleted registry, tokens
//! after the loss of the database, wall-clock steps. The same cases against the real
//! binary are in `hostile_service.rs`.

use lockledger::clock::ManualClock;
use lockledger::policy::stale::{HolderKind, LockState, StaleReason};
use lockledger::registry::{LeaseGrant, LeaseRequest, LockReport, SkipKind};
use lockledger::store::history::HistoryQuery;
use lockledger::{AcquireOptions, Config, LockKey, Registry, RegistryError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const T0: i64 = 1_800_000_000_000;
const DAY_MS: i64 = 86_400_000;

fn open_manual(dir: &std::path::Path) -> (Registry, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let reg = Registry::open_with_clock(Config::defaults(dir), clock.clone()).unwrap();
    (reg, clock)
}

fn lease_req(ttl_ms: u64, pid: Option<i32>) -> LeaseRequest {
    LeaseRequest {
        holder: "chat-app".into(),
        operation: "send_message".into(),
        pid,
        host: None,
        ttl: Some(Duration::from_millis(ttl_ms)),
        wait: Duration::ZERO,
    }
}

fn lease(reg: &Registry, key: &LockKey, ttl_ms: u64) -> Result<LeaseGrant, RegistryError> {
    reg.acquire_lease(key, &lease_req(ttl_ms, None), &|| false)
}

fn report(reg: &Registry, key: &LockKey) -> LockReport {
    reg.status(None, key.owner())
        .unwrap()
        .locks
        .into_iter()
        .find(|l| l.field == key.field())
        .unwrap()
}

fn lock_path(reg: &Registry, key: &LockKey) -> PathBuf {
    reg.config().locks_dir().join(reg.file_of(key).unwrap())
}

fn events(reg: &Registry, key: &LockKey, event: &str) -> usize {
    reg.history(&HistoryQuery {
        owner: Some(key.owner().into()),
        limit: 1000,
        ..Default::default()
    })
    .unwrap()
    .iter()
    .filter(|e| e.field == key.field() && e.event == event)
    .count()
}

#[test]
fn a_deleted_lock_file_never_gives_a_second_holder_and_lease_ids_name_one_grant() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, _clock) = open_manual(dir.path());
    let key = reg.key(None, "conv1", "messages").unwrap();
    let first = lease(&reg, &key, 30_000).unwrap();
    let path = lock_path(&reg, &key);

    // The chat app's old code deletes lock files, held or not.
    std::fs::remove_file(&path).unwrap();
    for _ in 0..3 {
        let err = lease(&reg, &key, 30_000).unwrap_err();
        assert!(matches!(err, RegistryError::Busy { .. }), "{err}");
    }
    let lib = reg.acquire(
        &key,
        &AcquireOptions::new("other", "op").wait(Duration::ZERO),
    );
    assert!(matches!(lib, Err(RegistryError::Busy { .. })), "{lib:?}");
    let r = report(&reg, &key);
    assert_eq!(
        (r.state, r.kind, r.token),
        (LockState::Held, Some(HolderKind::Lease), Some(first.token))
    );
    assert!(r.file_replaced, "{r:?}");
    assert!(r.note.contains("deleted or replaced"), "{}", r.note);
    assert!(r.conflict.is_none(), "{r:?}");
    // Written once, however often it is noticed.
    reg.reconcile("test").unwrap();
    assert_eq!(events(&reg, &key, "file_replaced"), 1);

    // The first lease is intact: it renews and fences its own grant only.
    let renewed = reg.renew_lease(&first.lease_id).unwrap();
    assert_eq!(renewed.token, first.token);
    assert!(reg.fence_check(&key, first.token).unwrap().current);

    // Once it ends, the lock is granted again, with a greater token; the old id is dead.
    reg.release_lease(&first.lease_id).unwrap();
    let second = lease(&reg, &key, 30_000).unwrap();
    assert!(second.token > first.token);
    assert!(matches!(
        reg.renew_lease(&first.lease_id),
        Err(RegistryError::LeaseGone { .. })
    ));
    assert!(matches!(
        reg.release_lease(&first.lease_id),
        Err(RegistryError::LeaseGone { .. })
    ));
    assert!(!reg.fence_check(&key, first.token).unwrap().current);
    assert!(reg.fence_check(&key, second.token).unwrap().current);
    let r = report(&reg, &key);
    assert_eq!((r.token, r.file_replaced), (Some(second.token), false));
}

#[test]
fn a_replaced_file_with_its_own_holder_is_a_reported_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, _clock) = open_manual(dir.path());
    let key = reg.key(None, "conv2", "memory").unwrap();
    let guard = reg
        .acquire(&key, &AcquireOptions::new("indexer", "reindex"))
        .unwrap();
    let path = lock_path(&reg, &key);
    std::fs::remove_file(&path).unwrap();
    // Somebody else creates and locks a new file at the path.
    let intruder = lockledger::kernel::flock::try_acquire(&path, 0o600)
        .unwrap()
        .expect("the new file is free in the kernel");
    let r = report(&reg, &key);
    assert_eq!((r.state, r.token), (LockState::Held, Some(guard.token())));
    assert!(r.file_replaced);
    let conflict = r.conflict.expect("a conflicting holder");
    assert_eq!(conflict.pid, Some(std::process::id() as i32));
    assert!(r.note.contains("two processes"), "{}", r.note);
    drop(intruder);
    drop(guard);
    let r = report(&reg, &key);
    assert_eq!(r.state, LockState::Free, "{r:?}");
}

#[test]
fn symlinks_and_fifos_are_refused_and_nothing_is_written_through_them() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, _clock) = open_manual(dir.path());
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious.txt");
    std::fs::write(&precious, b"do not empty me").unwrap();

    let key = reg.key(None, "x", "messages").unwrap();
    std::os::unix::fs::symlink(&precious, lock_path(&reg, &key)).unwrap();
    let err = lease(&reg, &key, 1000).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("x_messages.lock") && msg.contains("symbolic link"),
        "{msg}"
    );
    assert!(!msg.contains(dir.path().to_str().unwrap()), "{msg}");
    // Status and clear answer, with the symlink reported on its own lock.
    let r = report(&reg, &key);
    assert_eq!(r.state, LockState::Unsafe, "{r:?}");
    assert_eq!(r.unsafe_file.as_deref(), Some("a symbolic link"));
    assert!(r.note.contains("x_messages.lock"), "{}", r.note);
    let out = reg.clear(None, "x", None, "test").unwrap();
    assert!(out.cleared.is_empty(), "{out:?}");
    assert_eq!(out.skipped.len(), 1, "{out:?}");
    assert_eq!(out.skipped[0].outcome, SkipKind::UnsafeLockFile);
    assert_eq!(std::fs::read(&precious).unwrap(), b"do not empty me");

    // A symlink put in place of a live lease's lock file: the lease is still the holder,
    // reported with what is at its path now; once it ends, the lock is unsafe.
    let leased = reg.key(None, "x", "memory").unwrap();
    let l = lease(&reg, &leased, 60_000).unwrap();
    std::fs::remove_file(lock_path(&reg, &leased)).unwrap();
    std::os::unix::fs::symlink(&precious, lock_path(&reg, &leased)).unwrap();
    let r = report(&reg, &leased);
    assert_eq!(
        (r.state, r.token),
        (LockState::Held, Some(l.token)),
        "{r:?}"
    );
    assert!(r.file_replaced, "{r:?}");
    assert_eq!(r.unsafe_file.as_deref(), Some("a symbolic link"));
    assert!(r.note.contains("symbolic link"), "{}", r.note);
    let out = reg.clear(None, "x", None, "test").unwrap();
    assert!(out.cleared.is_empty(), "{out:?}");
    reg.release_lease(&l.lease_id).unwrap();
    assert_eq!(report(&reg, &leased).state, LockState::Unsafe);
    assert_eq!(std::fs::read(&precious).unwrap(), b"do not empty me");

    let dangling = reg.key(None, "y", "messages").unwrap();
    let target = outside.path().join("created-by-mistake");
    std::os::unix::fs::symlink(&target, lock_path(&reg, &dangling)).unwrap();
    assert!(lease(&reg, &dangling, 1000).is_err());
    assert!(!target.exists());

    let fifo = reg.key(None, "z", "messages").unwrap();
    let c = std::ffi::CString::new(lock_path(&reg, &fifo).to_str().unwrap()).unwrap();
    // SAFETY: c is a valid path string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let t = std::time::Instant::now();
    let err = lease(&reg, &fifo, 1000).unwrap_err();
    assert!(err.to_string().contains("FIFO"), "{err}");
    let out = reg.clear(None, "z", None, "test").unwrap();
    assert_eq!(out.skipped[0].outcome, SkipKind::UnsafeLockFile, "{out:?}");
    assert!(out.skipped[0].reason.contains("FIFO"), "{out:?}");
    assert_eq!(report(&reg, &fifo).state, LockState::Unsafe);
    assert!(t.elapsed() < Duration::from_secs(2));
    // The database still takes writes at once: nothing hangs on the FIFO.
    let ok = reg.key(None, "z", "memory").unwrap();
    lease(&reg, &ok, 1000).unwrap();
}

#[test]
fn a_deleted_registry_stops_every_call_and_tokens_never_go_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let key;
    let mut newest = 0;
    {
        let reg = Registry::open(Config::defaults(dir.path())).unwrap();
        key = reg.key(None, "conv3", "all").unwrap();
        for _ in 0..5 {
            let g = reg.acquire(&key, &AcquireOptions::new("t", "op")).unwrap();
            newest = g.token();
        }
        let held = reg.acquire(&key, &AcquireOptions::new("t", "op")).unwrap();
        newest = newest.max(held.token());
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("registry.db{suffix}")));
        }
        let err = reg.check_store().unwrap_err();
        assert!(err.to_string().contains("deleted"), "{err}");
        assert!(reg.store_lost().is_some());
        let other = reg.key(None, "conv3", "memory").unwrap();
        let err = reg
            .acquire(&other, &AcquireOptions::new("t", "op"))
            .unwrap_err();
        assert!(
            err.to_string().contains("registry database is gone"),
            "{err}"
        );
        assert!(reg.status(None, "conv3").is_err());
        assert!(
            !dir.path().join("registry.db").exists(),
            "nothing wrote a new file"
        );
        drop(held);
    }
    // A new database continues above every token ever issued.
    let reg = Registry::open(Config::defaults(dir.path())).unwrap();
    let g = reg.acquire(&key, &AcquireOptions::new("t", "op")).unwrap();
    assert!(g.token() > newest, "{} after {newest}", g.token());
}

#[test]
fn storage_files_and_directories_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let storage = parent.path().join("storage");
    let reg = Registry::open(Config::defaults(&storage)).unwrap();
    let key = reg.key(None, "c", "messages").unwrap();
    let _g = reg.acquire(&key, &AcquireOptions::new("t", "op")).unwrap();
    let mode = |p: PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(storage.clone()), 0o700);
    assert_eq!(mode(storage.join("locks")), 0o700);
    for f in [
        "registry.db",
        "registry.db-wal",
        "registry.db-shm",
        "token-ceiling",
    ] {
        assert_eq!(mode(storage.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(lock_path(&reg, &key)) & 0o077, 0, "lock file");
}

#[test]
fn wall_clock_steps_neither_end_live_leases_nor_keep_dead_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, clock) = open_manual(dir.path());
    let live = reg.key(None, "conv4", "messages").unwrap();
    let l = lease(&reg, &live, 10_000).unwrap();

    clock.step_wall_ms(DAY_MS);
    assert!(reg.reap().unwrap().is_empty());
    assert_eq!(report(&reg, &live).state, LockState::Held);
    reg.renew_lease(&l.lease_id).unwrap();
    clock.step_wall_ms(-2 * DAY_MS);
    assert_eq!(report(&reg, &live).state, LockState::Held);
    // Its ttl passes on the monotonic clock, whatever the wall clock says.
    clock.advance_ms(10_001);
    let r = report(&reg, &live);
    assert_eq!(
        (r.state, r.stale_reason),
        (LockState::Stale, Some(StaleReason::LeaseExpired))
    );
    assert_eq!(reg.reap().unwrap(), vec!["conv4/messages".to_string()]);

    // A dead client's lease ends at once, a day back in time or not.
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let dead = reg.key(None, "conv4", "memory").unwrap();
    reg.acquire_lease(&dead, &lease_req(3_600_000, Some(pid)), &|| false)
        .unwrap();
    clock.step_wall_ms(-DAY_MS);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(reg.reap().unwrap(), vec!["conv4/memory".to_string()]);
    assert_eq!(report(&reg, &dead).state, LockState::Free);
}
