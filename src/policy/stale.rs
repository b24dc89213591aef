//! The one place that decides whether a lock is free, held or stale (DESIGN §4).
//!
//! Pure code: the facts (what the kernel says about the flock, the holder record, whether
//! the processes named in it are alive) and the clock come in, a [`Verdict`] goes out.
//! Nothing here reads the clock, the disk or the database, so every case is a unit test.
//!
//! Order of reasons, strongest first: `holder_dead` (the holder can never let go by
//! itself, clearing it is always safe), then `lease_expired`, then `held_too_long`.

use serde::{Deserialize, Serialize};

/// Whether a process named in a record is still the process that was recorded (alive,
/// dead, or its pid reused), as `kernel::process` finds it.
pub use crate::kernel::process::Liveness;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LockState {
    Free,
    Held,
    Stale,
    /// Something other than a regular file is at the lock path (a symlink, a FIFO, ...),
    /// and no recorded holder: lockledger never opens it, so it cannot tell whether it is
    /// held, and it cannot be cleared (remove the file).
    Unsafe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StaleReason {
    HolderDead,
    LeaseExpired,
    HeldTooLong,
}

/// Who holds a lock: a service lease, an in-process library guard, or a process the
/// registry has no record of (the chat app's own `FileLock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HolderKind {
    Lease,
    Library,
    External,
}

impl LockState {
    pub fn as_str(self) -> &'static str {
        match self {
            LockState::Free => "free",
            LockState::Held => "held",
            LockState::Stale => "stale",
            LockState::Unsafe => "unsafe",
        }
    }
    pub fn parse(s: &str) -> Option<LockState> {
        match s {
            "free" => Some(LockState::Free),
            "held" => Some(LockState::Held),
            "stale" => Some(LockState::Stale),
            "unsafe" => Some(LockState::Unsafe),
            _ => None,
        }
    }
}

impl StaleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::HolderDead => "holder_dead",
            StaleReason::LeaseExpired => "lease_expired",
            StaleReason::HeldTooLong => "held_too_long",
        }
    }
}

impl HolderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HolderKind::Lease => "lease",
            HolderKind::Library => "library",
            HolderKind::External => "external",
        }
    }
    pub fn parse(s: &str) -> Option<HolderKind> {
        match s {
            "lease" => Some(HolderKind::Lease),
            "library" => Some(HolderKind::Library),
            "external" => Some(HolderKind::External),
            _ => None,
        }
    }
}

/// What the holder record says, with the liveness of the processes it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordFacts {
    pub kind: HolderKind,
    pub acquired_at_ms: i64,
    pub renewed_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    /// The process that holds the flock (the service for a lease, the holder itself for
    /// a library guard).
    pub locker: Liveness,
    /// The client process a lease was taken for, when it gave a pid on this host.
    pub client: Option<Liveness>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The kernel's answer: is the lock file's flock taken by anyone?
    pub flock_held: bool,
    pub record: Option<RecordFacts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Live holders that have not renewed for longer than this are `held_too_long`.
    pub max_hold_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub state: LockState,
    pub stale_reason: Option<StaleReason>,
    /// None for a free lock.
    pub kind: Option<HolderKind>,
}

impl Verdict {
    pub fn free() -> Verdict {
        Verdict {
            state: LockState::Free,
            stale_reason: None,
            kind: None,
        }
    }
    pub fn held(kind: HolderKind) -> Verdict {
        Verdict {
            state: LockState::Held,
            stale_reason: None,
            kind: Some(kind),
        }
    }
    /// No recorded holder and something other than a regular file at the lock path.
    pub fn unsafe_file() -> Verdict {
        Verdict {
            state: LockState::Unsafe,
            stale_reason: None,
            kind: None,
        }
    }
    pub fn stale(kind: HolderKind, reason: StaleReason) -> Verdict {
        Verdict {
            state: LockState::Stale,
            stale_reason: Some(reason),
            kind: Some(kind),
        }
    }
}

