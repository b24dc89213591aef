//! The words every surface shows: notes on a lock's state, how a holder is named, why a
//! clear left a lock alone. The CLI, the JSON API and the UI all render these strings.
//!
//! Invariant: no server path appears in any of them (command lines lose their paths).

use super::report::LockReport;
use crate::clock;
use crate::policy::clear::Skip;
use crate::policy::stale::{HolderKind, LockState, StaleReason};
use crate::store::records::HolderRow;

/// A command line with every absolute path cut to its last component, so reports never
/// reveal server paths (`/usr/bin/python3 app.py /srv/x/locks/a.lock` → `python3 app.py
/// a.lock`).
pub fn without_paths(cmdline: &str) -> String {
    cmdline
        .split(' ')
        .map(|word| match word.rfind('/') {
            Some(i) if word.starts_with('/') || word.contains("=/") => {
                let prefix = word.find("=/").map(|e| &word[..=e]).unwrap_or("");
                format!("{prefix}{}", &word[i + 1..])
            }
            _ => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// "pid 812 (send_message) since 12:01:07"
/// "pid 812", or the lease holder's label when the client gave no pid.
pub(super) fn holder_name(h: &HolderRow) -> String {
    match h.pid {
        Some(pid) => format!("pid {pid}"),
        None => format!("lease holder {:?}", h.holder),
    }
}

pub fn describe_holder(r: &LockReport) -> String {
    let pid = match (r.pid, &r.holder) {
        (Some(p), _) => format!("pid {p}"),
        (None, Some(h)) => format!("{h:?}"),
        (None, None) => "an unknown process".into(),
    };
    match (&r.kind, &r.operation, &r.acquired_at) {
        (Some(HolderKind::External), _, _) => {
            let cmd = r.command.as_deref().unwrap_or("unknown command");
            format!("{pid} ({cmd}), outside lockledger")
        }
        (_, Some(op), Some(at)) => {
            let hms = at.get(11..19).unwrap_or(at);
            format!("{pid} ({op}) since {hms}")
        }
        _ => pid,
    }
}

/// What is wrong with an unsafe lock file, and what to do: for notes and clear answers.
/// `file` is a bare file name and `what` static words, so it is free of markup
/// characters.
pub(super) fn unsafe_file_words(file: &str, what: &str) -> String {
    format!(
        "its lock file {file} is {what}, not a regular file; lockledger never opens or follows it, \
         so it cannot tell whether the lock is held and cannot clear it (remove it so a regular lock file can be created)"
    )
}

pub(super) fn note_for(r: &LockReport) -> String {
    let mut note = state_note(r);
    if let (Some(what), false) = (&r.unsafe_file, r.state == LockState::Unsafe) {
        note.push_str(&format!(
            "; {} is now at the lock path instead of its lock file (lockledger does not open it)",
            what
        ));
    }
    if r.file_replaced {
        note.push_str(
            "; its lock file was deleted or replaced at the lock path while it held it \
             (lockledger grants the lock again only after this holder ends)",
        );
    }
    if let Some(c) = &r.conflict {
        let who = match (c.pid, &c.command) {
            (Some(pid), Some(cmd)) => format!("pid {pid} ({cmd})"),
            (Some(pid), None) => format!("pid {pid}"),
            _ => "another process".into(),
        };
        note.push_str(&format!(
            "; {who} holds the new file at that path: two processes believe they hold this lock"
        ));
    }
    note
}

fn state_note(r: &LockReport) -> String {
    let lock = format!("lock {}", crate::ids::lock_name(&r.owner, &r.field));
    match (r.state, r.stale_reason) {
        (LockState::Free, _) => format!("{lock} is free"),
        (LockState::Unsafe, _) => format!(
            "{lock}: {}",
            unsafe_file_words(
                &r.file,
                r.unsafe_file.as_deref().unwrap_or("not a regular file")
            )
        ),
        (LockState::Held, _) if r.revoke_requested => {
            format!(
                "{lock} was force-cleared; {} has been asked to let go",
                describe_holder(r)
            )
        }
        (LockState::Held, _) => format!("{lock} is held by {}", describe_holder(r)),
        (LockState::Stale, Some(StaleReason::HolderDead)) => {
            format!(
                "{lock} is stale: its holder ({}) is gone",
                describe_holder(r)
            )
        }
        (LockState::Stale, Some(StaleReason::LeaseExpired)) => {
            format!(
                "{lock} is stale: the lease of {} was not renewed",
                describe_holder(r)
            )
        }
        (LockState::Stale, _) => format!(
            "{lock} is stale: {} is alive but has not renewed for too long (hung?)",
            describe_holder(r)
        ),
    }
}

/// Why a clear left a lock alone, in words.
pub(super) fn skip_reason(skip: Skip, h: Option<&HolderRow>) -> String {
    match (skip, h) {
        (Skip::UnsafeLockFile, _) => "its lock file is not a regular file; lockledger never opens or follows it, so it cannot clear it (remove it so a regular lock file can be created)".into(),
        (Skip::External, _) | (_, None) => "held by a process lockledger does not manage (external); it cannot be cleared here — stop that process".into(),
        (Skip::LeasedElsewhere, Some(h)) => format!(
            "leased through the lockledger service (pid {}), which holds the lock file; clear it through that service",
            h.locker_pid
        ),
        (Skip::HeldTooLong, Some(h)) => format!(
            "held_too_long: {} is alive but has not renewed for longer than max_hold; a safe clear never touches a live holder (an admin may force-clear it)",
            holder_name(h)
        ),
        (Skip::Live, Some(h)) => format!(
            "held by a live holder ({}, {}) since {}; a safe clear never touches a live holder",
            holder_name(h),
            h.operation,
            clock::hms(h.acquired_at)
        ),
    }
}

/// `text` without the characters that would make it markup when a page inserts it as
/// HTML (the chat app's front end does, with jQuery `.html()`): `<`, `>`, `&` and quotes
/// are dropped.
pub fn html_safe(text: &str) -> String {
    text.chars()
        .filter(|c| !matches!(c, '<' | '>' | '&' | '"' | '\'' | '`'))
        .collect()
}

/// "4 s", "3 min", "2 h": a duration for people.
fn ago(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// One sentence for a lock that is still held or stale after a clear: who holds it,
/// doing what, for how long, and what will free it. Free of markup characters (the chat
/// app inserts it as HTML); untrusted labels are stripped of them.
pub fn remaining_note(r: &LockReport) -> String {
    let lock = if r.field.is_empty() {
        "the main lock".to_string()
    } else if r.configured {
        r.field.clone()
    } else {
        format!("{} (a key lockledger is not configured for)", r.field)
    };
    if r.state == LockState::Unsafe {
        let what = r.unsafe_file.as_deref().unwrap_or("not a regular file");
        return format!("{lock}: {}", unsafe_file_words(&html_safe(&r.file), what));
    }
    let pid = r.pid.map(|p| format!("pid {p}"));
    let op = r.operation.as_deref().map(html_safe);
    let age = r.age_s.map(ago);
    let who = match r.kind {
        Some(HolderKind::External) => {
            let cmd = r.command.as_deref().map(html_safe);
            match (pid, cmd) {
                (Some(p), Some(c)) => format!("{p} ({c}), a process lockledger does not manage"),
                (Some(p), None) => format!("{p}, a process lockledger does not manage"),
                _ => "a process lockledger does not manage".to_string(),
            }
        }
        _ => {
            let name = r.holder.as_deref().map(html_safe).unwrap_or_default();
            let detail: Vec<String> = [pid, op].into_iter().flatten().collect();
            if detail.is_empty() {
                name
            } else {
                format!("{name} ({})", detail.join(", "))
            }
        }
    };
    let frees = match (r.kind, r.state, r.stale_reason) {
        (_, _, _) if r.revoke_requested => {
            "it was force-cleared and its writes are refused; it frees when that process lets go or exits".to_string()
        }
        (Some(HolderKind::External), _, _) => {
            "it frees when that process lets go or exits; lockledger cannot clear it".to_string()
        }
        (Some(HolderKind::Lease), LockState::Held, _) => match &r.expires_at {
            Some(at) => format!(
                "it frees when its client releases it, or when the lease runs out unrenewed (next at {})",
                at.get(11..19).unwrap_or(at)
            ),
            None => "it frees when its client releases it".to_string(),
        },
        (_, LockState::Stale, Some(StaleReason::HeldTooLong)) => {
            "its holder is alive but has not renewed for too long (hung?); an admin may force-clear it".to_string()
        }
        (_, LockState::Stale, Some(StaleReason::LeaseExpired)) => {
            "its lease ran out; the service ends it within a second (or a clear does)".to_string()
        }
        (_, LockState::Stale, _) => {
            "its holder is gone; the next clear (or lockledger itself, within seconds) frees it".to_string()
        }
        _ => "it frees when that process lets go of it or exits".to_string(),
    };
    let state = match r.state {
        LockState::Stale => "stale, held",
        _ => "held",
    };
    match age {
        Some(a) => format!("{lock} is {state} by {who} for {a}; {frees}"),
        None => format!("{lock} is {state} by {who}; {frees}"),
    }
}

#[cfg(test)]
mod tests {
    use super::without_paths;

    #[test]
    fn command_lines_lose_their_paths() {
        assert_eq!(
            without_paths("/usr/bin/python3 -c x /srv/app/storage/locks/c3_messages.lock"),
            "python3 -c x c3_messages.lock"
        );
        assert_eq!(
            without_paths("gunicorn --chdir=/srv/app app:wsgi"),
            "gunicorn --chdir=app app:wsgi"
        );
        assert_eq!(without_paths("python3 server.py"), "python3 server.py");
    }
}
