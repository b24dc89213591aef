//! The hostile-filesystem part of a chaos run: what the chat app's old code and an
//! unfriendly lock directory do to lockledger while its holders work.
//!
//! - **delete**: `rm` of a `messages` lock file, preferably one the service reports held
//!   (sometimes recreated at once, as an empty file, like a racing opener would);
//! - **replace**: a new file renamed over a `messages` lock file;
//! - **symlink**: a symlink planted at a lock path of an owner nobody uses, to a file
//!   outside the storage directory whose content must stay as it was, or dangling (to a
//!   path where nothing may ever be created); then every way in is tried on that owner;
//! - **fifo**: the same with a FIFO (nothing may hang);
//! - **clock step**: the service's wall clock stepped (± minutes, hours, a day) through
//!   libfaketime, when it is installed; the service runs under it from the start.
//!
//! Why only the `messages` locks are deleted or replaced: they are used by lockledger's
//! fenced holders alone (library and lease holders), and for those the record wins over
//! the path (DESIGN.md §5a): nobody is granted the lock again until the holder of the
//! deleted file ends, so no overlap may appear. The `memory` locks are shared with
//! Python `filelock` holders, which lock whatever file is at the path: deleting one of
//! those under a holder makes a genuine second holder outside lockledger's control (the
//! bug the registry reports but cannot prevent), so they are left alone.
//!
//! Invariants: every request to a planted path has a deadline ([`DEADLINE`]); an answer
//! that is late, missing or a grant (2xx on acquire/register, a `held` line from `hold`)
//! is a problem that fails the run; nothing here writes inside the storage directory
//! except at the lock paths it attacks; the targets are checked at the end
//! ([`Hostile::targets_intact`]); the `lockledger` commands it runs join the run's
//! process group, so they end with it.

use crate::workers::api_within;
use crate::OWNERS;
use lockledger_harness::{lockledger, process::try_run, ProcessGroup};
use lockledger_tools::rng::Rng;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every request to a planted lock path must be answered within this. A request that
/// writes (a safe clear goes through the writer even when nothing is held) waits for
/// SQLite's write lock while SIGSTOPped library holders hold it (another fault of the
/// run): the writer gives up after the service's busy timeout (5 s) and answers 503, and a
/// job queued behind one that is giving up can wait for two of those (8.6 s seen).
/// Three busy timeouts is a hang.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// A CLI command on a planted path (process start and registry open included).
const CLI_DEADLINE: Duration = Duration::from_secs(20);

const PRECIOUS: &[u8] = b"lockledger chaos: this file is outside the storage directory; \
a symlink at a lock path points here, and its content must never change\n";

/// Where libfaketime may be installed (Debian/Ubuntu multiarch, other distributions, a
/// local build).
const FAKETIME_LIBS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib64/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/libfaketime.so.1",
];

/// Wall-clock offsets the service's clock is stepped between (seconds).
const OFFSETS: [i64; 7] = [-86_400, -3_600, -600, 0, 600, 3_600, 86_400];

/// The service's clock under libfaketime: the library and the file holding the offset
/// (read by the service at most once a second).
#[derive(Debug, Clone)]
pub struct FakeClock {
    pub lib: PathBuf,
    pub file: PathBuf,
    pub offset_s: i64,
}

