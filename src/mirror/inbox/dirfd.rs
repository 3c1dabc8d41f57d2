//! The inbox folder as an opened directory: every operation the inbox job
//! does on a name in it (list, stat, open, make a subfolder, rename, create
//! a reason file) goes through the directory's descriptor, never through a
//! path string, and never follows a symbolic link. Other users may write the
//! inbox (a diode receiver account, a transfer share): a path checked is not
//! the path used, so nothing here checks a path and then uses it again.
//!
//! It never deletes anything and never changes a file it did not create.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat};

/// Mode of `processed/` and `rejected/`, whatever the umask.
pub const SUBDIR_MODE: u32 = 0o755;
/// Mode of reason files, whatever the umask.
pub const REASON_MODE: u32 = 0o644;

/// What stops the inbox from using one name in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// A symbolic link where a file or folder should be: never followed.
    #[error("{path}: is a symbolic link; the inbox never follows links (remove it, and deliver the file itself)")]
    Symlink { path: PathBuf },
    /// A FIFO, socket, device or folder where a bundle file should be.
    #[error("{path}: is a {kind}, not a regular file; remove it, and deliver the bundle as a plain file")]
    NotRegular { path: PathBuf, kind: &'static str },
    /// Something other than a folder where `processed/` or `rejected/` should be.
    #[error("{path}: is a {kind}, not a folder; remove or rename it so the inbox can create the folder (bundles stay in the inbox until then)")]
    NotFolder { path: PathBuf, kind: &'static str },
    /// `processed/` or `rejected/` belongs to another user, who could swap
    /// what the importer writes there.
    #[error("{path}: belongs to uid {owner}, not to the importer (uid {me}) or root; another user could replace what is moved there: remove or rename it, or `chown {me} {path}` (bundles stay in the inbox until then)")]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    /// Root owns it but others can write it, and the importer (not root)
    /// cannot fix the mode.
    #[error("{path}: group or others can write it (mode {mode:o}); `chmod 755 {path}` (bundles stay in the inbox until then)")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn kind(st: &Stat) -> &'static str {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => "regular file",
        FileType::Directory => "folder",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO (named pipe)",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "special file",
    }
}

/// An opened folder and the path it was opened as (for messages only).
#[derive(Debug)]
pub struct DirFd {
    fd: OwnedFd,
    path: PathBuf,
}

/// A regular file opened in the inbox, with what `fstat` said of it.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub size: u64,
    pub mtime: std::time::SystemTime,
    /// Device and inode: the file, whatever name it goes by later.
    pub id: (u64, u64),
}

impl DirFd {
    /// Opens the inbox folder itself. The operator names it, so a symbolic
    /// link naming it is followed; nothing below it ever is.
    pub fn open(path: &Path) -> Result<DirFd, EntryError> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| EntryError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(DirFd {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// `path/name`, for messages.
    pub fn display(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn io(&self, name: &str) -> impl FnOnce(rustix::io::Errno) -> EntryError {
        let path = self.display(name);
        move |e| EntryError::Io {
            path,
            source: e.into(),
        }
    }

    /// The names in the folder (not `.` and `..`), as UTF-8; other names are
    /// skipped (no bundle name is anything else).
    pub fn names(&self) -> Result<Vec<String>, EntryError> {
        let mut dir = rustix::fs::Dir::read_from(&self.fd).map_err(self.io("."))?;
        let mut out = Vec::new();
        while let Some(e) = dir.read() {
            let e = e.map_err(self.io("."))?;
            let n = e.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            if let Ok(s) = std::str::from_utf8(n) {
                out.push(s.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// `lstat` of a name: what is there, links not followed.
    pub fn stat(&self, name: &str) -> Result<Stat, EntryError> {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(self.io(name))
    }

    /// Opens a name for reading only if it is a regular file: never through
    /// a link (`O_NOFOLLOW`), and without blocking on a FIFO or a device
    /// swapped in for it (`O_NONBLOCK`, then `fstat` on the descriptor).
    pub fn open_regular(&self, name: &str) -> Result<Opened, EntryError> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            if e == rustix::io::Errno::LOOP {
                EntryError::Symlink {
                    path: self.display(name),
                }
            } else {
                self.io(name)(e)
            }
        })?;
        let st = rustix::fs::fstat(&fd).map_err(self.io(name))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(EntryError::NotRegular {
                path: self.display(name),
                kind: kind(&st),
            });
        }
        // A regular file never blocks; reads go back to the ordinary mode.
        rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(self.io(name))?;
        let mtime = std::time::UNIX_EPOCH
            + std::time::Duration::new(
                u64::try_from(st.st_mtime).unwrap_or(0),
                u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            );
        Ok(Opened {
            file: File::from(fd),
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime,
            id: (st.st_dev, st.st_ino),
        })
    }

    /// Opens subfolder `name`, creating it with [`SUBDIR_MODE`] if missing.
    /// Refuses anything but a real folder (a link to one included) owned by
    /// the importer or by root; fixes the mode of one the importer owns.
    pub fn subdir(&self, name: &str) -> Result<DirFd, EntryError> {
        let path = self.display(name);
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(SUBDIR_MODE)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(self.io(name)(e)),
        }
        let st = self.stat(name)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Err(EntryError::Symlink { path });
        }
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => EntryError::Symlink { path: path.clone() },
            rustix::io::Errno::NOTDIR => EntryError::NotFolder {
                path: path.clone(),
                kind: kind(&st),
            },
            e => EntryError::Io {
                path: path.clone(),
                source: e.into(),
            },
        })?;
        // What counts is what was opened, not what the name showed before.
        let st = rustix::fs::fstat(&fd).map_err(self.io(name))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(EntryError::NotFolder {
                path,
                kind: kind(&st),
            });
        }
        let me = rustix::process::geteuid().as_raw();
        let mode = st.st_mode & 0o7777;
        if st.st_uid == me {
            if mode != SUBDIR_MODE {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(SUBDIR_MODE)).map_err(self.io(name))?;
            }
        } else if st.st_uid == 0 {
            if mode & 0o022 != 0 {
                return Err(EntryError::Writable { path, mode });
            }
        } else {
            return Err(EntryError::ForeignOwner {
                path,
                owner: st.st_uid,
                me,
            });
        }
        Ok(DirFd { fd, path })
    }

    /// Renames `name` here to `to` in `dest`, never replacing anything there
    /// (`RENAME_NOREPLACE`). Links are moved as links, never followed.
    pub fn rename_into(&self, name: &str, dest: &DirFd, to: &str) -> Result<(), EntryError> {
        rustix::fs::renameat_with(&self.fd, name, &dest.fd, to, RenameFlags::NOREPLACE).map_err(
            |e| EntryError::Io {
                path: self.display(name),
                source: io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot move it to {}: {e}", dest.display(to).display()),
                ),
            },
        )
    }

    /// Whether `name` exists here (as anything, a dangling link included).
    pub fn exists(&self, name: &str) -> bool {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Writes `bytes` to a new file `name` atomically: a hidden temp file
    /// created in this folder with `O_CREAT|O_EXCL|O_NOFOLLOW`, its mode set
    /// on the descriptor, fsynced, then renamed without replacing anything
    /// ([`crate::durable::write_new_at`]).
    pub fn write_new(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), EntryError> {
        crate::durable::write_new_at(&self.fd, name, bytes, mode).map_err(|e| EntryError::Io {
            path: self.display(&e.name),
            source: e.source,
        })
    }

    /// fsync of the folder, so renames into or out of it survive a power loss.
    pub fn sync(&self) -> Result<(), EntryError> {
        rustix::fs::fsync(&self.fd).map_err(self.io("."))
    }
}

