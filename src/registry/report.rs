//! Status reports: what every surface (CLI, JSON API, UI) shows for a lock, and the
//! observation behind it (kernel flock, the holder record, process liveness).
//!
//! Invariant: nothing here writes. A status read creates no file and no row; the state
//! comes from `policy::stale::classify`, the words from [`note_for`].

use super::{Registry, RegistryError};
use crate::clock;
use crate::config::Namespace;
use crate::ids::{self, LockKey};
use crate::kernel::{flock, proc_locks, process};
use crate::policy::clear::{self, ForcePlan, HolderFacts, Plan};
use crate::policy::stale::{
    self, HolderKind, Liveness, LockState, Observation, RecordFacts, StaleReason, Verdict,
};
use crate::store::records::{self, HolderRow, LockRow};
use serde::Serialize;

/// One lock as every surface shows it (CLI `status --json`, the JSON API, the UI).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LockReport {
    pub namespace: String,
    pub owner: String,
    /// `""` for the main lock.
    pub field: String,
    /// Bare file name inside the locks directory; never a path.
    pub file: String,
    pub state: LockState,
    pub stale_reason: Option<StaleReason>,
    pub kind: Option<HolderKind>,
    pub holder: Option<String>,
    pub operation: Option<String>,
    pub pid: Option<i32>,
    pub host: Option<String>,
    pub thread: Option<String>,
    /// Command line of an external holder, from /proc.
    pub command: Option<String>,
    pub acquired_at: Option<String>,
    pub renewed_at: Option<String>,
    pub expires_at: Option<String>,
    pub age_s: Option<f64>,
    /// The holder's fencing token (pass it back to clear or force-clear exactly this grant).
    pub token: Option<i64>,
    /// A force clear asked this library holder to let go; it still holds the flock.
    pub revoke_requested: bool,
    /// Would a safe clear from here clear it?
    pub clearable: bool,
    /// One line for humans: who holds it, or why it is stale.
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OwnerStatus {
    pub namespace: String,
    pub owner: String,
    pub locks: Vec<LockReport>,
}

/// What was seen of one lock at one moment: the kernel's answer, the verdict, and the
/// facts a clear plan needs about its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Observed {
    pub flock_held: bool,
    pub verdict: Verdict,
    pub holder: Option<HolderFacts>,
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

impl Registry {
    pub(super) fn liveness(&self, pid: i32, start: Option<u64>) -> Liveness {
        if pid == self.inner.me.0 && (start.is_none() || start == self.inner.me.1) {
            return Liveness::Alive;
        }
        process::liveness(pid, start)
    }

    fn facts(&self, h: &HolderRow) -> RecordFacts {
        let client = match (h.pid, h.kind) {
            (Some(pid), HolderKind::Lease) if h.host == process::hostname() => {
                Some(self.liveness(pid, h.pid_start))
            }
            _ => None,
        };
        RecordFacts {
            kind: h.kind,
            acquired_at_ms: h.acquired_at,
            renewed_at_ms: h.renewed_at,
            expires_at_ms: h.expires_at,
            locker: self.liveness(h.locker_pid, h.locker_start),
            client,
        }
    }

    /// What a clear needs to know about a recorded holder.
    fn holder_facts(&self, h: &HolderRow) -> HolderFacts {
        let locker_is_me = h.locker_pid == self.inner.me.0 && h.locker_start == self.inner.me.1;
        let handle_here = h.kind == HolderKind::Lease
            && locker_is_me
            && h.lease_id
                .as_deref()
                .is_some_and(|id| self.leases().by_id.contains_key(id));
        HolderFacts {
            kind: h.kind,
            locker: self.liveness(h.locker_pid, h.locker_start),
            locker_is_me,
            handle_here,
        }
    }

    /// Looks at one lock now: asks the kernel, judges the record.
    pub(super) fn observe(
        &self,
        row: Option<&LockRow>,
        file: &str,
        now: i64,
    ) -> Result<Observed, RegistryError> {
        let flock_held = flock::probe(&self.path_of_file(file))?;
        let holder = row.and_then(|r| r.holder.as_ref());
        let obs = Observation {
            flock_held,
            record: holder.map(|h| self.facts(h)),
        };
        Ok(Observed {
            flock_held,
            verdict: stale::classify(&obs, now, &self.policy()),
            holder: holder.map(|h| self.holder_facts(h)),
        })
    }

    fn report(
        &self,
        ns: &Namespace,
        owner: &str,
        field: &str,
        row: Option<&LockRow>,
        seen: Observed,
        now: i64,
    ) -> LockReport {
        let verdict = seen.verdict;
        let file = row.map(|r| r.file.clone()).unwrap_or_else(|| {
            ns.pattern
                .replace("{owner}", owner)
                .replace("{field}", field)
        });
        let holder = row.and_then(|r| r.holder.as_ref());
        let clearable = matches!(seen.plan(), Plan::Clear { .. });
        let mut report = LockReport {
            namespace: ns.name.clone(),
            owner: owner.to_string(),
            field: field.to_string(),
            file,
            state: verdict.state,
            stale_reason: verdict.stale_reason,
            kind: verdict.kind,
            holder: holder.map(|h| h.holder.clone()),
            operation: holder.map(|h| h.operation.clone()),
            pid: holder.and_then(|h| h.pid),
            host: holder.map(|h| h.host.clone()),
            thread: holder.and_then(|h| h.thread.clone()),
            command: None,
            acquired_at: holder.map(|h| clock::rfc3339(h.acquired_at)),
            renewed_at: holder.map(|h| clock::rfc3339(h.renewed_at)),
            expires_at: holder.and_then(|h| h.expires_at.map(clock::rfc3339)),
            age_s: holder.map(|h| ((now - h.acquired_at).max(0) as f64) / 1000.0),
            token: holder.map(|h| h.token),
            revoke_requested: holder.is_some_and(|h| h.revoked_at.is_some()),
            clearable,
            note: String::new(),
        };
        if verdict.kind == Some(HolderKind::External) {
            let path = self.path_of_file(&report.file);
            let pid = external_holder_pid(&path);
            report.pid = pid;
            report.host = Some(process::hostname().to_string());
            report.command = pid.and_then(process::cmdline).map(|c| without_paths(&c));
        }
        report.note = note_for(&report);
        report
    }

