//! The ledger's flood limit: how many attempts that changed nothing
//! (rejected, refused or failed) get a line of their own. Anyone who can
//! hand over a file can make an import fail; without a limit they could
//! grow the ledger without bound and bury the lines that matter. This
//! module owns the policy and its small state file
//! (`<state-dir>/ledger-quota.json`); it never writes the ledger itself.
//!
//! The policy, per state directory:
//! - the same attempt again (same outcome, bundle path, manifest hash and
//!   reason) within [`REPEAT_WINDOW`] is not written again;
//! - at most [`MAX_PER_HOUR`] such lines per hour (a window opened by the
//!   first line written after the previous window ended);
//! - what was left out is counted, and the next line written to the ledger,
//!   whatever it is, is preceded by one `suppressed` line with the counts
//!   and the first and last time. So the ledger grows by at most
//!   `MAX_PER_HOUR + 1` such lines an hour, plus real imports and rollbacks.
//!
//! Entries that changed the mirror (imports, rollbacks) are never limited.
//! The state file is a convenience, not evidence: a missing or unreadable
//! one starts afresh (it never stops an import).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ledger::{LedgerEntry, Outcome, Suppressed};

/// The state file, beside the ledger.
pub const QUOTA_FILE: &str = "ledger-quota.json";
/// Lines for attempts that changed nothing, per hour.
pub const MAX_PER_HOUR: u32 = 20;
/// The length of a limit window.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// How long the same attempt is remembered (and not written again).
pub const REPEAT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// How many distinct attempts are remembered.
pub const MAX_REMEMBERED: usize = 256;

/// What the policy says about one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write its line.
    Write,
    /// The same attempt has a line from the last 24 hours: count it only.
    Repeat,
    /// This hour's lines are used up: count it only.
    OverLimit,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    key: String,
    /// Unix seconds.
    at: u64,
}

/// The policy's state: this window's count, the attempts remembered, and
/// what was left out since the last line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Unix seconds when the current window opened.
    window_start: u64,
    /// Lines written for attempts that changed nothing in this window.
    written: u32,
    seen: Vec<Seen>,
    /// Left out since the last ledger line.
    pending: Option<Suppressed>,
}

/// Whether the policy applies to `entry`: an attempt that changed nothing.
pub fn limited(entry: &LedgerEntry) -> bool {
    matches!(
        entry.outcome,
        Outcome::Rejected | Outcome::Refused | Outcome::Failed
    ) && entry.slots.iter().all(|s| s.after.is_none())
}

