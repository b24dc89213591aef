//! One look at the kernel's locks, for a status read or a reconciliation pass: which lock
//! files are held, without disturbing anyone where that can be avoided.
//!
//! Invariants:
//! - `/proc/locks` is asked first, once per look, while it is cheap; it takes no lock
//!   and so never makes anyone's try-acquire fail. When it is large (thousands of locks
//!   held on the machine: each 4 KiB page of it stalls every `flock` on the machine; see
//!   `proc_locks::Snapshot`) a gated probe (`flock::probe`) decides instead; inside this
//!   process it never collides with an acquire, and it only ever takes a free lock for
//!   microseconds.
//! - Only `/proc/locks` can say whether a file no longer at any path (deleted or
//!   replaced) is still locked; without it the answer is "cannot tell" (`None`).

use super::flock::{self, FileId, FlockError, Probed};
use super::proc_locks::Snapshot;
use std::path::Path;

#[derive(Debug, Default)]
pub struct KernelView {
    snapshot: Option<Snapshot>,
}

impl KernelView {
    /// A look now: with the `/proc/locks` table if it is cheap to read.
    pub fn take() -> KernelView {
        KernelView {
            snapshot: Snapshot::take(),
        }
    }

    /// A look that only probes (for tests of the probing path).
    pub fn probing() -> KernelView {
        KernelView::default()
    }

    /// The file now at `path` and whether anyone holds its flock.
    pub fn at_path(&self, path: &Path) -> Result<Probed, FlockError> {
        let Some(id) = flock::file_id(path)? else {
            return Ok(Probed {
                id: None,
                held: false,
            });
        };
        match self.snapshot.as_ref().and_then(|s| s.is_held(id)) {
            Some(held) => Ok(Probed { id: Some(id), held }),
            None => flock::probe(path),
        }
    }

    /// Is the file `id` flock-held? `None` when only `/proc/locks` could tell and it was
    /// not read.
    pub fn file_held(&self, id: FileId) -> Option<bool> {
        self.snapshot.as_ref()?.is_held(id)
    }

    /// The processes holding the file `id`'s flock, to name them (reads `/proc/locks`
    /// now if this look has no table: naming is rare, deciding is not).
    pub fn holders(&self, id: FileId) -> Vec<i32> {
        match &self.snapshot {
            Some(s) => s.holders(id),
            None => Snapshot::read().map(|s| s.holders(id)).unwrap_or_default(),
        }
    }
}
