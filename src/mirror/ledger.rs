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
//! The chain is unkeyed: it shows accidents and clumsy edits, but someone
//! who can write the state directory can delete or change lines and
//! recompute every hash after them, and the chain verifies again. What
//! catches that is a copy of the head kept off this host: every receipt
//! carries the head (`<sha256>@<entries>`, see [`Checkpoint`]) back to the
//! online side, and `ledger verify --expect-head` checks that a recorded
//! head is still line `<entries>` of the chain, so nothing up to it was
//! removed, changed or inserted. Lines after the newest head held elsewhere
//! are protected by nothing but the file's permissions.
//!
//! Attempts that changed nothing (rejected, refused, failed) are limited:
//! [`Ledger::record_attempt`] applies [`super::ledger_quota`]'s policy, and
//! what it leaves out is summed up in a `suppressed` line.
//!
//! Appends use `O_APPEND`, one `write` of the whole line, then fsync. A power
//! loss can still leave a torn last line; the next append terminates it with
//! a newline and chains onto its bytes, so the import goes on while
//! `verify` keeps pointing at the torn line for a person to look at.
//!
//! A change to the mirror and its line are two writes: [`super::session::commit`] saves the
//! line in `state.json` with the change, appends it, then clears it, and
//! the next run under the lock appends a line it finds there unless the
//! ledger already ends with it ([`super::session::settle`]).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fsx::{self, fix};
use super::ledger_quota::{self, Admit, Quota};
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
    /// `gapferry rollback` run again: the swap served the newer set again
    /// (every folder's new versions are newer than the ones it replaced).
    RolledForward,
    /// Not an attempt: how many attempts that changed nothing were left out
    /// by the flood limit since the previous line ([`Suppressed`]).
    Suppressed,
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
            Outcome::RolledForward => "rolled_forward",
            Outcome::Suppressed => "suppressed",
        }
    }
}

/// The versions of one unit, as the profile seam records them.
pub use crate::profile::Versions;

/// One arch folder's versions before and after the attempt (`None`: the
/// folder did not exist, or was not changed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotChange {
    /// The unit's key, e.g. `linux/production/arch_x86_64`.
    pub slot: crate::profile::UnitKey,
    pub before: Option<Versions>,
    pub after: Option<Versions>,
}

/// What a `suppressed` line sums up (see [`super::ledger_quota`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppressed {
    /// Attempts identical to one recorded in the previous 24 hours.
    pub repeats: u64,
    /// Attempts over the hourly limit.
    pub over_limit: u64,
    /// RFC 3339 UTC times of the first and last attempt left out.
    pub first: String,
    pub last: String,
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
    pub manifest_sha256: Option<crate::sha256hex::Sha256Hex>,
    /// Key ids (16 upper-case hex) whose valid signatures counted.
    pub signer_key_ids: Vec<crate::keys::KeyId>,
    pub channel: Option<String>,
    pub sequence: Option<u64>,
    pub allow_downgrade: bool,
    pub slots: Vec<SlotChange>,
    /// SHA-256 of the previous line; set by [`Ledger::append`].
    pub prev_hash: String,
    /// `bundle_id`, `channel`, `sequence` and `manifest_sha256` are what an
    /// unsigned (or not sufficiently signed) manifest claims: anyone could
    /// have written them. Absent (false) in lines written before this field
    /// existed; [`LedgerEntry::manifest_unverified`] also covers those.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unverified: bool,
    /// On a `suppressed` line: what it sums up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<Suppressed>,
    /// On the line of an import that adopted a newer trust policy: the
    /// versions and what changed. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_updated: Option<TrustUpdated>,
}

/// The `trust_updated` event of an import line: the trust policy version
/// before and after, and what changed between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustUpdated {
    /// The version adopted before (null: the first adopted here).
    pub old_version: Option<u64>,
    pub new_version: u64,
    /// One line per change (`signer added <KEYID>`, `revoked <KEYID>`,
    /// `root threshold 2 -> 3`, ...).
    pub changes: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
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
            unverified: false,
            suppressed: None,
            trust_updated: None,
        }
    }

    /// Whether the manifest fields are unverified claims: marked so, or (in
    /// lines from before the mark) an attempt that failed with a manifest
    /// read but no signer counted.
    pub fn manifest_unverified(&self) -> bool {
        self.unverified
            || (matches!(
                self.outcome,
                Outcome::Rejected | Outcome::Refused | Outcome::Failed
            ) && self.signer_key_ids.is_empty()
                && (self.bundle_id.is_some() || self.manifest_sha256.is_some()))
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
    #[error(
        "the ledger {path} no longer holds the head {expected} recorded earlier: {reason}; \
         keep a copy for investigation and compare it with your backups"
    )]
    HeadMissing {
        path: PathBuf,
        expected: String,
        reason: String,
    },
}

