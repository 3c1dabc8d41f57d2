//! The exporting machine's per-channel sequence counter.
//!
//! A new bundle's sequence is `max(now in Unix seconds, last + 1)`: it tracks
//! the clock when the clock is sane (so a rebuilt exporter without its state
//! still starts above anything it made before), and it keeps increasing when
//! the clock steps back, because the last value is persisted in
//! `<state dir>/export-sequences.json` (updated under a lock, atomically).
//!
//! It never hands out a sequence more than a day ahead of the clock
//! (`manifest::MAX_SEQUENCE_AHEAD`): importers refuse those, since the
//! bundle's `created` is the same clock. A clock stepped back by more than
//! that is refused with the fix, and nothing is spent.
//!
//! The state directory is private (0700, its files 0600) whatever the umask.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::mirror::fsx;
use crate::mirror::lock::{ImportLock, LockError};

/// How long an export waits for another one choosing a sequence.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// A sequence file that cannot be read or written, or a sequence that
/// cannot be allocated. `source` is the underlying failure when there is
/// one (an I/O or lock error), kept as the error's cause rather than
/// flattened into `reason`.
#[derive(Debug, thiserror::Error)]
#[error("export sequence state {path}: {reason}")]
pub struct SequenceError {
    pub path: PathBuf,
    pub reason: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl crate::error::Classify for SequenceError {
    fn exit_kind(&self) -> crate::error::ExitKind {
        crate::error::ExitKind::Operational
    }
}

/// File name of the counter inside the state directory.
pub const FILE_NAME: &str = "export-sequences.json";

/// The default state directory of the exporting side: `$GAPFERRY_STATE_DIR`,
/// else `/var/lib/gapferry` for root, else `$XDG_STATE_HOME/gapferry`, else
/// `~/.local/state/gapferry`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GAPFERRY_STATE_DIR") {
        return PathBuf::from(d);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/gapferry");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("gapferry");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/gapferry")
}

