//! Persisted import state and the rollback policy. This module owns the
//! state directory's layout and `state.json`: which versions each slot
//! serves (and from which bundle), and which sequence numbers each channel
//! has accepted with which manifest. It decides "newer / same bundle / older
//! / conflicting sequence" but never prints, never touches the served tree,
//! and never writes `state.json` other than atomically (temp file, fsync,
//! rename, fsync of the folder).
//!
//! # Where the state lives
//!
//! `--state-dir` wins. The default is outside the served tree, one folder
//! per mirror, named after the mirror's canonical path so two mirrors on one
//! host never share state: `<base>/<last-path-component>-<16 hex of
//! sha256(canonical path)>`, where `<base>` is
//!
//! - `$GAPFERRY_STATE_DIR` when set (an absolute path; the exporting side's
//!   sequence counter honours the same variable);
//! - root: `/var/lib/gapferry` (macOS: `/Library/Application Support/gapferry`);
//! - others: `$XDG_STATE_HOME/gapferry`, else `~/.local/state/gapferry`
//!   (macOS: `~/Library/Application Support/gapferry`).
//!
//! A default that would fall inside the served tree is refused (pass
//! `--state-dir`). The folder holds `state.json`, `ledger.jsonl`,
//! `receipts.jsonl` and `lock`. It is private to the user running gapferry:
//! created 0700 (its files 0600) whatever the umask; one owned by another
//! user is refused, one with group or other permission bits is set to 0700.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fsx::{self, fix};
use super::lock::{ImportLock, LockError, LOCK_FILE};
use crate::bundleid::BundleId;
use crate::error::{Classify, ExitKind};
use crate::profile::{Older, Profile, UnitKey, Versions};
use crate::sha256hex::Sha256Hex;
use crate::timestamp::Timestamp;

/// The state file inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// The ledger file inside the state directory.
pub const LEDGER_FILE: &str = "ledger.jsonl";
/// The state format this build reads and writes.
pub const STATE_FORMAT: u32 = 1;
/// A state file larger than this is refused as corrupt.
pub const MAX_STATE_SIZE: u64 = 16 * 1024 * 1024;

/// The state directory or file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("cannot create the state directory {path}: {source}{}; pass --state-dir to use another", fix(.source))]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("refusing the state directory {path}: {reason}")]
    NotOurs { path: PathBuf, reason: String },
    #[error("cannot read {path}: {source}{}", fix(.source))]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}{}", fix(.source))]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a gapferry state file ({reason}); restore it from a backup, \
         or move it away to start over (rollback protection then restarts from nothing)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} was written by a newer gapferry (state format {format}); upgrade gapferry")]
    TooNew { path: PathBuf, format: u32 },
    #[error("cannot choose a default state directory: {reason}; pass --state-dir DIR")]
    NoDefault { reason: String },
    /// A recorded version the profile cannot read (never skipped: an
    /// unreadable record must not let an older bundle through).
    #[error("the state records {key} as serving versions the {profile} profile cannot read ({reason}); restore state.json from a backup")]
    BadVersions {
        key: UnitKey,
        profile: &'static str,
        reason: String,
    },
}

impl Classify for StateError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Operational
    }
}

/// One file served in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedFile {
    pub name: String,
    pub size: u64,
    pub sha256: crate::sha256hex::Sha256Hex,
}

/// What one slot serves and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedSlot {
    pub engine_version: String,
    pub definition_version: String,
    /// The bundle the set came from. Absent only in records older
    /// gapferry wrote for a folder it found on disk, with a blank here
    /// (read as absent; see [`legacy`]).
    #[serde(
        default,
        deserialize_with = "legacy::blank_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub bundle_id: Option<BundleId>,
    #[serde(
        default,
        deserialize_with = "legacy::blank_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub channel: Option<String>,
    /// Absent where older records wrote 0 (see `bundle_id`).
    #[serde(
        default,
        deserialize_with = "legacy::zero_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub sequence: Option<u64>,
    /// Absent where older records wrote a blank (see `bundle_id`).
    #[serde(
        default,
        deserialize_with = "legacy::blank_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub manifest_sha256: Option<Sha256Hex>,
    pub files: Vec<ServedFile>,
    pub imported_at: Timestamp,
    /// The bundle's expiry, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
}

/// A bundle a channel has accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedBundle {
    pub manifest_sha256: Sha256Hex,
    pub bundle_id: BundleId,
    pub accepted_at: Timestamp,
}

/// Accepted sequences of one channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    pub accepted: BTreeMap<u64, AcceptedBundle>,
}

