//! The import ledger: an append-only, hash-chained JSON-lines file
//! (`<state-dir>/ledger.jsonl`) with one entry per import attempt, accepted
//! or not. This module owns its format; it must never rewrite, truncate or
//! reorder existing lines, only append whole lines.
//!
//! # Format
//!
//! Each line is one compact JSON object ([`LedgerEntry`]) ending in `\n`.
//! `prev_hash` is the lower-case hex SHA-256 of the previous line's exact
//! bytes, without its `\n`; the first line's is 64 zeros. An auditor can
//! check the chain with standard tools:
//!
//! ```text
//! sed -n 3p ledger.jsonl | tr -d '\n' | sha256sum   # == prev_hash of line 4
//! ```
//!
//! Editing, deleting or reordering any line but the last breaks the chain at
//! the next line; [`Ledger::verify`] names the first broken line and why.
//! The chain cannot protect the newest line on its own: `ledger verify`
//! prints the head hash so an operator can note it elsewhere.
//!
//! Appends use `O_APPEND`, one `write` of the whole line, then fsync. A power
//! loss can still leave a torn last line; the next append terminates it with
//! a newline and chains onto its bytes, so the import goes on while
//! `verify` keeps pointing at the torn line for a person to look at.
//!
//! A change to the mirror and its line are two writes: [`commit`] saves the
//! line in `state.json` with the change, appends it, then clears it, and
//! the next run under the lock appends a line it finds there unless the
//! ledger already ends with it ([`settle`]).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fsx::{self, fix};
use super::publish::crash_point;
use super::state::{State, StateDir, StateError};
use crate::error::{Classify, ExitKind};

/// `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest line accepted (an entry is a few kilobytes at most).
pub const MAX_LINE: usize = 1024 * 1024;

/// The result of one import attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Published (exit 0).
    Imported,
    /// The same bundle again; nothing changed (exit 0).
    AlreadyImported,
    /// Rejected: signature, integrity, unsafe content, sequence conflict (exit 3).
    Rejected,
    /// Refused by policy: older, expired, wrong channel, threshold (exit 4).
    Refused,
    /// Operational failure after the attempt was identified (exit 1).
    Failed,
    /// `gapferry rollback` swapped a served folder with its n-1 (exit 0).
    RolledBack,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Imported => "imported",
            Outcome::AlreadyImported => "already_imported",
            Outcome::Rejected => "rejected",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled_back",
        }
    }
}

/// Engine and definition versions of one folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub engine_version: String,
    pub definition_version: String,
}

/// One arch folder's versions before and after the attempt (`None`: the
/// folder did not exist, or was not changed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotChange {
    /// Layout path, e.g. `linux/production/arch_x86_64`.
    pub slot: String,
    pub before: Option<Versions>,
    pub after: Option<Versions>,
}

/// One ledger line. Fields the attempt never learned (a bundle whose
/// manifest could not be read has no id) are `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// RFC 3339 UTC.
    pub time: String,
    pub outcome: Outcome,
    /// Why it was rejected, refused or failed; or notes such as a downgrade.
    pub reason: Option<String>,
    /// The bundle file as named on the command line.
    pub bundle_path: Option<String>,
    pub bundle_id: Option<String>,
    pub manifest_sha256: Option<String>,
    /// Key ids (16 upper-case hex) whose valid signatures counted.
    pub signer_key_ids: Vec<String>,
    pub channel: Option<String>,
    pub sequence: Option<u64>,
    pub allow_downgrade: bool,
    pub slots: Vec<SlotChange>,
    /// SHA-256 of the previous line; set by [`Ledger::append`].
    pub prev_hash: String,
}

impl LedgerEntry {
    /// An entry stamped now with `outcome` and everything else empty; fill
    /// in the rest with struct update syntax.
    pub fn new(outcome: Outcome) -> Self {
        LedgerEntry {
            time: fsx::now_rfc3339(),
            outcome,
            reason: None,
            bundle_path: None,
            bundle_id: None,
            manifest_sha256: None,
            signer_key_ids: Vec::new(),
            channel: None,
            sequence: None,
            allow_downgrade: false,
            slots: Vec::new(),
            prev_hash: String::new(),
        }
    }
}

