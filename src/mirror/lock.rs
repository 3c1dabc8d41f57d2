//! One import at a time per mirror, and one state directory per mirror:
//! an exclusive `flock` on `<state-dir>/lock`, then a claim on the served
//! folder itself ([`claim_served`]).
//! This module owns only the lock and the claim; it must never lock a file
//! another user can open (a read-only descriptor is enough to `flock`), never
//! delete the lock file while a run may hold it, and never wait without a
//! bound.
//!
//! Why the state directory: every import of a mirror reads and writes that
//! mirror's state and ledger there, so the state directory already is "the
//! mirror's private folder" (its default name is derived from the mirror's
//! path, see [`super::state::default_state_dir`]); it is mode 0700 and owned
//! by the user running gapferry ([`super::state::StateDir::open`]), and the
//! lock file in it is 0600, so no other local user can open the lock, let
//! alone hold it. The lock is released by the kernel when the process exits,
//! even on SIGKILL, so a lock file left behind is harmless. The holder writes
//! its pid and start time into the file so a waiting process can name it.
//!
//! An operator can still point two state directories at one mirror (a manual
//! run with `--state-dir` beside the inbox service); their lock files do not
//! see each other, and two state directories would keep two separate records
//! of what was accepted. So the served folder (the mirror root, or the
//! `--target` folder) records which state directory owns it, in the extended
//! attribute [`OWNER_XATTR`]: the first run claims it atomically
//! (`XATTR_CREATE`), and a run with another state directory is refused before
//! it touches anything. An extended attribute rather than a file: endpoints
//! read the served tree over HTTP, which never serves attributes, so nothing
//! appears in the tree and nothing about the host leaks; only users who may
//! write the folder can set `user.*` attributes on it. The served folder
//! itself is never locked (it is world-readable: anyone could `flock` it).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{fgetxattr, flock, fsetxattr, FlockOperation, OFlags, XattrFlags};
use rustix::io::Errno;

use super::fsx::fix;
use crate::error::{Classify, ExitKind};

/// File name of the lock inside the state directory.
pub const LOCK_FILE: &str = "lock";
/// Mode of the lock file: nobody else may open it.
pub const LOCK_MODE: u32 = 0o600;
/// Extended attribute of the served folder naming the state directory that
/// owns the mirror (its canonical path).
pub const OWNER_XATTR: &str = "user.gapferry.state-dir";
/// How long an import waits for another one by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
/// Longest state directory path recorded in [`OWNER_XATTR`].
const MAX_OWNER_LEN: usize = 4096;

/// A wait as people read it: whole seconds, or "under a second" (the
/// measured wait is never exactly the requested one).
fn waited_text(waited: Duration) -> String {
    if waited < Duration::from_secs(1) {
        "under a second".into()
    } else {
        humantime::format_duration(Duration::from_secs(waited.as_secs_f64().round() as u64))
            .to_string()
    }
}

/// The lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    #[error("cannot open the lock file {path}: {source}{}", fix(.source))]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot lock {path}: {source}{}", fix(.source))]
    Lock { path: PathBuf, source: io::Error },
    #[error("refusing to use the lock file {path}: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error(
        "another gapferry import is running on this mirror: {path} is locked{} \
         (waited {}); let it finish and run the command again, or wait longer with \
         --lock-wait (e.g. --lock-wait 10m){}",
        holder.as_ref().map(|h| format!(" by {h}")).unwrap_or_default(),
        waited_text(*waited),
        if *legacy {
            ". The lock file was readable by other users (made by an older gapferry), so \
             another local user may be holding it: if no gapferry runs (`pgrep -a gapferry`), \
             remove it and run again (gapferry recreates it with mode 0600)"
        } else {
            ""
        }
    )]
    Held {
        path: PathBuf,
        /// What the holder wrote into the lock file, e.g. "pid 1234 since ...".
        holder: Option<String>,
        waited: Duration,
        /// The lock file had group or other permission bits (an older
        /// gapferry made it 0644).
        legacy: bool,
    },
    #[error(
        "{path} belongs to the state directory {owner} (its extended attribute {}), \
         not to {ours}: give every import and rollback of one mirror the same \
         --state-dir (here --state-dir {owner}); separate state directories keep \
         separate rollback protection and ledgers. If {owner} was moved or retired on \
         purpose, release the mirror with `setfattr -x {} {path}` (package attr) and \
         run again: the next run claims it",
        OWNER_XATTR,
        OWNER_XATTR
    )]
    OtherStateDir {
        path: PathBuf,
        owner: String,
        ours: PathBuf,
    },
    #[error("cannot record the owning state directory on {path}: {source}{}", fix(.source))]
    Claim { path: PathBuf, source: io::Error },
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
    /// The holder's note was written (and is cleared on drop).
    noted: bool,
}

