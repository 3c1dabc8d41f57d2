//! Folders created with fixed modes whatever the umask, their parents
//! fsynced, and the private-folder check. Never removes or renames anything.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::{sync_dir, DIR_MODE, PRIVATE_DIR_MODE};

/// Creates one folder with mode `mode` (not filtered by the umask). Fails if
/// it exists.
pub fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    DirBuilder::new().mode(mode).create(path)?;
    fs::set_permissions(path, Permissions::from_mode(mode))
}

/// Creates `path` and any missing parents with mode 0755, fsyncing the parent
/// of every folder created. Existing folders keep their modes.
pub fn ensure_dir_all(path: &Path) -> io::Result<()> {
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
pub fn ensure_private_dir(path: &Path) -> io::Result<()> {
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
pub struct NotOurs {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_modes_ignore_the_umask_and_a_file_is_no_folder() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b/c");
        ensure_dir_all(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, DIR_MODE);
        let p = t.path().join("private");
        ensure_private_dir(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, PRIVATE_DIR_MODE);
        fs::set_permissions(&p, Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, PRIVATE_DIR_MODE);
        fs::write(t.path().join("file"), b"").unwrap();
        let e = ensure_dir_all(&t.path().join("file")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    }
}
