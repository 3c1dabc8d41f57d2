//! What the last inbox pass left waiting, kept in the state directory
//! (`inbox-waiting.json`) so `gapferry status` can show it: each file or
//! split set still arriving, what it waits for, since when, and when it
//! will be given up. Written after every pass (replaced atomically, 0600);
//! read only for display, never to decide anything.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::durable;

/// The file in the state directory.
pub const FILE: &str = "inbox-waiting.json";
/// Largest file read back (it is ours, but bounded anyway).
const MAX_SIZE: u64 = 1 << 20;

/// What one pass left waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// The inbox folder.
    pub inbox: PathBuf,
    /// When the pass looked (RFC 3339).
    pub checked: String,
    /// One line per file or set left alone: its name, what it waits for,
    /// its last change and when it is given up.
    pub waiting: Vec<String>,
}

/// Records `waiting` for `inbox` in `state_dir` (created private if need
/// be). An error is returned for the caller to report; the pass stands.
pub fn record(state_dir: &Path, inbox: &Path, waiting: &[String]) -> std::io::Result<()> {
    durable::ensure_private_dir(state_dir)?;
    let w = Waiting {
        inbox: inbox.to_path_buf(),
        checked: crate::manifest::format_time(SystemTime::now()),
        waiting: waiting.iter().take(1000).cloned().collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&w).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    durable::write_atomic(
        &state_dir.join(FILE),
        &bytes,
        durable::PRIVATE_FILE_MODE,
        durable::Clobber::Replace,
    )
}

/// What the last pass recorded in `state_dir`, if an inbox ever ran there
/// (an unreadable or foreign file reads as nothing recorded).
pub fn read(state_dir: &Path) -> Option<Waiting> {
    use std::io::Read;
    let f = std::fs::File::open(state_dir.join(FILE)).ok()?;
    let mut bytes = Vec::new();
    f.take(MAX_SIZE).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_and_read_back_privately() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        assert_eq!(read(&state), None);
        record(&state, Path::new("/in"), &["a: left alone (x)".into()]).unwrap();
        let w = read(&state).unwrap();
        assert_eq!(w.inbox, PathBuf::from("/in"));
        assert_eq!(w.waiting, vec!["a: left alone (x)".to_string()]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        record(&state, Path::new("/in"), &[]).unwrap();
        assert!(read(&state).unwrap().waiting.is_empty());
    }
}