impl ImportLock {
    /// Takes the exclusive lock on `path` (created 0600 if missing), polling
    /// for at most `wait` while another process holds it. The folder must be
    /// private to this user ([`super::state::StateDir::open`] sees to it).
    ///
    /// A lock file with group or other permission bits (an older gapferry
    /// made it 0644) may already be open in another user's process, and a
    /// `chmod` does not take that descriptor away: once locked, it is
    /// replaced by a fresh 0600 file (locked before it is renamed into
    /// place). A waiter that then gets the old file's lock sees that the
    /// path no longer names it and starts over on the new one.
    pub fn acquire(path: &Path, wait: Duration) -> Result<Self, LockError> {
        Self::acquire_with(path, wait, true)
    }

    /// [`acquire`](Self::acquire) without writing the holder's note: the
    /// lock file's content and times are left alone (the export sequence
    /// counter's lock, whose folder a refused export must leave unchanged).
    pub fn acquire_unnoted(path: &Path, wait: Duration) -> Result<Self, LockError> {
        Self::acquire_with(path, wait, false)
    }

    fn acquire_with(path: &Path, wait: Duration, noted: bool) -> Result<Self, LockError> {
        let start = Instant::now();
        loop {
            let mut file = open_lock(path)?;
            let meta = file.metadata().map_err(|source| LockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
            let legacy = meta.mode() & 0o077 != 0;
            match flock_within(&file, wait.saturating_sub(start.elapsed())) {
                Ok(()) => {}
                Err(Wait::Held) => {
                    return Err(LockError::Held {
                        path: path.to_path_buf(),
                        holder: read_holder(&mut file),
                        waited: start.elapsed(),
                        legacy,
                    })
                }
                Err(Wait::Failed(e)) => {
                    return Err(LockError::Lock {
                        path: path.to_path_buf(),
                        source: e.into(),
                    })
                }
            }
            // Replaced while we waited: lock what the path names now.
            match std::fs::symlink_metadata(path) {
                Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(LockError::Open {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
            if legacy {
                file = replace_locked(path)?;
            }
            if noted {
                write_note(&mut file);
            }
            return Ok(ImportLock {
                file,
                path: path.to_path_buf(),
                noted,
            });
        }
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
        if self.noted {
            let _ = self.file.set_len(0);
        }
    }
}

/// Opens (creating, mode 0600 whatever the umask) the lock file, never
/// through a symbolic link, and checks it is a regular file of ours.
fn open_lock(path: &Path) -> Result<File, LockError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(LOCK_MODE)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| LockError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let unsafe_lock = |reason: String| LockError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    if !meta.file_type().is_file() {
        return Err(unsafe_lock(
            "it is not a regular file; remove it and run again".into(),
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_lock(format!(
            "it is owned by uid {}, not by this user (uid {me}); run gapferry as the \
             user that owns the state directory, or remove the file",
            meta.uid()
        )));
    }
    Ok(file)
}

/// Puts a fresh 0600 lock file in place of `path`, whose lock we hold, and
/// returns it locked.
fn replace_locked(path: &Path) -> Result<File, LockError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let werr = |source: io::Error| LockError::Open {
        path: path.to_path_buf(),
        source,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".lock.tmp")
        .permissions(std::fs::Permissions::from_mode(LOCK_MODE))
        .tempfile_in(dir)
        .map_err(werr)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(LOCK_MODE))
        .map_err(werr)?;
    flock(tmp.as_file(), FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        LockError::Lock {
            path: path.to_path_buf(),
            source: e.into(),
        }
    })?;
    crate::durable::persist(tmp, path, crate::durable::Clobber::Replace).map_err(werr)
}

/// Best effort: the note only helps a waiting process name us.
fn write_note(file: &mut File) {
    let note = format!(
        "pid {} since {}\n",
        std::process::id(),
        super::fsx::now_rfc3339()
    );
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(note.as_bytes()));
}

enum Wait {
    /// Still held by another open file after the wait.
    Held,
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
                    return Err(Wait::Held);
                }
                std::thread::sleep(POLL.min(wait - waited));
            }
            Err(e) => return Err(Wait::Failed(e)),
        }
    }
}

/// What [`claim_served`] found on the served folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This run recorded its state directory as the owner.
    Claimed,
    /// The folder already names this run's state directory.
    Owned,
    /// The folder does not exist yet (a first import creates it), its
    /// filesystem has no user extended attributes, or this user may not set
    /// one on it: the state directory's lock alone holds.
    Unchecked,
}

