//! The hostile lock directory against the real binary (DESIGN §5a): lock files deleted
//! and replaced under live holders, a Python `filelock` holder on the replacement,
//! symlinks to files outside storage, dangling symlinks, FIFOs, a deleted registry, a
//! user who may only read the storage, and status reads that never make a concurrent
//! try-acquire fail. The same cases in-process are in `exclusion.rs`.

use lockledger_harness::{wait_for, Proc, Request as Req, Server, ServerOpts};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lockledger");
const ADMIN: &str = "admin-token-0123456789";

fn start(storage: &Path) -> Server {
    Server::start(
        Path::new(BIN),
        storage,
        &ServerOpts::default().args(&["--admin-token", ADMIN]),
    )
}

fn acquire(srv: &Server, owner: &str, field: &str) -> lockledger_harness::Response {
    Req::post(&format!("/api/v1/locks/{owner}/{field}/acquire"))
        .json(&json!({"holder": "chat-app", "operation": "send_message", "ttl_ms": 30_000}))
        .send(srv.port)
}

fn lock(srv: &Server, owner: &str, field: &str) -> Value {
    let v = Req::get(&format!("/api/v1/locks/{owner}"))
        .send(srv.port)
        .json();
    lockledger_harness::lock_in(&v, field)
}

fn metric(srv: &Server, name: &str) -> f64 {
    let text = Req::get("/metrics").send(srv.port).text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn a_deleted_lock_file_under_a_lease_never_makes_two_holders() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path());
    let first = acquire(&srv, "conv1", "messages").json();
    let path = dir.path().join("locks/conv1_messages.lock");
    std::fs::remove_file(&path).unwrap();

    let again = acquire(&srv, "conv1", "messages");
    assert_eq!(again.status, 409, "{}", again.text());
    let l = lock(&srv, "conv1", "messages");
    assert_eq!(l["state"], "held", "{l}");
    assert_eq!(l["token"], first["token"], "{l}");
    assert_eq!(l["file_replaced"], true, "{l}");
    assert_eq!(metric(&srv, "lockledger_locks_file_replaced"), 1.0);

    // The first lease still names its own grant only.
    let id = first["lease_id"].as_str().unwrap();
    let renewed = Req::post(&format!("/api/v1/leases/{id}/renew"))
        .empty_json()
        .send(srv.port);
    assert_eq!(renewed.json()["token"], first["token"]);
    let fence = Req::post("/api/v1/fence/check")
        .json(&json!({"owner": "conv1", "field": "messages", "token": first["token"]}))
        .send(srv.port)
        .json();
    assert_eq!(fence["current"], true, "{fence}");
    let released = Req::delete(&format!("/api/v1/leases/{id}"))
        .empty_json()
        .send(srv.port);
    assert_eq!(released.status, 200);
    let second = acquire(&srv, "conv1", "messages").json();
    assert!(
        second["token"].as_i64() > first["token"].as_i64(),
        "{second}"
    );
    let gone = Req::delete(&format!("/api/v1/leases/{id}"))
        .empty_json()
        .send(srv.port);
    assert_eq!(gone.status, 410, "an old id never releases a later grant");
    let h = Req::get("/api/v1/history?owner=conv1&event=file_replaced")
        .send(srv.port)
        .json();
    assert_eq!(h["events"].as_array().unwrap().len(), 1, "{h}");
}

#[test]
fn a_python_filelock_holder_on_the_replacement_is_reported_as_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path());
    let lease = acquire(&srv, "conv2", "memory").json();
    let path = dir.path().join("locks/conv2_memory.lock");
    std::fs::remove_file(&path).unwrap();
    let mut py = std::process::Command::new("python3");
    py.args([
        "-c",
        "import sys, filelock, time\n\
         l = filelock.FileLock(sys.argv[1]); l.acquire(timeout=5)\n\
         print('held', flush=True); time.sleep(60)",
        path.to_str().unwrap(),
    ]);
    let holder = Proc::spawn(py, "python filelock holder");
    let line = holder.line(Duration::from_secs(20));
    assert_eq!(line.as_deref(), Some("held"), "{}", holder.stderr_text());
    let l = wait_for(Duration::from_secs(5), "the conflict in status", || {
        let l = lock(&srv, "conv2", "memory");
        l["conflict"]["pid"].as_i64().map(|_| l)
    });
    assert_eq!(l["state"], "held", "{l}");
    assert_eq!(l["token"], lease["token"], "{l}");
    assert_eq!(l["conflict"]["pid"], holder.pid(), "{l}");
    assert!(l["note"].as_str().unwrap().contains("two processes"), "{l}");
    assert_eq!(metric(&srv, "lockledger_locks_conflicting"), 1.0);
}