/// The whole persisted state (`state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    /// Keyed by the slot's layout path, `linux/production/arch_x86_64`.
    #[serde(default)]
    pub served: BTreeMap<UnitKey, ServedSlot>,
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelState>,
    /// An import that was publishing when it was interrupted; the next run
    /// reconciles it against what the mirror serves (see `mirror::import`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingImport>,
    /// What each `<ring>_back/arch_<arch>` folder holds, when gapferry put it
    /// there; keyed like `served`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub back: BTreeMap<UnitKey, ServedSlot>,
    /// Manifests (sha256) withdrawn by `gapferry rollback`: importing them
    /// again needs `--allow-downgrade`, so a re-delivered bad release does
    /// not silently roll forward.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub withdrawn: std::collections::BTreeSet<Sha256Hex>,
    /// The ledger entry recording the change this state holds, saved with it
    /// and cleared once the ledger has it, so that a kill between the two
    /// writes cannot lose the line: the next run under the lock appends it
    /// (see [`super::session::commit`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_due: Option<super::ledger::LedgerEntry>,
    /// The trust policy this mirror follows (root-pinned imports,
    /// `--trust-root`); absent on a mirror that trusts `--trust` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<AdoptedTrust>,
}

/// The adopted trust policy, kept whole in `state.json` (so it changes in
/// the same atomic write as the import that adopted it), with the root
/// keys pinned when the first version was adopted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptedTrust {
    pub version: u64,
    /// The `--trust-root` key ids the first adopted version was checked
    /// against, and `--root-threshold`.
    pub pinned_roots: Vec<crate::keys::KeyId>,
    pub pinned_threshold: usize,
    /// The policy's exact signed bytes (JSON, UTF-8).
    pub policy: String,
    /// Its root signature files (minisig text), as carried.
    pub signatures: Vec<String>,
    pub adopted_at: Timestamp,
}

impl AdoptedTrust {
    /// Records `policy`, adopted under `pins`.
    pub fn new(
        policy: &crate::trustpolicy::SignedPolicy,
        pinned_roots: Vec<crate::keys::KeyId>,
        pinned_threshold: usize,
        now: Timestamp,
    ) -> Self {
        AdoptedTrust {
            version: policy.version(),
            pinned_roots,
            pinned_threshold,
            policy: String::from_utf8(policy.bytes.clone()).expect("a parsed policy is UTF-8"),
            signatures: policy
                .signatures
                .iter()
                .map(|s| {
                    s.to_text(&format!(
                        "gapferry trust policy signature by root key {}",
                        s.key_id
                    ))
                })
                .collect(),
            adopted_at: now,
        }
    }

    /// The stored policy, parsed again (as strictly as a carried one).
    pub fn load(&self) -> Result<crate::trustpolicy::SignedPolicy, String> {
        let mut p = crate::trustpolicy::SignedPolicy::parse(self.policy.as_bytes().to_vec())?;
        if p.version() != self.version {
            return Err(format!(
                "holds version {} but records {}",
                p.version(),
                self.version
            ));
        }
        for s in &self.signatures {
            let sig = crate::sign::Signature::parse(s.as_bytes()).map_err(|e| e.to_string())?;
            p.add_signature(sig)?;
        }
        Ok(p)
    }
}

/// What an import is about to publish, saved before the first folder moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingImport {
    pub channel: String,
    pub sequence: u64,
    pub accepted: AcceptedBundle,
    /// Slot key -> (arch folder path, what it will serve).
    pub slots: BTreeMap<UnitKey, PendingSlot>,
    /// Key ids that signed the bundle, for the ledger entry that the run
    /// settling an interrupted import writes on its behalf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<crate::keys::KeyId>,
}

/// One folder of a pending import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSlot {
    pub dir: std::path::PathBuf,
    pub served: ServedSlot,
}

impl Default for State {
    fn default() -> Self {
        State {
            format: STATE_FORMAT,
            served: BTreeMap::new(),
            channels: BTreeMap::new(),
            pending: None,
            back: BTreeMap::new(),
            withdrawn: Default::default(),
            ledger_due: None,
            trust: None,
        }
    }
}

impl State {
    /// What unit `key` serves, if gapferry published it.
    pub fn served(&self, key: &UnitKey) -> Option<&ServedSlot> {
        self.served.get(key)
    }

    /// What the state alone says unit `key` serves.
    pub fn baseline(&self, key: &UnitKey) -> Baseline {
        self.served(key)
            .map_or(Baseline::Empty, |s| Baseline::Recorded(s.clone()))
    }

    /// Records what unit `key` now serves.
    pub fn record_served(&mut self, key: &UnitKey, served: ServedSlot) {
        self.served.insert(key.clone(), served);
    }

    /// The bundle `channel` accepted with `sequence`, if any.
    pub fn accepted(&self, channel: &str, sequence: u64) -> Option<&AcceptedBundle> {
        self.channels.get(channel)?.accepted.get(&sequence)
    }

    /// The highest sequence `channel` has accepted.
    pub fn highest_sequence(&self, channel: &str) -> Option<u64> {
        self.channels
            .get(channel)?
            .accepted
            .keys()
            .next_back()
            .copied()
    }

