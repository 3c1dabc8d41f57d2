//! Durable writes through an opened folder, for folders other users may
//! write (the inbox): the temp file is created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` relative to the folder's descriptor, its mode
//! set on the file's descriptor, and the rename never replaces anything.
//! Nothing here takes a path string, so nothing checks a name and then uses
//! it again; it must never follow a symbolic link.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;

use rustix::fs::{Mode, OFlags, RenameFlags};

/// A failed step, naming the entry (in the folder) it failed on.
#[derive(Debug)]
pub struct AtError {
    /// The temp file's or the final file's name in the folder.
    pub name: String,
    pub source: io::Error,
}

fn at(name: &str) -> impl FnOnce(rustix::io::Errno) -> AtError + '_ {
    move |e| AtError {
        name: name.to_string(),
        source: e.into(),
    }
}

/// Writes `bytes` to the new file `name` in the folder `dir` with mode
/// `mode` whatever the umask: a hidden temp file `.<name>.tmp<pid>-<n>`,
/// fsync, `renameat2(RENAME_NOREPLACE)`. Fails if `name` exists, leaving
/// the temp file (never removed by name: another user may have replaced
/// it). The caller fsyncs the folder (once for several entries).
pub fn write_new_at(dir: impl AsFd, name: &str, bytes: &[u8], mode: u32) -> Result<(), AtError> {
    let dir = dir.as_fd();
    let mut tmp = None;
    for i in 0..100u32 {
        let t = format!(".{name}.tmp{}-{i}", std::process::id());
        match rustix::fs::openat(
            dir,
            t.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        ) {
            Ok(fd) => {
                tmp = Some((t, fd));
                break;
            }
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(at(&t)(e)),
        }
    }
    let Some((t, fd)) = tmp else {
        return Err(AtError {
            name: name.to_string(),
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "no free temporary name beside it; remove the .*.tmp* files there",
            ),
        });
    };
    // On the descriptor: the name may not be ours by the time a path is used.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(at(&t))?;
    let mut file = File::from(fd);
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| AtError {
            name: t.clone(),
            source,
        })?;
    rustix::fs::renameat_with(dir, t.as_str(), dir, name, RenameFlags::NOREPLACE).map_err(at(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_a_new_file_with_its_mode_and_never_replaces() {
        let t = tempfile::tempdir().unwrap();
        let dir = File::open(t.path()).unwrap();
        write_new_at(&dir, "r.txt", b"why", 0o644).unwrap();
        let p = t.path().join("r.txt");
        assert_eq!(std::fs::read(&p).unwrap(), b"why");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
        let e = write_new_at(&dir, "r.txt", b"other", 0o644).unwrap_err();
        assert_eq!(e.name, "r.txt");
        assert_eq!(e.source.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"why");
        // The temp file stays: in a folder others may write, the name may
        // no longer be ours, so it is never removed by name.
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 2);
    }
}
