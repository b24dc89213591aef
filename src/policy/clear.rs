//! What a clear, reconciliation and the reaper may do with a lock: pure decisions from
//! the facts `stale::classify` judged plus who holds the kernel handle.
//!
//! Invariants: a safe clear never touches a live holder; nothing that may still hold the
//! kernel lock is ever cleared by a safe clear; a force clear revokes exactly one grant
//! and never an external holder; reconciliation closes only records that claim nothing
//! real (their locking process is gone, or nobody holds the flock).

use super::stale::{HolderKind, Liveness, LockState, StaleReason, Verdict};

/// What a clear needs to know about a recorded holder besides its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HolderFacts {
    pub kind: HolderKind,
    /// The process that holds the flock (the service for a lease, the holder itself for
    /// a library guard).
    pub locker: Liveness,
    /// That process is this one.
    pub locker_is_me: bool,
    /// This process holds the lease's kernel handle, so it can close it.
    pub handle_here: bool,
}

/// Why a clear leaves a lock alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Held with no record: a process lockledger does not manage.
    External,
    /// A lease whose kernel handle another lockledger process holds.
    LeasedElsewhere,
    /// A live holder silent for longer than `max_hold`: only a force clear may take it.
    HeldTooLong,
    /// A live holder within its limits.
    Live,
    /// No record, and something other than a regular file at the lock path: it is never
    /// opened (nor followed), so nothing can be cleared; removing it is for people.
    UnsafeLockFile,
}

/// What a safe clear does with one lock, decided before touching anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Free and unrecorded: nothing to do.
    Nothing,
    Skip(Skip),
    /// Remove the record, closing this process's handle first when `release_handle`.
    Clear {
        reason: StaleReason,
        release_handle: bool,
    },
}

/// What a force clear (admin, exact token) does with one lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForcePlan {
    /// No record to force-clear; `external` when a process without a record holds it.
    NotHeld { external: bool },
    /// Refused: the reason says who can free it.
    Refuse(Skip),
    /// Remove the record, closing this process's handle first when `release_handle`.
    Clear { release_handle: bool },
    /// A live holder that keeps its own kernel lock (a library holder): mark it revoked,
    /// so its next renewal or fence check fails.
    Revoke,
}

/// A record that cannot be holding the lock any more (its locking process is gone, or
/// nobody holds the flock): removing it cannot break exclusion.
fn claims_nothing(flock_held: bool, h: &HolderFacts) -> bool {
    h.locker != Liveness::Alive || !flock_held
}

/// Decides what a safe clear does with one lock: `flock_held` and `verdict` as for
/// [`classify`], `holder` the facts of its record, if any. Live holders are never touched.
pub fn plan(flock_held: bool, holder: Option<HolderFacts>, verdict: &Verdict) -> Plan {
    let Some(h) = holder else {
        return if verdict.state == LockState::Unsafe {
            Plan::Skip(Skip::UnsafeLockFile)
        } else if flock_held {
            Plan::Skip(Skip::External)
        } else {
            Plan::Nothing
        };
    };
    if claims_nothing(flock_held, &h) {
        return Plan::Clear {
            reason: StaleReason::HolderDead,
            release_handle: h.handle_here,
        };
    }
    if h.kind == HolderKind::Lease && !h.handle_here {
        return Plan::Skip(Skip::LeasedElsewhere);
    }
    match verdict.stale_reason {
        Some(r @ (StaleReason::HolderDead | StaleReason::LeaseExpired)) if h.handle_here => {
            Plan::Clear {
                reason: r,
                release_handle: true,
            }
        }
        Some(StaleReason::HeldTooLong) => Plan::Skip(Skip::HeldTooLong),
        _ => Plan::Skip(Skip::Live),
    }
}

/// Decides what a force clear does with one lock (the token was already checked).
pub fn force_plan(flock_held: bool, holder: Option<HolderFacts>) -> ForcePlan {
    let Some(h) = holder else {
        return ForcePlan::NotHeld {
            external: flock_held,
        };
    };
    if claims_nothing(flock_held, &h) || h.handle_here {
        return ForcePlan::Clear {
            release_handle: h.handle_here,
        };
    }
    match h.kind {
        HolderKind::Lease => ForcePlan::Refuse(Skip::LeasedElsewhere),
        HolderKind::Library => ForcePlan::Revoke,
        HolderKind::External => ForcePlan::Refuse(Skip::External),
    }
}

/// Why reconciliation closes a record: its holder is gone without saying so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orphan {
    /// The process that held the flock has exited (or its pid was reused).
    LockerGone,
    /// A lease of this process whose handle this process no longer holds.
    HandleLost,
    /// Nobody holds the lock file's flock any more.
    LockFree,
}

