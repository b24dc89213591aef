//! Kernel file locks on lock files: the only module that opens lock files and calls
//! `flock(2)`.
//!
//! Why not the `fslock` crate: it opens by path with `O_CREAT` (following symlinks, so a
//! symlink planted in the locks directory makes the service create or open a file
//! wherever it points) and truncates the file on every unlock (emptying that target).
//! Lock files here are opened with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`, checked to be
//! regular files, and never written, truncated or deleted.
//!
//! Invariants:
//! - Exclusion is a `flock(LOCK_EX)` on the lock file, per open file description: two
//!   handles in one process exclude each other, and Python's `filelock.FileLock` and
//!   this module exclude each other both ways.
//! - A symlink, FIFO, socket, device or directory at a lock path is refused with an error
//!   naming the file and what it is; nothing is opened through a symlink, and a FIFO or
//!   device is never opened at all (`lstat` first, `fstat` after opening to close the
//!   race). Nothing here ever blocks in `open` or `flock`.
//! - A lock file this module creates has exactly the mode asked for (created with
//!   `O_EXCL`, then `fchmod`ed), whatever the umask; an existing one keeps its own.
//! - A [`HeldFlock`] is the only way to hold a lock; it remembers the identity (device,
//!   inode) of the file it locked, and dropping it closes the descriptor, which releases
//!   the lock (the descriptor is never duplicated, so nothing else keeps it).
//! - Every non-blocking attempt in this process (acquiring or probing) on one file passes
//!   one gate for its few microseconds, so a status probe never makes a try-acquire of
//!   this process fail. Probes of other processes can still meet ours; that is why a
//!   probe is the last resort (see `registry::report`).
//! - Responses never carry server paths: errors name the bare file.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A file's identity: its device and inode. A lock is a lock on one inode; a path can
/// come to name another one (deleted and recreated, replaced, renamed over).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlockError {
    #[error("cannot open lock file {name}: {source}")]
    Open {
        name: String,
        source: std::io::Error,
    },
    #[error("lock file {name} is {what}, not a regular file; refusing to use it (remove it so a regular lock file can be created)")]
    NotRegular { name: String, what: &'static str },
    #[error("cannot lock {name}: {source}")]
    Lock {
        name: String,
        source: std::io::Error,
    },
    #[error("timed out after {waited_ms} ms waiting for {name}")]
    Timeout { name: String, waited_ms: u64 },
}

/// Bare file name for messages: responses must never carry absolute server paths.
pub fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "lock file".into())
}

/// What a file type is, in words, for refusals.
fn kind_of(ft: std::fs::FileType) -> Option<&'static str> {
    if ft.is_file() {
        None
    } else if ft.is_symlink() {
        Some("a symbolic link")
    } else if ft.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_char_device() {
        Some("a character device")
    } else if ft.is_block_device() {
        Some("a block device")
    } else if ft.is_dir() {
        Some("a directory")
    } else {
        Some("not a regular file")
    }
}

/// A held kernel lock. Dropping it closes the descriptor, which releases the lock.
#[derive(Debug)]
pub struct HeldFlock {
    // Kept for its Drop: closing the only descriptor of this open file description
    // releases the flock. Never written.
    #[allow(dead_code)]
    file: File,
    id: FileId,
}

impl HeldFlock {
    /// The identity of the file this lock is on.
    pub fn id(&self) -> FileId {
        self.id
    }
}

/// The identity of the regular file at `path`, without opening anything: `Ok(None)` when
/// nothing is there, an error when something other than a regular file is.
pub fn file_id(path: &Path) -> Result<Option<FileId>, FlockError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => match kind_of(meta.file_type()) {
            None => Ok(Some(FileId::of(&meta))),
            Some(what) => Err(FlockError::NotRegular {
                name: display_name(path),
                what,
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FlockError::Open {
            name: display_name(path),
            source,
        }),
    }
}