/// The ledger cannot be read or written, or its chain is broken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error("cannot read the ledger {path}: {source}{}", fix(.source))]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot append to the ledger {path}: {source}{}", fix(.source))]
    Write { path: PathBuf, source: io::Error },
    #[error("there is no ledger at {path}: check --state-dir (no import has run with this state directory)")]
    Missing { path: PathBuf },
    #[error(
        "the ledger {path} is broken at line {line}: {reason}; keep a copy for \
         investigation, compare it with your backups, and do not edit it"
    )]
    Broken {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

impl Classify for LedgerError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            LedgerError::Broken { .. } => ExitKind::Rejected,
            _ => ExitKind::Operational,
        }
    }
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub entries: usize,
    /// SHA-256 of the last line (64 zeros when empty): note it elsewhere to
    /// protect the newest entry too.
    pub head_sha256: String,
}

/// The ledger file of one state directory.
#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
}

/// Whether the ledger line `line` records the same event as `entry`.
fn records(line: &[u8], entry: &LedgerEntry) -> bool {
    serde_json::from_slice::<LedgerEntry>(line).is_ok_and(|l| same_record(&l, entry))
}

/// Whether two entries record the same event; `prev_hash` and `reason`
/// (shortened when over-long) are left out.
fn same_record(a: &LedgerEntry, b: &LedgerEntry) -> bool {
    a.time == b.time
        && a.outcome == b.outcome
        && a.bundle_path == b.bundle_path
        && a.manifest_sha256 == b.manifest_sha256
        && a.sequence == b.sequence
        && a.slots == b.slots
}

/// Saves `state` together with the ledger `entry` that records its change,
/// appends the entry, then clears it from the state. Call it under the
/// import lock. A kill after the first save leaves the entry in
/// `state.json`; the next run's [`settle`] appends it (once), so a change
/// the state holds is never missing from the ledger.
pub fn commit<E>(dir: &StateDir, state: &mut State, entry: LedgerEntry) -> Result<(), E>
where
    E: From<StateError> + From<LedgerError>,
{
    save_due(dir, state, entry)?;
    settle(dir, state)
}

/// The first half of [`commit`]: saves `state` with `entry` due. Once this
/// returns, the change is recorded and its ledger line will be written.
pub fn save_due(dir: &StateDir, state: &mut State, entry: LedgerEntry) -> Result<(), StateError> {
    state.ledger_due = Some(entry);
    dir.save(state)?;
    crash_point("ledger-due");
    Ok(())
}