#[test]
fn symlinks_and_fifos_are_refused_quickly_and_nothing_is_written_through_them() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let srv = start(dir.path());
    let locks = dir.path().join("locks");
    let precious = outside.path().join("precious.txt");
    std::fs::write(&precious, b"keep").unwrap();
    std::os::unix::fs::symlink(&precious, locks.join("x_messages.lock")).unwrap();
    let r = acquire(&srv, "x", "messages");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "unsafe_lock_file")
    );
    assert!(
        r.text().contains("symbolic link") && !r.text().contains(outside.path().to_str().unwrap())
    );
    let r = Req::delete("/api/v1/leases/0123456789abcdef0123456789abcdef")
        .empty_json()
        .send(srv.port);
    assert_eq!(r.status, 410);
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep");

    let target = outside.path().join("made-by-mistake");
    std::os::unix::fs::symlink(&target, locks.join("y_messages.lock")).unwrap();
    assert_eq!(acquire(&srv, "y", "messages").status, 409);
    assert!(!target.exists());

    let fifo = std::ffi::CString::new(locks.join("z_memory.lock").to_str().unwrap()).unwrap();
    // SAFETY: a valid path string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let t = Instant::now();
    let r = Req::post("/ensure_locks_cleared/z")
        .empty_json()
        .send(srv.port);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The FIFO is reported on its own lock; the clear answers for the others.
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["success"], false);
    assert!(
        r.json()["message"].as_str().unwrap().contains("FIFO"),
        "{}",
        r.text()
    );
    // Nothing hangs: writes and health go on.
    assert_eq!(acquire(&srv, "z", "messages").status, 200);
    assert_eq!(Req::get("/healthz").send(srv.port).status, 200);
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path string.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {path:?}"
    );
}

/// One symlink or FIFO among an owner's lock files is reported on that lock alone: the
/// other locks are reported as usual (the chat app's status route included), a clear
/// clears what it can and skips the unsafe one without following or opening it.
#[test]
fn an_unsafe_lock_file_is_reported_on_its_lock_alone() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let srv = start(dir.path());
    let locks = dir.path().join("locks");
    let precious = outside.path().join("precious.txt");
    std::fs::write(&precious, b"keep").unwrap();
    // A live lease, a dead library holder, a symlink on a configured key and a FIFO on a
    // key that is not configured.
    let lease = acquire(&srv, "u1", "messages").json();
    let mut dead = Proc::spawn(
        lockledger_harness::lockledger(Path::new(BIN), dir.path(), &["hold", "u1", "all"]),
        "holder to kill",
    );
    let line = dead.line(Duration::from_secs(10));
    assert!(
        line.as_deref().is_some_and(|l| l.contains("\"held\"")),
        "{line:?}"
    );
    dead.kill();
    std::os::unix::fs::symlink(&precious, locks.join("u1_memory.lock")).unwrap();
    mkfifo(&locks.join("u1_summaries.lock"));

    let t = Instant::now();
    for path in ["/api/v1/locks/u1", "/get_lock_status/u1"] {
        let r = Req::get(path).send(srv.port);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let v = r.json();
        let memory = lockledger_harness::lock_in(&v, "memory");
        assert_eq!(memory["state"], "unsafe", "{memory}");
        assert_eq!(memory["unsafe_file"], "a symbolic link", "{memory}");
        assert_eq!(memory["clearable"], false, "{memory}");
        let note = memory["note"].as_str().unwrap();
        assert!(
            note.contains("u1_memory.lock") && note.contains("symbolic link"),
            "{note}"
        );
        assert!(!note.contains(outside.path().to_str().unwrap()), "{note}");
        let fifo = lockledger_harness::lock_in(&v, "summaries");
        assert_eq!(
            (fifo["state"].clone(), fifo["configured"].clone()),
            (json!("unsafe"), json!(false)),
            "{fifo}"
        );
        assert!(fifo["note"].as_str().unwrap().contains("FIFO"), "{fifo}");
        let messages = lockledger_harness::lock_in(&v, "messages");
        assert_eq!(messages["state"], "held", "{messages}");
        assert_eq!(messages["token"], lease["token"], "{messages}");
        let all = lockledger_harness::lock_in(&v, "all");
        assert_eq!(
            (all["state"].clone(), all["stale_reason"].clone()),
            (json!("stale"), json!("holder_dead")),
            "{all}"
        );
        assert_eq!(
            lockledger_harness::lock_in(&v, "artefacts")["state"],
            "free"
        );
        if path.starts_with("/get_lock_status") {
            // Never "all clear" while it cannot tell.
            assert_eq!(v["locks_status"]["memory"], true, "{v}");
            assert_eq!(v["any_locked"], true, "{v}");
            assert_eq!(v["can_cleanup"], true, "the dead holder is clearable: {v}");
        }
    }
    let r = Req::post("/ensure_locks_cleared/u1")
        .empty_json()
        .send(srv.port);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["cleared"], json!(["u1_all.lock"]), "{v}");
    let outcome = |field: &str| {
        v["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["field"] == field)
            .unwrap_or_else(|| panic!("no outcome for {field}: {v}"))
            .clone()
    };
    assert_eq!(outcome("memory")["outcome"], "unsafe_lock_file", "{v}");
    assert_eq!(outcome("memory")["state_now"], "unsafe", "{v}");
    assert_eq!(outcome("summaries")["outcome"], "unsafe_lock_file", "{v}");
    assert_eq!(outcome("messages")["outcome"], "live", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("symbolic link") && message.contains("FIFO"),
        "{message}"
    );
    assert!(!message.contains(['<', '>', '&', '"', '\'']), "{message}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Nothing was followed or opened: the target is intact, the FIFO still a FIFO, and
    // a clear through the versioned API answers the same way.
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep");
    let meta = std::fs::symlink_metadata(locks.join("u1_summaries.lock")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
    assert!(std::fs::symlink_metadata(locks.join("u1_memory.lock"))
        .unwrap()
        .file_type()
        .is_symlink());
    let r = Req::post("/api/v1/locks/u1/clear")
        .empty_json()
        .send(srv.port);
    assert_eq!(r.status, 200, "{}", r.text());
    let history = Req::get("/api/v1/history?owner=u1&event=observed_external")
        .send(srv.port)
        .json();
    assert_eq!(
        history["events"],
        json!([]),
        "an unsafe file is not an external holder"
    );
    // Taking that very lock is still refused by name.
    let r = acquire(&srv, "u1", "memory");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "unsafe_lock_file")
    );
    // The CLI shows it the same way, and /metrics still answers.
    let out = lockledger_harness::run(
        lockledger_harness::lockledger(Path::new(BIN), dir.path(), &["status", "u1"]),
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("UNSAFE"), "{}", out.stdout);
    assert_eq!(Req::get("/metrics").send(srv.port).status, 200);
}