    /// Records that `channel` accepted `sequence`.
    pub fn record_accepted(&mut self, channel: &str, sequence: u64, bundle: AcceptedBundle) {
        self.channels
            .entry(channel.to_string())
            .or_default()
            .accepted
            .insert(sequence, bundle);
    }

    /// Parses `state.json` bytes; `path` names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, StateError> {
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if probe.format > STATE_FORMAT {
            return Err(StateError::TooNew {
                path: path.to_path_buf(),
                format: probe.format,
            });
        }
        let state: State = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        // state.json does not name its profile: a record no known profile
        // can read is corrupt.
        for (key, s) in &state.served {
            let v = s.versions();
            let known = crate::profile::all();
            let errs: Vec<String> = known
                .iter()
                .filter_map(|p| p.check_versions(&v).err())
                .collect();
            if errs.len() == known.len() {
                return Err(corrupt(format!("served.{key}.{}", errs[0])));
            }
        }
        Ok(state)
    }

    /// Decides what an incoming bundle is relative to this state (see
    /// [`Decision`]). `incoming.items` are the units the import would
    /// publish (after the filters).
    pub fn check_rollback(&self, incoming: &Incoming<'_>) -> Result<Decision, StateError> {
        check_rollback(self, incoming)
    }
}

/// The incoming bundle, as far as the rollback policy cares.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub channel: &'a str,
    pub sequence: u64,
    pub bundle_id: &'a BundleId,
    pub manifest_sha256: &'a Sha256Hex,
    pub items: &'a [IncomingItem],
    /// Orders the versions of `items`.
    pub profile: &'a dyn Profile,
}

/// One unit an incoming bundle would publish.
#[derive(Debug, Clone)]
pub struct IncomingItem {
    pub key: UnitKey,
    pub versions: Versions,
    /// What its folder serves now, as the import judged it.
    pub served: Baseline,
}

/// What a unit's folder serves before an import, as far as the rollback
/// policy is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Baseline {
    /// gapferry recorded what the folder serves, and the folder still
    /// holds it.
    Recorded(ServedSlot),
    /// No record that still holds (a mirror filled before gapferry, by
    /// hand, or a recorded set damaged since): the folder's own files say
    /// it serves these versions.
    OnDiskOnly(Versions),
    /// Nothing is served.
    Empty,
}

impl Baseline {
    /// The versions served, if any.
    pub fn versions(&self) -> Option<Versions> {
        match self {
            Baseline::Recorded(s) => Some(s.versions()),
            Baseline::OnDiskOnly(v) => Some(v.clone()),
            Baseline::Empty => None,
        }
    }

    /// The manifest of the bundle whose set is served, when recorded.
    pub fn manifest_sha256(&self) -> Option<&Sha256Hex> {
        match self {
            Baseline::Recorded(s) => s.manifest_sha256.as_ref(),
            _ => None,
        }
    }
}

impl ServedSlot {
    /// The versions this record serves.
    pub fn versions(&self) -> Versions {
        Versions {
            engine_version: self.engine_version.clone(),
            definition_version: self.definition_version.clone(),
        }
    }
}

/// Why a bundle counts as older than what is served or accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Downgrade {
    /// A lower sequence than the channel has already accepted.
    Sequence {
        channel: String,
        incoming: u64,
        highest: u64,
    },
    /// Older definitions than the slot serves.
    Definitions {
        slot: String,
        incoming: String,
        served: String,
    },
    /// Same definitions, older engine than the slot serves.
    Engine {
        slot: String,
        incoming: String,
        served: String,
    },
}

impl Downgrade {
    /// The folder it concerns (none for a sequence) and what is older.
    fn parts(&self) -> (Option<&str>, String) {
        match self {
            Downgrade::Sequence {
                channel,
                incoming,
                highest,
            } => (
                None,
                format!(
                    "sequence {incoming} is below {highest}, already accepted on channel {channel:?}"
                ),
            ),
            Downgrade::Definitions {
                slot,
                incoming,
                served,
            } => (
                Some(slot),
                format!("definitions {incoming} are older than the served {served}"),
            ),
            Downgrade::Engine {
                slot,
                incoming,
                served,
            } => (
                Some(slot),
                format!("engine {incoming} is older than the served {served} (same definitions)"),
            ),
        }
    }
}

impl fmt::Display for Downgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts() {
            (Some(slot), text) => write!(f, "{slot}: {text}"),
            (None, text) => f.write_str(&text),
        }
    }
}