/// Does this record describe a holder that is gone? Reconciliation closes exactly these.
pub fn orphan(flock_held: bool, h: HolderFacts) -> Option<Orphan> {
    if h.locker != Liveness::Alive {
        Some(Orphan::LockerGone)
    } else if h.kind == HolderKind::Lease && h.locker_is_me && !h.handle_here {
        Some(Orphan::HandleLost)
    } else if !flock_held {
        Some(Orphan::LockFree)
    } else {
        None
    }
}

/// When a lease of this process ends by itself: its client process died (holder_dead),
/// or it was not renewed by its deadline and automatic expiry is on (lease_expired).
/// `now` and `deadline` are on the same clock.
pub fn lease_end(
    client: Option<Liveness>,
    now: i64,
    deadline: i64,
    auto_expire: bool,
) -> Option<StaleReason> {
    if client.is_some_and(|c| c != Liveness::Alive) {
        Some(StaleReason::HolderDead)
    } else if auto_expire && now >= deadline {
        Some(StaleReason::LeaseExpired)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Liveness::*;

    fn facts(kind: HolderKind, locker: Liveness, handle_here: bool) -> HolderFacts {
        HolderFacts {
            kind,
            locker,
            locker_is_me: handle_here,
            handle_here,
        }
    }

    #[test]
    fn clear_plans() {
        use HolderKind::*;
        let held = Verdict::held(Library);
        let hung = Verdict::stale(Library, StaleReason::HeldTooLong);
        let expired = Verdict::stale(Lease, StaleReason::LeaseExpired);
        let clear = |reason, release_handle| Plan::Clear {
            reason,
            release_handle,
        };
        assert_eq!(plan(false, None, &Verdict::free()), Plan::Nothing);
        assert_eq!(
            plan(false, None, &Verdict::unsafe_file()),
            Plan::Skip(Skip::UnsafeLockFile)
        );
        assert_eq!(
            plan(true, None, &Verdict::held(External)),
            Plan::Skip(Skip::External)
        );
        // A dead locker or a free flock: always clearable, closing our handle if any.
        for (flock_held, locker) in [(true, Dead), (false, Alive), (true, Reused)] {
            let h = Some(facts(Library, locker, false));
            assert_eq!(
                plan(flock_held, h, &held),
                clear(StaleReason::HolderDead, false)
            );
            assert_eq!(
                force_plan(flock_held, h),
                ForcePlan::Clear {
                    release_handle: false
                }
            );
        }
        let other_service = Some(facts(Lease, Alive, false));
        assert_eq!(
            plan(true, other_service, &expired),
            Plan::Skip(Skip::LeasedElsewhere)
        );
        assert_eq!(
            force_plan(true, other_service),
            ForcePlan::Refuse(Skip::LeasedElsewhere)
        );
        let ours = Some(facts(Lease, Alive, true));
        assert_eq!(
            plan(true, ours, &expired),
            clear(StaleReason::LeaseExpired, true)
        );
        assert_eq!(
            plan(true, ours, &Verdict::held(Lease)),
            Plan::Skip(Skip::Live)
        );
        assert_eq!(
            force_plan(true, ours),
            ForcePlan::Clear {
                release_handle: true
            }
        );
        let library = Some(facts(Library, Alive, false));
        assert_eq!(plan(true, library, &hung), Plan::Skip(Skip::HeldTooLong));
        assert_eq!(plan(true, library, &held), Plan::Skip(Skip::Live));
        assert_eq!(force_plan(true, library), ForcePlan::Revoke);
        assert_eq!(
            force_plan(true, None),
            ForcePlan::NotHeld { external: true }
        );
        assert_eq!(
            force_plan(false, None),
            ForcePlan::NotHeld { external: false }
        );
    }

    #[test]
    fn orphans_and_lease_ends() {
        use HolderKind::*;
        assert_eq!(orphan(true, facts(Library, Alive, false)), None);
        assert_eq!(
            orphan(true, facts(Library, Dead, false)),
            Some(Orphan::LockerGone)
        );
        assert_eq!(
            orphan(false, facts(Library, Alive, false)),
            Some(Orphan::LockFree)
        );
        let lost = HolderFacts {
            handle_here: false,
            ..facts(Lease, Alive, true)
        };
        assert_eq!(orphan(true, lost), Some(Orphan::HandleLost));
        // Another service's lease with a live locker is not ours to judge.
        assert_eq!(orphan(true, facts(Lease, Alive, false)), None);
        assert_eq!(lease_end(Some(Alive), 5, 10, true), None);
        assert_eq!(
            lease_end(Some(Dead), 5, 10, true),
            Some(StaleReason::HolderDead)
        );
        assert_eq!(
            lease_end(None, 10, 10, true),
            Some(StaleReason::LeaseExpired)
        );
        assert_eq!(lease_end(None, 10, 10, false), None);
    }
}
