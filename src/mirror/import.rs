//! `gapferry import` as a library: verify before write, stream into staging,
//! publish each arch folder atomically, record state and the ledger.
//!
//! Order of work, which is the security argument:
//! 1. take the mirror's import lock (the ledger and state are only ever
//!    written under it) and finish whatever a crashed import left;
//! 2. read the bundle head (manifest size-capped and strictly parsed),
//!    check signatures against the trust set and threshold, the profile's
//!    rules, channel, expiry, the future-dated check, the sequence bound
//!    (at most a day ahead of `created`) and the rollback policy
//!    — all before a single payload byte is decompressed to disk;
//! 3. stream each payload file through a size-limited hashing copy into
//!    staging on the mirror's filesystem; check the end of the archive; check
//!    each carried `manifest.json` says what the signed item says;
//! 4. only then publish, folder by folder, and record what is served.
//!
//! A rejected or failed import leaves the served tree as it was: staging is
//! removed, and folders created only to hold staging are removed again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::ledger::{self, Ledger, LedgerEntry, Outcome, SlotChange, Versions};
use super::publish::{self, Destination, PublishOptions, Staging};
use super::setcheck;
use super::state::{
    AcceptedBundle, Go, Incoming, IncomingItem, PendingImport, PendingSlot, ServedFile, ServedSlot,
    State, StateDir,
};
use crate::bundle::reader::{BundleReader, Head};
use crate::bundle::volumes::{self, BundleInput};
use crate::bundle::{trust, BundleError};
use crate::error::{Classify, ExitKind};
use crate::keys::TrustSet;
use crate::manifest::format_time;
use crate::mde::check::CarriedSlot;
use crate::mde::{FolderManifest, Platform, Ring, Slot, MANIFEST_JSON, UPDATES_ZIP};
use crate::progress::Observer;

/// How far in the future `created` may lie before a bundle is refused.
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(24 * 3600);

/// Where an import publishes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A mirror root: `<root>/<platform>/<ring>/arch_<arch>/`.
    Mirror(PathBuf),
    /// The folder an endpoint's `offlineDefinitionUpdateUrl` names, for one
    /// platform and ring: `<dir>/arch_<arch>/`, n-1 in `<dir>_back/`.
    Ring(PathBuf),
}

impl Target {
    /// The served folder (for the default state directory).
    pub fn served_root(&self) -> &Path {
        match self {
            Target::Mirror(p) | Target::Ring(p) => p,
        }
    }
}

/// Everything an import needs, checked by the caller.
#[derive(Debug)]
pub struct ImportOptions {
    pub bundle: PathBuf,
    pub trust: TrustSet,
    pub threshold: usize,
    pub target: Target,
    pub state_dir: PathBuf,
    pub channel: String,
    pub platforms: Vec<Platform>,
    pub rings: Vec<Ring>,
    pub allow_downgrade: bool,
    pub allow_expired: bool,
    pub lock_wait: Duration,
    pub publish: PublishOptions,
}

/// One arch folder in the result.
#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    /// Layout path, e.g. `linux/production/arch_x86_64`.
    pub slot: String,
    /// The arch folder endpoints read.
    pub dir: PathBuf,
    pub before: Option<Versions>,
    pub after: Option<Versions>,
    /// Whether this import replaced the folder.
    pub published: bool,
}

/// The result of an import (the `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// `imported`, `already_imported`, `rejected`, `refused` or `failed`.
    pub outcome: Outcome,
    pub bundle: PathBuf,
    pub bundle_id: Option<String>,
    pub channel: Option<String>,
    pub sequence: Option<u64>,
    pub manifest_sha256: Option<String>,
    pub signers: Vec<String>,
    pub slots: Vec<SlotReport>,
    /// Payload bytes written to the mirror.
    pub bytes_written: u64,
    /// Downgrades accepted with `--allow-downgrade`.
    pub downgrades: Vec<String>,
    /// Arch folders whose interrupted publish this run completed first.
    pub recovered: Vec<PathBuf>,
    /// Served sets this import replaced that no longer matched what was
    /// imported (`<slot>: <the first file that differs>`): removed, never
    /// kept as n-1; n-1 stayed as it was.
    pub discarded: Vec<String>,
    /// The error, when the outcome is not a success.
    pub error: Option<String>,
    pub exit_code: i32,
    /// The receipt (`GF1-...`, see [`super::receipt`]) of a successful
    /// import, filled in once it is kept in the state directory; null otherwise.
    pub receipt: Option<String>,
}

