//! The chat app's own routes, with the exact keys its front end reads:
//! `/get_lock_status`, `/ensure_locks_cleared`, `/force_clear_locks`, `/clear_locks`.

use super::locks::ClearBody;
use super::Ctx;
use crate::http::decode::{optional_body, query, NoQuery};
use crate::http::error::{json_response, ApiError, Response};
use crate::http::offload::blocking;
use crate::policy::stale::LockState;
use crate::registry::{
    html_safe, remaining_note, ForceCleared, LockOutcome, LockReport, RegistryError, SkipKind,
    SkippedLock,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use utoipa::ToSchema;
use warp::http::StatusCode;

/// Is this one of the chat app's own routes (whose front end reads `success` and
/// `message`, also from errors)?
pub fn is_legacy_path(path: &str) -> bool {
    [
        "/get_lock_status/",
        "/ensure_locks_cleared/",
        "/force_clear_locks/",
    ]
    .iter()
    .any(|p| path.starts_with(p))
        || path.trim_end_matches('/') == "/clear_locks"
}

/// An error as the chat app's front end reads it: besides `{error: {code, message}}`,
/// `success: false` and a top-level `message`: the error's message, stripped of markup
/// characters (the front end inserts it as HTML).
pub fn error(e: ApiError) -> ApiError {
    let message = html_safe(&e.message);
    let mut detail = match e.detail.clone() {
        Some(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    detail.insert("success".into(), false.into());
    detail.insert("message".into(), message.into());
    e.with_detail(serde_json::Value::Object(detail))
}

/// The chat app's status shape: legacy booleans plus the per-lock detail.
#[derive(Debug, Serialize, ToSchema)]
pub struct LegacyStatus {
    pub conversation_id: String,
    /// One boolean per lock key (`""` is the main lock): true when held or stale.
    pub locks_status: BTreeMap<String, bool>,
    pub any_locked: bool,
    /// File names of stale locks.
    pub stale_locks: Vec<String>,
    pub can_cleanup: bool,
    pub locks: Vec<LockReport>,
}

pub async fn status(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    let owner = cx.arg(0).to_string();
    let reg = cx.app.registry.clone();
    let o = owner.clone();
    let status = blocking(move || reg.status(None, &o)).await?;
    let body = LegacyStatus {
        conversation_id: owner,
        locks_status: status
            .locks
            .iter()
            .map(|l| (l.field.clone(), l.state != LockState::Free))
            .collect(),
        any_locked: status.locks.iter().any(|l| l.state != LockState::Free),
        stale_locks: status
            .locks
            .iter()
            .filter(|l| l.state == LockState::Stale)
            .map(|l| l.file.clone())
            .collect(),
        can_cleanup: status.locks.iter().any(|l| l.clearable),
        locks: status.locks,
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// A lock a legacy clear left alone.
#[derive(Debug, Serialize, ToSchema)]
pub struct LegacySkipped {
    pub field: String,
    pub file: String,
    /// Why: `live`, `held_too_long`, `changed`, `external`, `leased_elsewhere` or
    /// `unsafe_lock_file`.
    pub outcome: SkipKind,
    pub reason: String,
    pub pid: Option<i32>,
    pub holder: Option<String>,
}

/// "are still held", or what else keeps locks from being clear (unsafe lock files).
fn still(remaining: &[LockReport]) -> &'static str {
    let unsafe_files = remaining
        .iter()
        .filter(|l| l.state == LockState::Unsafe)
        .count();
    match unsafe_files {
        0 => "are still held",
        n if n == remaining.len() => "have a lock file that is not a regular file",
        _ => "are still held or have a lock file that is not a regular file",
    }
}

/// `POST /ensure_locks_cleared` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct LegacyCleared {
    /// True only when nothing of the conversation is still held or stale after the call.
    pub success: bool,
    /// File names cleared.
    pub cleared: Vec<String>,
    pub skipped: Vec<LegacySkipped>,
    /// In plain words: what was cleared, or what still holds which lock and what will
    /// free it. Safe to insert as HTML (no `<`, `>`, `&` or quotes).
    pub message: String,
    /// Per lock: what the clear did and what it is now (the widget shows these).
    pub outcomes: Vec<LockOutcome>,
}

pub async fn ensure_cleared(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    let b: ClearBody = optional_body(cx.req)?;
    let owner = cx.arg(0).to_string();
    let reg = cx.app.registry.clone();
    let who = cx.actor();
    let o = owner.clone();
    // `success` means nothing of the conversation is held or stale now, whatever the
    // clear did.
    let report = blocking(move || reg.clear_and_look(None, &o, b.tokens, &who)).await?;
    cx.app.metrics.clears.inc_by(report.cleared.len() as u64);
    let n = report.cleared.len();
    let message = if report.success {
        match n {
            0 => format!("No stuck locks on {owner}: all clear."),
            n => format!("Cleared {n} stuck lock(s) on {owner}: all clear now."),
        }
    } else {
        let why: Vec<String> = report.remaining.iter().map(remaining_note).collect();
        let cleared = if n > 0 {
            format!("Cleared {n} stuck lock(s) on {owner}, but ")
        } else {
            String::new()
        };
        format!(
            "{cleared}{} lock(s) of {owner} {}: {}.",
            report.remaining.len(),
            still(&report.remaining),
            why.join("; ")
        )
    };
    Ok(json_response(
        StatusCode::OK,
        &LegacyCleared {
            success: report.success,
            cleared: report.cleared.into_iter().map(|c| c.file).collect(),
            skipped: report
                .skipped
                .into_iter()
                .map(|s| LegacySkipped {
                    field: s.field,
                    file: s.file,
                    outcome: s.outcome,
                    reason: html_safe(&s.reason),
                    pid: s.pid,
                    holder: s.holder.as_deref().map(html_safe),
                })
                .collect(),
            message,
            outcomes: report.outcomes,
        },
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LegacyForceBody {
    /// The token shown for each lock to force-clear, by field (`main` or `""` for the
    /// main lock).
    pub tokens: Option<BTreeMap<String, i64>>,
    pub reason: Option<String>,
}

/// A lock a force clear could not take.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForceFailed {
    pub field: String,
    pub reason: String,
}

/// `POST /force_clear_locks` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct LegacyForceCleared {
    pub success: bool,
    pub cleared: Vec<String>,
    pub failed: Vec<ForceFailed>,
    pub details: Vec<ForceCleared>,
    pub warning: String,
}

pub async fn force_clear(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    let b: LegacyForceBody = optional_body(cx.req)?;
    let Some(tokens) = b.tokens.filter(|t| !t.is_empty()) else {
        return Err(ApiError::bad_request(
            "a force clear needs the tokens you were shown: {\"tokens\": {\"messages\": 7}, \"reason\": \"...\"}",
        ));
    };
    let reason = b
        .reason
        .unwrap_or_else(|| "force clear from the Lock Status modal".into());
    let owner = cx.arg(0).to_string();
    let reg = cx.app.registry.clone();
    let who = cx.actor();
    let (cleared, failed) = blocking(move || {
        let mut cleared = Vec::new();
        let mut failed = Vec::new();
        for (field, token) in tokens {
            let key = reg.key(None, &owner, &field)?;
            match reg.force_clear(&key, token, &reason, &who) {
                Ok(done) => cleared.push(done),
                Err(
                    e @ (RegistryError::InvalidId(_)
                    | RegistryError::Store(_)
                    | RegistryError::Flock(_)),
                ) => return Err(e),
                Err(e) => failed.push(ForceFailed {
                    field,
                    reason: e.to_string(),
                }),
            }
        }
        Ok((cleared, failed))
    })
    .await?;
    cx.app.metrics.force_clears.inc_by(cleared.len() as u64);
    Ok(json_response(
        StatusCode::OK,
        &LegacyForceCleared {
            success: failed.is_empty(),
            cleared: cleared.iter().map(|c| c.file.clone()).collect(),
            failed,
            details: cleared,
            warning: "force-cleared locks may have been in use: their holders were revoked, and their writes are refused by fencing tokens from now on".into(),
        },
    ))
}

/// `POST /clear_locks` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClearedAll {
    /// True only when nothing of the owners that had stale locks is still held or stale
    /// after the call (what `/ensure_locks_cleared` says of one conversation).
    pub success: bool,
    /// How many owners had stale locks.
    pub owners: usize,
    pub cleared: Vec<String>,
    pub skipped: Vec<SkippedLock>,
    /// In plain words: what was cleared and what is still held or stale, lock by lock,
    /// and what will free it. Safe to insert as HTML (no `<`, `>`, `&` or quotes).
    pub message: String,
}

pub async fn clear_all(cx: &Ctx<'_>) -> Result<Response, ApiError> {
    query::<NoQuery>(&cx.req.query)?;
    let _: ClearBody = optional_body(cx.req)?;
    let reg = cx.app.registry.clone();
    let who = cx.actor();
    let (reports, owners) = blocking(move || {
        let mut owners: BTreeSet<(String, String)> = BTreeSet::new();
        let mut cursor = 0;
        loop {
            let (page, next) = reg.list(Some(LockState::Stale), None, cursor, 1000)?;
            owners.extend(page.into_iter().map(|l| (l.namespace, l.owner)));
            match next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        // Each owner's clear is followed by a fresh look, so `success` says what is
        // left, not what was attempted.
        let mut reports = Vec::new();
        for (ns, owner) in &owners {
            let report = reg.clear_and_look(Some(ns), owner, None, &who)?;
            reports.push((owner.clone(), report));
        }
        Ok((reports, owners.len()))
    })
    .await?;
    let success = reports.iter().all(|(_, r)| r.success);
    let mut cleared = Vec::new();
    let mut skipped = Vec::new();
    let mut left = Vec::new();
    for (owner, report) in reports {
        cleared.extend(report.cleared.into_iter().map(|c| c.file));
        skipped.extend(report.skipped.into_iter().map(|s| SkippedLock {
            reason: html_safe(&s.reason),
            holder: s.holder.as_deref().map(html_safe),
            ..s
        }));
        left.extend(
            report
                .remaining
                .iter()
                .map(|l| (l.state, format!("{owner}: {}", remaining_note(l)))),
        );
    }
    cx.app.metrics.clears.inc_by(cleared.len() as u64);
    let done = format!(
        "cleared {} stuck lock(s) across {owners} owner(s)",
        cleared.len()
    );
    let message = if left.is_empty() {
        format!("{done}; nothing of them is held or stale now")
    } else {
        let what = if left.iter().any(|(s, _)| *s == LockState::Unsafe) {
            "are still held or stale, or have a lock file that is not a regular file"
        } else {
            "are still held or stale"
        };
        let why: Vec<&str> = left.iter().map(|(_, w)| w.as_str()).collect();
        format!(
            "{done}, but {} lock(s) {what}: {}.",
            left.len(),
            why.join("; ")
        )
    };
    Ok(json_response(
        StatusCode::OK,
        &ClearedAll {
            success,
            owners,
            cleared,
            skipped,
            message,
        },
    ))
}