/// Allocates the next sequence for `channel`. With `requested`, that value
/// is used if it is above the last one (else refused).
pub fn allocate(
    state_dir: &Path,
    channel: &str,
    now: SystemTime,
    requested: Option<u64>,
) -> Result<u64, SequenceError> {
    let path = state_dir.join(FILE_NAME);
    let err = |reason: String| SequenceError {
        path: path.clone(),
        reason,
        source: None,
    };
    let caused = |reason: &str, source: Box<dyn std::error::Error + Send + Sync>| SequenceError {
        path: path.clone(),
        reason: reason.to_string(),
        source: Some(source),
    };
    // Private whatever the umask: a lock file another user can open is a
    // lock they can hold.
    fsx::ensure_private_dir(state_dir).map_err(|e| {
        caused(
            &format!("cannot use the directory {}", state_dir.display()),
            e.into(),
        )
    })?;
    // The mirror's lock discipline: 0600, never through a symbolic link, a
    // 0644 one from an older release replaced, and a bounded wait.
    let lock_path = state_dir.join("export-sequences.lock");
    let _lock = ImportLock::acquire_unnoted(&lock_path, LOCK_WAIT).map_err(|e| match e {
        LockError::Held { holder, .. } => err(format!(
            "another gapferry export is choosing a sequence: {} is locked{}; let it \
             finish and run the command again",
            lock_path.display(),
            holder.map(|h| format!(" by {h}")).unwrap_or_default()
        )),
        e => caused("cannot take the export lock", e.into()),
    })?;
    let mut map: BTreeMap<String, u64> = match File::open(&path) {
        Ok(mut f) => {
            let mut s = String::new();
            f.read_to_string(&mut s)
                .map_err(|e| caused("cannot read it", e.into()))?;
            serde_json::from_str(&s).map_err(|e| {
                err(format!(
                    "is damaged ({e}); fix or remove it (sequences then restart from the clock)"
                ))
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(caused("cannot open it", e.into())),
    };
    let last = map.get(channel).copied().unwrap_or(0);
    let clock = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // The bundle's `created` is `now`: importers refuse a sequence more than
    // a day ahead of it, so never spend one they would refuse.
    let bound = crate::manifest::max_sequence_for(now);
    let seq = match requested {
        Some(r) if r <= last => {
            return Err(err(format!(
            "--sequence {r} is not above {last}, the last sequence exported on channel {channel:?}"
        )))
        }
        Some(r) if r > bound => {
            return Err(err(format!(
                "--sequence {r} is more than a day ahead of this export's created time \
                 (Unix seconds {clock}; at most {bound}), and importers refuse such a bundle \
                 (docs/FORMAT.md section 3); leave --sequence out, or pick one from {} to {bound}",
                last.saturating_add(1)
            )))
        }
        Some(r) => r,
        None => {
            let next = clock.max(
                last.checked_add(1)
                    .ok_or_else(|| err("sequence space exhausted".into()))?,
            );
            if next > bound {
                return Err(err(format!(
                    "the next sequence on channel {channel:?} would be {next}, more than a day \
                     ahead of this machine's clock (Unix seconds {clock}), and importers refuse \
                     such a bundle (docs/FORMAT.md section 3): the clock stepped back or a \
                     --sequence was set far ahead. Fix the clock; if it is right, wait until it \
                     passes {}, or (only if no importer accepted a sequence above {clock}) lower \
                     the channel's value in this file",
                    next - crate::manifest::MAX_SEQUENCE_AHEAD
                )));
            }
            next
        }
    };
    map.insert(channel.to_string(), seq);
    let bytes = serde_json::to_string_pretty(&map).expect("map serializes");
    crate::durable::write_atomic(
        &path,
        bytes.as_bytes(),
        crate::durable::PRIVATE_FILE_MODE,
        crate::durable::Clobber::Replace,
    )
    .map_err(|e| caused("cannot write it", e.into()))?;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn increases_even_when_clock_steps_back() {
        let d = tempfile::tempdir().unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = allocate(d.path(), "c", t, None).unwrap();
        assert_eq!(a, 1_800_000_000);
        // A step back of up to a day (less the exports made since) keeps
        // counting; see `never_more_than_a_day_ahead_of_the_clock` for more.
        let b = allocate(d.path(), "c", t - Duration::from_secs(86000), None).unwrap();
        assert_eq!(b, a + 1);
        let c = allocate(d.path(), "c", t, None).unwrap();
        assert_eq!(c, a + 2);
        assert_eq!(allocate(d.path(), "other", t, None).unwrap(), a);
        assert!(allocate(d.path(), "c", t, Some(5)).is_err());
        assert_eq!(allocate(d.path(), "c", t, Some(a + 100)).unwrap(), a + 100);
    }

    /// Importers refuse a sequence more than a day ahead of `created`
    /// (= `now` here): allocate never hands one out, and a refusal spends
    /// nothing.
    #[test]
    fn never_more_than_a_day_ahead_of_the_clock() {
        let d = tempfile::tempdir().unwrap();
        let secs = 1_800_000_000;
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let day = crate::manifest::MAX_SEQUENCE_AHEAD;
        let e = allocate(d.path(), "c", t, Some(u64::MAX)).unwrap_err();
        assert!(
            e.reason.contains("more than a day ahead") && e.reason.contains("leave --sequence out"),
            "{e}"
        );
        let e = allocate(d.path(), "c", t, Some(secs + day + 1)).unwrap_err();
        assert!(e.reason.contains(&format!("at most {}", secs + day)), "{e}");
        assert!(!d.path().join(FILE_NAME).exists(), "nothing spent");
        // At the bound: allowed.
        assert_eq!(
            allocate(d.path(), "c", t, Some(secs + day)).unwrap(),
            secs + day
        );
        // The counter now sits at the bound; the next automatic one would
        // be one past it at the same clock: refused, counter unchanged.
        let e = allocate(d.path(), "c", t, None).unwrap_err();
        assert!(
            e.reason.contains("would be") && e.reason.contains("Fix the clock"),
            "{e}"
        );
        // A second later the clock allows it again.
        let t1 = t + Duration::from_secs(1);
        assert_eq!(allocate(d.path(), "c", t1, None).unwrap(), secs + day + 1);
        // Many exports within one second stay valid up to a day's worth.
        let d2 = tempfile::tempdir().unwrap();
        for _ in 0..20 {
            let s = allocate(d2.path(), "c", t, None).unwrap();
            assert!(s <= crate::manifest::max_sequence_for(t));
        }
    }

    #[test]
    fn the_counter_is_private_and_an_old_0644_lock_is_replaced() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let lock = dir.join("export-sequences.lock");
        std::fs::write(&lock, b"").unwrap();
        std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
        let old_ino = std::fs::metadata(&lock).unwrap().ino();
        allocate(&dir, "c", SystemTime::now(), None).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&lock), 0o600);
        assert_eq!(mode(&dir.join(FILE_NAME)), 0o600);
        assert_ne!(std::fs::metadata(&lock).unwrap().ino(), old_ino);
    }
}
