//! Registered holders (DESIGN §3, kind 3): a process that took a lock file's flock itself
//! registers with the registry, which checks `/proc/locks` before it records anything.
//! The registrant here is a real process (`lockledger hold --external` takes only the
//! kernel lock, as the chat app's `FileLock` does).

use lockledger::policy::stale::{HolderKind, LockState, StaleReason};
use lockledger::{Config, Registry, RegistryError};
use lockledger_harness::{lockledger, Proc};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_lockledger");

/// A process holding `owner`/`field`'s flock with no record, until killed.
fn external_holder(storage: &std::path::Path, owner: &str, field: &str) -> Proc {
    let cmd = lockledger(BIN.as_ref(), storage, &["hold", owner, field, "--external"]);
    let holder = Proc::spawn(cmd, "external holder");
    let line = holder.line(Duration::from_secs(10)).expect("held line");
    assert!(line.contains("\"held\""), "{line}");
    holder
}

#[test]
fn a_registrant_is_checked_recorded_reconciled_and_revocable() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(Config::defaults(dir.path())).unwrap();
    let key = reg.key(None, "conv7", "messages").unwrap();
    let mut holder = external_holder(dir.path(), "conv7", "messages");
    let pid = holder.pid();

    // Not the holder: refused, nothing recorded.
    let me = std::process::id() as i32;
    let err = reg.register(&key, me, "chat-app", "save").unwrap_err();
    assert!(
        matches!(err, RegistryError::NotHolding { pid, .. } if pid == me),
        "{err:?}"
    );
    assert!(err.to_string().contains("/proc/locks"), "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "lock conv7/messages cannot be registered for pid {me}"
        )),
        "{err}"
    );
    let r = reg.status(None, "conv7").unwrap().locks;
    let r = r.iter().find(|l| l.field == "messages").unwrap();
    assert_eq!(r.kind, Some(HolderKind::External));

    let registration = reg.register(&key, pid, "chat-app", "send_message").unwrap();
    let report = || {
        reg.status(None, "conv7")
            .unwrap()
            .locks
            .into_iter()
            .find(|l| l.field == "messages")
            .unwrap()
    };
    let r = report();
    assert_eq!(
        (r.state, r.kind, r.pid, r.token),
        (
            LockState::Held,
            Some(HolderKind::Library),
            Some(pid),
            Some(registration.token)
        )
    );
    assert_eq!(r.operation.as_deref(), Some("send_message"));
    assert!(reg.fence_check(&key, registration.token).unwrap().current);
    // A safe clear never touches it.
    let out = reg.clear(None, "conv7", None, "test").unwrap();
    assert!(out.cleared.is_empty() && out.skipped.len() == 1, "{out:?}");

    // A force clear revokes it: its fence checks fail from then on.
    let done = reg
        .force_clear(&key, registration.token, "hung stream", "admin:test")
        .unwrap();
    assert!(done.revocation_pending);
    assert!(!reg.fence_check(&key, registration.token).unwrap().current);

    // It dies: reconciliation closes the record; the lock is free.
    holder.kill();
    let r = report();
    assert_eq!(
        (r.state, r.stale_reason),
        (LockState::Stale, Some(StaleReason::HolderDead))
    );
    let fixed = reg.reconcile("test").unwrap();
    assert_eq!(fixed.reconciled, vec!["conv7/messages".to_string()]);
    assert_eq!(report().state, LockState::Free);
    // Its id ends nothing more.
    assert!(matches!(
        reg.unregister(&registration.registration_id),
        Err(RegistryError::LeaseGone { .. })
    ));
}

#[test]
fn unregistering_closes_exactly_that_grant() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(Config::defaults(dir.path())).unwrap();
    let key = reg.key(None, "conv8", "all").unwrap();
    let mut holder = external_holder(dir.path(), "conv8", "all");
    let first = reg.register(&key, holder.pid(), "app", "save").unwrap();
    let held_ms = reg.unregister(&first.registration_id).unwrap();
    assert!(held_ms.is_some());
    holder.kill();
    let mut again = external_holder(dir.path(), "conv8", "all");
    let second = reg.register(&key, again.pid(), "app", "save").unwrap();
    assert!(second.token > first.token);
    assert!(reg.unregister(&first.registration_id).is_err());
    let r = reg.status(None, "conv8").unwrap();
    let all = r.locks.iter().find(|l| l.field == "all").unwrap();
    assert_eq!(all.token, Some(second.token));
    again.kill();
}

#[test]
fn a_registrant_on_a_replaced_file_is_refused_and_the_replacement_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(Config::defaults(dir.path())).unwrap();
    let key = reg.key(None, "conv9", "messages").unwrap();
    let guard = reg
        .acquire(&key, &lockledger::AcquireOptions::new("indexer", "reindex"))
        .unwrap();
    std::fs::remove_file(dir.path().join("locks/conv9_messages.lock")).unwrap();
    let mut intruder = external_holder(dir.path(), "conv9", "messages");
    let err = reg
        .register(&key, intruder.pid(), "app", "save")
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Busy { .. }) && err.to_string().contains("two processes"),
        "{err}"
    );
    let events = reg
        .history(&lockledger::store::history::HistoryQuery {
            owner: Some("conv9".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        events.iter().filter(|e| e.event == "file_replaced").count(),
        1,
        "{events:?}"
    );
    intruder.kill();
    drop(guard);
}