/// Checks, after the state directory's lock is held, that the served folder
/// `dir` (the mirror root, or the `--target` folder) belongs to `state_dir`,
/// recording it as the owner when nothing is recorded yet (atomically: of
/// two runs claiming at once, one wins and the other is refused). Refuses a
/// folder that names another state directory. Nothing is written into the
/// served tree and nothing in it is locked; see the module docs.
pub fn claim_served(dir: &Path, state_dir: &Path) -> Result<Claim, LockError> {
    let Ok(folder) = File::open(dir) else {
        return Ok(Claim::Unchecked);
    };
    let claim_err = |source: io::Error| LockError::Claim {
        path: dir.to_path_buf(),
        source,
    };
    let ours = state_dir.canonicalize().map_err(claim_err)?;
    let ours_bytes = ours.as_os_str().as_bytes();
    for _ in 0..2 {
        match owner_of(&folder) {
            Ok(Some(owner)) if owner == ours_bytes => return Ok(Claim::Owned),
            Ok(Some(owner)) => {
                return Err(LockError::OtherStateDir {
                    path: dir.to_path_buf(),
                    owner: String::from_utf8_lossy(&owner).into_owned(),
                    ours,
                })
            }
            Ok(None) => {}
            Err(e) if unsupported(e) => return Ok(Claim::Unchecked),
            Err(e) => return Err(claim_err(e.into())),
        }
        match fsetxattr(&folder, OWNER_XATTR, ours_bytes, XattrFlags::CREATE) {
            Ok(()) => return Ok(Claim::Claimed),
            // Claimed by another run meanwhile: read who.
            Err(Errno::EXIST) => continue,
            // No user attributes here, or a mirror root this user may not
            // write (it publishes into platform folders it owns below).
            Err(e) if unsupported(e) || e == Errno::ACCESS || e == Errno::PERM => {
                return Ok(Claim::Unchecked)
            }
            Err(e) => return Err(claim_err(e.into())),
        }
    }
    Err(claim_err(io::Error::other(
        "its owner attribute keeps changing",
    )))
}

/// The state directory recorded on `folder`, if any.
fn owner_of(folder: &File) -> Result<Option<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; MAX_OWNER_LEN];
    match fgetxattr(folder, OWNER_XATTR, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(e) if missing(e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn missing(e: Errno) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return e == Errno::NODATA;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return e == Errno::NOATTR;
}

fn unsupported(e: Errno) -> bool {
    e == Errno::NOTSUP || e == Errno::OPNOTSUPP
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
    fn waits_read_in_whole_seconds() {
        assert_eq!(waited_text(Duration::from_nanos(2_566)), "under a second");
        assert_eq!(waited_text(Duration::from_millis(30_004)), "30s");
        assert_eq!(waited_text(Duration::from_millis(1_600)), "2s");
        assert_eq!(waited_text(Duration::from_secs(600)), "10m");
    }

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

    fn legacy_lock(dir: &Path) -> PathBuf {
        let path = dir.join(LOCK_FILE);
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }

    #[test]
    fn a_legacy_lock_is_replaced_so_an_old_descriptor_no_longer_blocks() {
        let t = tempfile::tempdir().unwrap();
        let path = legacy_lock(t.path());
        // Opened while it was 0644, e.g. by another user before an upgrade.
        let old = File::open(&path).unwrap();
        let lock = ImportLock::acquire(&path, Duration::ZERO).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, LOCK_MODE);
        assert_ne!(meta.ino(), old.metadata().unwrap().ino());
        drop(lock);
        flock(&old, FlockOperation::NonBlockingLockExclusive).unwrap();
        ImportLock::acquire(&path, Duration::ZERO).unwrap();
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            1,
            "no temp left"
        );
    }

    #[test]
    fn a_held_legacy_lock_says_who_may_hold_it() {
        let t = tempfile::tempdir().unwrap();
        let path = legacy_lock(t.path());
        let old = File::open(&path).unwrap();
        flock(&old, FlockOperation::NonBlockingLockExclusive).unwrap();
        let err = ImportLock::acquire(&path, Duration::ZERO).unwrap_err();
        assert!(matches!(err, LockError::Held { legacy: true, .. }), "{err}");
        assert!(err.to_string().contains("pgrep -a gapferry"), "{err}");
    }

    #[test]
    fn a_lock_through_a_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        let path = t.path().join(LOCK_FILE);
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = ImportLock::acquire(&path, Duration::ZERO).unwrap_err();
        assert!(matches!(err, LockError::Open { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn the_served_folder_belongs_to_one_state_directory() {
        let t = tempfile::tempdir().unwrap();
        let mirror = t.path().join("mirror");
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for d in [&mirror, &a, &b] {
            std::fs::create_dir(d).unwrap();
        }
        assert_eq!(claim_served(&mirror, &a).unwrap(), Claim::Claimed);
        assert_eq!(claim_served(&mirror, &a).unwrap(), Claim::Owned);
        let err = claim_served(&mirror, &b).unwrap_err();
        assert!(matches!(err, LockError::OtherStateDir { .. }), "{err}");
        let msg = err.to_string();
        for want in [
            mirror.display().to_string(),
            a.canonicalize().unwrap().display().to_string(),
            format!("setfattr -x {OWNER_XATTR}"),
        ] {
            assert!(msg.contains(&want), "{want}: {msg}");
        }
        assert_eq!(err.exit_kind(), ExitKind::Operational);
        assert_eq!(
            claim_served(&t.path().join("not-yet"), &a).unwrap(),
            Claim::Unchecked
        );
        // Nothing was written into the served folder.
        assert_eq!(std::fs::read_dir(&mirror).unwrap().count(), 0);
    }
}