/// Why an import did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
    #[error(transparent)]
    State(#[from] super::state::StateError),
    #[error(transparent)]
    Lock(#[from] super::lock::LockError),
    #[error(transparent)]
    Ledger(#[from] super::ledger::LedgerError),
    #[error("{bundle}: {policy}")]
    Rollback {
        bundle: PathBuf,
        policy: Box<super::state::PolicyError>,
    },
    /// The command line asks for something this bundle cannot give (exit 2).
    #[error("{bundle}: {reason}")]
    Usage { bundle: PathBuf, reason: String },
}

impl Classify for ImportError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            ImportError::Bundle(e) => e.exit_kind(),
            ImportError::Publish(e) => e.exit_kind(),
            ImportError::State(e) => e.exit_kind(),
            ImportError::Lock(e) => e.exit_kind(),
            ImportError::Ledger(e) => e.exit_kind(),
            ImportError::Rollback { policy, .. } => policy.exit_kind(),
            ImportError::Usage { .. } => ExitKind::Usage,
        }
    }
}

/// What the attempt learned before it ended, for the ledger and the report.
#[derive(Debug, Default)]
struct Attempt {
    head: Option<Head>,
    signers: Vec<String>,
    slots: Vec<SlotReport>,
    bytes_written: u64,
    downgrades: Vec<super::state::Downgrade>,
    recovered: Vec<PathBuf>,
    /// Per selected slot: the served set's first mismatch with its record,
    /// when it has a record and does not match it.
    damaged: Vec<Option<String>>,
    /// Damaged served sets this run replaced and removed (slot: why).
    discarded: Vec<String>,
    /// The run saved its own ledger entry with the state (the import stands
    /// from then on); `ledger_error` is why appending it failed, if it did.
    logged: bool,
    ledger_error: Option<ImportError>,
}

/// Runs one import. Every attempt that got as far as the lock is recorded in
/// the ledger, whatever its outcome; the report is returned for failures too
/// (with the error) so callers can print it.
pub fn import(
    opts: &ImportOptions,
    observer: &dyn Observer,
) -> (ImportReport, Option<ImportError>) {
    // The head is read before the locks are taken: a hostile file must not
    // hold up every other import of the mirror while it is being refused.
    let opened = volumes::open(
        &opts.bundle,
        volumes::OpenChecks {
            trust: Some(&opts.trust),
            hash_volumes: true,
        },
        observer,
    );
    import_opened(opts, opened, observer)
}

/// [`import`] of a bundle whose head the caller has already read (or failed
/// to read), outside the locks; `opts.bundle` names it in the report and the
/// ledger. Nothing is decoded again.
pub fn import_opened(
    opts: &ImportOptions,
    opened: Result<volumes::Opened, BundleError>,
    observer: &dyn Observer,
) -> (ImportReport, Option<ImportError>) {
    let mut attempt = Attempt::default();
    let (outcome, err) = match StateDir::open(&opts.state_dir) {
        Err(e) => (Outcome::Failed, Some(ImportError::from(e))),
        Ok(state_dir) => match state_dir.lock(opts.lock_wait).and_then(|l| {
            super::lock::claim_served(opts.target.served_root(), state_dir.path())?;
            Ok(l)
        }) {
            Err(e) => (Outcome::Failed, Some(ImportError::from(e))),
            Ok(_locks) => {
                let result = run(opts, &state_dir, opened, &mut attempt, observer);
                let (outcome, err) = match result {
                    Ok(o) => (o, None),
                    Err(e) => (outcome_of(&e), Some(e)),
                };
                if attempt.logged {
                    // A ledger that cannot be written is still an
                    // operational failure to report; the line is appended
                    // by the next run under the lock.
                    return report(opts, attempt, outcome, err);
                }
                let entry = ledger_entry(opts, &attempt, outcome, err.as_ref());
                // Under the flood limit: an attempt that changed nothing may
                // only be counted (see ledger_quota).
                match Ledger::in_state_dir(&state_dir).record_attempt(&entry) {
                    Ok(_) => (outcome, err),
                    // The import itself stands; a ledger that cannot be
                    // written is still an operational failure to report.
                    Err(e) if err.is_none() => (outcome, Some(e.into())),
                    Err(_) => (outcome, err),
                }
            }
        },
    };
    report(opts, attempt, outcome, err)
}

