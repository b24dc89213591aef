//! Kernel file locks on lock files: the only module that touches `fslock` (and `flock`).
//!
//! Invariants:
//! - Exclusion is a `flock(LOCK_EX)` on the lock file, per open file description: two
//!   handles in one process exclude each other, and Python's `filelock.FileLock` and
//!   this module exclude each other both ways.
//! - A [`HeldFlock`] is the only way to hold a lock, and it is locked exactly once and
//!   unlocked exactly once (on drop, on every path), so `fslock`'s panics on a double
//!   lock or unlock cannot happen.
//! - Lock files are created when first acquired and never deleted or written: deleting
//!   a held lock file lets a second holder in, and `fslock`'s unlock truncates the file.
//! - [`probe`] never creates a file and never blocks; it answers "is it held" from the
//!   kernel, not from the file's presence or age.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum FlockError {
    #[error("cannot open lock file {name}: {source}")]
    Open {
        name: String,
        source: std::io::Error,
    },
    #[error("cannot lock {name}: {source}")]
    Lock {
        name: String,
        source: std::io::Error,
    },
    #[error("timed out after {waited_ms} ms waiting for {name}")]
    Timeout { name: String, waited_ms: u64 },
}

/// Bare file name for messages: responses must never carry absolute server paths.
fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "lock file".into())
}

/// A held kernel lock. Dropping it releases the lock and closes the handle.
#[derive(Debug)]
pub struct HeldFlock {
    // Kept only for its Drop: fslock::LockFile unlocks when it owns the lock, then
    // closes the fd.
    #[allow(dead_code)]
    file: fslock::LockFile,
}

fn open(path: &Path) -> Result<fslock::LockFile, FlockError> {
    fslock::LockFile::open(path).map_err(|source| FlockError::Open {
        name: display_name(path),
        source,
    })
}

/// One non-blocking attempt. `Ok(None)` means someone else holds it.
pub fn try_acquire(path: &Path) -> Result<Option<HeldFlock>, FlockError> {
    lock_opened_in_place(&mut Some(open(path)?), path)
}

/// Polls [`try_acquire`] with exponential backoff (0.5 ms doubling to 25 ms) until
/// `deadline`. `cancelled` is checked between attempts so a waiter can give up early.
pub fn acquire_until(
    path: &Path,
    deadline: Instant,
    cancelled: &dyn Fn() -> bool,
) -> Result<HeldFlock, FlockError> {
    let started = Instant::now();
    let mut file = Some(open(path)?);
    let mut pause = Duration::from_micros(500);
    loop {
        if let Some(held) = lock_opened_in_place(&mut file, path)? {
            return Ok(held);
        }
        let now = Instant::now();
        if now >= deadline || cancelled() {
            return Err(FlockError::Timeout {
                name: display_name(path),
                waited_ms: started.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

/// One attempt on an opened handle; on success the handle moves into the [`HeldFlock`].
fn lock_opened_in_place(
    file: &mut Option<fslock::LockFile>,
    path: &Path,
) -> Result<Option<HeldFlock>, FlockError> {
    let Some(handle) = file.as_mut() else {
        return Ok(None);
    };
    // The handle is only ever kept while unlocked, so try_lock cannot hit fslock's
    // double-lock panic.
    match handle.try_lock() {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(source) => {
            return Err(FlockError::Lock {
                name: display_name(path),
                source,
            })
        }
    }
    Ok(file.take().map(|file| HeldFlock { file }))
}

/// Serialises probes inside this process: a probe holds the lock for microseconds, and
/// two concurrent probes of one file would each see the other as a holder.
static PROBE_GATE: Mutex<()> = Mutex::new(());

/// Is the lock file held by anyone (this process included, through another handle)?
/// A missing file is free. Takes and drops the lock for microseconds if it is free, so
/// a concurrent acquirer may need one more poll; a holder is never disturbed.
pub fn probe(path: &Path) -> Result<bool, FlockError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(FlockError::Open {
                name: display_name(path),
                source,
            })
        }
    };
    let _gate = PROBE_GATE.lock().unwrap_or_else(|p| p.into_inner());
    let fd = file.as_raw_fd();
    // SAFETY: fd is a valid descriptor owned by `file` for the duration of these calls.
    let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        // SAFETY: as above; LOCK_UN on a lock we just took. Closing `file` would release
        // it too, but unlocking first makes the release independent of drop order.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        return Ok(false);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(true)
    } else {
        Err(FlockError::Lock {
            name: display_name(path),
            source: err,
        })
    }
}

/// Creates the locks directory if needed (files inside are created on first acquire).
pub fn ensure_dir(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_handles_in_one_process_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a_.lock");
        let first = try_acquire(&path).unwrap().expect("free lock");
        assert!(try_acquire(&path).unwrap().is_none());
        assert!(probe(&path).unwrap());
        drop(first);
        assert!(!probe(&path).unwrap());
        assert!(try_acquire(&path).unwrap().is_some());
        assert!(path.exists(), "lock files are never deleted");
    }

    #[test]
    fn probe_of_a_missing_file_is_free_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing_.lock");
        assert!(!probe(&path).unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn acquire_until_times_out_then_succeeds_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b_.lock");
        let held = try_acquire(&path).unwrap().unwrap();
        let t = Instant::now();
        let err = acquire_until(&path, t + Duration::from_millis(60), &|| false).unwrap_err();
        assert!(matches!(err, FlockError::Timeout { .. }), "{err}");
        assert!(t.elapsed() >= Duration::from_millis(60));
        assert!(!err.to_string().contains(dir.path().to_str().unwrap()));
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            drop(held);
        });
        acquire_until(&path, Instant::now() + Duration::from_secs(5), &|| false).unwrap();
        releaser.join().unwrap();
    }

    #[test]
    fn a_probe_never_disturbs_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c_.lock");
        let _held = try_acquire(&path).unwrap().unwrap();
        for _ in 0..100 {
            assert!(probe(&path).unwrap());
        }
        assert!(try_acquire(&path).unwrap().is_none());
    }
}
