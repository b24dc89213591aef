//! Looking at one lock: what the kernel says, what the record says, whether the processes
//! it names live, and the verdict of `policy::stale::classify` on those facts.
//!
//! Invariants:
//! - Nothing here writes: no file is created, no row is written, no lock is taken
//!   except a gated probe's instant on a free lock (see `kernel::view`).
//! - What this process knows comes first: a lease whose handle it holds is held, with no
//!   kernel call; its deadline and last renewal are monotonic and are put on the wall
//!   clock of `now` only to be judged, so a wall-clock step changes no verdict.
//! - The record wins over the path: a holder whose lock file was deleted or replaced is
//!   still the holder while it lives; a process locking the new file at that path is
//!   reported as a conflicting holder.
//! - A symlink, FIFO, socket or device at a lock path is `lstat`ed, never opened or
//!   followed, and is reported on that lock alone (state `unsafe` when nobody is
//!   recorded): one hostile file never hides the state of the owner's other locks.

use super::Registry;
use super::RegistryError;
use crate::kernel::flock::{self, FileId, FlockError};
use crate::kernel::process;
use crate::kernel::view::KernelView;
use crate::policy::clear::{self, ForcePlan, HolderFacts, Plan};
use crate::policy::stale::{self, HolderKind, Liveness, Observation, RecordFacts, Verdict};
use crate::store::records::{HolderRow, LockRow};
use std::time::Instant;

/// What was seen of one lock at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Observed {
    /// Does the recorded holder (or, with no record, anyone) hold the kernel lock?
    pub flock_held: bool,
    pub verdict: Verdict,
    pub holder: Option<HolderFacts>,
    /// The recorded holder's lock file is no longer the file at the lock path.
    pub file_replaced: bool,
    /// The file now at the path, if any, and whether someone holds it while the record
    /// names a holder of another file: a conflicting holder.
    pub path_file: Option<FileId>,
    pub conflict: bool,
    /// What is at the lock path when it is not a regular file ("a symbolic link", "a
    /// FIFO (named pipe)", ...): it was only `lstat`ed, never opened or followed.
    pub unsafe_file: Option<&'static str>,
}

/// The file at a lock path, seen with `lstat` only: a regular file's identity (or
/// nothing there), or what unsafe thing is there instead. Other errors are errors.
fn at_path_lstat(
    path: &std::path::Path,
) -> Result<Result<Option<FileId>, &'static str>, FlockError> {
    match flock::file_id(path) {
        Ok(id) => Ok(Ok(id)),
        Err(FlockError::NotRegular { what, .. }) => Ok(Err(what)),
        Err(e) => Err(e),
    }
}

impl Observed {
    /// What a safe clear would do with this lock.
    pub fn plan(&self) -> Plan {
        clear::plan(self.flock_held, self.holder, &self.verdict)
    }
    /// What a force clear would do with this lock.
    pub fn force_plan(&self) -> ForcePlan {
        clear::force_plan(self.flock_held, self.holder)
    }
}

/// What this process knows of a lease it holds: its file and its monotonic times.
struct OwnLease {
    file: FileId,
    deadline: Instant,
    renewed: Instant,
}

impl Registry {
    pub(super) fn liveness(&self, pid: i32, start: Option<u64>) -> Liveness {
        if pid == self.inner.me.0 && (start.is_none() || start == self.inner.me.1) {
            return Liveness::Alive;
        }
        process::liveness(pid, start)
    }

    fn locker_is_me(&self, h: &HolderRow) -> bool {
        h.locker_pid == self.inner.me.0 && h.locker_start == self.inner.me.1
    }

    /// The lease of this process behind `h`, if its handle is here.
    fn own_lease(&self, lock_id: i64, h: &HolderRow) -> Option<OwnLease> {
        if h.kind != HolderKind::Lease || !self.locker_is_me(h) {
            return None;
        }
        let holdings = self.holdings();
        let slot = holdings.lease(h.lease_id.as_deref()?)?;
        (slot.lock_id == lock_id && slot.token == h.token).then(|| OwnLease {
            file: slot.flock.id(),
            deadline: slot.deadline,
            renewed: slot.renewed,
        })
    }

    /// Is the holder `h` of lock `lock_id` still alive? For this process, whether it still
    /// holds the grant; for another, whether that process lives (a holder deletes its row
    /// before it lets go, so a live locker with a row holds the lock).
    pub(super) fn holder_alive(&self, lock_id: i64, h: &HolderRow) -> bool {
        if self.liveness(h.locker_pid, h.locker_start) != Liveness::Alive {
            return false;
        }
        if self.locker_is_me(h) {
            return self
                .holdings()
                .holds(lock_id, h.token, h.lease_id.as_deref());
        }
        true
    }

    fn facts(&self, h: &HolderRow, own: Option<&OwnLease>, now: i64) -> RecordFacts {
        let client = match (h.pid, h.kind) {
            (Some(pid), HolderKind::Lease) if h.host == process::hostname() => {
                Some(self.liveness(pid, h.pid_start))
            }
            _ => None,
        };
        // A lease of this process is judged by its monotonic times, put on `now`'s clock.
        let (renewed_at_ms, expires_at_ms) = match own {
            Some(o) => {
                let at = self.monotonic();
                let left = o.deadline.saturating_duration_since(at).as_millis() as i64;
                let over = at.saturating_duration_since(o.deadline).as_millis() as i64;
                let since = at.saturating_duration_since(o.renewed).as_millis() as i64;
                (now - since, Some(now + left - over))
            }
            None => (h.renewed_at, h.expires_at),
        };
        RecordFacts {
            kind: h.kind,
            acquired_at_ms: h.acquired_at,
            renewed_at_ms,
            expires_at_ms,
            locker: self.liveness(h.locker_pid, h.locker_start),
            client,
        }
    }

