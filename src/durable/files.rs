//! Files made durable: created with a fixed mode whatever the umask, written
//! whole through a temp file in the same folder, fsynced, renamed into place
//! (replacing or never replacing), and the folder fsynced after. Never
//! follows a symbolic link it creates through, never leaves a half-written
//! file under the final name.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{parent_of, sync_dir};

/// Whether a rename into place may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clobber {
    /// Replace whatever is there (one `rename`).
    Replace,
    /// Fail with [`io::ErrorKind::AlreadyExists`] if the name is taken:
    /// `renameat2(RENAME_NOREPLACE)` where the filesystem has it, else
    /// `link` + `unlink` (tempfile's `persist_noclobber`), never a check
    /// followed by a rename.
    Refuse,
}

/// Opens `path` for appending, creating it with mode `mode` whatever the
/// umask, never through a symbolic link; an existing file of ours with other
/// permission bits is set to `mode`.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
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

/// Creates a new file (never overwrites, never through a symbolic link)
/// with mode `mode` whatever the umask, open for reading and writing.
pub fn create_new_file(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(file)
}

/// Creates the new file `path` with `bytes` and mode `mode`, fsyncs it and
/// its folder. For files whose name is itself the commit (a journal): a
/// crash leaves no file or a file that may be torn, which its reader treats
/// as absent.
pub fn write_new_synced(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = create_new_file(path, mode)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    sync_dir(parent_of(path))
}

/// Renames a finished temp file (created in the same folder as `to`) into
/// place and fsyncs the folder; the temp file must already be synced.
/// Returns the open file.
pub fn persist(tmp: tempfile::NamedTempFile, to: &Path, clobber: Clobber) -> io::Result<File> {
    let file = match clobber {
        Clobber::Replace => tmp.persist(to),
        Clobber::Refuse => tmp.persist_noclobber(to),
    }
    .map_err(|e| e.error)?;
    sync_dir(parent_of(to))?;
    Ok(file)
}

/// [`persist`] for a temp file that is no longer open.
pub fn persist_path(tmp: tempfile::TempPath, to: &Path, clobber: Clobber) -> io::Result<()> {
    match clobber {
        Clobber::Replace => tmp.persist(to),
        Clobber::Refuse => tmp.persist_noclobber(to),
    }
    .map_err(|e| e.error)?;
    sync_dir(parent_of(to))
}

/// Writes `bytes` to `path` atomically with mode `mode` whatever the umask:
/// a temp file in the same folder (`.<name>.tmp*`), fsync, rename (or
/// refuse to replace, see [`Clobber`]), fsync of the folder. A crash leaves
/// the old or the new content, never a mix; a stray temp file at worst.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, clobber: Clobber) -> io::Result<()> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Created 0600 by tempfile, then set to `mode` before a byte is written.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp"))
        .permissions(Permissions::from_mode(mode & 0o600))
        .tempfile_in(dir)?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    persist(tmp, path, clobber).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn atomic_write_replaces_or_refuses_with_its_mode_and_leaves_no_temp() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("x");
        write_atomic(&f, b"one", 0o644, Clobber::Refuse).unwrap();
        write_atomic(&f, b"two", 0o640, Clobber::Replace).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o640);
        let e = write_atomic(&f, b"three", 0o600, Clobber::Refuse).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&f).unwrap(), b"two", "a refusal changes nothing");
        assert_eq!(
            fs::read_dir(t.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        let e = create_new_file(&f, 0o644).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "never overwrites");
        let j = t.path().join("j");
        write_new_synced(&j, b"{}", 0o600).unwrap();
        assert_eq!(fs::metadata(&j).unwrap().mode() & 0o777, 0o600);
        std::os::unix::fs::symlink(&j, t.path().join("link")).unwrap();
        let a = open_append(&t.path().join("link"), 0o600);
        assert!(a.is_err(), "never through a symbolic link");
    }
}
