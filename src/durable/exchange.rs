//! Folder moves: one atomic exchange of two folders where the filesystem
//! has it (Linux `renameat2(RENAME_EXCHANGE)`, macOS `renamex_np(RENAME_SWAP)`,
//! through rustix), else the two-rename fallback. This module only moves; it
//! must never be the whole protocol: a caller that needs a crash in the
//! fallback window to be recovered journals its intent first (that journal
//! and its recovery live in `mirror::publish`, the only caller of
//! [`swap_in`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::faults::crash_point;

/// A rename or exchange that failed, naming both paths.
#[derive(Debug)]
pub struct MoveError {
    pub from: PathBuf,
    pub to: PathBuf,
    pub source: io::Error,
}

/// How a folder was put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SwapMethod {
    /// There was nothing in place: one rename.
    Rename,
    /// One atomic exchange (`renameat2`/`renamex_np`).
    Exchange,
    /// The two-rename fallback (see [`swap_in`]).
    Fallback,
}

/// One `rename`, its error naming both paths.
pub fn rename(from: &Path, to: &Path) -> Result<(), MoveError> {
    fs::rename(from, to).map_err(|source| MoveError {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })
}

/// Swaps two existing folders in one step. `Ok(false)` when the filesystem
/// or OS cannot exchange (nothing moved; the caller falls back).
pub fn exchange(a: &Path, b: &Path) -> Result<bool, MoveError> {
    #[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        use rustix::io::Errno;
        match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
            Ok(()) => Ok(true),
            Err(e)
                if e == Errno::INVAL
                    || e == Errno::NOSYS
                    || e == Errno::OPNOTSUPP
                    || e == Errno::NOTSUP =>
            {
                Ok(false)
            }
            Err(e) => Err(MoveError {
                from: a.to_path_buf(),
                to: b.to_path_buf(),
                source: e.into(),
            }),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

/// Puts the folder at `from` in place of the existing folder `to`; the old
/// `to` ends at `from` (exchange) or at `aside` (fallback: `to` -> `aside`,
/// then `from` -> `to`, back to back, `to` missing in between). `aside_step`
/// names the crash step between the two renames for the crash tests.
/// `aside` must be a name the caller's recovery knows (in a journaled
/// staging folder), never one a cleanup would take for garbage.
pub fn swap_in(
    from: &Path,
    to: &Path,
    aside: &Path,
    force_fallback: bool,
    aside_step: &str,
) -> Result<SwapMethod, MoveError> {
    if !force_fallback && exchange(from, to)? {
        return Ok(SwapMethod::Exchange);
    }
    // The window: `to` is missing until the second rename. Nothing else runs
    // between the two calls.
    rename(to, aside)?;
    crash_point(aside_step);
    rename(from, to)?;
    Ok(SwapMethod::Fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_in_exchanges_or_falls_back_through_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, aside) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("aside"),
        );
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("f"), "A").unwrap();
        fs::write(b.join("f"), "B").unwrap();
        let m = swap_in(&a, &b, &aside, false, "none").unwrap();
        assert_eq!(fs::read_to_string(b.join("f")).unwrap(), "A");
        if m == SwapMethod::Exchange {
            assert_eq!(fs::read_to_string(a.join("f")).unwrap(), "B");
            fs::rename(&a, &aside).unwrap();
        }
        fs::create_dir(&a).unwrap();
        fs::write(a.join("f"), "C").unwrap();
        fs::remove_dir_all(&aside).unwrap();
        assert_eq!(
            swap_in(&a, &b, &aside, true, "none").unwrap(),
            SwapMethod::Fallback
        );
        assert_eq!(fs::read_to_string(b.join("f")).unwrap(), "C");
        assert_eq!(fs::read_to_string(aside.join("f")).unwrap(), "A");
        assert!(!a.exists());
        let e = rename(&a, &b).unwrap_err();
        assert_eq!((e.from, e.to), (a, b));
    }
}
