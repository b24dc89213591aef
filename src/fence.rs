//! A data file guarded by fencing tokens: the store side of fencing (DESIGN §2).
//!
//! A [`FencedFile`] remembers the newest token it has accepted and refuses a write that
//! carries an older one, so a holder whose lock was revoked (paused, force-cleared, then
//! woken) cannot overwrite what the next holder wrote.
//!
//! Invariants:
//! - The file is `lockledger-fenced v1 <token>\n` followed by the data; it is replaced
//!   atomically (write a temporary file, fsync, rename), so readers see either the old or
//!   the new content, never a mix, and a refused write leaves the old content intact.
//! - Check-and-replace is serialised by a short flock on a sibling `.fence` file (through
//!   the `flock` module), so two writers cannot both pass the check.
//! - A write with a token equal to the newest seen is allowed (the same holder writing
//!   twice); only strictly older tokens are refused. [`FencedFile::admit`] lets a new
//!   holder raise the newest token before it reads, so a revoked holder that read earlier
//!   cannot slip its write in before the new holder's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAGIC: &str = "lockledger-fenced v1 ";

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("write refused: token {given} is older than token {newest} already written to {name}")]
    Stale {
        given: i64,
        newest: i64,
        name: String,
    },
    #[error("{name} is not a fenced file (bad header)")]
    Corrupt { name: String },
    #[error("fenced file {name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] crate::kernel::flock::FlockError),
}

#[derive(Debug, Clone)]
pub struct FencedFile {
    path: PathBuf,
    guard: PathBuf,
}

impl FencedFile {
    pub fn new(path: impl Into<PathBuf>) -> FencedFile {
        let path = path.into();
        let mut guard = path.clone().into_os_string();
        guard.push(".fence");
        FencedFile {
            path,
            guard: PathBuf::from(guard),
        }
    }

    fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn io(&self, source: std::io::Error) -> FenceError {
        FenceError::Io {
            name: self.name(),
            source,
        }
    }

    /// The newest accepted token and the data; `(0, empty)` for a file never written.
    pub fn read(&self) -> Result<(i64, Vec<u8>), FenceError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Vec::new())),
            Err(e) => return Err(self.io(e)),
        };
        parse(&bytes).ok_or_else(|| FenceError::Corrupt { name: self.name() })
    }

    fn serialised(&self) -> Result<crate::kernel::flock::HeldFlock, FenceError> {
        Ok(crate::kernel::flock::acquire_until(
            &self.guard,
            0o600,
            Instant::now() + Duration::from_secs(30),
            &|| false,
        )?)
    }

    /// Starts a read-modify-write under `token`: refuses a token older than the newest
    /// seen, otherwise raises the newest to `token` and returns the data. Once a new
    /// holder has been admitted, every older holder's write is refused, even one that
    /// read before it.
    pub fn admit(&self, token: i64) -> Result<Stamped<Vec<u8>>, FenceError> {
        let _serial = self.serialised()?;
        let (newest, data) = self.read()?;
        self.check(token, newest)?;
        if token > newest {
            self.replace(token, &data)?;
        }
        Ok(Stamped {
            value: data,
            at_ns: monotonic_ns(),
        })
    }

    /// Replaces the data if `token` is not older than the newest token seen.
    pub fn write(&self, token: i64, data: &[u8]) -> Result<Stamped<()>, FenceError> {
        let _serial = self.serialised()?;
        let (newest, _) = self.read()?;
        self.check(token, newest)?;
        self.replace(token, data)?;
        Ok(Stamped {
            value: (),
            at_ns: monotonic_ns(),
        })
    }

    fn check(&self, token: i64, newest: i64) -> Result<(), FenceError> {
        if token < newest {
            return Err(FenceError::Stale {
                given: token,
                newest,
                name: self.name(),
            });
        }
        Ok(())
    }

    fn replace(&self, token: i64, data: &[u8]) -> Result<(), FenceError> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(format!("{MAGIC}{token}\n").as_bytes())?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.io(e)
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A result with the CLOCK_MONOTONIC time (ns, comparable across processes) taken while
/// the file's serialising lock was held, so stamps order exactly as the operations did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped<T> {
    pub value: T,
    pub at_ns: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the host.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn parse(bytes: &[u8]) -> Option<(i64, Vec<u8>)> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..nl]).ok()?;
    let token = header.strip_prefix(MAGIC)?.parse::<i64>().ok()?;
    Some((token, bytes[nl + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_tokens_are_refused_and_leave_the_data_intact() {
        let dir = tempfile::tempdir().unwrap();
        let f = FencedFile::new(dir.path().join("conv42.json"));
        assert_eq!(f.read().unwrap(), (0, Vec::new()));
        f.write(5, b"five").unwrap();
        f.write(5, b"five again").unwrap();
        f.write(7, b"seven").unwrap();
        let err = f.write(6, b"six").unwrap_err();
        assert!(
            matches!(
                err,
                FenceError::Stale {
                    given: 6,
                    newest: 7,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.to_string().contains(dir.path().to_str().unwrap()));
        assert_eq!(f.read().unwrap(), (7, b"seven".to_vec()));
    }

    #[test]
    fn admitting_a_new_holder_fences_out_an_older_reader() {
        let dir = tempfile::tempdir().unwrap();
        let f = FencedFile::new(dir.path().join("counter"));
        f.write(1, b"10").unwrap();
        let old = f.admit(3).unwrap();
        assert_eq!(old.value, b"10");
        let new = f.admit(4).unwrap();
        assert!(new.at_ns > old.at_ns);
        assert!(matches!(
            f.write(3, b"11"),
            Err(FenceError::Stale {
                given: 3,
                newest: 4,
                ..
            })
        ));
        assert!(matches!(f.admit(2), Err(FenceError::Stale { .. })));
        f.write(4, b"11").unwrap();
        assert_eq!(f.read().unwrap(), (4, b"11".to_vec()));
    }

    #[test]
    fn concurrent_writers_never_go_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let f = FencedFile::new(dir.path().join("data"));
        let threads: Vec<_> = (1..=8i64)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let token = t * 100 + i;
                        let _ = f.write(token, token.to_string().as_bytes());
                        let (newest, data) = f.read().unwrap();
                        assert!(newest >= token);
                        assert_eq!(String::from_utf8(data).unwrap(), newest.to_string());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(f.read().unwrap().0, 819);
    }

    #[test]
    fn garbage_is_reported_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"not fenced").unwrap();
        let f = FencedFile::new(&path);
        assert!(matches!(f.read(), Err(FenceError::Corrupt { .. })));
        assert!(f.write(1, b"x").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"not fenced");
    }
}