impl Classify for LedgerError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            LedgerError::Broken { .. } | LedgerError::HeadMissing { .. } => ExitKind::Rejected,
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

impl VerifyReport {
    /// The head as a checkpoint to keep elsewhere.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            entries: self.entries,
            head_sha256: self.head_sha256.clone(),
        }
    }
}

/// The ledger's head at one moment: the SHA-256 of line `entries` (the last
/// line then). Written `<sha256>@<entries>`; receipts carry it to the
/// online side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub entries: usize,
    pub head_sha256: String,
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.head_sha256, self.entries)
    }
}

/// Fewest hex digits of a head accepted by [`ExpectedHead`] (64 bits: what
/// fits on a phone call, and still far beyond forging by trial).
pub const MIN_HEAD_DIGITS: usize = 16;

/// A head recorded elsewhere, as given to `ledger verify --expect-head`:
/// `HEX[@N]`, where HEX is the head's SHA-256 or its first 16 or more hex
/// digits and N the entry count printed with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedHead {
    pub sha256_prefix: String,
    pub entries: Option<usize>,
}

impl std::str::FromStr for ExpectedHead {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (hex, n) = match s.trim().split_once('@') {
            Some((h, n)) => (
                h,
                Some(n.parse::<usize>().map_err(|_| {
                    format!(
                        "{n:?} after @ is not an entry count; give HEX@N as a receipt printed it"
                    )
                })?),
            ),
            None => (s.trim(), None),
        };
        if hex.len() < MIN_HEAD_DIGITS
            || hex.len() > 64
            || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!(
                "{hex:?} is not a ledger head: give its sha256 (at least {MIN_HEAD_DIGITS} \
                 hex digits), optionally @ and the entry count, e.g. 3f0c1a2b4c5d6e7f@12"
            ));
        }
        Ok(ExpectedHead {
            sha256_prefix: hex.to_ascii_lowercase(),
            entries: n,
        })
    }
}

impl std::fmt::Display for ExpectedHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.sha256_prefix)?;
        if let Some(n) = self.entries {
            write!(f, "@{n}")?;
        }
        Ok(())
    }
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

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An entry's line without its newline, the free-text reason shortened when
/// the line would be longer than [`MAX_LINE`].
fn encode(entry: &mut LedgerEntry) -> Vec<u8> {
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
    line
}