/// All of `d` in one line, folders older for the same reason named together:
/// `linux/production/arch_x86_64, linux/production/arch_arm64: definitions
/// 1.2.0 are older than the served 1.3.0; sequence ...`.
pub fn describe_downgrades(d: &[Downgrade]) -> String {
    let mut groups: Vec<(Vec<&str>, String)> = Vec::new();
    for (slot, text) in d.iter().map(Downgrade::parts) {
        match (
            slot,
            groups.iter_mut().find(|g| !g.0.is_empty() && g.1 == text),
        ) {
            (Some(slot), Some(group)) => group.0.push(slot),
            (slot, _) => groups.push((slot.into_iter().collect(), text)),
        }
    }
    groups
        .iter()
        .map(|(slots, text)| match slots.is_empty() {
            true => text.clone(),
            false => format!("{}: {text}", slots.join(", ")),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The rollback policy's verdict on an incoming bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Nothing served or accepted is newer: import.
    Newer,
    /// This exact bundle (channel, sequence and manifest) was imported and
    /// every slot it would publish still serves it: nothing to do, exit 0.
    SameBundle,
    /// Accepted once and superseded since by a higher sequence: a late
    /// re-delivery. "Already imported" (exit 0, nothing published) unless
    /// `--allow-downgrade` asks to publish it again.
    Superseded(Vec<Downgrade>),
    /// Older than what is served or accepted: refuse (exit 4) unless
    /// `--allow-downgrade`.
    Older(Vec<Downgrade>),
    /// The channel accepted this sequence with a different manifest: reject
    /// (exit 3), even with `--allow-downgrade`.
    SequenceConflict {
        channel: String,
        sequence: u64,
        accepted_bundle_id: String,
        accepted_manifest_sha256: String,
        incoming_manifest_sha256: String,
    },
}

/// What the import should do once the policy allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Go {
    /// Exit 0 "already imported", change nothing (record it in the ledger).
    AlreadyImported,
    /// Publish; `downgrades` is non-empty only with `--allow-downgrade`
    /// (record that in the ledger).
    Import { downgrades: Vec<Downgrade> },
}

/// The rollback policy refused the bundle.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error(
        "refused: the bundle is older than what this mirror serves or has accepted ({}); \
         a replayed or out-of-order bundle? To roll back on purpose, add --allow-downgrade",
        describe_downgrades(.0)
    )]
    Older(Vec<Downgrade>),
    #[error(
        "rejected: channel {channel:?} already accepted sequence {sequence} as bundle \
         {accepted_bundle_id} (manifest sha256 {accepted_manifest_sha256}), but this bundle's \
         manifest is {incoming_manifest_sha256}: two different bundles carry one sequence \
         number; have the producer export again with a new sequence"
    )]
    SequenceConflict {
        channel: String,
        sequence: u64,
        accepted_bundle_id: String,
        accepted_manifest_sha256: String,
        incoming_manifest_sha256: String,
    },
}

impl Classify for PolicyError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            PolicyError::Older(_) => ExitKind::Policy,
            PolicyError::SequenceConflict { .. } => ExitKind::Rejected,
        }
    }
}

impl Decision {
    /// Applies `--allow-downgrade` and turns refusals into errors.
    pub fn enforce(self, allow_downgrade: bool) -> Result<Go, PolicyError> {
        match self {
            Decision::Newer => Ok(Go::Import {
                downgrades: Vec::new(),
            }),
            Decision::SameBundle => Ok(Go::AlreadyImported),
            Decision::Superseded(downgrades) if allow_downgrade => Ok(Go::Import { downgrades }),
            Decision::Superseded(_) => Ok(Go::AlreadyImported),
            Decision::Older(downgrades) if allow_downgrade => Ok(Go::Import { downgrades }),
            Decision::Older(d) => Err(PolicyError::Older(d)),
            Decision::SequenceConflict {
                channel,
                sequence,
                accepted_bundle_id,
                accepted_manifest_sha256,
                incoming_manifest_sha256,
            } => Err(PolicyError::SequenceConflict {
                channel,
                sequence,
                accepted_bundle_id,
                accepted_manifest_sha256,
                incoming_manifest_sha256,
            }),
        }
    }
}

