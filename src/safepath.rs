//! The relative-path newtype for every path that comes from a bundle.
//!
//! A [`SafePath`] can only hold a path that stays inside any root it is
//! joined to, on Linux, macOS and Windows alike: forward-slash separated,
//! components of `[A-Za-z0-9._-]` only (so no NUL, backslash, colon, drive
//! letter or Unicode look-alike), no empty, `.` or `..` component, no
//! trailing dot, no Windows device names, bounded length and depth. The
//! allow-list is deliberately narrow: the Defender layout needs nothing more,
//! and every character admitted is one more thing to reason about.

use std::fmt;
use std::path::{Path, PathBuf};

/// Longest accepted path in bytes (fits a ustar name + prefix).
pub const MAX_PATH_LEN: usize = 200;
/// Longest accepted component in bytes.
pub const MAX_COMPONENT_LEN: usize = 100;
/// Deepest accepted path.
pub const MAX_DEPTH: usize = 16;

/// Windows' reserved device names (Microsoft's "Naming Files, Paths, and
/// Namespaces" lists COM0 and LPT0 too). Superscript variants (COM¹) and
/// `CLOCK$` need characters outside the allow-list, so they cannot occur.
const WINDOWS_DEVICES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM0", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7",
    "COM8", "COM9", "LPT0", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    "CONIN$", "CONOUT$",
];

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsafe path {shown}: {reason}")]
pub struct PathError {
    /// The offending path, escaped for display.
    pub shown: String,
    pub reason: &'static str,
}

/// A relative path that is safe to join to a root.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SafePath(String);

impl fmt::Debug for SafePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafePath({:?})", self.0)
    }
}

impl fmt::Display for SafePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl SafePath {
    /// Checks raw bytes (as found in a tar header or JSON string).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, PathError> {
        let fail = |reason| PathError {
            shown: raw.escape_ascii().to_string().chars().take(120).collect(),
            reason,
        };
        if raw.is_empty() {
            return Err(fail("empty path"));
        }
        if raw.len() > MAX_PATH_LEN {
            return Err(fail("longer than 200 bytes"));
        }
        if raw.contains(&0) {
            return Err(fail("contains a NUL byte"));
        }
        if raw.contains(&b'\\') {
            return Err(fail("contains a backslash"));
        }
        if raw[0] == b'/' {
            return Err(fail("absolute path"));
        }
        if raw.len() >= 2 && raw[1] == b':' {
            return Err(fail("drive letter"));
        }
        let text = std::str::from_utf8(raw).map_err(|_| fail("not UTF-8"))?;
        let mut depth = 0;
        for comp in text.split('/') {
            depth += 1;
            match comp {
                "" => return Err(fail("empty component (// or trailing /)")),
                "." => return Err(fail("'.' component")),
                ".." => return Err(fail("'..' component")),
                _ => {}
            }
            if comp.len() > MAX_COMPONENT_LEN {
                return Err(fail("component longer than 100 bytes"));
            }
            if !comp
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(fail("character outside [A-Za-z0-9._-]"));
            }
            if comp.ends_with('.') {
                return Err(fail("component ends with a dot"));
            }
            let stem = comp.split('.').next().unwrap_or(comp);
            if WINDOWS_DEVICES.iter().any(|d| d.eq_ignore_ascii_case(stem)) {
                return Err(fail("Windows device name"));
            }
        }
        if depth > MAX_DEPTH {
            return Err(fail("more than 16 components"));
        }
        Ok(SafePath(text.to_string()))
    }

    /// Checks a string.
    pub fn new(s: &str) -> Result<Self, PathError> {
        Self::from_bytes(s.as_bytes())
    }

    /// The path with forward slashes.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Joins to `root`, checking again that the result stays below it.
    pub fn join_to(&self, root: &Path) -> PathBuf {
        let mut out = root.to_path_buf();
        for c in self.components() {
            out.push(c);
        }
        debug_assert!(out.starts_with(root));
        assert_eq!(
            out.components().count(),
            root.components().count() + self.components().count(),
            "a checked path escaped its root"
        );
        out
    }

    /// The case-folded form used to detect collisions on case-insensitive
    /// filesystems (ASCII only, since nothing else is admitted).
    pub fn folded(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl<'de> serde::Deserialize<'de> for SafePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SafePath::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Checks a set of paths for names equal ignoring case and for a file that
/// is also another file's directory (`a` and `a/b`). Returns the first clash.
pub fn check_set<'a>(paths: impl IntoIterator<Item = &'a SafePath>) -> Result<(), PathError> {
    use std::collections::HashSet;
    let mut files = HashSet::new();
    let mut dirs = HashSet::new();
    let mut all: Vec<&SafePath> = Vec::new();
    for p in paths {
        let f = p.folded();
        if !files.insert(f.clone()) {
            return Err(PathError {
                shown: p.to_string(),
                reason: "listed twice (ignoring case)",
            });
        }
        let mut prefix = String::new();
        for c in f.split('/').take(p.components().count() - 1) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(c);
            dirs.insert(prefix.clone());
        }
        all.push(p);
    }
    for p in all {
        if dirs.contains(&p.folded()) {
            return Err(PathError {
                shown: p.to_string(),
                reason: "is a file and also a directory of another listed file",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_layout_paths() {
        for ok in [
            "linux/production/arch_x86_64/updates.zip",
            "mac/preview/arch_arm64/manifest.json",
            "a",
            ".hidden",
        ] {
            SafePath::new(ok).unwrap();
        }
    }

    #[test]
    fn rejects_escapes() {
        for bad in [
            "",
            "../x",
            "a/../../x",
            "foo/../bar/../baz/../../../../data1.txt",
            "/abs",
            "C:\\x",
            "C:x",
            "a\\b",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "a\0b",
            "CON",
            "aux.txt",
            "a/nul",
            "COM0",
            "lpt0.txt",
            "trailing.",
            "sp ace",
            "caf\u{e9}",
            "a:b",
        ] {
            assert!(SafePath::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SafePath::from_bytes(b"\xff\xfe").is_err());
        assert!(SafePath::new(&"a/".repeat(17)[..33]).is_err());
        assert!(SafePath::new(&"x".repeat(201)).is_err());
    }

    #[test]
    fn set_rules() {
        let p = |s| SafePath::new(s).unwrap();
        assert!(check_set(&[p("a/b"), p("A/B")]).is_err());
        assert!(check_set(&[p("a"), p("a/b")]).is_err());
        assert!(check_set(&[p("a/b/c"), p("A/b")]).is_err());
        check_set(&[p("a/b"), p("a/c"), p("ab")]).unwrap();
    }

    #[test]
    fn join_stays_inside() {
        let root = Path::new("/srv/mirror");
        let j = SafePath::new("linux/production/x").unwrap().join_to(root);
        assert!(j.starts_with(root));
    }
}