impl Ledger {
    /// The ledger at `path`.
    pub fn new(path: &Path) -> Self {
        Ledger {
            path: path.to_path_buf(),
        }
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
        let mut prev = match &last {
            Some(bytes) => sha256_hex(bytes),
            None => GENESIS.to_string(),
        };
        let mut buf = Vec::new();
        if torn {
            buf.push(b'\n');
        }
        // What the flood limit left out goes in first, in the same write.
        let mut quota = Quota::load(&self.path);
        let summary = quota.take_summary();
        if let Some(mut s) = summary.clone() {
            s.prev_hash = prev;
            let line = encode(&mut s);
            prev = sha256_hex(&line);
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
        let mut entry = entry.clone();
        entry.prev_hash = prev;
        buf.extend_from_slice(&encode(&mut entry));
        buf.push(b'\n');
        file.write_all(&buf).map_err(werr)?;
        file.sync_all().map_err(werr)?;
        if !existed {
            if let Some(dir) = self.path.parent() {
                fsx::sync_dir(dir).map_err(werr)?;
            }
        }
        if summary.is_some() {
            // The lines stand; a state file that cannot be saved only means
            // the same counts are summed up again before the next line.
            let _ = quota.save(&self.path);
        }
        Ok(Some(entry))
    }

    /// Records an import attempt under the flood limit
    /// ([`super::ledger_quota`]): an attempt that changed nothing may be
    /// counted instead of written. Call it under the import lock.
    pub fn record_attempt(&self, entry: &LedgerEntry) -> Result<Admit, LedgerError> {
        self.record_attempt_at(entry, std::time::SystemTime::now())
    }

    /// [`Ledger::record_attempt`] as if at `now`.
    pub fn record_attempt_at(
        &self,
        entry: &LedgerEntry,
        now: std::time::SystemTime,
    ) -> Result<Admit, LedgerError> {
        if !ledger_quota::limited(entry) {
            self.append(entry)?;
            return Ok(Admit::Write);
        }
        let mut quota = Quota::load(&self.path);
        let admit = quota.admit(entry, now);
        quota
            .save(&self.path)
            .map_err(|source| LedgerError::Write {
                path: Quota::path_for(&self.path),
                source,
            })?;
        if admit == Admit::Write {
            self.append(entry)?;
        }
        Ok(admit)
    }

    /// What the flood limit has left out since the last line (read only).
    pub fn suppressed_pending(&self) -> Option<Suppressed> {
        Quota::load(&self.path).pending().cloned()
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
        self.verify_expecting(&[])
    }

    /// [`Ledger::verify`], then checks that each head recorded elsewhere is
    /// still in the chain: line N's SHA-256 (or, without N, some line's)
    /// starts with the recorded digits. `Err(HeadMissing)` names the first
    /// that is not.
    pub fn verify_expecting(&self, expect: &[ExpectedHead]) -> Result<VerifyReport, LedgerError> {
        let mut n = 0;
        let mut head = GENESIS.to_string();
        // For each expectation: where it was found, or line N's actual hash.
        let mut found: Vec<Option<usize>> = vec![None; expect.len()];
        let mut at_n: Vec<Option<String>> = vec![None; expect.len()];
        self.walk(|line, _, hash| {
            n += 1;
            head = hash.to_string();
            for (i, e) in expect.iter().enumerate() {
                match e.entries {
                    Some(k) if k == line => {
                        at_n[i] = Some(hash.to_string());
                        if hash.starts_with(&e.sha256_prefix) {
                            found[i] = Some(line);
                        }
                    }
                    None if found[i].is_none() && hash.starts_with(&e.sha256_prefix) => {
                        found[i] = Some(line)
                    }
                    _ => {}
                }
            }
        })?;
        for (i, e) in expect.iter().enumerate() {
            if found[i].is_some() {
                continue;
            }
            let reason = match (e.entries, &at_n[i]) {
                (Some(k), None) => format!(
                    "it was line {k}, and the ledger now has only {n} lines: lines were removed"
                ),
                (Some(k), Some(h)) => format!(
                    "line {k} now hashes to {h}: that line or one before it was changed, or lines \
                     before it were removed or inserted, and the hashes after them recomputed"
                ),
                (None, _) => format!(
                    "none of its {n} lines hashes to it: lines up to the recorded head were removed \
                     or changed, and the hashes recomputed"
                ),
            };
            return Err(LedgerError::HeadMissing {
                path: self.path.clone(),
                expected: e.to_string(),
                reason,
            });
        }
        Ok(VerifyReport {
            entries: n,
            head_sha256: head,
        })
    }

    /// Calls `f` with each entry in order, checking the chain as it goes,
    /// without holding the whole ledger in memory; entries before a broken
    /// line have been seen when the error comes back.
    pub fn visit(&self, mut f: impl FnMut(LedgerEntry)) -> Result<(), LedgerError> {
        self.walk(|_, e, _| f(e))
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
            manifest_sha256: Some(format!("{i:064x}").parse().unwrap()),
            signer_key_ids: vec!["0123456789ABCDEF".parse().unwrap()],
            slots: vec![SlotChange {
                slot: "linux/production/arch_x86_64".into(),
                before: None,
                after: Some(Versions {
                    engine_version: "1.1.1.0".into(),
                    definition_version: format!("1.400.{i}.0"),
                }),
            }],
            ..LedgerEntry::new(if i.is_multiple_of(2) {
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

    /// What someone with write access to the state directory can do: drop
    /// lines and recompute every hash after them.
    fn rechain(l: &Ledger, keep: &[String]) {
        let mut prev = GENESIS.to_string();
        let mut out = Vec::new();
        for line in keep {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["prev_hash"] = serde_json::Value::String(prev.clone());
            let text = serde_json::to_string(&v).unwrap();
            prev = sha256_hex(text.as_bytes());
            out.push(text);
        }
        rewrite(l, &out);
    }

    #[test]
    fn rechained_deletion_passes_verify_but_not_a_recorded_head() {
        let (_t, l) = ledger_with(6);
        let head = l.verify().unwrap().checkpoint();
        let at4 = {
            let ls = lines(&l);
            format!("{}@4", &sha256_hex(ls[3].as_bytes())[..16])
        };
        let mut ls = lines(&l);
        ls.remove(1);
        rechain(&l, &ls);
        // The unkeyed chain alone cannot tell.
        assert_eq!(l.verify().unwrap().entries, 5);
        for expected in [head.to_string(), at4.clone()] {
            let e: ExpectedHead = expected.parse().unwrap();
            match l.verify_expecting(&[e]).unwrap_err() {
                LedgerError::HeadMissing {
                    expected: got,
                    reason,
                    ..
                } => {
                    assert_eq!(got, expected.to_ascii_lowercase());
                    assert!(
                        reason.contains("lines were removed") || reason.contains("now hashes to"),
                        "{reason}"
                    );
                }
                e => panic!("{e}"),
            }
        }
        // Without a count, a prefix must match some line.
        let e: ExpectedHead = head.head_sha256[..20].parse().unwrap();
        let err = l.verify_expecting(&[e]).unwrap_err();
        assert!(err.to_string().contains("none of its 5 lines"), "{err}");
        assert_eq!(err.exit_kind(), ExitKind::Rejected);
    }

    #[test]
    fn recorded_heads_stay_valid_as_the_ledger_grows() {
        let (_t, l) = ledger_with(3);
        let head = l.verify().unwrap().checkpoint();
        for i in 4..=6 {
            l.append(&entry(i)).unwrap();
        }
        let full: ExpectedHead = head.to_string().parse().unwrap();
        let short: ExpectedHead = format!("{}@3", &head.head_sha256[..16].to_ascii_uppercase())
            .parse()
            .unwrap();
        let any: ExpectedHead = head.head_sha256[..16].parse().unwrap();
        assert_eq!(l.verify_expecting(&[full, short, any]).unwrap().entries, 6);
        for bad in [
            "",
            "abc",
            "3f0c1a2b4c5d6e7g@1",
            "3f0c1a2b4c5d6e7f@x",
            &"a".repeat(65),
        ] {
            assert!(bad.parse::<ExpectedHead>().is_err(), "{bad:?}");
        }
    }

    fn junk(i: u32) -> LedgerEntry {
        LedgerEntry {
            bundle_path: Some(format!("/inbox/junk-{i}.tar.zst")),
            reason: Some("no trusted signature".into()),
            ..LedgerEntry::new(Outcome::Rejected)
        }
    }

    #[test]
    fn flood_of_junk_is_bounded_and_summed_up_before_the_next_line() {
        let (_t, l) = ledger_with(0);
        let now = std::time::SystemTime::now();
        let mut written = 0;
        for i in 0..200 {
            if l.record_attempt_at(&junk(i), now).unwrap() == Admit::Write {
                written += 1;
            }
        }
        assert_eq!(written, ledger_quota::MAX_PER_HOUR);
        assert_eq!(
            l.verify().unwrap().entries,
            ledger_quota::MAX_PER_HOUR as usize
        );
        let pending = l.suppressed_pending().unwrap();
        assert_eq!(pending.over_limit, 180);
        // The next line, whatever it is, comes after one summary line.
        l.record_attempt(&entry(2)).unwrap();
        let entries = l.read().unwrap();
        assert_eq!(entries.len(), ledger_quota::MAX_PER_HOUR as usize + 2);
        let summary = &entries[entries.len() - 2];
        assert_eq!(summary.outcome, Outcome::Suppressed);
        assert_eq!(summary.suppressed.as_ref().unwrap().over_limit, 180);
        assert_eq!(
            entries.last().unwrap().bundle_id.as_deref(),
            Some("bundle-2")
        );
        assert!(l.suppressed_pending().is_none());
        // Summed up once only.
        l.append(&entry(4)).unwrap();
        assert_eq!(
            l.read().unwrap().len(),
            ledger_quota::MAX_PER_HOUR as usize + 3
        );
    }

    #[test]
    fn unverified_claims_are_marked_in_old_and_new_lines() {
        let claim = LedgerEntry {
            bundle_id: Some("b-forged".into()),
            sequence: Some(u64::MAX),
            ..junk(1)
        };
        assert!(claim.manifest_unverified(), "an old line without the mark");
        let json = serde_json::to_string(&LedgerEntry {
            unverified: true,
            ..claim.clone()
        })
        .unwrap();
        assert!(json.contains("\"unverified\":true"), "{json}");
        let plain = serde_json::to_string(&entry(2)).unwrap();
        assert!(!plain.contains("unverified"), "absent when false: {plain}");
        assert!(!plain.contains("suppressed"), "{plain}");
        assert!(!entry(2).manifest_unverified());
        assert!(!entry(1).manifest_unverified(), "signed, refused by policy");
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