/// The rollback policy: sequence per channel first (a conflict beats
/// everything), then the served versions of every unit the bundle would
/// publish (each item's [`Baseline`]), in the profile's order (`mde`:
/// definitions first, then engine). Equal versions are not a downgrade (a
/// re-export of the same definitions). A version the profile cannot read is
/// an error, never skipped.
pub fn check_rollback(state: &State, incoming: &Incoming<'_>) -> Result<Decision, StateError> {
    let mut downgrades = Vec::new();
    let mut superseded = false;
    match state.accepted(incoming.channel, incoming.sequence) {
        Some(acc) if acc.manifest_sha256 != *incoming.manifest_sha256 => {
            return Ok(Decision::SequenceConflict {
                channel: incoming.channel.to_string(),
                sequence: incoming.sequence,
                accepted_bundle_id: acc.bundle_id.to_string(),
                accepted_manifest_sha256: acc.manifest_sha256.to_string(),
                incoming_manifest_sha256: incoming.manifest_sha256.to_string(),
            });
        }
        Some(_) => {
            let all_served = incoming
                .items
                .iter()
                .all(|it| it.served.manifest_sha256() == Some(incoming.manifest_sha256));
            if all_served {
                return Ok(Decision::SameBundle);
            }
            // A re-delivery of a bundle this channel accepted and has since
            // superseded (a data diode delivers twice, late).
            superseded = state
                .highest_sequence(incoming.channel)
                .is_some_and(|h| h > incoming.sequence);
            // Accepted before, but some slot (filtered out then, or replaced
            // since) does not serve it: a replay unless nothing newer was
            // accepted since; the sequence and version checks decide.
        }
        None => {}
    }
    if let Some(highest) = state.highest_sequence(incoming.channel) {
        if incoming.sequence < highest {
            downgrades.push(Downgrade::Sequence {
                channel: incoming.channel.to_string(),
                incoming: incoming.sequence,
                highest,
            });
        }
    }
    for it in incoming.items {
        let Some(served) = it.served.versions() else {
            continue;
        };
        let older = incoming
            .profile
            .older(&it.versions, &served)
            .map_err(|reason| StateError::BadVersions {
                key: it.key.clone(),
                profile: incoming.profile.name(),
                reason,
            })?;
        match older {
            Some(Older::Primary) => downgrades.push(Downgrade::Definitions {
                slot: it.key.to_string(),
                incoming: it.versions.definition_version.clone(),
                served: served.definition_version.clone(),
            }),
            Some(Older::Secondary) => downgrades.push(Downgrade::Engine {
                slot: it.key.to_string(),
                incoming: it.versions.engine_version.clone(),
                served: served.engine_version.clone(),
            }),
            None => {}
        }
    }
    Ok(if superseded {
        Decision::Superseded(downgrades)
    } else if downgrades.is_empty() {
        Decision::Newer
    } else {
        Decision::Older(downgrades)
    })
}

/// The state directory of one mirror.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens (creating it, mode 0700, if missing) the state directory; see
    /// [`fsx::ensure_private_dir`] for what an existing one must be.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        fsx::ensure_private_dir(path).map_err(|source| {
            match source
                .get_ref()
                .and_then(|e| e.downcast_ref::<fsx::NotOurs>())
            {
                Some(not_ours) => StateError::NotOurs {
                    path: path.to_path_buf(),
                    reason: not_ours.to_string(),
                },
                None => StateError::CreateDir {
                    path: path.to_path_buf(),
                    source,
                },
            }
        })?;
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    /// Names an existing state directory without creating anything (for
    /// read-only commands such as `ledger verify`).
    pub fn existing(path: &Path) -> Result<Self, StateError> {
        if !path.is_dir() {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotFound, "no such state directory"),
            });
        }
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state_path(&self) -> PathBuf {
        self.path.join(STATE_FILE)
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.path.join(LEDGER_FILE)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.path.join(LOCK_FILE)
    }

    /// This mirror's ledger.
    pub fn ledger(&self) -> super::ledger::Ledger {
        super::ledger::Ledger::new(&self.ledger_path())
    }

    /// The line an interrupted run left due in `state.json` (see
    /// [`super::session::commit`]) that the ledger does not have yet: the
    /// next import or rollback appends it. For read-only reports about the
    /// ledger: a state file that cannot be read is `status`'s to report, and
    /// counts as nothing due.
    pub fn ledger_due(
        &self,
    ) -> Result<Option<super::ledger::LedgerEntry>, super::ledger::LedgerError> {
        let Ok(state) = self.load() else {
            return Ok(None);
        };
        match state.ledger_due {
            Some(e) if !self.ledger().ends_with(&e)? => Ok(Some(e)),
            _ => Ok(None),
        }
    }

    /// Takes this mirror's import lock, waiting at most `wait`.
    pub fn lock(&self, wait: Duration) -> Result<ImportLock, LockError> {
        ImportLock::acquire(&self.lock_path(), wait)
    }

    /// Reads `state.json`; a missing file is the empty state.
    pub fn load(&self) -> Result<State, StateError> {
        let path = self.state_path();
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let mut bytes = Vec::new();
        file.take(MAX_STATE_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| StateError::Read {
                path: path.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_STATE_SIZE {
            return Err(StateError::Corrupt {
                path,
                reason: format!("larger than {MAX_STATE_SIZE} bytes"),
            });
        }
        State::from_bytes(&bytes, &path)
    }

    /// Writes `state.json` atomically (call it under the import lock).
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let path = self.state_path();
        let mut bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        bytes.push(b'\n');
        fsx::write_atomic(&path, &bytes, fsx::PRIVATE_FILE_MODE)
            .map_err(|source| StateError::Write { path, source })
    }
}