/// The files of a split bundle in the inbox, opened through the folder
/// ([`DirFd::open_regular`]): the import reads exactly what the scan looked
/// at the names of, never through a link, never blocking on a FIFO.
#[derive(Debug, Clone)]
pub struct InboxFiles(pub std::sync::Arc<DirFd>);

impl InboxFiles {
    fn name_of<'a>(&self, path: &'a Path) -> io::Result<&'a str> {
        match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
            (Some(parent), Some(name)) if parent == self.0.path => Ok(name),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not in the inbox {}", self.0.path.display()),
            )),
        }
    }
}

impl From<EntryError> for io::Error {
    fn from(e: EntryError) -> io::Error {
        match e {
            EntryError::Io { source, .. } => source,
            other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
        }
    }
}

impl crate::bundle::volumes::SplitFiles for InboxFiles {
    fn open(&self, path: &Path) -> io::Result<File> {
        Ok(self.0.open_regular(self.name_of(path)?)?.file)
    }

    fn names(&self, dir: &Path) -> io::Result<Vec<String>> {
        if dir != self.0.path {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not the inbox", dir.display()),
            ));
        }
        Ok(self.0.names()?)
    }

    fn exists(&self, path: &Path) -> bool {
        self.name_of(path).is_ok_and(|n| self.0.exists(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn links_fifos_and_files_in_the_wrong_place_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = DirFd::open(t.path()).unwrap();
        std::fs::write(t.path().join("target"), b"secret").unwrap();
        std::os::unix::fs::symlink(t.path().join("target"), t.path().join("l.tar.zst")).unwrap();
        assert!(matches!(
            d.open_regular("l.tar.zst"),
            Err(EntryError::Symlink { .. })
        ));
        let st = std::process::Command::new("mkfifo")
            .arg(t.path().join("f.tar.zst"))
            .status()
            .unwrap();
        assert!(st.success());
        assert!(matches!(
            d.open_regular("f.tar.zst"),
            Err(EntryError::NotRegular { kind, .. }) if kind.starts_with("FIFO")
        ));
        std::fs::write(t.path().join("processed"), b"").unwrap();
        assert!(matches!(
            d.subdir("processed"),
            Err(EntryError::NotFolder { .. })
        ));
        std::fs::create_dir(t.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(t.path().join("elsewhere"), t.path().join("rejected")).unwrap();
        assert!(matches!(
            d.subdir("rejected"),
            Err(EntryError::Symlink { .. })
        ));
        // A folder the importer owns gets its mode fixed.
        std::fs::create_dir(t.path().join("ok")).unwrap();
        std::fs::set_permissions(t.path().join("ok"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let ok = d.subdir("ok").unwrap();
        assert_eq!(
            std::fs::metadata(t.path().join("ok")).unwrap().mode() & 0o7777,
            SUBDIR_MODE
        );
        ok.write_new("r.json", b"{}", REASON_MODE).unwrap();
        assert!(ok.write_new("r.json", b"{}", REASON_MODE).is_err());
        assert_eq!(
            std::fs::metadata(t.path().join("ok/r.json"))
                .unwrap()
                .mode()
                & 0o777,
            REASON_MODE
        );
    }
}
