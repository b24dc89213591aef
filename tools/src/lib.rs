//! lockledger-tools: what the benchmark (`lockledger-bench`) and the chaos run
//! (`lockledger-chaos`) share. Neither ships with the service; both drive the real
//! `lockledger` binary through `lockledger-harness` and fill databases only through the
//! library's store code.
//!
//! - [`rng`]: the one deterministic PRNG of both;
//! - [`service_binary`]: where the `lockledger` binary they run is.
//!
//! Invariant: nothing here changes the library or the service; the tools observe them.

pub mod rng;

use std::path::PathBuf;

/// The `lockledger` binary the tools run: `LOCKLEDGER_BIN` when set, else the one beside
/// this executable (a workspace builds every binary into the same `target/<profile>/`).
/// With `build`, `cargo build [--release] --locked -p lockledger --bin lockledger` first
/// brings it up to date (a no-op when it is), into the target directory this executable
/// is in; a failed build is a warning, and whatever binary is there is used.
pub fn service_binary(build: bool) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LOCKLEDGER_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("LOCKLEDGER_BIN={} is not a file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe.parent().ok_or("no directory for this executable")?;
    // Integration tests run from target/<profile>/deps.
    let dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    if build {
        build_service(dir);
    }
    let bin = dir.join("lockledger");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: build it with `cargo build --release --locked -p lockledger` \
             (or set LOCKLEDGER_BIN)",
            bin.display()
        ))
    }
}

/// `cargo build` of the service into the target directory that holds `profile_dir`;
/// a failure is a warning (whatever binary is there is used).
fn build_service(profile_dir: &std::path::Path) {
    let Some(target) = profile_dir.parent() else {
        return;
    };
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--locked",
        "-p",
        "lockledger",
        "--bin",
        "lockledger",
    ])
    .arg("--manifest-path")
    .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
    .env("CARGO_TARGET_DIR", target);
    if release {
        cmd.arg("--release");
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        other => eprintln!(
            "warning: could not build the lockledger binary ({other:?}); using what is there"
        ),
    }
}