impl FakeClock {
    /// libfaketime, if installed and it really moves `date`'s clock (a day ahead).
    pub fn find(dir: &Path) -> Result<FakeClock, String> {
        let lib = match std::env::var_os("LOCKLEDGER_CHAOS_FAKETIME") {
            Some(p) => PathBuf::from(p),
            None => FAKETIME_LIBS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .ok_or("libfaketime not found (apt-get install faketime)")?,
        };
        let out = std::process::Command::new("date")
            .arg("+%s")
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME", "+1d")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .output()
            .map_err(|e| format!("cannot run date: {e}"))?;
        let faked: i64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("{} did not work with date", lib.display()))?;
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if (faked - real - 86_400).abs() > 60 {
            return Err(format!(
                "{} did not move the clock (date said {faked}, now is {real})",
                lib.display()
            ));
        }
        let file = dir.join("faketime.rc");
        std::fs::write(&file, "+0\n").map_err(|e| format!("write {}: {e}", file.display()))?;
        Ok(FakeClock {
            lib,
            file,
            offset_s: 0,
        })
    }

    /// The environment that puts the service under this clock: wall clock only (the
    /// monotonic clock, which lease deadlines use, stays real), the offset re-read at
    /// most once a second.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.lib.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.file.display().to_string(),
            ),
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }

    fn step(&mut self, rng: &mut Rng) -> Result<bool, String> {
        let next = OFFSETS[rng.below(OFFSETS.len() as u64) as usize];
        if next == self.offset_s {
            return Ok(false);
        }
        // Written beside and renamed, so the service never reads half a line.
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{next:+}\n")).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &self.file).map_err(|e| e.to_string())?;
        self.offset_s = next;
        Ok(true)
    }
}

/// What was tried, and what went wrong.
#[derive(Debug, Default)]
pub struct Counts {
    pub deleted: u64,
    /// ... of which the service reported the lock held just before.
    pub deleted_held: u64,
    /// ... of which a new empty file was created at once.
    pub recreated: u64,
    pub replaced: u64,
    pub replaced_held: u64,
    pub symlinks: u64,
    pub fifos: u64,
    pub clock_steps: u64,
    /// Requests and CLI commands sent to planted paths.
    pub requests: u64,
    /// ... answered with a refusal naming the unsafe file (409 unsafe_lock_file).
    pub refused_unsafe: u64,
    /// The slowest of those answers (ms).
    pub slowest_ms: f64,
}

pub struct Hostile {
    locks: PathBuf,
    outside: PathBuf,
    precious: PathBuf,
    /// Dangling symlink targets: nothing may ever exist at them.
    dangling: Vec<PathBuf>,
    /// Owners with something planted at a lock path.
    pub planted_owners: Vec<String>,
    pub clock: Option<FakeClock>,
    /// Why clock steps are not tried, when they are not.
    pub clock_note: Option<String>,
    pub counts: Counts,
    /// Late or missing answers and grants of planted paths: each fails the run.
    pub problems: Vec<String>,
    next_owner: u64,
    service_exe: PathBuf,
    storage: PathBuf,
}