/// Decides the state of one lock at `now_ms` (UTC milliseconds).
pub fn classify(obs: &Observation, now_ms: i64, policy: &Policy) -> Verdict {
    let Some(r) = obs.record else {
        return if obs.flock_held {
            Verdict::held(HolderKind::External)
        } else {
            Verdict::free()
        };
    };
    let gone = |l: Liveness| l != Liveness::Alive;
    // A record whose flock is no longer taken describes a holder that has let go
    // without saying so: it died, or its handle was closed.
    if gone(r.locker) || !obs.flock_held || r.client.is_some_and(gone) {
        return Verdict::stale(r.kind, StaleReason::HolderDead);
    }
    if r.expires_at_ms.is_some_and(|e| now_ms >= e) {
        return Verdict::stale(r.kind, StaleReason::LeaseExpired);
    }
    let last_sign_of_life = r.renewed_at_ms.max(r.acquired_at_ms);
    if now_ms.saturating_sub(last_sign_of_life) > policy.max_hold_ms {
        return Verdict::stale(r.kind, StaleReason::HeldTooLong);
    }
    Verdict::held(r.kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Liveness::*;

    const POLICY: Policy = Policy {
        max_hold_ms: 600_000,
    };
    const T0: i64 = 1_700_000_000_000;

    fn record(kind: HolderKind) -> RecordFacts {
        RecordFacts {
            kind,
            acquired_at_ms: T0,
            renewed_at_ms: T0,
            expires_at_ms: None,
            locker: Alive,
            client: None,
        }
    }

    fn at(obs: Observation, now: i64) -> (LockState, Option<StaleReason>, Option<HolderKind>) {
        let v = classify(&obs, now, &POLICY);
        (v.state, v.stale_reason, v.kind)
    }

    #[test]
    fn no_record() {
        let free = Observation {
            flock_held: false,
            record: None,
        };
        assert_eq!(at(free, T0), (LockState::Free, None, None));
        let external = Observation {
            flock_held: true,
            record: None,
        };
        // An external holder is never stale: we know nothing of its lease or age.
        assert_eq!(
            at(external, T0 + 10 * 600_000),
            (LockState::Held, None, Some(HolderKind::External))
        );
    }

    #[test]
    fn the_whole_matrix() {
        use HolderKind::*;
        use LockState as S;
        use StaleReason::*;
        let lease =
            |expires: Option<i64>, client: Option<Liveness>, locker: Liveness| RecordFacts {
                expires_at_ms: expires,
                client,
                locker,
                ..record(Lease)
            };
        // (flock held, record, now, expected)
        type Case = (bool, RecordFacts, i64, (S, Option<StaleReason>));
        let cases: Vec<Case> = vec![
            (true, record(Library), T0 + 1, (S::Held, None)),
            (false, record(Library), T0 + 1, (S::Stale, Some(HolderDead))),
            (
                true,
                RecordFacts {
                    locker: Dead,
                    ..record(Library)
                },
                T0,
                (S::Stale, Some(HolderDead)),
            ),
            (
                true,
                RecordFacts {
                    locker: Reused,
                    ..record(Library)
                },
                T0,
                (S::Stale, Some(HolderDead)),
            ),
            (true, record(Library), T0 + 600_000, (S::Held, None)),
            (
                true,
                record(Library),
                T0 + 600_001,
                (S::Stale, Some(HeldTooLong)),
            ),
            (
                true,
                RecordFacts {
                    renewed_at_ms: T0 + 500_000,
                    ..record(Library)
                },
                T0 + 1_000_000,
                (S::Held, None),
            ),
            (
                true,
                lease(Some(T0 + 30_000), None, Alive),
                T0 + 29_999,
                (S::Held, None),
            ),
            (
                true,
                lease(Some(T0 + 30_000), None, Alive),
                T0 + 30_000,
                (S::Stale, Some(LeaseExpired)),
            ),
            (
                true,
                lease(Some(T0 + 30_000), Some(Alive), Alive),
                T0 + 1,
                (S::Held, None),
            ),
            (
                true,
                lease(Some(T0 + 30_000), Some(Dead), Alive),
                T0 + 1,
                (S::Stale, Some(HolderDead)),
            ),
            (
                true,
                lease(Some(T0 + 30_000), Some(Reused), Alive),
                T0 + 1,
                (S::Stale, Some(HolderDead)),
            ),
            // The service that held the lease is gone: dead beats expired.
            (
                false,
                lease(Some(T0 + 30_000), None, Dead),
                T0 + 60_000,
                (S::Stale, Some(HolderDead)),
            ),
            // Expired beats held too long.
            (
                true,
                lease(Some(T0 + 700_000), None, Alive),
                T0 + 800_000,
                (S::Stale, Some(LeaseExpired)),
            ),
            // A long lease not renewed for max_hold is hung.
            (
                true,
                lease(Some(T0 + 3_600_000), None, Alive),
                T0 + 700_000,
                (S::Stale, Some(HeldTooLong)),
            ),
        ];
        for (i, (flock_held, r, now, (state, reason))) in cases.into_iter().enumerate() {
            let got = at(
                Observation {
                    flock_held,
                    record: Some(r),
                },
                now,
            );
            assert_eq!(
                (got.0, got.1),
                (state, reason),
                "case {i}: {r:?} at +{}",
                now - T0
            );
            assert_eq!(got.2, Some(r.kind), "case {i}: kind");
        }
    }

    #[test]
    fn a_clock_that_went_backwards_does_not_make_locks_stale() {
        let obs = Observation {
            flock_held: true,
            record: Some(record(HolderKind::Library)),
        };
        assert_eq!(at(obs, T0 - 5_000).0, LockState::Held);
        assert_eq!(at(obs, i64::MIN).0, LockState::Held);
    }

    #[test]
    fn names_serialise_in_snake_case() {
        assert_eq!(
            serde_json::to_string(&StaleReason::HolderDead).unwrap(),
            "\"holder_dead\""
        );
        assert_eq!(
            serde_json::to_string(&LockState::Stale).unwrap(),
            "\"stale\""
        );
        for s in ["free", "held", "stale"] {
            assert_eq!(LockState::parse(s).unwrap().as_str(), s);
        }
    }
}
