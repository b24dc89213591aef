//! A safe clear with a fresh look afterwards ([`Registry::clear_and_look`]): what each
//! surface (the Lock Status button, the legacy routes, the CLI) shows after a clear, one
//! line per lock in the same words everywhere.
//!
//! Invariant: it clears through [`Registry::clear`] only and then reads; it decides
//! nothing itself, so a look that disagrees with the clear reports what the look saw.

use super::clear::{ClearedLock, SkipKind, SkippedLock};
use super::report::LockReport;
use super::words::remaining_note;
use super::{Registry, RegistryError};
use crate::ids::display_field;
use crate::policy::stale::LockState;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a safe clear did to one lock and what it is now, in words every surface shows.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LockOutcome {
    pub field: String,
    pub file: String,
    /// `cleared`, or why it was left alone: `live`, `held_too_long`, `changed`,
    /// `external`, `leased_elsewhere`, `unsafe_lock_file`.
    pub outcome: String,
    /// Its state after the clear.
    pub state_now: LockState,
    /// One sentence, free of markup characters.
    pub note: String,
}

/// A safe clear and a fresh look at the owner afterwards.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClearReport {
    /// Nothing of the owner is held or stale any more.
    pub success: bool,
    pub cleared: Vec<ClearedLock>,
    pub skipped: Vec<SkippedLock>,
    /// One line per lock the clear touched or left, plus any still held or stale.
    pub outcomes: Vec<LockOutcome>,
    /// The locks still held or stale afterwards.
    #[serde(skip)]
    pub remaining: Vec<LockReport>,
}

impl Registry {
    /// A safe clear ([`Registry::clear`]) followed by a fresh status, so the answer says
    /// what really happened to each lock and what it is now.
    pub fn clear_and_look(
        &self,
        namespace: Option<&str>,
        owner: &str,
        tokens: Option<BTreeMap<String, i64>>,
        actor: &str,
    ) -> Result<ClearReport, RegistryError> {
        let out = self.clear(namespace, owner, tokens, actor)?;
        let after = self.status(namespace, owner)?;
        let now_of = |field: &str| after.locks.iter().find(|l| l.field == field);
        let mut outcomes = Vec::new();
        for c in &out.cleared {
            let state_now = now_of(&c.field).map_or(LockState::Free, |l| l.state);
            outcomes.push(LockOutcome {
                field: c.field.clone(),
                file: c.file.clone(),
                outcome: "cleared".into(),
                state_now,
                note: format!(
                    "{}: cleared ({}, token {})",
                    display_field(&c.field),
                    c.reason.as_str().replace('_', " "),
                    c.token
                ),
            });
        }
        for s in &out.skipped {
            let now = now_of(&s.field);
            let state_now = now.map_or(LockState::Free, |l| l.state);
            let name = display_field(&s.field);
            let note = match (s.outcome, now.filter(|l| l.state != LockState::Free)) {
                (SkipKind::Changed, None) => {
                    format!("{name}: changed since you looked; it is free now")
                }
                (SkipKind::Changed, Some(l)) => {
                    format!(
                        "{name}: changed since you looked; now {}",
                        remaining_note(l)
                    )
                }
                (_, None) => format!("{name}: left alone, and it is free now"),
                (_, Some(l)) => remaining_note(l),
            };
            let outcome = serde_json::to_value(s.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            outcomes.push(LockOutcome {
                field: s.field.clone(),
                file: s.file.clone(),
                outcome,
                state_now,
                note,
            });
        }
        let remaining: Vec<LockReport> = after
            .locks
            .into_iter()
            .filter(|l| l.state != LockState::Free)
            .collect();
        // Held, stale or unsafe locks the clear had nothing to say about (keys not
        // configured).
        for l in &remaining {
            if !outcomes.iter().any(|o| o.field == l.field) {
                outcomes.push(LockOutcome {
                    field: l.field.clone(),
                    file: l.file.clone(),
                    outcome: if l.state == LockState::Unsafe {
                        "unsafe_lock_file".into()
                    } else if l.kind == Some(crate::policy::stale::HolderKind::External) {
                        "external".into()
                    } else {
                        "live".into()
                    },
                    state_now: l.state,
                    note: remaining_note(l),
                });
            }
        }
        Ok(ClearReport {
            success: remaining.is_empty(),
            cleared: out.cleared,
            skipped: out.skipped,
            outcomes,
            remaining,
        })
    }
}