/// What makes two attempts "the same": outcome, bundle path, manifest hash
/// and reason. (Renaming a file or changing one byte makes another attempt;
/// the hourly limit bounds those.)
fn key(entry: &LedgerEntry) -> String {
    let mut h = Sha256::new();
    for part in [
        Some(entry.outcome.as_str()),
        entry.bundle_path.as_deref(),
        entry.manifest_sha256.as_ref().map(|s| s.as_str()),
        entry.reason.as_deref(),
    ] {
        let part = part.unwrap_or("");
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Quota {
    /// The state file of the ledger at `ledger`.
    pub fn path_for(ledger: &Path) -> PathBuf {
        ledger.with_file_name(QUOTA_FILE)
    }

    /// Reads the state; anything unreadable is a fresh start.
    pub fn load(ledger: &Path) -> Quota {
        std::fs::read(Self::path_for(ledger))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the state atomically (temp file, fsync, rename, fsync of the
    /// folder), mode 0600.
    pub fn save(&self, ledger: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::from)?;
        crate::durable::write_atomic(
            &Self::path_for(ledger),
            &bytes,
            crate::durable::PRIVATE_FILE_MODE,
            crate::durable::Clobber::Replace,
        )
    }

    /// Decides about a [`limited`] attempt at `now` and updates the state:
    /// remembers a written one, counts a left-out one.
    pub fn admit(&mut self, entry: &LedgerEntry, now: SystemTime) -> Admit {
        let t = secs(now);
        // A clock set back opens a new window rather than a very long one.
        if t < self.window_start || t >= self.window_start + WINDOW.as_secs() {
            self.window_start = t;
            self.written = 0;
        }
        let horizon = t.saturating_sub(REPEAT_WINDOW.as_secs());
        self.seen.retain(|s| s.at > horizon && s.at <= t);
        let key = key(entry);
        let admit = if self.seen.iter().any(|s| s.key == key) {
            Admit::Repeat
        } else if self.written >= MAX_PER_HOUR {
            Admit::OverLimit
        } else {
            Admit::Write
        };
        match admit {
            Admit::Write => {
                self.written += 1;
                self.seen.push(Seen { key, at: t });
                if self.seen.len() > MAX_REMEMBERED {
                    self.seen.remove(0);
                }
            }
            Admit::Repeat | Admit::OverLimit => {
                let p = self.pending.get_or_insert_with(|| Suppressed {
                    repeats: 0,
                    over_limit: 0,
                    first: entry.time.clone(),
                    last: entry.time.clone(),
                });
                if admit == Admit::Repeat {
                    p.repeats += 1;
                } else {
                    p.over_limit += 1;
                }
                p.last = entry.time.clone();
            }
        }
        admit
    }

    /// What was left out since the last line, if anything.
    pub fn pending(&self) -> Option<&Suppressed> {
        self.pending.as_ref()
    }

    /// Takes what was left out, as the ledger line to write before the next one.
    pub fn take_summary(&mut self) -> Option<LedgerEntry> {
        let p = self.pending.take()?;
        Some(LedgerEntry {
            reason: Some(format!(
                "{} attempt(s) that changed nothing were not recorded one by one between {} and {}: \
                 {} repeat(s) of an attempt recorded in the previous 24 hours, {} over the limit of \
                 {MAX_PER_HOUR} lines an hour; the inbox's rejected/ folder and the service log have them",
                p.repeats + p.over_limit,
                p.first,
                p.last,
                p.repeats,
                p.over_limit
            )),
            suppressed: Some(p),
            ..LedgerEntry::new(Outcome::Suppressed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn junk(i: u32) -> LedgerEntry {
        LedgerEntry {
            bundle_path: Some(format!("/inbox/junk-{i}.tar.zst")),
            reason: Some("no trusted signature".into()),
            ..LedgerEntry::new(Outcome::Rejected)
        }
    }

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    #[test]
    fn repeats_are_written_once_a_day() {
        let mut q = Quota::default();
        assert_eq!(q.admit(&junk(1), at(0)), Admit::Write);
        for s in 1..100 {
            assert_eq!(q.admit(&junk(1), at(s * 60)), Admit::Repeat);
        }
        assert_eq!(q.pending().unwrap().repeats, 99);
        assert_eq!(q.admit(&junk(1), at(24 * 3600 + 1)), Admit::Write);
    }

    #[test]
    fn at_most_the_limit_per_hour_then_counted() {
        let mut q = Quota::default();
        let mut written = 0;
        for i in 0..1000 {
            if q.admit(&junk(i), at(u64::from(i))) == Admit::Write {
                written += 1;
            }
        }
        assert_eq!(written, MAX_PER_HOUR);
        assert_eq!(
            q.pending().unwrap().over_limit,
            1000 - u64::from(MAX_PER_HOUR)
        );
        let summary = q.take_summary().unwrap();
        assert_eq!(summary.outcome, Outcome::Suppressed);
        let reason = summary.reason.unwrap();
        assert!(reason.contains("980 attempt(s)"), "{reason}");
        assert!(q.take_summary().is_none(), "taken once");
        // The next hour opens a new window.
        assert_eq!(q.admit(&junk(5000), at(3600 + 1000)), Admit::Write);
    }

    #[test]
    fn memory_is_bounded_and_changes_are_never_limited() {
        let mut q = Quota::default();
        for i in 0..10_000u32 {
            q.admit(&junk(i), at(u64::from(i) * 3600));
        }
        assert!(q.seen.len() <= MAX_REMEMBERED);
        let mut imported = LedgerEntry::new(Outcome::Imported);
        assert!(!limited(&imported));
        imported.outcome = Outcome::Failed;
        assert!(limited(&imported));
        imported.slots.push(super::super::ledger::SlotChange {
            slot: "linux/production/arch_x86_64".into(),
            before: None,
            after: Some(super::super::ledger::Versions {
                engine_version: "1".into(),
                definition_version: "2".into(),
            }),
        });
        assert!(
            !limited(&imported),
            "a failed rollback that changed a folder"
        );
    }

    #[test]
    fn clock_set_back_opens_a_new_window() {
        let mut q = Quota::default();
        for i in 0..MAX_PER_HOUR {
            assert_eq!(q.admit(&junk(i), at(10_000)), Admit::Write);
        }
        assert_eq!(q.admit(&junk(999), at(10_001)), Admit::OverLimit);
        assert_eq!(q.admit(&junk(998), at(5_000)), Admit::Write);
    }
}