/// `shared_group = true` under a restrictive umask (the unit's UMask=0077): the storage
/// directory lets the group through, the locks directory is 2770 and lock files 0660, so
/// a chat app running as another user of the group can open and create lock files;
/// registry.db stays private.
#[test]
fn shared_group_lets_the_group_in_under_a_restrictive_umask() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let parent = tempfile::tempdir().unwrap();
    // The parent must let anyone through, as /srv does.
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let storage = parent.path().join("storage");
    let mut cmd = lockledger_harness::lockledger(
        Path::new(BIN),
        &storage,
        &["hold", "g1", "messages", "--operation", "umask-test"],
    );
    cmd.env("LOCKLEDGER_SHARED_GROUP", "1");
    // SAFETY: umask(2) is async-signal-safe and only changes the child's own mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let mut holder = Proc::spawn(cmd, "holder under umask 0077");
    let line = holder.line(Duration::from_secs(10));
    assert!(
        line.as_deref().is_some_and(|l| l.contains("\"held\"")),
        "{line:?}: {}",
        holder.stderr_text()
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let locks = storage.join("locks");
    let lock_file = locks.join("g1_messages.lock");
    assert_eq!(mode(&storage), 0o710, "storage");
    assert_eq!(mode(&locks), 0o2770, "locks");
    assert_eq!(mode(&lock_file), 0o660, "lock file");
    for private in ["registry.db", "token-ceiling"] {
        assert_eq!(mode(&storage.join(private)), 0o600, "{private}");
    }
    // Another lock file created later gets the same mode.
    let external = lockledger_harness::run(
        {
            let mut c = lockledger_harness::lockledger(
                Path::new(BIN),
                &storage,
                &["hold", "g1", "memory", "--external", "--for-ms", "1"],
            );
            c.env("LOCKLEDGER_SHARED_GROUP", "yes");
            // SAFETY: as above.
            unsafe {
                c.pre_exec(|| {
                    libc::umask(0o077);
                    Ok(())
                });
            }
            c
        },
        Duration::from_secs(20),
    );
    assert_eq!(external.code, 0, "{}", external.stderr);
    assert_eq!(mode(&locks.join("g1_memory.lock")), 0o660);

    // A member of the group (not the owner) opens the lock file read-write, as Python's
    // filelock does, and creates a new one; registry.db stays closed to it.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || which("setpriv").is_none() {
        eprintln!("skipped the group member part: needs root and setpriv");
    } else {
        // SAFETY: getegid has no preconditions.
        let gid = format!("--regid={}", unsafe { libc::getegid() });
        let member = |script: &str| {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=nobody",
                &gid,
                "--clear-groups",
                "--",
                "sh",
                "-c",
                script,
                "sh",
            ]);
            c.arg(&storage);
            lockledger_harness::run(c, Duration::from_secs(20))
        };
        let ok = member(": <> \"$1/locks/g1_messages.lock\" && : <> \"$1/locks/g2_memory.lock\"");
        assert_eq!(ok.code, 0, "the group can use the locks: {}", ok.stderr);
        assert!(locks.join("g2_memory.lock").exists());
        let denied = member("cat \"$1/registry.db\" > /dev/null");
        assert_ne!(denied.code, 0, "registry.db must stay private");
    }
    holder.signal(libc::SIGTERM);
    holder.try_wait_exit(Duration::from_secs(10));
}