/// `open(2)` of a lock file with `O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC` and
/// `extra` flags: the descriptor, or the OS error.
fn open_fd(c_path: &std::ffi::CStr, extra: libc::c_int, mode: u32) -> std::io::Result<File> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | extra;
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call; the
    // mode argument is read only with O_CREAT.
    let fd = unsafe { libc::open(c_path.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open(2) and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens the lock file safely: never through a symlink, never a FIFO or device, never
/// blocking. `create` makes a missing file with mode `file_mode` exactly: the file is
/// created exclusively (`O_CREAT | O_EXCL`, which also refuses any symlink) and then
/// `fchmod`ed, so the umask cannot take bits away (a group-shared lock file must be
/// 0660 even under `UMask=0077`). An existing file keeps its mode. `Ok(None)`: missing
/// and not created.
fn open_lock_file(
    path: &Path,
    create: bool,
    file_mode: u32,
) -> Result<Option<(File, FileId)>, FlockError> {
    let name = || display_name(path);
    // Refuse what is not a regular file before opening it: opening a FIFO or a device
    // can have effects of its own.
    let exists = file_id(path)?.is_some();
    if !exists && !create {
        return Ok(None);
    }
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| FlockError::Open {
            name: name(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"),
        })?;
    let refused = |err: std::io::Error| match err.raw_os_error() {
        // O_NOFOLLOW on a symlink planted between our lstat and open.
        Some(libc::ELOOP) => FlockError::NotRegular {
            name: name(),
            what: "a symbolic link",
        },
        _ => FlockError::Open {
            name: name(),
            source: err,
        },
    };
    let missing = || Err(std::io::Error::from_raw_os_error(libc::ENOENT));
    let mut opened = if exists {
        open_fd(&c_path, 0, 0)
    } else {
        missing()
    };
    let mut created = false;
    // Missing (or deleted since our lstat): create it, exclusively.
    if create && matches!(&opened, Err(e) if e.raw_os_error() == Some(libc::ENOENT)) {
        opened = match open_fd(&c_path, libc::O_CREAT | libc::O_EXCL, file_mode) {
            Ok(f) => {
                created = true;
                Ok(f)
            }
            // Someone else created it (or planted something) since our lstat: open what
            // is there now, as for an existing file; `fstat` below judges it. A symlink,
            // FIFO or device planted meanwhile is refused unopened.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                file_id(path)?;
                open_fd(&c_path, 0, 0)
            }
            Err(e) => Err(e),
        };
    }
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !create => return Ok(None),
        Err(e) => return Err(refused(e)),
    };
    let meta = file.metadata().map_err(|source| FlockError::Open {
        name: name(),
        source,
    })?;
    if let Some(what) = kind_of(meta.file_type()) {
        return Err(FlockError::NotRegular { name: name(), what });
    }
    if created && meta.mode() & 0o7777 != file_mode {
        // SAFETY: fchmod on a descriptor owned by `file` for the duration of the call.
        if unsafe { libc::fchmod(file.as_raw_fd(), file_mode as libc::mode_t) } != 0 {
            return Err(FlockError::Open {
                name: name(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(Some((file, FileId::of(&meta))))
}

/// Gates of the non-blocking attempts of this process, striped by path.
static GATES: [Mutex<()>; 64] = [const { Mutex::new(()) }; 64];

fn gate(path: &Path) -> MutexGuard<'static, ()> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    let stripe = &GATES[(h.finish() % GATES.len() as u64) as usize];
    // Nothing is mutated under a gate, so a poisoned one is still usable.
    stripe.lock().unwrap_or_else(|p| p.into_inner())
}

/// `flock(LOCK_EX | LOCK_NB)` on an open file: true if taken, false if someone holds it.
fn lock_nb(file: &File, path: &Path) -> Result<bool, FlockError> {
    // SAFETY: the descriptor is owned by `file` for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(FlockError::Lock {
            name: display_name(path),
            source: err,
        })
    }
}

/// One non-blocking attempt (creating the file if needed). `Ok(None)`: someone else
/// holds it.
pub fn try_acquire(path: &Path, file_mode: u32) -> Result<Option<HeldFlock>, FlockError> {
    let Some((file, id)) = open_lock_file(path, true, file_mode)? else {
        return Ok(None);
    };
    let _gate = gate(path);
    Ok(lock_nb(&file, path)?.then_some(HeldFlock { file, id }))
}

/// Polls [`try_acquire`] with exponential backoff (0.5 ms doubling to 25 ms) until
/// `deadline`. `cancelled` is checked between attempts so a waiter can give up early.
/// For callers that may block a thread (the CLI, library holders); the service waits
/// asynchronously instead.
pub fn acquire_until(
    path: &Path,
    file_mode: u32,
    deadline: Instant,
    cancelled: &dyn Fn() -> bool,
) -> Result<HeldFlock, FlockError> {
    let started = Instant::now();
    let mut pause = Duration::from_micros(500);
    loop {
        if let Some(held) = try_acquire(path, file_mode)? {
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

/// What a probe saw at a lock path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probed {
    /// The file now at the path (None: nothing there).
    pub id: Option<FileId>,
    /// Someone holds that file's flock.
    pub held: bool,
}

/// Is the lock file at `path` held by anyone (this process included, through another
/// handle)? A missing file is free and is not created. If it is free, the lock is taken
/// and dropped within the gate (microseconds); a holder is never disturbed. The last
/// resort: callers ask what they know and `/proc/locks` first.
pub fn probe(path: &Path) -> Result<Probed, FlockError> {
    let Some((file, id)) = open_lock_file(path, false, 0)? else {
        return Ok(Probed {
            id: None,
            held: false,
        });
    };
    let _gate = gate(path);
    let taken = lock_nb(&file, path)?;
    if taken {
        // SAFETY: as in lock_nb; LOCK_UN on the lock just taken, released before the
        // gate opens, independent of drop order.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
    }
    Ok(Probed {
        id: Some(id),
        held: !taken,
    })
}

/// Creates a directory (and its parents) with `mode` if it does not exist; an existing
/// directory keeps its mode (it may be the chat app's own). Refuses a symlink or a
/// non-directory there. The mode is set after creating, so the umask cannot take bits
/// away. Where setting a setuid/setgid bit is refused (systemd's `RestrictSUIDSGID=`
/// makes it `EPERM`), the directory gets the mode without it and a warning is logged.
/// Parents it creates get the mode's permission bits less the umask.
pub fn ensure_dir(dir: &Path, mode: u32) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(dir.to_path_buf()),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory", display_name(dir)),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode & 0o777)
        .create(dir)?;
    let chmod = |m: u32| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(m));
    match chmod(mode) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && mode & 0o7000 != 0 => {
            log::warn!(
                "cannot give directory {} mode {mode:o} ({e}); it is {:o} (without setuid/setgid)",
                display_name(dir),
                mode & 0o777
            );
            chmod(mode & 0o777)?;
        }
        other => other?,
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests;
