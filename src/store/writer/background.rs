//! The writer's background thread: the [`Tidy`] job submitted through the writer, and
//! checkpoints on a connection of its own.
//!
//! Invariant: it holds the writer only while its job runs (a `Weak` otherwise), so the
//! writer's last handle can go, which closes the nudge channel and ends this thread.

use super::{
    StoreError, Tidy, Watch, Writer, WriterInner, CHECKPOINT_EVERY, TIDY_EVERY, TRUNCATE_WAIT,
    WAL_LIMIT_BYTES,
};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Runs `tidy` through the writer and a passive checkpoint every second or when nudged
/// (the checkpoint every third nudge), a truncating one (waiting at most
/// [`TRUNCATE_WAIT`] for readers) once the WAL has passed [`WAL_LIMIT_BYTES`]; stops when
/// the writer is gone, or the database is. Holds the writer only while its job runs, so
/// the writer's last handle can go (which ends this loop).
pub(super) fn run_background(
    path: &Path,
    nudges: mpsc::Receiver<()>,
    watch: Option<Arc<Watch>>,
    writer: std::sync::Weak<WriterInner>,
    tidy: Option<Tidy>,
) {
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("checkpointer: cannot open the database: {e}");
            return;
        }
    };
    let _ = conn.busy_timeout(TRUNCATE_WAIT);
    let mut wal = path.as_os_str().to_os_string();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let gone = || watch.as_ref().is_some_and(|w| w.gone().is_some());
    let per_checkpoint = CHECKPOINT_EVERY / TIDY_EVERY;
    let mut nudged = 0;
    loop {
        let woke = nudges.recv_timeout(Duration::from_secs(1));
        let last = matches!(woke, Err(mpsc::RecvTimeoutError::Disconnected));
        if gone() {
            return;
        }
        if let (Some(tidy), Some(inner)) = (tidy, writer.upgrade()) {
            let writer = Writer { inner };
            while let Ok(true) = writer.write(move |c| tidy(c).map_err(StoreError::from_sqlite)) {}
        }
        if woke.is_ok() {
            nudged += 1;
            if nudged % per_checkpoint != 0 {
                continue;
            }
        }
        let big = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_LIMIT_BYTES);
        let mode = if big || last { "TRUNCATE" } else { "PASSIVE" };
        if let Err(e) = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(())) {
            log::debug!("checkpointer: {e}");
        }
        if last {
            return;
        }
    }
}
