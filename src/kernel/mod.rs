//! What the kernel says and does about locks and processes: the only code that calls
//! `flock`, reads `/proc/locks` or asks whether a process is alive.
//!
//! - [`flock`]: opening lock files and taking, probing and releasing kernel locks;
//! - [`proc_locks`]: the `/proc/locks` table (who holds a file's lock);
//! - [`process`]: process identity (pid + start time), liveness, labels;
//! - [`view`]: one look at which lock files are held (the table when cheap, else probes).

pub mod flock;
pub mod proc_locks;
pub mod process;
pub mod view;