    // ---------------------------------------------------------------- status

    /// Every configured lock of one owner, with its state. Changes nothing.
    pub fn status(
        &self,
        namespace: Option<&str>,
        owner: &str,
    ) -> Result<OwnerStatus, RegistryError> {
        let ns = ids::namespace_of(&self.inner.config, namespace)?.clone();
        ids::check_owner(owner)?;
        let now = self.now_ms();
        let ns_name = ns.name.clone();
        let owner_s = owner.to_string();
        let rows = self.read(|c| Ok(records::owner_locks(c, &ns_name, &owner_s)?))?;
        let mut locks = Vec::with_capacity(ns.fields.len());
        for field in &ns.fields {
            let mut row = rows.iter().find(|r| &r.field == field).cloned();
            let file = LockKey::new(&ns, owner, field)?.file_name(&ns);
            let mut seen = self.observe(row.as_ref(), &file, now)?;
            let anomalous = row.as_ref().is_some_and(|r| r.holder.is_some()) != seen.flock_held;
            if anomalous {
                // A holder may have been between its flock and its commit while we
                // looked; one more read settles it.
                let key = LockKey::new(&ns, owner, field)?;
                row = self.read(|c| Ok(records::find_lock(c, &key)?))?;
                seen = self.observe(row.as_ref(), &file, now)?;
            }
            locks.push(self.report(&ns, owner, field, row.as_ref(), seen, now));
        }
        Ok(OwnerStatus {
            namespace: ns.name.clone(),
            owner: owner.to_string(),
            locks,
        })
    }

    /// Known locks (those the registry has ever granted), with their state, by lock id.
    /// Returns the page and the cursor of the next page.
    pub fn list(
        &self,
        state: Option<LockState>,
        owner_prefix: Option<&str>,
        cursor: i64,
        limit: usize,
    ) -> Result<(Vec<LockReport>, Option<i64>), RegistryError> {
        let now = self.now_ms();
        let limit = limit.clamp(1, 1000);
        // Held and stale locks have records (externally held ones show in owner status).
        let only_recorded = matches!(state, Some(LockState::Stale | LockState::Held));
        let mut out = Vec::new();
        let mut after = cursor;
        loop {
            let prefix = owner_prefix.map(str::to_string);
            let page = self.read(|c| {
                Ok(records::list_locks(
                    c,
                    prefix.as_deref(),
                    after,
                    only_recorded,
                    256,
                )?)
            })?;
            let exhausted = page.len() < 256;
            for row in &page {
                after = row.lock_id;
                let Some(ns) = self.inner.config.namespace(&row.namespace) else {
                    continue;
                };
                let seen = self.observe(Some(row), &row.file, now)?;
                if state.is_none_or(|s| s == seen.verdict.state) {
                    out.push(self.report(ns, &row.owner, &row.field, Some(row), seen, now));
                    if out.len() == limit {
                        return Ok((out, Some(after)));
                    }
                }
            }
            if exhausted {
                return Ok((out, None));
            }
        }
    }

    /// (held, stale) among the locks with a holder record, judged now.
    pub fn recorded_counts(&self) -> Result<(u64, u64), RegistryError> {
        let now = self.now_ms();
        let rows = self.read(|c| Ok(records::all_held(c)?))?;
        let (mut held, mut stale) = (0, 0);
        for row in &rows {
            match self.observe(Some(row), &row.file, now)?.verdict.state {
                LockState::Held => held += 1,
                LockState::Stale => stale += 1,
                LockState::Free => {}
            }
        }
        Ok((held, stale))
    }
}

/// The pid that holds a lock file's flock, from /proc/locks. The kernel prints that
/// table a page per read, and entries added or removed between reads can shift an entry
/// out of view; while the lock is still held, a few fresh reads find it.
pub(super) fn external_holder_pid(path: &std::path::Path) -> Option<i32> {
    for _ in 0..4 {
        if let Some(pid) = proc_locks::read_flock_holders(path)
            .ok()
            .and_then(|pids| pids.first().copied())
        {
            return Some(pid);
        }
        if !flock::probe(path).unwrap_or(false) {
            return None;
        }
    }
    None
}

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

pub fn display_field(field: &str) -> &str {
    if field.is_empty() {
        "(main)"
    } else {
        field
    }
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

fn note_for(r: &LockReport) -> String {
    let lock = format!("lock {}/{}", r.owner, display_field(&r.field));
    match (r.state, r.stale_reason) {
        (LockState::Free, _) => format!("{lock} is free"),
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