/// The default state directory for the served folder `served` (the mirror
/// root, or `--target`); see the module docs.
pub fn default_state_dir(served: &Path) -> Result<PathBuf, StateError> {
    if served.to_str().is_some_and(crate::s3::Location::is_s3) {
        return Err(StateError::NoDefault {
            reason: format!(
                "{} is in object storage, whose state directory is always given \
                 (the one its imports use)",
                served.display()
            ),
        });
    }
    let base = default_base()?;
    let canonical = canonical_lenient(served).map_err(|e| StateError::NoDefault {
        reason: format!("cannot resolve {}: {e}", served.display()),
    })?;
    let dir = base.join(state_dir_name(&canonical));
    if is_inside(&dir, &canonical) {
        return Err(StateError::NoDefault {
            reason: format!(
                "{} would be inside the served tree {}",
                dir.display(),
                canonical.display()
            ),
        });
    }
    Ok(dir)
}

/// `<last component>-<16 hex of sha256(path bytes)>`, safe as a file name.
pub fn state_dir_name(canonical: &Path) -> String {
    let digest = Sha256::digest(canonical.as_os_str().as_bytes());
    let last: String = canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let last = last.trim_start_matches('.');
    let last = if last.is_empty() { "mirror" } else { last };
    format!("{last}-{}", &hex::encode(digest)[..16])
}

/// True when `inner` is `outer` or below it (lexically; both absolute).
pub fn is_inside(inner: &Path, outer: &Path) -> bool {
    fn norm(p: &Path) -> Vec<Component<'_>> {
        p.components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect()
    }
    let (i, o) = (norm(inner), norm(outer));
    i.len() >= o.len() && i[..o.len()] == o[..]
}

fn canonical_lenient(p: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(p)?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(mut c) => {
                for part in rest.iter().rev() {
                    c.push(part);
                }
                return Ok(c);
            }
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    existing = parent;
                }
                _ => return Ok(abs),
            },
        }
    }
}

/// Environment variable naming the base of default state directories.
pub const ENV_STATE_DIR: &str = "GAPFERRY_STATE_DIR";

fn default_base() -> Result<PathBuf, StateError> {
    if let Some(base) = std::env::var_os(ENV_STATE_DIR).filter(|v| !v.is_empty()) {
        let base = PathBuf::from(base);
        if !base.is_absolute() {
            return Err(StateError::NoDefault {
                reason: format!("{ENV_STATE_DIR}={} is not an absolute path", base.display()),
            });
        }
        return Ok(base);
    }
    let root = rustix::process::geteuid().is_root();
    let home = || {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|h| h.is_absolute())
            .ok_or_else(|| StateError::NoDefault {
                reason: "HOME is not set".into(),
            })
    };
    if cfg!(target_vendor = "apple") {
        return Ok(if root {
            PathBuf::from("/Library/Application Support/gapferry")
        } else {
            home()?.join("Library/Application Support/gapferry")
        });
    }
    if root {
        return Ok(PathBuf::from("/var/lib/gapferry"));
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").map(PathBuf::from) {
        if x.is_absolute() {
            return Ok(x.join("gapferry"));
        }
    }
    Ok(home()?.join(".local/state/gapferry"))
}

/// Reading records older gapferry wrote for a folder it found on disk,
/// with blanks (`""`, `0`) where a bundle's id, channel, sequence and
/// manifest digest go: a blank is read as absent, so that no code after the
/// read compares against a sentinel. Anything else must parse.
mod legacy {
    use std::str::FromStr;

    use serde::{de, Deserialize, Deserializer};