/// `mkfifo(path, 0600)`.
fn mkfifo(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: c is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Hostile {
    /// Prepares the outside directory and the precious target; finds libfaketime.
    pub fn new(dir: &Path, service_exe: &Path, clock: bool) -> Result<Hostile, String> {
        let outside = dir.join("outside");
        std::fs::create_dir_all(&outside).map_err(|e| e.to_string())?;
        let precious = outside.join("precious.txt");
        std::fs::write(&precious, PRECIOUS).map_err(|e| e.to_string())?;
        let (clock, clock_note) = if clock {
            match FakeClock::find(dir) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (
                None,
                Some("clock steps turned off (--no-clock-steps)".into()),
            )
        };
        Ok(Hostile {
            locks: dir.join("storage").join("locks"),
            outside,
            precious,
            dangling: Vec::new(),
            planted_owners: Vec::new(),
            clock,
            clock_note,
            counts: Counts::default(),
            problems: Vec::new(),
            next_owner: 0,
            service_exe: service_exe.to_path_buf(),
            storage: dir.join("storage"),
        })
    }

    /// The environment for the service (libfaketime when clock steps are on).
    pub fn service_env(&self) -> Vec<(String, String)> {
        self.clock.as_ref().map(FakeClock::env).unwrap_or_default()
    }

    /// One hostile act, chosen by `rng` (sometimes none); commands it runs join `group`.
    pub fn act(&mut self, rng: &mut Rng, port: u16, group: &ProcessGroup) -> Result<(), String> {
        match rng.below(100) {
            0..=17 => self.delete(rng, port),
            18..=31 => self.replace(rng, port),
            32..=40 => self.plant(rng, port, false, group),
            41..=49 => self.plant(rng, port, true, group),
            50..=58 => {
                if let Some(c) = self.clock.as_mut() {
                    if c.step(rng)? {
                        self.counts.clock_steps += 1;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The owner whose `messages` lock to attack: one the service reports held if any.
    fn messages_target(&self, rng: &mut Rng, port: u16) -> (String, bool) {
        let start = rng.below(OWNERS.len() as u64) as usize;
        for i in 0..OWNERS.len() {
            let owner = OWNERS[(start + i) % OWNERS.len()];
            let Ok(r) = api_within(
                port,
                "GET",
                &format!("/api/v1/locks/{owner}"),
                None,
                DEADLINE,
            ) else {
                continue;
            };
            let held = r.json_or_null()["locks"].as_array().is_some_and(|ls| {
                ls.iter()
                    .any(|l| l["field"] == "messages" && l["state"] == "held")
            });
            if held {
                return (owner.to_string(), true);
            }
        }
        (OWNERS[start].to_string(), false)
    }

    fn delete(&mut self, rng: &mut Rng, port: u16) -> Result<(), String> {
        let (owner, held) = self.messages_target(rng, port);
        let path = self.locks.join(format!("{owner}_messages.lock"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("rm {}: {e}", path.display())),
        }
        self.counts.deleted += 1;
        self.counts.deleted_held += u64::from(held);
        if rng.chance(50) {
            // As a racing opener would: a new empty file at once.
            if std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .is_ok()
            {
                self.counts.recreated += 1;
            }
        }
        Ok(())
    }

    fn replace(&mut self, rng: &mut Rng, port: u16) -> Result<(), String> {
        let (owner, held) = self.messages_target(rng, port);
        let path = self.locks.join(format!("{owner}_messages.lock"));
        let fresh = self.outside.join(format!("replacement-{}", rng.next_u64()));
        std::fs::write(&fresh, b"").map_err(|e| format!("write {}: {e}", fresh.display()))?;
        std::fs::rename(&fresh, &path)
            .map_err(|e| format!("rename over {}: {e}", path.display()))?;
        self.counts.replaced += 1;
        self.counts.replaced_held += u64::from(held);
        Ok(())
    }

    /// Plants a symlink (to the precious file, or dangling) or a FIFO at a lock path of a
    /// fresh owner, then tries every way in on that owner.
    fn plant(
        &mut self,
        rng: &mut Rng,
        port: u16,
        fifo: bool,
        group: &ProcessGroup,
    ) -> Result<(), String> {
        let owner = format!("hostile{}", self.next_owner);
        self.next_owner += 1;
        // A configured field (the main lock or messages), or one that is not configured
        // (found only by listing the locks directory).
        let field = ["messages", "", "zz"][rng.below(3) as usize];
        let path = self.locks.join(format!("{owner}_{field}.lock"));
        std::fs::create_dir_all(&self.locks).map_err(|e| e.to_string())?;
        if fifo {
            mkfifo(&path).map_err(|e| format!("mkfifo {}: {e}", path.display()))?;
            self.counts.fifos += 1;
        } else {
            let target = if rng.chance(50) {
                self.precious.clone()
            } else {
                let t = self.outside.join(format!("dangling-{owner}"));
                self.dangling.push(t.clone());
                t
            };
            std::os::unix::fs::symlink(&target, &path)
                .map_err(|e| format!("symlink {}: {e}", path.display()))?;
            self.counts.symlinks += 1;
        }
        self.planted_owners.push(owner.clone());
        self.try_every_way_in(port, &owner, field, group);
        Ok(())
    }

    /// Acquire, register, status, legacy status and safe clear over HTTP, and `hold` and
    /// `status` from the command line, on a planted lock path: each must answer within
    /// its deadline, and none may grant the lock.
    fn try_every_way_in(&mut self, port: u16, owner: &str, field: &str, group: &ProcessGroup) {
        let f = if field.is_empty() { "main" } else { field };
        let acquire =
            r#"{"holder":"chaos-hostile","operation":"probe","ttl_ms":2000,"wait_ms":200}"#;
        let register = format!(
            r#"{{"pid":{},"holder":"chaos-hostile","operation":"probe"}}"#,
            std::process::id()
        );
        let calls: [(&str, String, Option<&str>, bool); 5] = [
            (
                "POST",
                format!("/api/v1/locks/{owner}/{f}/acquire"),
                Some(acquire),
                true,
            ),
            (
                "POST",
                format!("/api/v1/locks/{owner}/{f}/register"),
                Some(&register),
                true,
            ),
            ("GET", format!("/api/v1/locks/{owner}"), None, false),
            ("GET", format!("/get_lock_status/{owner}"), None, false),
            (
                "POST",
                format!("/api/v1/locks/{owner}/clear"),
                Some("{}"),
                false,
            ),
        ];
        for (method, path, body, grants) in calls {
            // An unconfigured field cannot be acquired or registered by name at all.
            if grants && field == "zz" {
                continue;
            }
            self.counts.requests += 1;
            let t = Instant::now();
            match api_within(port, method, &path, body, DEADLINE) {
                Ok(r) => {
                    let took = t.elapsed();
                    self.counts.slowest_ms = self.counts.slowest_ms.max(took.as_secs_f64() * 1e3);
                    if took > DEADLINE {
                        self.problems
                            .push(format!("{method} {path} answered after {took:?}"));
                    }
                    if r.json_or_null()["error"]["code"] == "unsafe_lock_file" {
                        self.counts.refused_unsafe += 1;
                    }
                    if grants && (200..300).contains(&r.status) {
                        self.problems.push(format!(
                            "{method} {path} granted a lock whose file is a symlink or FIFO: {}",
                            r.text()
                        ));
                        let v = r.json_or_null();
                        if let Some(id) = v["lease_id"].as_str() {
                            let _ = api_within(
                                port,
                                "DELETE",
                                &format!("/api/v1/leases/{id}"),
                                None,
                                DEADLINE,
                            );
                        }
                    }
                }
                Err(e) => self.problems.push(format!(
                    "{method} {path}: no answer within {DEADLINE:?}: {e}"
                )),
            }
        }
        // The command line opens the same files itself (`hold` takes configured fields
        // only).
        let cli_field = if field.is_empty() { "main" } else { field };
        let hold = lockledger(
            &self.service_exe,
            &self.storage,
            &[
                "hold",
                owner,
                cli_field,
                "--wait-ms",
                "200",
                "--for-ms",
                "50",
            ],
        );
        let status = lockledger(
            &self.service_exe,
            &self.storage,
            &["status", owner, "--json"],
        );
        let mut cli = vec![("status", status, false)];
        if field != "zz" {
            cli.push(("hold", hold, true));
        }
        for (what, mut cmd, grants) in cli {
            cmd.env("RUST_LOG", "off");
            group.adopt(&mut cmd);
            self.counts.requests += 1;
            let t = Instant::now();
            match try_run(cmd, CLI_DEADLINE) {
                Ok(out) => {
                    self.counts.slowest_ms =
                        self.counts.slowest_ms.max(t.elapsed().as_secs_f64() * 1e3);
                    if out.stderr.contains("unsafe") || out.stdout.contains("unsafe") {
                        self.counts.refused_unsafe += 1;
                    }
                    if grants && out.stdout.contains("\"held\"") {
                        self.problems.push(format!(
                            "lockledger {what} {owner} {field} held a lock whose file is a \
                             symlink or FIFO: {}",
                            out.stdout.trim()
                        ));
                    }
                }
                Err(e) => self.problems.push(format!(
                    "lockledger {what} {owner}: no answer within {CLI_DEADLINE:?}: {e}"
                )),
            }
        }
    }

    /// After the run: every planted owner's status still answers within the deadline.
    pub fn final_look(&mut self, port: u16) {
        for owner in self.planted_owners.clone() {
            self.counts.requests += 1;
            if let Err(e) = api_within(
                port,
                "GET",
                &format!("/api/v1/locks/{owner}"),
                None,
                DEADLINE,
            ) {
                self.problems.push(format!(
                    "GET /api/v1/locks/{owner} after the run: no answer within {DEADLINE:?}: {e}"
                ));
            }
        }
    }

    /// The symlink target still holds exactly what it held, and nothing exists at any
    /// dangling target (each failure is also a problem).
    pub fn targets_intact(&mut self) -> bool {
        let mut ok = true;
        match std::fs::read(&self.precious) {
            Ok(b) if b == PRECIOUS => {}
            Ok(b) => {
                ok = false;
                self.problems.push(format!(
                    "the symlink target {} changed: {} bytes now, {} before",
                    self.precious.display(),
                    b.len(),
                    PRECIOUS.len()
                ));
            }
            Err(e) => {
                ok = false;
                self.problems
                    .push(format!("the symlink target is gone: {e}"));
            }
        }
        for t in &self.dangling {
            if std::fs::symlink_metadata(t).is_ok() {
                ok = false;
                self.problems.push(format!(
                    "something was created at the dangling symlink target {}",
                    t.display()
                ));
            }
        }
        ok
    }

    /// `hostile: deleted=N replaced=N symlinks=N fifos=N clock_steps=N targets_intact=yes`
    pub fn line(&self, intact: bool) -> String {
        let c = &self.counts;
        format!(
            "hostile: deleted={} replaced={} symlinks={} fifos={} clock_steps={} targets_intact={}",
            c.deleted,
            c.replaced,
            c.symlinks,
            c.fifos,
            c.clock_steps,
            if intact { "yes" } else { "no" }
        )
    }

    /// The details behind [`Hostile::line`].
    pub fn detail_line(&self, file_replaced_events: u64) -> String {
        let c = &self.counts;
        format!(
            "hostile: deleted_while_held={} recreated_at_once={} replaced_while_held={} \
             file_replaced_events={} requests_to_planted_paths={} refused_unsafe={} \
             slowest_answer_ms={:.0} problems={} clock={}",
            c.deleted_held,
            c.recreated,
            c.replaced_held,
            file_replaced_events,
            c.requests,
            c.refused_unsafe,
            c.slowest_ms,
            self.problems.len(),
            match (&self.clock, &self.clock_note) {
                (Some(k), _) => format!(
                    "libfaketime ({}), offset now {:+} s",
                    k.lib.display(),
                    k.offset_s
                ),
                (None, Some(why)) => format!(
                    "not stepped: {why}; lease expiry across wall-clock steps is covered by the \
                     unit tests with an injected clock"
                ),
                (None, None) => "not stepped".into(),
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end-of-run check sees a changed target and a file at a dangling target.
    #[test]
    fn targets_check_catches_writes_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("no-such-binary");
        let mut h = Hostile::new(dir.path(), &exe, false).unwrap();
        assert!(h.clock.is_none() && h.clock_note.is_some());
        assert!(h.targets_intact(), "{:?}", h.problems);
        h.dangling.push(h.outside.join("dangling-x"));
        assert!(h.targets_intact());
        std::fs::write(h.outside.join("dangling-x"), b"").unwrap();
        assert!(!h.targets_intact());
        std::fs::remove_file(h.outside.join("dangling-x")).unwrap();
        h.problems.clear();
        std::fs::write(&h.precious, b"overwritten").unwrap();
        assert!(!h.targets_intact());
        assert!(
            h.line(false).ends_with("targets_intact=no"),
            "{}",
            h.line(false)
        );
        assert_eq!(h.problems.len(), 1, "{:?}", h.problems);
    }
}
