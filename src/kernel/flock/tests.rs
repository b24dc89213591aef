use super::*;

const MODE: u32 = 0o600;

#[test]
fn two_handles_in_one_process_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a_.lock");
    let first = try_acquire(&path, MODE).unwrap().expect("free lock");
    assert!(try_acquire(&path, MODE).unwrap().is_none());
    assert!(probe(&path).unwrap().held);
    assert_eq!(probe(&path).unwrap().id, Some(first.id()));
    drop(first);
    assert!(!probe(&path).unwrap().held);
    assert!(try_acquire(&path, MODE).unwrap().is_some());
    assert!(path.exists(), "lock files are never deleted");
}

#[test]
fn probe_of_a_missing_file_is_free_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing_.lock");
    assert_eq!(
        probe(&path).unwrap(),
        Probed {
            id: None,
            held: false
        }
    );
    assert!(!path.exists());
    assert_eq!(file_id(&path).unwrap(), None);
}

#[test]
fn acquire_until_times_out_then_succeeds_after_release() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b_.lock");
    let held = try_acquire(&path, MODE).unwrap().unwrap();
    let t = Instant::now();
    let err = acquire_until(&path, MODE, t + Duration::from_millis(60), &|| false).unwrap_err();
    assert!(matches!(err, FlockError::Timeout { .. }), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(60));
    assert!(!err.to_string().contains(dir.path().to_str().unwrap()));
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        drop(held);
    });
    acquire_until(
        &path,
        MODE,
        Instant::now() + Duration::from_secs(5),
        &|| false,
    )
    .unwrap();
    releaser.join().unwrap();
}

#[test]
fn a_probe_never_disturbs_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c_.lock");
    let held = try_acquire(&path, MODE).unwrap().unwrap();
    for _ in 0..100 {
        assert!(probe(&path).unwrap().held);
    }
    assert!(try_acquire(&path, MODE).unwrap().is_none());
    drop(held);
    // That probes never make a try-acquire of this process fail is shown in
    // tests/kernel_gate.rs, alone in its process: here, other tests fork children, and a
    // child between fork and exec keeps the parent's lock files open (and locked) for a
    // moment.
}

#[test]
fn a_symlink_is_refused_and_its_target_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious.txt");
    std::fs::write(&target, b"keep me").unwrap();
    let path = dir.path().join("x_messages.lock");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let err = try_acquire(&path, MODE).unwrap_err();
    assert!(
        matches!(
            err,
            FlockError::NotRegular {
                what: "a symbolic link",
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("x_messages.lock") && msg.contains("symbolic link"),
        "{msg}"
    );
    assert!(!msg.contains(dir.path().to_str().unwrap()), "{msg}");
    assert!(probe(&path).is_err());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
}

#[test]
fn a_dangling_symlink_creates_nothing_where_it_points() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere").join("made.txt");
    std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
    let path = dir.path().join("y_messages.lock");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    assert!(try_acquire(&path, MODE).is_err());
    assert!(probe(&path).is_err());
    assert!(!target.exists());
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z_messages.lock");
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: c is a valid path string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let t = Instant::now();
    let err = try_acquire(&path, MODE).unwrap_err();
    assert!(matches!(err, FlockError::NotRegular { .. }), "{err}");
    assert!(err.to_string().contains("FIFO"), "{err}");
    assert!(probe(&path).is_err());
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn lock_files_are_never_written_or_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w_.lock");
    std::fs::write(&path, b"somebody's bytes").unwrap();
    let held = try_acquire(&path, MODE).unwrap().unwrap();
    drop(held);
    let _ = probe(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"somebody's bytes");
}

#[test]
fn a_replaced_file_has_another_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r_.lock");
    let held = try_acquire(&path, MODE).unwrap().unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(file_id(&path).unwrap(), None);
    let second = try_acquire(&path, MODE)
        .unwrap()
        .expect("a new file is a new lock");
    assert_ne!(second.id(), held.id());
    assert_eq!(file_id(&path).unwrap(), Some(second.id()));
}

#[test]
fn created_directories_get_the_mode_asked_for() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("s").join("locks");
    ensure_dir(&locks, 0o700).unwrap();
    let mode = std::fs::metadata(&locks).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700);
    let file = dir.path().join("f");
    std::fs::write(&file, b"").unwrap();
    assert!(ensure_dir(&file, 0o700).is_err());
}