    pub(super) fn blank_is_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => s.parse().map(Some).map_err(de::Error::custom),
        }
    }

    pub(super) fn zero_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.filter(|n| *n != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mde::{Arch, Platform, Ring, Slot};

    fn slot(arch: Arch) -> UnitKey {
        Slot {
            platform: Platform::Linux,
            ring: Ring::Production,
            arch,
        }
        .key()
    }

    fn item(arch: Arch, eng: &str, def: &str) -> IncomingItem {
        IncomingItem {
            key: slot(arch),
            versions: Versions {
                engine_version: eng.into(),
                definition_version: def.into(),
            },
            served: Baseline::Empty,
        }
    }

    /// A stand-in manifest digest named by a label (`"m5"`).
    fn digest(label: &str) -> Sha256Hex {
        Sha256Hex::of(label.as_bytes())
    }

    fn served(eng: &str, def: &str, sha: &str, seq: u64) -> ServedSlot {
        ServedSlot {
            engine_version: eng.into(),
            definition_version: def.into(),
            bundle_id: Some(format!("b{seq}").parse().unwrap()),
            channel: Some("default".into()),
            sequence: Some(seq),
            manifest_sha256: Some(digest(sha)),
            files: vec![ServedFile {
                name: "updates.zip".into(),
                size: 3,
                sha256: "00".repeat(32).parse().unwrap(),
            }],
            imported_at: "2024-05-01T00:00:00Z".parse().unwrap(),
            expires: None,
        }
    }

    /// A state that accepted sequence 5 (manifest "m5") serving x86_64 at
    /// engine 1.1.100.0, definitions 1.400.10.0.
    fn base() -> State {
        let mut st = State::default();
        st.record_accepted(
            "default",
            5,
            AcceptedBundle {
                manifest_sha256: digest("m5"),
                bundle_id: "b5".parse().unwrap(),
                accepted_at: "2024-05-01T00:00:00Z".parse().unwrap(),
            },
        );
        st.record_served(
            &slot(Arch::X86_64),
            served("1.1.100.0", "1.400.10.0", "m5", 5),
        );
        st
    }

    /// The items as an import plans them: each judged by the state.
    fn judged(st: &State, items: &[IncomingItem]) -> Vec<IncomingItem> {
        items
            .iter()
            .map(|i| IncomingItem {
                served: st.baseline(&i.key),
                ..i.clone()
            })
            .collect()
    }

    fn decide(st: &State, seq: u64, sha: &str, items: &[IncomingItem]) -> Decision {
        st.check_rollback(&Incoming {
            channel: "default",
            sequence: seq,
            bundle_id: &"x".parse().unwrap(),
            manifest_sha256: &digest(sha),
            items: &judged(st, items),
            profile: &crate::mde::profile::Mde,
        })
        .unwrap()
    }

    #[test]
    fn downgrades_of_the_same_versions_are_named_together() {
        let defs = |slot: &str, incoming: &str| Downgrade::Definitions {
            slot: slot.into(),
            incoming: incoming.into(),
            served: "1.3.0".into(),
        };
        let d = [
            Downgrade::Sequence {
                channel: "c".into(),
                incoming: 4,
                highest: 5,
            },
            defs("linux/production/arch_x86_64", "1.2.0"),
            defs("linux/production/arch_arm64", "1.2.0"),
            defs("mac/production/arch_arm64", "1.1.0"),
        ];
        assert_eq!(
            describe_downgrades(&d),
            "sequence 4 is below 5, already accepted on channel \"c\"; \
             linux/production/arch_x86_64, linux/production/arch_arm64: definitions 1.2.0 are \
             older than the served 1.3.0; \
             mac/production/arch_arm64: definitions 1.1.0 are older than the served 1.3.0"
        );
        assert_eq!(
            d[1].to_string(),
            "linux/production/arch_x86_64: definitions 1.2.0 are older than the served 1.3.0"
        );
    }

    #[test]
    fn rollback_decisions() {
        let st = base();
        let x = |e, d| vec![item(Arch::X86_64, e, d)];
        assert_eq!(
            decide(&st, 6, "m6", &x("1.1.100.0", "1.400.11.0")),
            Decision::Newer
        );
        // Numeric, not lexical: .9 < .10.
        assert!(matches!(
            decide(&st, 6, "m6", &x("1.1.100.0", "1.400.9.0")),
            Decision::Older(d) if matches!(d[..], [Downgrade::Definitions { .. }])
        ));
        // Newer definitions win over an older engine.
        assert_eq!(
            decide(&st, 6, "m6", &x("1.1.99.0", "1.400.11.0")),
            Decision::Newer
        );
        assert!(matches!(
            decide(&st, 6, "m6", &x("1.1.99.0", "1.400.10.0")),
            Decision::Older(d) if matches!(d[..], [Downgrade::Engine { .. }])
        ));
        // Same versions under a new sequence: a re-export, fine.
        assert_eq!(
            decide(&st, 6, "m6", &x("1.1.100.0", "1.400.10.0")),
            Decision::Newer
        );
        assert!(matches!(
            decide(&st, 4, "m4", &x("1.1.100.0", "1.400.11.0")),
            Decision::Older(d) if matches!(d[..], [Downgrade::Sequence { incoming: 4, highest: 5, .. }])
        ));
        assert_eq!(
            decide(&st, 5, "m5", &x("1.1.100.0", "1.400.10.0")),
            Decision::SameBundle
        );
        let conflict = decide(&st, 5, "other", &x("1.1.100.0", "1.400.11.0"));
        assert!(matches!(
            conflict,
            Decision::SequenceConflict { sequence: 5, .. }
        ));
        // Other channels have their own sequences.
        let d = st
            .check_rollback(&Incoming {
                channel: "lab",
                sequence: 1,
                bundle_id: &"x".parse().unwrap(),
                manifest_sha256: &digest("l1"),
                items: &judged(&st, &x("1.1.100.0", "1.400.11.0")),
                profile: &crate::mde::profile::Mde,
            })
            .unwrap();
        assert_eq!(d, Decision::Newer);
        // Same bundle, but a slot it carries was filtered out last time.
        let both = vec![
            item(Arch::X86_64, "1.1.100.0", "1.400.10.0"),
            item(Arch::Arm64, "1.1.100.0", "1.400.10.0"),
        ];
        assert_eq!(decide(&st, 5, "m5", &both), Decision::Newer);
    }

    #[test]
    fn enforce_maps_to_exit_kinds() {
        let st = base();
        let old = decide(&st, 4, "m4", &[item(Arch::X86_64, "1.1.1.0", "1.1.1.0")]);
        let err = old.clone().enforce(false).unwrap_err();
        assert_eq!(err.exit_kind(), ExitKind::Policy);
        let msg = err.to_string();
        assert!(
            msg.contains("--allow-downgrade") && msg.contains("sequence 4"),
            "{msg}"
        );
        assert!(msg.contains("linux/production/arch_x86_64"), "{msg}");
        match old.enforce(true).unwrap() {
            Go::Import { downgrades } => assert_eq!(downgrades.len(), 2),
            g => panic!("{g:?}"),
        }
        let conflict = decide(&st, 5, "zz", &[]);
        let err = conflict.enforce(true).unwrap_err();
        assert_eq!(err.exit_kind(), ExitKind::Rejected);
        assert!(err.to_string().contains("b5"));
        assert_eq!(
            decide(&st, 5, "m5", &[]).enforce(false).unwrap(),
            Go::AlreadyImported
        );
    }

    #[test]
    fn state_round_trip_and_corruption() {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir::open(&t.path().join("s")).unwrap();
        assert_eq!(sd.load().unwrap(), State::default());
        let st = base();
        sd.save(&st).unwrap();
        assert_eq!(sd.load().unwrap(), st);
        assert_eq!(sd.load().unwrap().highest_sequence("default"), Some(5));
        let names: Vec<_> = std::fs::read_dir(sd.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATE_FILE], "no temp files left");

        std::fs::write(sd.state_path(), b"{\"format\": 1, \"served\": [").unwrap();
        let e = sd.load().unwrap_err().to_string();
        assert!(
            e.contains(&sd.state_path().display().to_string()) && e.contains("backup"),
            "{e}"
        );
        std::fs::write(sd.state_path(), b"{\"format\": 9}").unwrap();
        assert!(matches!(
            sd.load(),
            Err(StateError::TooNew { format: 9, .. })
        ));
        let mut bad = base();
        bad.served
            .get_mut("linux/production/arch_x86_64")
            .unwrap()
            .engine_version = "x".into();
        std::fs::write(sd.state_path(), serde_json::to_vec(&bad).unwrap()).unwrap();
        assert!(matches!(sd.load(), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn default_dir_naming() {
        let a = state_dir_name(Path::new("/srv/mde mirror"));
        assert!(
            a.starts_with("mde_mirror-") && a.len() == "mde_mirror-".len() + 16,
            "{a}"
        );
        assert_ne!(a, state_dir_name(Path::new("/srv2/mde mirror")));
        assert!(state_dir_name(Path::new("/")).starts_with("root-"));
        assert!(state_dir_name(Path::new("/x/.hidden")).starts_with("hidden-"));
        assert!(is_inside(Path::new("/a/b/c"), Path::new("/a/b")));
        assert!(is_inside(Path::new("/a/b"), Path::new("/a/b")));
        assert!(!is_inside(Path::new("/a/bc"), Path::new("/a/b")));
        let t = tempfile::tempdir().unwrap();
        let d = default_state_dir(&t.path().join("not/yet")).unwrap();
        assert!(!is_inside(&d, t.path()));
        assert!(d.file_name().unwrap().to_string_lossy().starts_with("yet-"));
    }

    #[test]
    fn blanks_of_older_records_load_as_absent() {
        let old = r#"{"engine_version":"1.1.1.0","definition_version":"1.2.3.0","bundle_id":"","channel":"","sequence":0,"manifest_sha256":"","files":[],"imported_at":"2024-05-01T00:00:00Z"}"#;
        let r: ServedSlot = serde_json::from_str(old).unwrap();
        assert_eq!(
            (r.bundle_id, r.channel, r.sequence, r.manifest_sha256),
            (None, None, None, None)
        );
        let bad = old.replace(r#""manifest_sha256":"""#, r#""manifest_sha256":"m5""#);
        let e = serde_json::from_str::<ServedSlot>(&bad).unwrap_err();
        assert!(
            e.to_string().contains("not 64 lower-case hex digits"),
            "{e}"
        );
        let new = served("1.1.1.0", "1.2.3.0", "m5", 5);
        let text = serde_json::to_string(&new).unwrap();
        assert_eq!(serde_json::from_str::<ServedSlot>(&text).unwrap(), new);
    }
}
