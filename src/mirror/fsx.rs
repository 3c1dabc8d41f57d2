//! Small filesystem helpers shared by the mirror modules: folders created
//! with fixed modes whatever the umask, fsync of files and folders, atomic
//! small-file replacement, and the "what to do about it" hint every I/O error
//! message ends with. Nothing here decides policy or layout.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every folder an endpoint or HTTP server must read.
pub(crate) const DIR_MODE: u32 = 0o755;
/// Mode of every file an endpoint or HTTP server must read.
pub(crate) const FILE_MODE: u32 = 0o644;
/// Mode of the state directory: only its owner may enter it.
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file in the state directory (state, ledger, receipts, lock).
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;

/// The fix an operator can apply for a raw I/O error, appended to messages.
pub(crate) fn fix(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() => {
            " (the filesystem is full: free space, then run the command again)"
        }
        Some(code) if code == rustix::io::Errno::DQUOT.raw_os_error() => {
            " (disk quota exceeded: raise the quota or free space, then run again)"
        }
        Some(code) if code == rustix::io::Errno::ROFS.raw_os_error() => {
            " (the filesystem is read-only: remount it read-write)"
        }
        _ => match e.kind() {
            io::ErrorKind::PermissionDenied => {
                " (permission denied: run as the user that owns this folder, or fix its permissions)"
            }
            _ => "",
        },
    }
}

/// Opens a folder and fsyncs it, so that entries created, renamed or removed
/// in it survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates one folder with mode `mode` (not filtered by the umask). Fails if
/// it exists.
pub(crate) fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    DirBuilder::new().mode(mode).create(path)?;
    fs::set_permissions(path, Permissions::from_mode(mode))
}

/// Creates `path` and any missing parents with mode 0755, fsyncing the parent
/// of every folder created. Existing folders keep their modes.
pub(crate) fn ensure_dir_all(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        // A symlink to a folder is the operator's choice for the upper levels.
        Ok(m) if m.file_type().is_symlink() && path.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a folder",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_dir_all(parent)?;
    }
    match create_dir(path, DIR_MODE) {
        Ok(()) => {}
        // Someone else (an admin, a concurrent mkdir) made it meanwhile.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Creates `path` (its missing parents 0755) with mode 0700 if missing; an
/// existing folder must belong to this user, and loses any group or other
/// permission bits (a state directory made 0755 by an older gapferry).
/// Refuses a folder owned by another user: whoever owns it could replace
/// the files in it, and its lock would not be ours.
pub(crate) fn ensure_private_dir(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path).is_err() {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            ensure_dir_all(parent)?;
        }
        match create_dir(path, PRIVATE_DIR_MODE) {
            Ok(()) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    sync_dir(parent)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    // A symlink to a folder is the operator's choice; what it names counts.
    let meta = fs::metadata(path)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a folder",
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            NotOurs {
                owner: meta.uid(),
                me,
            },
        ));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(path, Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

/// A private folder owned by another user (the payload of the
/// [`ensure_private_dir`] error).
#[derive(Debug)]
pub(crate) struct NotOurs {
    pub owner: u32,
    pub me: u32,
}

impl std::fmt::Display for NotOurs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "it is owned by uid {}, not by this user (uid {}), and must be private to the \
             user running gapferry: run gapferry as uid {} (e.g. sudo -u '#{}' gapferry ...), \
             or give a state directory of your own",
            self.owner, self.me, self.owner, self.owner
        )
    }
}

impl std::error::Error for NotOurs {}

/// Opens `path` for appending, creating it with mode `mode` whatever the
/// umask, never through a symbolic link; an existing file of ours with other
/// permission bits is set to `mode`.
pub(crate) fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.mode() & 0o7777 != mode && meta.uid() == rustix::process::geteuid().as_raw() {
        file.set_permissions(Permissions::from_mode(mode))?;
    }
    Ok(file)
}

/// Creates a new file (never overwrites) with mode `mode` whatever the umask.
pub(crate) fn create_new_file(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(file)
}

/// Replaces `path` with `bytes` atomically: a temp file in the same folder,
/// fsync, rename, fsync of the folder. A crash leaves the old or the new
/// content, never a mix; a stray temp file (`.<name>.tmp*`) at worst.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp"))
        .tempfile_in(dir)?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// The current time as RFC 3339 UTC with seconds, e.g. `2024-05-01T12:00:00Z`.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_ignore_umask_and_atomic_write_replaces() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b/c");
        ensure_dir_all(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, DIR_MODE);
        let f = d.join("x");
        write_atomic(&f, b"one", FILE_MODE).unwrap();
        write_atomic(&f, b"two", FILE_MODE).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, FILE_MODE);
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "no temp file left");
        assert!(create_new_file(&f, FILE_MODE).is_err(), "never overwrites");
        fs::write(t.path().join("file"), b"").unwrap();
        assert!(ensure_dir_all(&t.path().join("file")).is_err());
    }
}