#[test]
fn a_deleted_registry_stops_the_service_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path());
    assert_eq!(acquire(&srv, "c", "messages").status, 200);
    for f in ["registry.db", "registry.db-wal", "registry.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let t = Instant::now();
    let health = wait_for(Duration::from_secs(3), "healthz to fail", || {
        let r = Req::get("/healthz").send(srv.port);
        (r.status == 503).then_some(r)
    });
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "noticed after {:?}",
        t.elapsed()
    );
    assert!(
        health.json()["status"]
            .as_str()
            .unwrap()
            .contains("registry.db"),
        "{}",
        health.text()
    );
    let r = acquire(&srv, "c", "memory");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "registry_unavailable")
    );
    assert!(
        !dir.path().join("registry.db").exists(),
        "nothing wrote a new database"
    );
}

#[test]
fn status_reads_never_make_a_concurrent_try_acquire_busy() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path());
    let port = srv.port;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, reads) = (stop.clone(), reads.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = Req::get("/get_lock_status/spin").send(port);
                    assert_eq!(r.status, 200);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut busy = 0;
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut attempts = 0;
    while Instant::now() < deadline {
        let r = Req::post("/api/v1/locks/spin/messages/acquire")
            .json(&json!({"holder": "t", "operation": "o", "wait_ms": 0}))
            .send(port);
        attempts += 1;
        if r.status == 409 {
            busy += 1;
            continue;
        }
        let id = r.json()["lease_id"].as_str().unwrap().to_string();
        Req::delete(&format!("/api/v1/leases/{id}"))
            .empty_json()
            .send(port);
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(
        reads.load(Ordering::Relaxed) > 100,
        "the readers did not run"
    );
    assert!(attempts > 100, "only {attempts} attempts");
    assert_eq!(
        busy, 0,
        "{busy} of {attempts} try-acquires saw a spurious busy"
    );
}

#[test]
fn a_user_who_can_only_read_the_storage_reads_status_and_history() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || which("runuser").is_none() {
        eprintln!("skipped: needs root and runuser to act as another user");
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    let storage = parent.path().join("storage");
    let mut srv = start(&storage);
    let held = acquire(&srv, "ro", "messages").json();
    // The service's files are private; an operator grants read access to the tree
    // (`chmod -R a+rX storage`), not write access.
    let chmod = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(parent.path())
        .status()
        .unwrap();
    assert!(chmod.success());
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new("runuser");
        cmd.args([
            "-u",
            "nobody",
            "--",
            BIN,
            "--storage",
            storage.to_str().unwrap(),
        ]);
        cmd.args(args);
        lockledger_harness::run(cmd, Duration::from_secs(20))
    };
    let status = run(&["status", "ro", "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let l = lockledger_harness::lock_in(&status.json(), "messages");
    assert_eq!(
        (l["state"].clone(), l["token"].clone()),
        (json!("held"), held["token"].clone())
    );
    let history = run(&["history", "--owner", "ro", "--json"]);
    assert_eq!(history.code, 0, "{}", history.stderr);
    // With the service stopped (no -wal), too.
    srv.stop();
    let status = run(&["status", "ro"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}