/// Appends the entry an interrupted [`commit`] left in `state`, unless the
/// ledger already ends with it, and saves the state without it.
pub fn settle<E>(dir: &StateDir, state: &mut State) -> Result<(), E>
where
    E: From<StateError> + From<LedgerError>,
{
    let Some(entry) = state.ledger_due.clone() else {
        return Ok(());
    };
    Ledger::in_state_dir(dir).append_once(&entry)?;
    crash_point("ledger-appended");
    state.ledger_due = None;
    dir.save(state)?;
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Ledger {
    /// The ledger at `path`.
    pub fn new(path: &Path) -> Self {
        Ledger {
            path: path.to_path_buf(),
        }
    }

    /// The ledger of a state directory.
    pub fn in_state_dir(dir: &StateDir) -> Self {
        Ledger::new(&dir.ledger_path())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` (its `prev_hash` is set here) and fsyncs. Call it under
    /// the import lock. Returns the entry as written.
    pub fn append(&self, entry: &LedgerEntry) -> Result<LedgerEntry, LedgerError> {
        Ok(self.write(entry, false)?.expect("always written"))
    }

    /// Appends `entry` unless the ledger's last line already records it
    /// (same time, outcome, bundle and folder changes): how a run settles an
    /// entry that an interrupted one may or may not have written. Returns
    /// whether it appended.
    pub fn append_once(&self, entry: &LedgerEntry) -> Result<bool, LedgerError> {
        Ok(self.write(entry, true)?.is_some())
    }

    /// The appending behind both: `None` when `once` and the last complete
    /// line already records `entry`.
    fn write(&self, entry: &LedgerEntry, once: bool) -> Result<Option<LedgerEntry>, LedgerError> {
        let werr = |source| LedgerError::Write {
            path: self.path.clone(),
            source,
        };
        let existed = self.path.exists();
        let mut file =
            super::fsx::open_append(&self.path, super::fsx::PRIVATE_FILE_MODE).map_err(werr)?;
        let (last, torn) = self.last_line(&mut file)?;
        if once && !torn && last.as_deref().is_some_and(|l| records(l, entry)) {
            return Ok(None);
        }
        let mut entry = entry.clone();
        entry.prev_hash = match &last {
            Some(bytes) => sha256_hex(bytes),
            None => GENESIS.to_string(),
        };
        let mut line = serde_json::to_vec(&entry).expect("entry serializes");
        if line.len() > MAX_LINE {
            // Only the free-text reason can grow this large (an error message
            // quoting hostile input): shorten it rather than write a line
            // that every later read would refuse, breaking the ledger.
            if let Some(reason) = entry.reason.as_mut() {
                let over = line.len() - MAX_LINE;
                let mut keep = reason.len().saturating_sub(over + 64);
                while !reason.is_char_boundary(keep) {
                    keep -= 1;
                }
                reason.truncate(keep);
                reason.push_str(" [truncated]");
                line = serde_json::to_vec(&entry).expect("entry serializes");
            }
        }
        let mut buf = Vec::with_capacity(line.len() + 2);
        if torn {
            buf.push(b'\n');
        }
        buf.extend_from_slice(&line);
        buf.push(b'\n');
        file.write_all(&buf).map_err(werr)?;
        file.sync_all().map_err(werr)?;
        if !existed {
            if let Some(dir) = self.path.parent() {
                fsx::sync_dir(dir).map_err(werr)?;
            }
        }
        Ok(Some(entry))
    }

    /// Whether the last complete line records the same event as `entry`.
    pub fn ends_with(&self, entry: &LedgerEntry) -> Result<bool, LedgerError> {
        if !self.path.exists() {
            return Ok(false);
        }
        let mut file = File::open(&self.path).map_err(|source| LedgerError::Read {
            path: self.path.clone(),
            source,
        })?;
        Ok(match self.last_line(&mut file)? {
            (Some(last), false) => records(&last, entry),
            _ => false,
        })
    }

    /// The line an interrupted run left due in `state.json` (see [`commit`])
    /// that this ledger does not have yet: the next import or rollback
    /// appends it. For read-only reports about the ledger: a state file that
    /// cannot be read is `status`'s to report, and counts as nothing due.
    pub fn due(&self, dir: &StateDir) -> Result<Option<LedgerEntry>, LedgerError> {
        let Ok(state) = dir.load() else {
            return Ok(None);
        };
        match state.ledger_due {
            Some(e) if !self.ends_with(&e)? => Ok(Some(e)),
            _ => Ok(None),
        }
    }

    /// The last line's bytes (without `\n`) and whether it lacks its `\n`.
    fn last_line(&self, file: &mut File) -> Result<(Option<Vec<u8>>, bool), LedgerError> {
        let rerr = |source| LedgerError::Read {
            path: self.path.clone(),
            source,
        };
        let len = file.seek(SeekFrom::End(0)).map_err(rerr)?;
        if len == 0 {
            return Ok((None, false));
        }
        let mut tail: Vec<u8> = Vec::new();
        let mut pos = len;
        const CHUNK: u64 = 64 * 1024;
        loop {
            let start = pos.saturating_sub(CHUNK);
            let mut chunk = vec![0; (pos - start) as usize];
            file.seek(SeekFrom::Start(start)).map_err(rerr)?;
            file.read_exact(&mut chunk).map_err(rerr)?;
            chunk.extend_from_slice(&tail);
            tail = chunk;
            pos = start;
            let torn = tail.last() != Some(&b'\n');
            let body = if torn {
                &tail[..]
            } else {
                &tail[..tail.len() - 1]
            };
            if let Some(nl) = body.iter().rposition(|&b| b == b'\n') {
                return Ok((Some(body[nl + 1..].to_vec()), torn));
            }
            if pos == 0 {
                return Ok((Some(body.to_vec()), torn));
            }
            if tail.len() > MAX_LINE + 1 {
                return Err(LedgerError::Broken {
                    path: self.path.clone(),
                    line: 0,
                    reason: format!("the last line is longer than {MAX_LINE} bytes"),
                });
            }
        }
    }

    fn open_existing(&self) -> Result<File, LedgerError> {
        File::open(&self.path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                LedgerError::Missing {
                    path: self.path.clone(),
                }
            } else {
                LedgerError::Read {
                    path: self.path.clone(),
                    source,
                }
            }
        })
    }

    /// Walks the chain from the first line; `Err(Broken)` names the first
    /// broken line (1-based) and why.
    pub fn verify(&self) -> Result<VerifyReport, LedgerError> {
        let mut n = 0;
        let mut head = GENESIS.to_string();
        self.walk(|_, _, hash| {
            n += 1;
            head = hash.to_string();
        })?;
        Ok(VerifyReport {
            entries: n,
            head_sha256: head,
        })
    }

    /// Every entry, after checking the whole chain.
    pub fn read(&self) -> Result<Vec<LedgerEntry>, LedgerError> {
        let mut out = Vec::new();
        self.walk(|_, e, _| out.push(e))?;
        Ok(out)
    }

    /// Calls `f(line_number, entry, sha256_of_line)` for each line, in order,
    /// stopping at the first broken one.
    fn walk(&self, mut f: impl FnMut(usize, LedgerEntry, &str)) -> Result<(), LedgerError> {
        let file = self.open_existing()?;
        let mut reader = BufReader::new(file);
        let mut prev = GENESIS.to_string();
        let mut line_no = 0;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = (&mut reader)
                // A line is at most MAX_LINE bytes plus its newline.
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)
                .map_err(|source| LedgerError::Read {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Ok(());
            }
            line_no += 1;
            let broken = |reason: String| LedgerError::Broken {
                path: self.path.clone(),
                line: line_no,
                reason,
            };
            if buf.last() != Some(&b'\n') {
                return Err(broken(if buf.len() > MAX_LINE {
                    format!("the line is longer than {MAX_LINE} bytes")
                } else {
                    "the last line is incomplete (no newline): a write cut short by a crash, \
                     or the file was truncated"
                        .to_string()
                }));
            }
            let content = &buf[..buf.len() - 1];
            let value: serde_json::Value = serde_json::from_slice(content)
                .map_err(|e| broken(format!("not valid JSON ({e})")))?;
            let got = value
                .get("prev_hash")
                .and_then(|v| v.as_str())
                .ok_or_else(|| broken("no prev_hash field".to_string()))?;
            if got != prev {
                return Err(broken(if line_no == 1 {
                    format!(
                        "prev_hash of the first line is {got}, not 64 zeros: \
                         the beginning of the ledger was removed or replaced"
                    )
                } else {
                    format!(
                        "prev_hash {got} is not the sha256 of line {} ({prev}): line {} \
                         was edited, or lines were removed, inserted or reordered before line {line_no}",
                        line_no - 1,
                        line_no - 1
                    )
                }));
            }
            let entry: LedgerEntry = serde_json::from_value(value)
                .map_err(|e| broken(format!("not a gapferry ledger entry ({e})")))?;
            prev = sha256_hex(content);
            f(line_no, entry, &prev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> LedgerEntry {
        LedgerEntry {
            bundle_id: Some(format!("bundle-{i}")),
            channel: Some("default".into()),
            sequence: Some(i),
            manifest_sha256: Some(format!("{i:064x}")),
            signer_key_ids: vec!["0123456789ABCDEF".into()],
            slots: vec![SlotChange {
                slot: "linux/production/arch_x86_64".into(),
                before: None,
                after: Some(Versions {
                    engine_version: "1.1.1.0".into(),
                    definition_version: format!("1.400.{i}.0"),
                }),
            }],
            ..LedgerEntry::new(if i % 2 == 0 {
                Outcome::Imported
            } else {
                Outcome::Refused
            })
        }
    }

    fn ledger_with(n: u64) -> (tempfile::TempDir, Ledger) {
        let t = tempfile::tempdir().unwrap();
        let l = Ledger::new(&t.path().join("ledger.jsonl"));
        for i in 1..=n {
            l.append(&entry(i)).unwrap();
        }
        (t, l)
    }

    fn lines(l: &Ledger) -> Vec<String> {
        std::fs::read_to_string(l.path())
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn rewrite(l: &Ledger, lines: &[String]) {
        let mut s = lines.join("\n");
        s.push('\n');
        std::fs::write(l.path(), s).unwrap();
    }

    fn broken_line(l: &Ledger) -> (usize, String) {
        match l.verify().unwrap_err() {
            LedgerError::Broken { line, reason, .. } => (line, reason),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn append_chains_and_verifies() {
        let (_t, l) = ledger_with(4);
        let r = l.verify().unwrap();
        assert_eq!(r.entries, 4);
        let ls = lines(&l);
        assert_eq!(r.head_sha256, sha256_hex(ls[3].as_bytes()));
        let entries = l.read().unwrap();
        assert_eq!(entries[0].prev_hash, GENESIS);
        assert_eq!(entries[2].prev_hash, sha256_hex(ls[1].as_bytes()));
        assert_eq!(entries[3].bundle_id.as_deref(), Some("bundle-4"));
        assert_eq!(entries[0].outcome, Outcome::Refused);
    }

    #[test]
    fn empty_and_missing() {
        let t = tempfile::tempdir().unwrap();
        let l = Ledger::new(&t.path().join("ledger.jsonl"));
        assert!(matches!(l.verify(), Err(LedgerError::Missing { .. })));
        std::fs::write(l.path(), b"").unwrap();
        assert_eq!(l.verify().unwrap().head_sha256, GENESIS);
    }

    #[test]
    fn edited_middle_line_is_named() {
        let (_t, l) = ledger_with(5);
        let mut ls = lines(&l);
        ls[2] = ls[2].replace("bundle-3", "bundle-X");
        rewrite(&l, &ls);
        let (line, reason) = broken_line(&l);
        assert_eq!(line, 4, "{reason}");
        assert!(reason.contains("line 3 was edited"), "{reason}");
        let err = l.verify().unwrap_err();
        assert_eq!(err.exit_kind(), ExitKind::Rejected);
        assert!(err.to_string().contains(&l.path().display().to_string()));
    }

    #[test]
    fn deleted_and_reordered_lines_are_named() {
        let (_t, l) = ledger_with(5);
        let orig = lines(&l);
        let mut ls = orig.clone();
        ls.remove(2);
        rewrite(&l, &ls);
        assert_eq!(broken_line(&l).0, 3);

        let mut ls = orig.clone();
        ls.swap(1, 2);
        rewrite(&l, &ls);
        assert_eq!(broken_line(&l).0, 2);

        let ls = orig[1..].to_vec();
        rewrite(&l, &ls);
        let (line, reason) = broken_line(&l);
        assert_eq!(line, 1);
        assert!(reason.contains("64 zeros"), "{reason}");

        rewrite(&l, &orig);
        l.verify().unwrap();
    }

    #[test]
    fn garbage_and_torn_lines() {
        let (_t, l) = ledger_with(3);
        let orig = lines(&l);
        let mut ls = orig.clone();
        ls.insert(1, "not json".into());
        rewrite(&l, &ls);
        let (line, reason) = broken_line(&l);
        assert_eq!(line, 2);
        assert!(reason.contains("not valid JSON"), "{reason}");

        // A torn last write: verify names it; the next append terminates it
        // and chains onto it, so imports go on.
        let mut s = orig.join("\n");
        s.push_str("\n{\"time\":\"2024");
        std::fs::write(l.path(), &s).unwrap();
        let (line, reason) = broken_line(&l);
        assert_eq!(line, 4);
        assert!(reason.contains("incomplete"), "{reason}");
        let written = l.append(&entry(9)).unwrap();
        assert_eq!(written.prev_hash, sha256_hex(b"{\"time\":\"2024"));
        let (line, reason) = broken_line(&l);
        assert_eq!(line, 4);
        assert!(reason.contains("not valid JSON"), "{reason}");
        assert_eq!(lines(&l).len(), 5);
    }

    #[test]
    fn long_lines_and_large_ledgers_append_correctly() {
        let (_t, l) = ledger_with(0);
        let big = LedgerEntry {
            reason: Some("x".repeat(200_000)),
            ..entry(1)
        };
        l.append(&big).unwrap();
        l.append(&entry(2)).unwrap();
        l.append(&big).unwrap();
        l.append(&entry(4)).unwrap();
        assert_eq!(l.verify().unwrap().entries, 4);
    }
}