    fn holder_facts(&self, h: &HolderRow, own: bool) -> HolderFacts {
        HolderFacts {
            kind: h.kind,
            locker: self.liveness(h.locker_pid, h.locker_start),
            locker_is_me: self.locker_is_me(h),
            handle_here: own,
        }
    }

    /// Looks at one lock now. `file` is its lock file's name; `view` one look at the
    /// kernel shared by the locks of one read.
    pub(super) fn observe(
        &self,
        row: Option<&LockRow>,
        file: &str,
        now: i64,
        view: &KernelView,
    ) -> Result<Observed, RegistryError> {
        let path = self.path_of_file(file);
        let holder = row.and_then(|r| r.holder.as_ref().map(|h| (r.lock_id, h)));
        let Some((lock_id, h)) = holder else {
            let at_path = match view.at_path(&path) {
                Ok(p) => p,
                // Reported on this lock alone; the owner's other locks are unaffected.
                Err(FlockError::NotRegular { what, .. }) => {
                    return Ok(Observed {
                        flock_held: false,
                        verdict: Verdict::unsafe_file(),
                        holder: None,
                        file_replaced: false,
                        path_file: None,
                        conflict: false,
                        unsafe_file: Some(what),
                    })
                }
                Err(e) => return Err(e.into()),
            };
            let obs = Observation {
                flock_held: at_path.held,
                record: None,
            };
            return Ok(Observed {
                flock_held: at_path.held,
                verdict: stale::classify(&obs, now, &self.policy()),
                holder: None,
                file_replaced: false,
                path_file: at_path.id,
                conflict: false,
                unsafe_file: None,
            });
        };
        let own = self.own_lease(lock_id, h);
        if own.is_none() && self.backend().holders_elsewhere() && !self.locker_is_me(h) {
            return Ok(self.observe_remote(h, now));
        }
        let holder_file = own.as_ref().map(|o| o.file).or(h.file_id);
        // Something unsafe put at the path of a recorded holder: the holder's file is no
        // longer there; the holder is judged as for any replaced file, and nothing at
        // the path is opened.
        let (current, unsafe_file) = match at_path_lstat(&path)? {
            Ok(id) => (id, None),
            Err(what) => (None, Some(what)),
        };
        let file_replaced =
            holder_file.is_some_and(|id| current != Some(id)) || unsafe_file.is_some();
        let (holder_held, path_held) = match (&own, file_replaced) {
            // Our own handle on the file at the path: held, nothing to ask.
            (Some(_), false) => (true, true),
            (None, false) => {
                let at_path = view.at_path(&path)?;
                (at_path.held, at_path.held)
            }
            (_, true) => {
                let holder_held = own.is_some()
                    || holder_file
                        .and_then(|old| view.file_held(old))
                        .unwrap_or_else(|| self.holder_alive(lock_id, h));
                let path_held = current.is_some() && view.at_path(&path)?.held;
                (holder_held, path_held)
            }
        };
        let obs = Observation {
            flock_held: holder_held,
            record: Some(self.facts(h, own.as_ref(), now)),
        };
        Ok(Observed {
            flock_held: holder_held,
            verdict: stale::classify(&obs, now, &self.policy()),
            holder: Some(self.holder_facts(h, own.is_some())),
            file_replaced,
            path_file: current,
            conflict: file_replaced && path_held,
            unsafe_file,
        })
    }

    /// A holder granted by another service of a shared (PostgreSQL) registry: the row in
    /// the shared database is the grant, its locker runs on its own host (not judged
    /// here), and its lease ends by the database clock; this host's lock file says
    /// nothing about it.
    fn observe_remote(&self, h: &HolderRow, now: i64) -> Observed {
        let mut facts = self.facts(h, None, now);
        facts.locker = Liveness::Alive;
        facts.client = None;
        let obs = Observation {
            flock_held: true,
            record: Some(facts),
        };
        Observed {
            flock_held: true,
            verdict: stale::classify(&obs, now, &self.policy()),
            holder: Some(HolderFacts {
                kind: h.kind,
                locker: Liveness::Alive,
                locker_is_me: false,
                handle_here: false,
            }),
            file_replaced: false,
            path_file: None,
            conflict: false,
            unsafe_file: None,
        }
    }

    /// The pid that holds the file `id`'s flock, from `/proc/locks`. The kernel prints
    /// that table a page per read, and entries added or removed between reads can shift
    /// an entry out of view; while the lock is still held, a few fresh reads find it.
    pub(super) fn flock_holder_pid(&self, view: &KernelView, id: FileId) -> Option<i32> {
        if let Some(pid) = view.holders(id).first() {
            return Some(*pid);
        }
        (0..3).find_map(|_| KernelView::default().holders(id).first().copied())
    }
}
