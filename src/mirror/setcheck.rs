//! Checks an arch folder against the record of what gapferry put there (the
//! size and SHA-256 of each file, kept in `state.json`). Import uses it to
//! decide whether the served set may become n-1, rollback before swapping
//! n-1 back in, status to report damage. Read-only: it never writes, and
//! never follows a symbolic link in place of a recorded file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::state::ServedFile;

/// How thoroughly to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Sizes only (fast; misses a same-size change).
    Sizes,
    /// Sizes and SHA-256.
    Hashes,
}

/// The first recorded file that does not match.
#[derive(Debug)]
pub struct Mismatch {
    pub path: PathBuf,
    pub problem: Problem,
}

/// What is wrong with it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Problem {
    Missing,
    NotAFile,
    Size { recorded: u64, found: u64 },
    Sha256,
    Unreadable(io::Error),
}

impl Mismatch {
    /// The same, naming the file without its folder (for when the folder
    /// has moved since, as after a rollback).
    pub fn by_file_name(&self) -> String {
        let name = self.path.file_name().unwrap_or(self.path.as_os_str());
        describe(Path::new(name), &self.problem)
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(&self.path, &self.problem))
    }
}

fn describe(path: &Path, problem: &Problem) -> String {
    let p = path.display();
    match problem {
        Problem::Missing => format!("{p} is missing"),
        Problem::NotAFile => format!("{p} is not a regular file"),
        Problem::Size { recorded, found } => {
            format!("{p} is {found} bytes, {recorded} were imported")
        }
        Problem::Sha256 => format!("{p} has another SHA-256 than what was imported"),
        Problem::Unreadable(e) => format!("{p} cannot be read: {e}"),
    }
}

/// Where the folders being checked live: on this machine, or in an
/// `s3://` mirror whose folders are named by paths under its shadow root.
#[derive(Debug, Clone, Copy)]
pub enum Tree<'a> {
    Fs,
    S3(&'a super::s3mirror::S3Mirror),
}

impl Tree<'_> {
    /// [`check`] where the folder lives.
    pub fn check(&self, dir: &Path, files: &[ServedFile], depth: Depth) -> Result<(), Mismatch> {
        match self {
            Tree::Fs => check(dir, files, depth),
            Tree::S3(m) => m.check(dir, files, depth),
        }
    }
}

/// Checks every recorded file of `dir`; extra files are not looked at.
pub fn check(dir: &Path, files: &[ServedFile], depth: Depth) -> Result<(), Mismatch> {
    for f in files {
        check_file(&dir.join(&f.name), f, depth)?;
    }
    Ok(())
}

fn check_file(path: &Path, f: &ServedFile, depth: Depth) -> Result<(), Mismatch> {
    let fail = |problem| Mismatch {
        path: path.to_path_buf(),
        problem,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(fail(Problem::Missing)),
        Err(e) => return Err(fail(Problem::Unreadable(e))),
    };
    if !meta.is_file() {
        return Err(fail(Problem::NotAFile));
    }
    if meta.len() != f.size {
        return Err(fail(Problem::Size {
            recorded: f.size,
            found: meta.len(),
        }));
    }
    if depth == Depth::Sizes {
        return Ok(());
    }
    let hashed = std::fs::File::open(path).and_then(|mut file| {
        let mut h = Sha256::new();
        let n = io::copy(&mut file, &mut h)?;
        Ok((n, hex::encode(h.finalize())))
    });
    match hashed {
        Ok((n, _)) if n != f.size => Err(fail(Problem::Size {
            recorded: f.size,
            found: n,
        })),
        Ok((_, sha)) if f.sha256 != sha => Err(fail(Problem::Sha256)),
        Ok(_) => Ok(()),
        Err(e) => Err(fail(Problem::Unreadable(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, bytes: &[u8]) -> ServedFile {
        ServedFile {
            name: name.into(),
            size: bytes.len() as u64,
            sha256: crate::sha256hex::Sha256Hex::of(bytes),
        }
    }

    #[test]
    fn names_the_first_file_that_differs() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"abc").unwrap();
        std::fs::write(t.path().join("b"), b"xyz").unwrap();
        let files = [rec("a", b"abc"), rec("b", b"xyz")];
        check(t.path(), &files, Depth::Hashes).unwrap();
        std::fs::write(t.path().join("b"), b"xyZ").unwrap();
        check(t.path(), &files, Depth::Sizes).unwrap();
        let m = check(t.path(), &files, Depth::Hashes).unwrap_err();
        assert!(matches!(m.problem, Problem::Sha256));
        assert_eq!(
            m.by_file_name(),
            "b has another SHA-256 than what was imported"
        );
        assert!(m
            .to_string()
            .ends_with("/b has another SHA-256 than what was imported"));
        std::fs::write(t.path().join("b"), b"xy").unwrap();
        let m = check(t.path(), &files, Depth::Sizes).unwrap_err();
        assert!(matches!(
            m.problem,
            Problem::Size {
                recorded: 3,
                found: 2
            }
        ));
        std::fs::remove_file(t.path().join("b")).unwrap();
        std::os::unix::fs::symlink(t.path().join("a"), t.path().join("b")).unwrap();
        let m = check(t.path(), &files, Depth::Hashes).unwrap_err();
        assert!(matches!(m.problem, Problem::NotAFile), "{m}");
        std::fs::remove_file(t.path().join("b")).unwrap();
        let m = check(t.path(), &files, Depth::Hashes).unwrap_err();
        assert!(matches!(m.problem, Problem::Missing), "{m}");
    }
}