fn report(
    opts: &ImportOptions,
    mut attempt: Attempt,
    outcome: Outcome,
    err: Option<ImportError>,
) -> (ImportReport, Option<ImportError>) {
    let err = err.or(attempt.ledger_error.take());
    let head = attempt.head.as_ref();
    let report = ImportReport {
        outcome,
        bundle: opts.bundle.clone(),
        bundle_id: head.map(|h| h.manifest.bundle_id.clone()),
        channel: head.map(|h| h.manifest.channel.clone()),
        sequence: head.map(|h| h.manifest.sequence),
        manifest_sha256: head.map(|h| h.manifest_sha256.clone()),
        signers: attempt.signers,
        slots: attempt.slots,
        bytes_written: attempt.bytes_written,
        downgrades: attempt.downgrades.iter().map(|d| d.to_string()).collect(),
        recovered: attempt.recovered,
        discarded: attempt.discarded,
        error: err.as_ref().map(|e| format!("{e}")),
        exit_code: err.as_ref().map_or(0, |e| e.exit_kind().code()),
        receipt: None,
    };
    (report, err)
}

fn outcome_of(e: &ImportError) -> Outcome {
    match e.exit_kind() {
        ExitKind::Rejected => Outcome::Rejected,
        ExitKind::Policy => Outcome::Refused,
        _ => Outcome::Failed,
    }
}

fn ledger_entry(
    opts: &ImportOptions,
    attempt: &Attempt,
    outcome: Outcome,
    err: Option<&ImportError>,
) -> LedgerEntry {
    let head = attempt.head.as_ref();
    let mut reason = err.map(|e| e.to_string());
    if err.is_none() {
        let mut notes = Vec::new();
        if !attempt.downgrades.is_empty() {
            notes.push(format!(
                "downgrade allowed by --allow-downgrade: {}",
                super::state::describe_downgrades(&attempt.downgrades)
            ));
        }
        for d in &attempt.discarded {
            notes.push(format!(
                "{d}: the replaced set no longer matched what was imported, so it was \
                 discarded instead of becoming n-1 (n-1 kept as it was)"
            ));
        }
        if !notes.is_empty() {
            reason = Some(notes.join("; "));
        }
    }
    LedgerEntry {
        reason,
        bundle_path: Some(opts.bundle.display().to_string()),
        bundle_id: head.map(|h| h.manifest.bundle_id.clone()),
        manifest_sha256: head.map(|h| h.manifest_sha256.clone()),
        signer_key_ids: attempt.signers.clone(),
        channel: head.map(|h| h.manifest.channel.clone()),
        sequence: head.map(|h| h.manifest.sequence),
        allow_downgrade: opts.allow_downgrade,
        // The head was read but no signer counted: its fields are claims.
        unverified: head.is_some() && attempt.signers.is_empty(),
        slots: attempt
            .slots
            .iter()
            .map(|s| SlotChange {
                slot: s.slot.clone(),
                before: s.before.clone(),
                after: if s.published { s.after.clone() } else { None },
            })
            .collect(),
        ..LedgerEntry::new(outcome)
    }
}

fn rejected(bundle: &Path, reason: String) -> ImportError {
    BundleError::Rejected {
        path: bundle.to_path_buf(),
        reason,
    }
    .into()
}

fn refused(bundle: &Path, reason: String) -> ImportError {
    BundleError::Policy {
        path: bundle.to_path_buf(),
        reason,
    }
    .into()
}

/// The destination of one slot under the chosen target.
fn destination(target: &Target, slot: &Slot) -> Result<Destination, publish::PublishError> {
    match target {
        Target::Mirror(root) => Destination::in_mirror(root, slot),
        Target::Ring(dir) => Destination::in_target(dir, slot.arch),
    }
}

