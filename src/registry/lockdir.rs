//! The storage and locks directories: creating them with the configured modes, and the
//! names of the files in the locks directory, kept in memory and read again only when
//! the directory changed, so a status read can find an owner's lock files whose keys are
//! not configured (the chat app adds keys as it grows) without listing a directory of
//! tens of thousands of files each time.
//!
//! Invariants: a storage or locks directory lockledger creates gets exactly its
//! configured mode (with `shared_group`, one the group can pass through to `locks/`),
//! whatever the umask; an existing one keeps its own. The list is re-read whenever the
//! directory's modification time (or identity) differs from the one seen before the
//! last listing, so a file created before a status read is always in the list it uses; a
//! listing that fails leaves the list empty rather than stale.

use crate::config::Config;
use crate::kernel::flock;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Creates the storage directory, then its locks directory, each with its configured mode
/// if it does not exist yet; returns the locks directory. (The storage directory comes
/// first, so it never gets a mode meant for `locks/` as a parent created on the way.)
pub fn ensure_storage(config: &Config) -> std::io::Result<PathBuf> {
    let modes = config.modes();
    flock::ensure_dir(&config.storage_dir, modes.storage_dir)?;
    flock::ensure_dir(&config.locks_dir(), modes.locks_dir)
}

/// The directory's identity and modification time, as last listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime_ns: i128,
}

fn stamp(dir: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(dir).ok()?;
    Some(Stamp {
        ino: meta.ino(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    })
}

#[derive(Debug, Default)]
struct Listing {
    stamp: Option<Stamp>,
    names: BTreeSet<String>,
}

#[derive(Debug)]
pub(super) struct LockDir {
    dir: PathBuf,
    listing: Mutex<Listing>,
}

impl LockDir {
    pub fn new(dir: PathBuf) -> LockDir {
        LockDir {
            dir,
            listing: Mutex::new(Listing::default()),
        }
    }

    /// The names of the files in the directory that start with `prefix`.
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut listing = self.listing.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&self.dir);
        if now.is_none() || now != listing.stamp {
            // Stamped before listing: a change during the listing is seen next time.
            listing.names = std::fs::read_dir(&self.dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
            listing.stamp = now;
        }
        listing
            .names
            .range(prefix.to_string()..)
            .take_while(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    }
}
