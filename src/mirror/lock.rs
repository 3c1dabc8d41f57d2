//! One import at a time per mirror: an exclusive `flock` on `<state-dir>/lock`,
//! then one on the served folder itself ([`lock_served`]).
//! This module owns only the lock; it must never delete the lock file (a
//! deleted-and-recreated lock file lets two processes hold "the" lock at
//! once) and never wait without a bound.
//!
//! Why the state directory: every import of a mirror reads and writes that
//! mirror's state and ledger there, so the state directory already is "the
//! mirror's private folder" (its default name is derived from the mirror's
//! path, see [`super::state::default_state_dir`]); the served tree stays free
//! of non-Defender files; and a read-only or NFS-exported mirror still
//! works. The lock is released by the kernel when the process exits, even on
//! SIGKILL, so a lock file left behind is harmless. The holder writes its pid
//! and start time into the file so a waiting process can name it.
//!
//! An operator can still give one mirror two state directories (a manual run
//! with `--state-dir` beside the inbox service); their lock files do not see
//! each other, so the holder of a state directory's lock then also locks the
//! served folder itself ([`lock_served`]: a `flock` on the folder, nothing
//! written into the served tree).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use super::fsx::fix;
use crate::error::{Classify, ExitKind};

/// File name of the lock inside the state directory.
pub const LOCK_FILE: &str = "lock";
/// How long an import waits for another one by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// The lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    #[error("cannot open the lock file {path}: {source}{}", fix(.source))]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot lock {path}: {source}{}", fix(.source))]
    Lock { path: PathBuf, source: io::Error },
    #[error(
        "another gapferry import is running on this mirror: {path} is locked{} \
         (waited {}); let it finish and run the command again, or wait longer",
        holder.as_ref().map(|h| format!(" by {h}")).unwrap_or_default(),
        humantime::format_duration(*waited)
    )]
    Held {
        path: PathBuf,
        /// What the holder wrote into the lock file, e.g. "pid 1234 since ...".
        holder: Option<String>,
        waited: Duration,
    },
    #[error(
        "another gapferry import or rollback is working on {path} with another state \
         directory (waited {}); let it finish and run the command again. Give every \
         import and rollback of one mirror the same --state-dir (or none): separate \
         state directories keep separate rollback protection and ledgers",
        humantime::format_duration(*waited)
    )]
    ServedHeld { path: PathBuf, waited: Duration },
}

impl Classify for LockError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Operational
    }
}

/// The held import lock; dropping it releases the lock.
#[derive(Debug)]
pub struct ImportLock {
    file: File,
    path: PathBuf,
}

impl ImportLock {
    /// Takes the exclusive lock on `path` (created if missing), polling for
    /// at most `wait` while another process holds it.
    pub fn acquire(path: &Path, wait: Duration) -> Result<Self, LockError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|source| LockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        match flock_within(&file, wait) {
            Ok(()) => {}
            Err(Wait::Held(waited)) => {
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder: read_holder(&mut file),
                    waited,
                })
            }
            Err(Wait::Failed(e)) => {
                return Err(LockError::Lock {
                    path: path.to_path_buf(),
                    source: e.into(),
                })
            }
        }
        // Best effort: the note only helps a waiting process name us.
        let note = format!(
            "pid {} since {}\n",
            std::process::id(),
            super::fsx::now_rfc3339()
        );
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(note.as_bytes()));
        Ok(ImportLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ImportLock {
    fn drop(&mut self) {
        // Clear the note so a later waiter does not name a finished process;
        // closing the file releases the lock.
        let _ = self.file.set_len(0);
    }
}

enum Wait {
    /// Still held by another open file after waiting this long.
    Held(Duration),
    Failed(Errno),
}

/// Takes an exclusive `flock` on `file`, polling for at most `wait`.
fn flock_within(file: &File, wait: Duration) -> Result<(), Wait> {
    let start = Instant::now();
    loop {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(Errno::WOULDBLOCK) => {
                let waited = start.elapsed();
                if waited >= wait {
                    return Err(Wait::Held(waited));
                }
                std::thread::sleep(POLL.min(wait - waited));
            }
            Err(e) => return Err(Wait::Failed(e)),
        }
    }
}

/// The second lock of an import or rollback, on the served folder itself;
/// see [`lock_served`]. Dropping it releases the lock.
#[derive(Debug)]
pub struct ServedLock {
    _dir: Option<File>,
}

/// Takes an exclusive `flock` on the served folder (the mirror root, or the
/// `--target` folder) itself, after the state directory's lock, waiting at
/// most `wait`. The state directory's lock serialises every run that shares
/// it; this one also serialises runs on one mirror that were given
/// *different* state directories, which would otherwise publish into the
/// same folders at once. It creates nothing in the served tree. Where it
/// cannot apply, the state directory's lock alone holds: a folder that does
/// not exist yet (a first import creates it) or cannot be opened, and a
/// filesystem without `flock` on folders (some NFS setups).
pub fn lock_served(dir: &Path, wait: Duration) -> Result<ServedLock, LockError> {
    let Ok(file) = File::open(dir) else {
        return Ok(ServedLock { _dir: None });
    };
    match flock_within(&file, wait) {
        Ok(()) => Ok(ServedLock { _dir: Some(file) }),
        Err(Wait::Held(waited)) => Err(LockError::ServedHeld {
            path: dir.to_path_buf(),
            waited,
        }),
        Err(Wait::Failed(_)) => Ok(ServedLock { _dir: None }),
    }
}

fn read_holder(file: &mut File) -> Option<String> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.take(512).read_to_string(&mut s).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_file_description_waits_then_fails_naming_holder() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(LOCK_FILE);
        let first = ImportLock::acquire(&path, Duration::ZERO).unwrap();
        let start = Instant::now();
        let err = ImportLock::acquire(&path, Duration::from_millis(300)).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(300));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert_eq!(err.exit_kind(), ExitKind::Operational);
        drop(first);
        let again = ImportLock::acquire(&path, Duration::ZERO).unwrap();
        assert_eq!(again.path(), path);
        assert!(path.exists(), "the lock file is never deleted");
    }

    #[test]
    fn waiter_gets_the_lock_when_released_in_time() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(LOCK_FILE);
        let first = ImportLock::acquire(&path, Duration::ZERO).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        ImportLock::acquire(&path, Duration::from_secs(10)).unwrap();
        releaser.join().unwrap();
    }

    #[test]
    fn unopenable_lock_names_path() {
        let err =
            ImportLock::acquire(Path::new("/nonexistent/dir/lock"), Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dir/lock"));
    }
}