/// Reads what an arch folder serves from its `manifest.json`, if anything.
fn versions_on_disk(dir: &Path) -> Option<FolderManifest> {
    FolderManifest::read(&dir.join(MANIFEST_JSON)).ok()
}

fn run(
    opts: &ImportOptions,
    state_dir: &StateDir,
    opened: Result<volumes::Opened, BundleError>,
    attempt: &mut Attempt,
    observer: &dyn Observer,
) -> Result<Outcome, ImportError> {
    let bundle = opts.bundle.as_path();
    // Finish whatever a crashed import left before looking at anything.
    let areas = match &opts.target {
        Target::Mirror(root) => publish::mirror_areas(root),
        Target::Ring(dir) => vec![std::path::absolute(dir)
            .ok()
            .and_then(|d| d.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."))],
    };
    for area in &areas {
        for r in publish::recover(area, &opts.publish)? {
            // Staging that never reached its journal published nothing:
            // removing it is not completing an interrupted publish.
            if r.action == publish::RecoveryAction::Completed {
                attempt.recovered.push(r.current);
            }
        }
    }
    let mut state = state_dir.load()?;
    settle_interrupted::<ImportError>(state_dir, &mut state)?;

    // Head: manifest, signatures, profile rules, policy. Nothing written yet.
    // A split bundle's signed index and every volume were checked when it
    // was opened, before a byte was decompressed.
    let opened = opened?;
    let (reader, head) = (opened.reader, opened.head);
    attempt.head = Some(head.clone());
    let m = &head.manifest;
    let signers = trust::require(&head, &opts.trust, opts.threshold, bundle)?;
    attempt.signers = signers.iter().map(|k| k.to_string()).collect();
    let carried = crate::mde::check::slots(m).map_err(|e| rejected(bundle, e.to_string()))?;
    if m.channel != opts.channel {
        return Err(refused(
            bundle,
            format!(
                "the bundle is for channel {:?}, this import accepts {:?} (use --channel {:?} if this mirror belongs to that channel)",
                m.channel, opts.channel, m.channel
            ),
        ));
    }
    let now = SystemTime::now();
    if m.is_from_future(now, MAX_FUTURE_SKEW) {
        return Err(refused(
            bundle,
            format!(
                "created {} is more than 24 hours in the future (check this machine's clock, or the exporter's)",
                m.created
            ),
        ));
    }
    // Sequences are Unix seconds: one far ahead of its own signed `created`
    // would fast-forward the channel and lock every honest bundle out.
    if m.sequence > m.max_sequence() {
        return Err(refused(
            bundle,
            format!(
                "sequence {} is more than {} seconds (one day) ahead of the bundle's created time {} \
                 (at most {} allowed; gapferry's sequences are Unix seconds, docs/FORMAT.md section 3): \
                 accepting it would lock every honest bundle out of channel {:?}. Nothing was changed; \
                 have the producer export again without a hand-picked --sequence, and if nobody made \
                 this bundle, treat its signing key as stolen and remove it from the trust set",
                m.sequence,
                crate::manifest::MAX_SEQUENCE_AHEAD,
                m.created,
                m.max_sequence(),
                m.channel
            ),
        ));
    }
    if m.is_expired(now) && !opts.allow_expired {
        return Err(refused(
            bundle,
            format!(
                "expired at {}; ask for a fresh bundle, or add --allow-expired to import it anyway",
                m.expires
            ),
        ));
    }
    let selected = select(opts, &carried)?;

    // Rollback policy against the recorded state, and against what the
    // folders hold on disk where the state knows nothing (a mirror filled
    // before gapferry, or by hand).
    let mut effective = state.clone();
    let mut dests = Vec::new();
    for c in &selected {
        let dest = destination(&opts.target, &c.slot)?;
        // Before anything is read from or staged next to these folders.
        dest.check_folders()?;
        // What the state says a folder serves only counts while the folder
        // still holds it (size and SHA-256 of every file): one removed or
        // damaged since is judged by what is on disk, so importing the
        // bundle again restores it rather than answering "already
        // imported"; and a damaged set is discarded, never kept as n-1.
        let damaged = state
            .served(&c.slot)
            .filter(|s| !s.files.is_empty())
            .and_then(|s| setcheck::check(&dest.current(), &s.files, setcheck::Depth::Hashes).err())
            .map(|m| m.to_string());
        if damaged.is_some() {
            effective.served.remove(&c.slot.rel());
        }
        attempt.damaged.push(damaged);
        let on_disk = versions_on_disk(&dest.current());
        if effective.served(&c.slot).is_none() {
            if let Some(fm) = &on_disk {
                if fm.engine().is_ok() && fm.definitions().is_ok() {
                    effective.record_served(
                        &c.slot,
                        ServedSlot {
                            engine_version: fm.engine_version.clone(),
                            definition_version: fm.definition_version.clone(),
                            bundle_id: String::new(),
                            channel: String::new(),
                            sequence: 0,
                            manifest_sha256: String::new(),
                            files: Vec::new(),
                            imported_at: String::new(),
                            expires: None,
                        },
                    );
                }
            }
        }
        let before = effective.served(&c.slot).map(|s| Versions {
            engine_version: s.engine_version.clone(),
            definition_version: s.definition_version.clone(),
        });
        attempt.slots.push(SlotReport {
            slot: c.slot.rel(),
            dir: dest.current(),
            before,
            after: Some(Versions {
                engine_version: c.engine_version.to_string(),
                definition_version: c.definition_version.to_string(),
            }),
            published: false,
        });
        dests.push(dest);
    }
    let items: Vec<IncomingItem> = selected
        .iter()
        .map(|c| IncomingItem {
            slot: c.slot,
            engine_version: c.engine_version.clone(),
            definition_version: c.definition_version.clone(),
        })
        .collect();
    let incoming = Incoming {
        channel: &m.channel,
        sequence: m.sequence,
        bundle_id: &m.bundle_id,
        manifest_sha256: &head.manifest_sha256,
        items: &items,
    };
    let go = effective
        .check_rollback(&incoming)
        .enforce(opts.allow_downgrade)
        .map_err(|policy| ImportError::Rollback {
            bundle: bundle.to_path_buf(),
            policy: Box::new(policy),
        })?;
    if state.withdrawn.contains(&head.manifest_sha256) && !opts.allow_downgrade {
        return Err(refused(
            bundle,
            "this bundle was withdrawn by `gapferry rollback`; run `gapferry rollback` again to roll forward, import a newer bundle, or add --allow-downgrade to publish it anyway".into(),
        ));
    }
    match go {
        Go::AlreadyImported => return Ok(Outcome::AlreadyImported),
        Go::Import { downgrades } => {
            attempt.downgrades = downgrades;
        }
    }

    // Which folders need writing: a folder already serving this very
    // manifest (an earlier, partly completed import of it) is left alone.
    let publish_mask: Vec<bool> = selected
        .iter()
        .map(|c| {
            effective
                .served(&c.slot)
                .is_none_or(|s| s.manifest_sha256 != head.manifest_sha256)
        })
        .collect();

    // Stream: every file is hashed; files of folders to publish are staged.
    let mut owner: BTreeMap<usize, (usize, &'static str)> = BTreeMap::new();
    for (i, c) in selected.iter().enumerate() {
        owner.insert(c.updates_zip, (i, UPDATES_ZIP));
        owner.insert(c.manifest_json, (i, MANIFEST_JSON));
    }
    let mut created = CreatedDirs::default();
    for (dest, publish) in dests.iter().zip(&publish_mask) {
        if *publish {
            created.note(dest);
        }
    }
    check_free_space(bundle, &dests, &publish_mask, &selected, m)?;
    let result = stage_and_publish(
        opts,
        state_dir,
        &mut state,
        &head,
        reader,
        &selected,
        &dests,
        &publish_mask,
        &owner,
        attempt,
        observer,
    );
    if result.is_err() {
        created.remove_empty();
    }
    result
}

/// Refuses early, before staging a byte, when the mirror's filesystem
/// cannot hold what this import would stage (plus a margin), instead of
/// failing half-way with ENOSPC.
fn check_free_space(
    bundle: &Path,
    dests: &[Destination],
    publish_mask: &[bool],
    selected: &[CarriedSlot],
    m: &crate::manifest::Manifest,
) -> Result<(), ImportError> {
    let need: u64 = selected
        .iter()
        .zip(publish_mask)
        .filter(|(_, p)| **p)
        .map(|(c, _)| m.files[c.updates_zip].size + m.files[c.manifest_json].size)
        .sum();
    let Some(probe) = dests.first().and_then(|d| {
        d.area()
            .ancestors()
            .find(|a| a.exists())
            .map(Path::to_path_buf)
    }) else {
        return Ok(());
    };
    let Ok(st) = rustix::fs::statvfs(&probe) else {
        return Ok(());
    };
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let margin = 1 << 20;
    if need.saturating_add(margin) > free {
        return Err(ImportError::Publish(publish::PublishError::Write {
            path: probe,
            source: std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "{}: the import needs {need} bytes of staging but the mirror's filesystem has {free} free (the filesystem is full: free space, then run the command again)",
                    bundle.display()
                ),
            ),
        }));
    }
    Ok(())
}

/// The carried folders this import publishes, after the filters.
fn select(opts: &ImportOptions, carried: &[CarriedSlot]) -> Result<Vec<CarriedSlot>, ImportError> {
    let selected: Vec<CarriedSlot> = carried
        .iter()
        .filter(|c| opts.platforms.is_empty() || opts.platforms.contains(&c.slot.platform))
        .filter(|c| opts.rings.is_empty() || opts.rings.contains(&c.slot.ring))
        .cloned()
        .collect();
    let usage = |reason: String| ImportError::Usage {
        bundle: opts.bundle.clone(),
        reason,
    };
    let carried_list = || {
        carried
            .iter()
            .map(|c| c.slot.rel())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if selected.is_empty() {
        return Err(usage(format!(
            "no carried folder matches --platform/--ring (the bundle carries {})",
            carried_list()
        )));
    }
    if let Target::Ring(dir) = &opts.target {
        let mut pairs: Vec<(Platform, Ring)> = selected
            .iter()
            .map(|c| (c.slot.platform, c.slot.ring))
            .collect();
        pairs.sort();
        pairs.dedup();
        if pairs.len() > 1 {
            return Err(usage(format!(
                "--target {} is one platform and ring, but the bundle carries several ({}); choose one with --platform and --ring",
                dir.display(),
                carried_list()
            )));
        }
    }
    Ok(selected)
}

#[allow(clippy::too_many_arguments)]
fn stage_and_publish(
    opts: &ImportOptions,
    state_dir: &StateDir,
    state: &mut State,
    head: &Head,
    mut reader: BundleReader<BundleInput>,
    selected: &[CarriedSlot],
    dests: &[Destination],
    publish_mask: &[bool],
    owner: &BTreeMap<usize, (usize, &'static str)>,
    attempt: &mut Attempt,
    observer: &dyn Observer,
) -> Result<Outcome, ImportError> {
    let bundle = opts.bundle.as_path();
    let m = &head.manifest;
    let mut staging = Staging::new(opts.publish.clone());
    let mut staged: Vec<Option<publish::StagedSlot>> = selected.iter().map(|_| None).collect();
    let mut served_files: Vec<Vec<ServedFile>> = selected.iter().map(|_| Vec::new()).collect();
    observer.start("importing", m.total_size());
    for idx in 0..m.files.len() {
        match owner.get(&idx) {
            Some(&(slot_i, name)) if publish_mask[slot_i] => {
                if staged[slot_i].is_none() {
                    staged[slot_i] = Some(staging.stage(&dests[slot_i])?);
                }
                let slot = staged[slot_i].as_ref().expect("just staged");
                let mut file = slot.create_file(name)?;
                let path = file.path().to_path_buf();
                let entry = reader
                    .copy_file(&mut file, &path, observer)
                    .map_err(|e| match e {
                        BundleError::Io { path, source } => {
                            ImportError::Publish(publish::PublishError::Write { path, source })
                        }
                        other => other.into(),
                    })?;
                attempt.bytes_written += file.finish()?;
                served_files[slot_i].push(ServedFile {
                    name: name.to_string(),
                    size: entry.size,
                    sha256: entry.sha256,
                });
            }
            Some(&(slot_i, name)) => {
                let entry = reader.copy_file(&mut std::io::sink(), Path::new("-"), observer)?;
                served_files[slot_i].push(ServedFile {
                    name: name.to_string(),
                    size: entry.size,
                    sha256: entry.sha256,
                });
            }
            None => {
                reader.copy_file(&mut std::io::sink(), Path::new("-"), observer)?;
            }
        }
    }
    reader.finish()?;
    observer.finish();

    // The carried manifest.json must say what the signed item says, or
    // endpoints would be served versions nobody signed for.
    for (i, c) in selected.iter().enumerate() {
        if let Some(s) = &staged[i] {
            let path = s.dir().join(MANIFEST_JSON);
            let fm = FolderManifest::read(&path)
                .map_err(|e| rejected(bundle, format!("{}/{MANIFEST_JSON}: {e}", c.slot.rel())))?;
            if fm.engine_version != c.engine_version.as_str()
                || fm.definition_version != c.definition_version.as_str()
            {
                return Err(rejected(
                    bundle,
                    format!(
                        "{}/{MANIFEST_JSON} says engine {} definitions {}, but the signed item says engine {} definitions {}",
                        c.slot.rel(),
                        fm.engine_version,
                        fm.definition_version,
                        c.engine_version,
                        c.definition_version
                    ),
                ));
            }
        }
    }

    // Record the intent, then publish folder by folder.
    let now = format_time(SystemTime::now());
    let accepted = AcceptedBundle {
        manifest_sha256: head.manifest_sha256.clone(),
        bundle_id: m.bundle_id.clone(),
        accepted_at: now.clone(),
    };
    let mut pending_slots = BTreeMap::new();
    for (i, c) in selected.iter().enumerate() {
        if staged[i].is_some() {
            pending_slots.insert(
                c.slot.rel(),
                PendingSlot {
                    dir: dests[i].current(),
                    served: served_slot(c, head, &served_files[i], &now),
                },
            );
        }
    }
    state.pending = Some(PendingImport {
        channel: m.channel.clone(),
        sequence: m.sequence,
        accepted: accepted.clone(),
        slots: pending_slots,
        signers: attempt.signers.clone(),
    });
    state_dir.save(state)?;
    for (i, c) in selected.iter().enumerate() {
        if let Some(s) = staged[i].take() {
            // A set that no longer matches its record must never become
            // n-1: rolling back would serve it. Discard it, keep n-1.
            let damaged = attempt.damaged.get(i).cloned().flatten();
            let old_set = match damaged {
                Some(_) => publish::OldSet::Discard,
                None => publish::OldSet::KeepAsBack,
            };
            let published = staging.publish_with(s, &m.bundle_id, old_set)?;
            attempt.slots[i].published = true;
            if let (true, Some(why)) = (published.discarded_old, damaged) {
                attempt.discarded.push(format!("{}: {why}", c.slot.rel()));
            }
            if published.back.is_some() {
                match state.served(&c.slot).cloned() {
                    Some(old) => {
                        state.back.insert(c.slot.rel(), old);
                    }
                    None => {
                        state.back.remove(&c.slot.rel());
                    }
                }
            }
        }
        state.record_served(&c.slot, served_slot(c, head, &served_files[i], &now));
    }
    state.record_accepted(&m.channel, m.sequence, accepted);
    state.withdrawn.remove(&head.manifest_sha256);
    state.pending = None;
    let entry = ledger_entry(opts, attempt, Outcome::Imported, None);
    ledger::save_due(state_dir, state, entry)?;
    attempt.logged = true;
    if let Err(e) = ledger::settle::<ImportError>(state_dir, state) {
        attempt.ledger_error = Some(e);
    }
    Ok(Outcome::Imported)
}

fn served_slot(c: &CarriedSlot, head: &Head, files: &[ServedFile], now: &str) -> ServedSlot {
    ServedSlot {
        engine_version: c.engine_version.to_string(),
        definition_version: c.definition_version.to_string(),
        bundle_id: head.manifest.bundle_id.clone(),
        channel: head.manifest.channel.clone(),
        sequence: head.manifest.sequence,
        manifest_sha256: head.manifest_sha256.clone(),
        files: files.to_vec(),
        imported_at: now.to_string(),
        expires: Some(head.manifest.expires.clone()),
    }
}

/// Records what an interrupted run left, once `publish::recover` has
/// completed its folders (call it under the lock): a ledger line still due,
/// and an import killed while publishing, whose ledger line is written now
/// (or the ledger would never show that bundle as imported). Rollback calls
/// it too, so that it checks n-1 against an up-to-date record.
pub(super) fn settle_interrupted<E>(state_dir: &StateDir, state: &mut State) -> Result<(), E>
where
    E: From<super::state::StateError> + From<super::ledger::LedgerError>,
{
    ledger::settle::<E>(state_dir, state)?;
    if state.pending.is_some() {
        match reconcile(state) {
            Some(entry) => ledger::commit::<E>(state_dir, state, entry)?,
            None => state_dir.save(state)?,
        }
    }
    Ok(())
}

/// Settles an import that was interrupted while publishing: every folder
/// that now holds the pending set (recovery rolls journaled publishes
/// forward) is recorded as served; the bundle's sequence counts as accepted.
/// Returns the ledger entry of the interrupted import when it published
/// anything.
fn reconcile(state: &mut State) -> Option<LedgerEntry> {
    let p = state.pending.take()?;
    let versions = |s: &ServedSlot| Versions {
        engine_version: s.engine_version.clone(),
        definition_version: s.definition_version.clone(),
    };
    let mut changes = Vec::new();
    for (key, ps) in &p.slots {
        if setcheck::check(&ps.dir, &ps.served.files, setcheck::Depth::Hashes).is_ok() {
            if let Some(slot) = Slot::all().find(|s| s.rel() == *key) {
                changes.push(SlotChange {
                    slot: key.clone(),
                    before: state.served(&slot).map(versions),
                    after: Some(versions(&ps.served)),
                });
                let replaced = state.served(&slot).cloned();
                state.record_served(&slot, ps.served.clone());
                settle_back(state, key, replaced, &ps.dir);
            }
        }
    }
    if changes.is_empty() {
        return None;
    }
    let entry = LedgerEntry {
        reason: Some(
            "published by an earlier run that was interrupted (killed or crashed) before \
             recording it; recorded by the next import"
                .into(),
        ),
        bundle_id: Some(p.accepted.bundle_id.clone()),
        manifest_sha256: Some(p.accepted.manifest_sha256.clone()),
        signer_key_ids: p.signers,
        channel: Some(p.channel.clone()),
        sequence: Some(p.sequence),
        slots: changes,
        ..LedgerEntry::new(Outcome::Imported)
    };
    state.record_accepted(&p.channel, p.sequence, p.accepted);
    Some(entry)
}

/// Makes the record of a slot's n-1 say what its folder holds after an
/// interrupted publish that recovery completed: the replaced set when it was
/// rotated there, else the record it had, or none when neither matches (a
/// record that does not match would make `rollback` refuse a good n-1).
fn settle_back(state: &mut State, key: &str, replaced: Option<ServedSlot>, current: &Path) {
    let Some(back) = publish::back_of(current) else {
        return;
    };
    let holds = |r: &ServedSlot| {
        !r.files.is_empty() && setcheck::check(&back, &r.files, setcheck::Depth::Hashes).is_ok()
    };
    match replaced.filter(|r| holds(r)) {
        Some(r) => {
            state.back.insert(key.to_string(), r);
        }
        None => {
            if state.back.get(key).is_some_and(|b| !holds(b)) {
                state.back.remove(key);
            }
        }
    }
}

/// Folders that did not exist before the import and that staging may
/// create; removed again (when empty) if the import fails, so a rejected
/// bundle leaves the served tree exactly as it was.
#[derive(Debug, Default)]
struct CreatedDirs {
    dirs: Vec<PathBuf>,
}

impl CreatedDirs {
    fn note(&mut self, dest: &Destination) {
        let ring_dir = dest
            .current()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut missing = Vec::new();
        let mut p = Some(ring_dir.as_path());
        while let Some(d) = p {
            if d.as_os_str().is_empty() || d.exists() {
                break;
            }
            missing.push(d.to_path_buf());
            p = d.parent();
        }
        for d in missing {
            if !self.dirs.contains(&d) {
                self.dirs.push(d);
            }
        }
    }

    fn remove_empty(&self) {
        let mut dirs = self.dirs.clone();
        // Deepest first.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
    }
}
