//! `gapferry import` as a library: accept before write, stream into
//! staging, publish each unit's folder atomically, record state, the ledger
//! and the receipt. It works through the profile seam and never names a
//! profile.
//!
//! The phases, in order, which is the security argument:
//! 1. **session** ([`Session`]): take the mirror's import lock (the ledger
//!    and state are only ever written under it) and finish whatever a
//!    crashed import left;
//! 2. **accept** ([`verify::accept`]): the bundle head (manifest size-capped
//!    and strictly parsed), with `--trust-root` the carried trust policy
//!    against the adopted one (adopted only in commit), signatures against
//!    the trust set and threshold (or the policy's),
//!    the profile's rules, channel, the future-dated check, the sequence
//!    bound (at most a day ahead of `created`) and expiry;
//! 3. **plan**: one `PlannedUnit` per selected unit with its `Baseline`
//!    (recorded, on disk only, or empty), judged by the rollback policy —
//!    all before a single payload byte is decompressed to disk;
//! 4. **stage**: stream each payload file through a size-limited hashing
//!    copy into staging on the mirror's filesystem; check the end of the
//!    archive; have the profile check each staged unit against what was
//!    signed for it;
//! 5. **commit**: only then publish, unit by unit, record what is served
//!    with its ledger line, and keep the receipt.
//!
//! A rejected or failed import leaves the served tree as it was: staging is
//! removed, and folders created only to hold staging are removed again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::ledger::{LedgerEntry, Outcome, SlotChange, Versions};
use super::publish::{self, Destination, PublishOptions, StagedSlot, Staging};
use super::session::{Session, SessionError};
use super::setcheck;
use super::state::{
    AcceptedBundle, Baseline, Go, Incoming, IncomingItem, PendingImport, PendingSlot, ServedFile,
    ServedSlot, State, StateDir,
};
use crate::bundle::reader::{BundleReader, Head};
use crate::bundle::volumes::{self, BundleInput};
use crate::bundle::BundleError;
use crate::error::{Classify, ExitKind};
use crate::keys::{KeyId, TrustSet};
use crate::profile::{Profile, Unit, UnitKey};
use crate::progress::Observer;
use crate::sha256hex::Sha256Hex;
use crate::timestamp::Timestamp;
use crate::verify::{self, Accepted, Policy, Purpose};

/// How far in the future `created` may lie before a bundle is refused.
pub const MAX_FUTURE_SKEW: Duration = verify::MAX_FUTURE_SKEW;

/// Which carried units an import publishes: for each named tag (`mde`:
/// `platform`, `ring`), the values allowed; a tag not named allows all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitFilter(Vec<(String, Vec<String>)>);

impl UnitFilter {
    /// Also requires tag `tag` to be one of `values` (none: no requirement).
    pub fn with<T: ToString>(mut self, tag: &str, values: impl IntoIterator<Item = T>) -> Self {
        let values: Vec<String> = values.into_iter().map(|v| v.to_string()).collect();
        if !values.is_empty() {
            self.0.push((tag.to_string(), values));
        }
        self
    }

    /// Whether `unit` passes.
    pub fn admits(&self, unit: &Unit) -> bool {
        self.0
            .iter()
            .all(|(tag, values)| unit.tag(tag).is_some_and(|v| values.iter().any(|a| a == v)))
    }
}

/// Where an import publishes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A mirror root: each unit at its placement (`mde`:
    /// `<root>/<platform>/<ring>/arch_<arch>/`).
    Mirror(PathBuf),
    /// One group folder (`mde`: the folder an endpoint's
    /// `offlineDefinitionUpdateUrl` names, for one platform and ring):
    /// `<dir>/<leaf>/`, n-1 in `<dir>_back/`.
    Ring(PathBuf),
    /// An `s3://BUCKET/PREFIX` mirror: the mirror layout as objects
    /// (docs/OPERATIONS.md, "Publishing into object storage"); units are
    /// staged under its shadow root in the state directory.
    S3(std::sync::Arc<super::s3mirror::S3Mirror>),
}

impl Target {
    /// The served folder (for the default state directory).
    pub fn served_root(&self) -> &Path {
        match self {
            Target::Mirror(p) | Target::Ring(p) => p,
            Target::S3(m) => m.shadow_root(),
        }
    }

    /// Where the folders of this target are checked.
    pub fn tree(&self) -> setcheck::Tree<'_> {
        match self {
            Target::S3(m) => setcheck::Tree::S3(m),
            _ => setcheck::Tree::Fs,
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
    /// Which carried units to publish (`mde`: `--platform`, `--ring`).
    pub only: UnitFilter,
    pub allow_downgrade: bool,
    pub allow_expired: bool,
    pub lock_wait: Duration,
    pub publish: PublishOptions,
    /// Root-pinned trust (`--trust-root`, `--root-threshold`): signer keys
    /// come from the trust policy instead of `trust` (docs/FORMAT.md
    /// section 11).
    pub roots: Option<crate::trustpolicy::Roots>,
    /// Use an expired trust policy anyway (`--allow-expired-policy`).
    pub allow_expired_policy: bool,
}

/// The trust policy an import counted signatures under (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct TrustReport {
    /// The version the signatures were counted under.
    pub version: u64,
    /// The version adopted before this import (null on a fresh mirror).
    pub previous_version: Option<u64>,
    /// Whether this import adopted `version` (only an accepted bundle
    /// adopts: outcome `imported` or `already_imported`).
    pub adopted: bool,
    pub expires: String,
    pub days_left: u64,
    /// It had expired (imported only with `--allow-expired-policy`).
    pub expired: bool,
    /// The expiry warning, when the policy expires within 30 days.
    pub warning: Option<String>,
}

impl ImportOptions {
    /// The keys a split bundle's volume index must be signed by before its
    /// volumes are read: the `--trust` keys. With `--trust-root` the signer
    /// keys are only known once the head's carried policy has been checked,
    /// so the index is not checked against keys (each volume still is
    /// against its SHA-256 in the index, and the head's signatures and
    /// payload hashes decide as for a single file).
    pub fn index_trust(&self) -> Option<&TrustSet> {
        match self.roots {
            Some(_) => None,
            None => Some(&self.trust),
        }
    }
}

/// One arch folder in the result.
#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    /// The unit's key, e.g. `linux/production/arch_x86_64`.
    pub slot: UnitKey,
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
    pub manifest_sha256: Option<Sha256Hex>,
    pub signers: Vec<KeyId>,
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
    /// Volumes of a split bundle rebuilt from its parity volumes
    /// (`volume 3 of 5 is missing`); absent when none was.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rebuilt_volumes: Vec<String>,
    /// The error, when the outcome is not a success (in `--json`, the
    /// document's `error.message`).
    #[serde(skip)]
    pub error: Option<String>,
    pub exit_code: i32,
    /// The receipt (`GF1-...`, see [`super::receipt`]) of a successful
    /// import, filled in once it is kept in the state directory; null otherwise.
    pub receipt: Option<String>,
    /// The ledger head the kept receipt carries, or why there is none (for
    /// the person at the terminal; not part of the `--json` output).
    #[serde(skip)]
    pub ledger_head: Result<Option<super::ledger::Checkpoint>, String>,
    /// With `--trust-root`: the trust policy the signatures counted under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_policy: Option<TrustReport>,
}

/// Why an import did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The lock, the state, the ledger or recovery failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("{bundle}: {policy}")]
    Rollback {
        bundle: PathBuf,
        policy: Box<super::state::PolicyError>,
    },
    /// The command line asks for something this bundle cannot give (exit 2).
    #[error("{bundle}: {reason}")]
    Usage { bundle: PathBuf, reason: String },
    /// The adopted trust policy cannot be used (pins that do not match, a
    /// damaged record).
    #[error(transparent)]
    Trust(#[from] crate::trustpolicy::TrustError),
    /// Publishing into an `s3://` mirror failed.
    #[error(transparent)]
    S3(#[from] super::s3mirror::S3PublishError),
    #[error("{path}: cannot keep the receipt {receipt}: {source}; the import itself stands, note the receipt by hand")]
    Receipt {
        path: PathBuf,
        receipt: String,
        source: std::io::Error,
    },
}

impl Classify for ImportError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            ImportError::Bundle(e) => e.exit_kind(),
            ImportError::Session(e) => e.exit_kind(),
            ImportError::S3(e) => e.exit_kind(),
            ImportError::Rollback { policy, .. } => policy.exit_kind(),
            ImportError::Usage { .. } => ExitKind::Usage,
            ImportError::Trust(e) => e.exit_kind(),
            ImportError::Receipt { .. } => ExitKind::Operational,
        }
    }
}

super::session::from_session_parts!(ImportError);

/// What the attempt learned before it ended, for the ledger and the report.
#[derive(Debug, Default)]
struct Attempt {
    head: Option<Head>,
    signers: Vec<KeyId>,
    slots: Vec<SlotReport>,
    bytes_written: u64,
    downgrades: Vec<super::state::Downgrade>,
    recovered: Vec<PathBuf>,
    /// Volumes rebuilt from parity (why each was rebuilt).
    rebuilt_volumes: Vec<String>,
    /// Damaged served sets this run replaced and removed (slot: why).
    discarded: Vec<String>,
    /// The run saved its own ledger entry with the state (the import stands
    /// from then on); `ledger_error` is why appending it failed, if it did.
    logged: bool,
    ledger_error: Option<ImportError>,
    /// The trust policy the signatures counted under, if root-pinned.
    trust: Option<TrustReport>,
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
            trust: opts.index_trust(),
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
    let session = match Session::open(&opts.state_dir, opts.target.served_root(), opts.lock_wait) {
        Ok(s) => s,
        Err(e) => return report(opts, attempt, Outcome::Failed, Some(e.into())),
    };
    let (outcome, err) = match run(opts, &session, opened, &mut attempt, observer) {
        Ok(o) => (o, None),
        Err(e) => (outcome_of(&e), Some(e)),
    };
    // A run that saved its own line with the state has it in the ledger (or
    // due there: a ledger that cannot be written is still an operational
    // failure to report, and the line is appended by the next run under the
    // lock).
    let (outcome, err) = if attempt.logged {
        (outcome, err)
    } else {
        let entry = ledger_entry(opts, &attempt, outcome, err.as_ref());
        // Under the flood limit: an attempt that changed nothing may only
        // be counted (see ledger_quota).
        match session.dir().ledger().record_attempt(&entry) {
            Ok(_) => (outcome, err),
            // The import itself stands; a ledger that cannot be written is
            // still an operational failure to report.
            Err(e) if err.is_none() => (outcome, Some(e.into())),
            Err(_) => (outcome, err),
        }
    };
    let (mut rep, err) = report(opts, attempt, outcome, err);
    if err.is_some() {
        return (rep, err);
    }
    // Still under the locks: the receipt names the ledger head right after
    // this import's own line.
    match keep_receipt(session.dir(), &mut rep) {
        Ok(()) => (rep, None),
        Err(e) => {
            rep.error = Some(e.to_string());
            rep.exit_code = e.exit_kind().code();
            (rep, Some(e))
        }
    }
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
        bundle_id: head.map(|h| h.manifest.bundle_id.to_string()),
        channel: head.map(|h| h.manifest.channel.clone()),
        sequence: head.map(|h| h.manifest.sequence),
        manifest_sha256: head.map(|h| h.manifest_sha256.clone()),
        signers: attempt.signers,
        slots: attempt.slots,
        bytes_written: attempt.bytes_written,
        downgrades: attempt.downgrades.iter().map(|d| d.to_string()).collect(),
        recovered: attempt.recovered,
        discarded: attempt.discarded,
        rebuilt_volumes: attempt.rebuilt_volumes,
        error: err.as_ref().map(|e| format!("{e}")),
        exit_code: err.as_ref().map_or(0, |e| e.exit_kind().code()),
        receipt: None,
        ledger_head: Ok(None),
        trust_policy: attempt.trust,
    };
    (report, err)
}

/// Appends the receipt of a successful import, with the ledger head after
/// its line, to the state directory's `receipts.jsonl` (call it under the
/// locks), and notes both in the report.
fn keep_receipt(dir: &StateDir, report: &mut ImportReport) -> Result<(), ImportError> {
    let Some((receipt, mut rec)) = super::receipt::for_report(report, SystemTime::now()) else {
        return Ok(());
    };
    // Read after the import's own line was appended.
    let head = dir
        .ledger()
        .verify()
        .map(|r| r.checkpoint())
        .map_err(|e| e.to_string());
    rec.ledger_head = head.as_ref().ok().map(|h| h.to_string());
    super::receipt::record(dir.path(), &rec).map_err(|source| ImportError::Receipt {
        path: dir.path().join(super::receipt::RECEIPTS_FILE),
        receipt: receipt.to_string(),
        source,
    })?;
    report.receipt = Some(receipt.to_string());
    report.ledger_head = head.map(Some);
    Ok(())
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
        if let Some(t) = attempt.trust.as_ref().filter(|t| t.expired) {
            notes.push(format!(
                "trust policy version {} expired at {}, used with --allow-expired-policy",
                t.version, t.expires
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
        bundle_id: head.map(|h| h.manifest.bundle_id.to_string()),
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

/// One unit this import may publish, with what its folder serves now.
#[derive(Debug)]
struct PlannedUnit {
    unit: Unit,
    dest: Destination,
    baseline: Baseline,
    /// The recorded set's first mismatch with the folder, when the folder
    /// no longer holds what was recorded: that set is discarded, never
    /// kept as n-1 (rolling back would serve it).
    damaged: Option<String>,
    /// Whether this import writes the folder; not when it already serves
    /// this very manifest (an earlier, partly completed import of it).
    publish: bool,
}

/// The units of an accepted bundle this import publishes.
#[derive(Debug)]
struct Plan {
    units: Vec<PlannedUnit>,
}

/// What the stage phase produced: each unit's staged folder (for units to
/// publish) and the files every unit carries, all hashed.
struct Staged {
    staging: Staging,
    folders: Vec<Option<StagedSlot>>,
    files: Vec<Vec<ServedFile>>,
    /// An `s3://` mirror: each staged file also goes into the store's
    /// hidden staging folder while the bundle is read.
    uploads: Option<super::s3mirror::Uploads>,
}

/// The phases, in order: session (recovery under the locks), accept, plan,
/// stage, commit. Nothing is written to the served tree before stage, and
/// nothing is published before commit.
fn run(
    opts: &ImportOptions,
    session: &Session,
    opened: Result<volumes::Opened, BundleError>,
    attempt: &mut Attempt,
    observer: &dyn Observer,
) -> Result<Outcome, ImportError> {
    // Finish whatever a crashed import left before looking at anything.
    let mut recovered_s3 = Default::default();
    if let Target::S3(m) = &opts.target {
        m.claim()?;
        recovered_s3 = m.recover(observer)?;
    }
    let (mut state, mut recovered) =
        session.recover(&areas(&opts.target), &opts.publish, opts.target.tree())?;
    if let Target::S3(m) = &opts.target {
        let _finished = super::rollback::settle_s3_swaps::<ImportError>(
            m,
            session.dir(),
            &mut state,
            &recovered_s3.swaps,
        )?;
        recovered.extend(
            recovered_s3
                .published
                .iter()
                .map(|r| PathBuf::from(m_url(opts, r))),
        );
    }
    attempt.recovered = recovered;
    let (reader, accepted) = accept(opts, session.dir(), &state, opened, attempt)?;
    let Some(plan) = plan(opts, &state, &accepted, attempt)? else {
        // Nothing to publish, but the bundle was accepted: a newer policy
        // it carries is adopted (e.g. after an import killed before it
        // recorded its state), with its line, under the lock.
        let now = Timestamp::from_time(SystemTime::now());
        if let Some(trust_updated) = adopt_trust(opts, &mut state, &accepted, &now, attempt) {
            let entry = LedgerEntry {
                trust_updated: Some(trust_updated),
                ..ledger_entry(opts, attempt, Outcome::AlreadyImported, None)
            };
            super::session::save_due(session.dir(), &mut state, entry)?;
            attempt.logged = true;
            if let Err(e) = super::session::settle(session.dir(), &mut state) {
                attempt.ledger_error = Some(e.into());
            }
        }
        return Ok(Outcome::AlreadyImported);
    };
    let mut created = CreatedDirs::default();
    for u in plan.units.iter().filter(|u| u.publish) {
        created.note(&u.dest);
    }
    let result = check_free_space(&opts.bundle, &plan, &accepted)
        .and_then(|()| stage(opts, &plan, reader, &accepted, attempt, observer))
        .and_then(|staged| {
            commit(
                opts,
                session.dir(),
                &mut state,
                &accepted,
                &plan,
                staged,
                attempt,
                observer,
            )
        });
    if result.is_err() {
        created.remove_empty();
    }
    result
}

/// The folders whose interrupted publishes recovery looks for.
fn areas(target: &Target) -> Vec<PathBuf> {
    match target {
        Target::Mirror(root) => publish::mirror_areas(root),
        Target::S3(m) => publish::mirror_areas(m.shadow_root()),
        Target::Ring(dir) => vec![std::path::absolute(dir)
            .ok()
            .and_then(|d| d.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."))],
    }
}

/// Accept: the head (manifest, signatures, profile rules, channel, clock,
/// sequence bound, expiry) through [`verify::accept`]. Nothing written yet.
/// A split bundle's signed index and every volume were checked when it was
/// opened, before a byte was decompressed.
fn accept(
    opts: &ImportOptions,
    dir: &StateDir,
    state: &State,
    opened: Result<volumes::Opened, BundleError>,
    attempt: &mut Attempt,
) -> Result<(BundleReader<BundleInput>, Accepted), ImportError> {
    let opened = opened?;
    attempt.head = Some(opened.head.clone());
    let root_trust = root_trust(opts, dir, state)?;
    if let Some(split) = &opened.split {
        attempt.rebuilt_volumes = split
            .recovery
            .rebuilt
            .iter()
            .map(|(_, why)| why.clone())
            .collect();
    }
    let policy = Policy {
        roots: root_trust.as_ref(),
        trust: &opts.trust,
        threshold: opts.threshold,
        channel: Some(&opts.channel),
        allow_expired: opts.allow_expired,
        purpose: Purpose::Import,
        now: SystemTime::now(),
    };
    let accepted = verify::accept(opened.head, &policy, &opts.bundle).map_err(|n| {
        attempt.signers = n.signers;
        n.error
    })?;
    attempt.signers = accepted.signers().to_vec();
    if let Some(t) = accepted.trust() {
        attempt.trust = Some(TrustReport {
            version: t.authority.version(),
            previous_version: t.previous,
            adopted: false,
            expires: t.authority.policy.expires.to_string(),
            days_left: t.days_left,
            expired: t.expired,
            warning: t.expiry_warning(),
        });
    }
    Ok((opened.reader, accepted))
}

/// The root-pinned trust of this import: the pins and the adopted policy.
/// Once a mirror has adopted a policy, that policy is the authority: the
/// pins given must be the ones recorded when it was first adopted, or the
/// current policy's own roots (after a root rotation), and `--trust` alone
/// is refused, so that no command line can silently undo a rotation or a
/// revocation.
fn root_trust(
    opts: &ImportOptions,
    dir: &StateDir,
    state: &State,
) -> Result<Option<verify::RootTrust>, ImportError> {
    use crate::trustpolicy::{join, TrustError};
    let state_path = dir.state_path();
    let Some(adopted) = &state.trust else {
        return Ok(opts.roots.clone().map(|pins| verify::RootTrust {
            pins,
            adopted: None,
            allow_expired_policy: opts.allow_expired_policy,
        }));
    };
    let policy = adopted.load().map_err(|reason| TrustError::Rejected {
        source_name: state_path.display().to_string(),
        reason: format!("the adopted trust policy cannot be read: {reason}"),
    })?;
    let current = policy.policy.roots();
    let usage = |reason: String| TrustError::Usage {
        path: state_path.clone(),
        reason,
    };
    let Some(pins) = &opts.roots else {
        return Err(usage(format!(
            "this mirror follows trust policy version {} (root keys {}, {} required): import with --trust-root and --root-threshold instead of --trust, so that its rotations and revocations apply",
            policy.version(),
            join(&current.ids()),
            current.threshold
        ))
        .into());
    };
    let mut recorded = adopted.pinned_roots.clone();
    recorded.sort();
    let given = pins.ids();
    let matches_bootstrap = given == recorded && pins.threshold == adopted.pinned_threshold;
    let matches_current = given == current.ids() && pins.threshold == current.threshold;
    if !matches_bootstrap && !matches_current {
        return Err(usage(format!(
            "--trust-root {} with --root-threshold {} are neither the roots this mirror was first pinned to ({}, threshold {}) nor those of its adopted trust policy version {} ({}, threshold {}); the adopted policy is the authority: give one of those (a fresh state directory starts over)",
            join(&given),
            pins.threshold,
            join(&recorded),
            adopted.pinned_threshold,
            policy.version(),
            join(&current.ids()),
            current.threshold
        ))
        .into());
    }
    Ok(Some(verify::RootTrust {
        pins: pins.clone(),
        adopted: Some(policy),
        allow_expired_policy: opts.allow_expired_policy,
    }))
}

/// Records in `state` the trust policy the accepted bundle carried, when
/// it is newer than the adopted one, and returns the ledger's event.
fn adopt_trust(
    opts: &ImportOptions,
    state: &mut State,
    accepted: &Accepted,
    now: &Timestamp,
    attempt: &mut Attempt,
) -> Option<super::ledger::TrustUpdated> {
    let t = accepted.trust()?;
    let newest = t.adopted.last()?;
    let old = state
        .trust
        .as_ref()
        .and_then(|a| a.load().ok())
        .map(|p| p.policy);
    let (pinned_roots, pinned_threshold) = match &state.trust {
        Some(a) => (a.pinned_roots.clone(), a.pinned_threshold),
        None => {
            let pins = opts.roots.as_ref().expect("root-pinned");
            (pins.ids(), pins.threshold)
        }
    };
    state.trust = Some(super::state::AdoptedTrust::new(
        newest,
        pinned_roots,
        pinned_threshold,
        now.clone(),
    ));
    if let Some(r) = &mut attempt.trust {
        r.adopted = true;
    }
    Some(super::ledger::TrustUpdated {
        old_version: t.previous,
        new_version: newest.version(),
        changes: crate::trustpolicy::changes(old.as_ref(), &newest.policy),
    })
}

/// Plan: the units to publish after the filters, each with its baseline,
/// judged by the rollback policy. `None`: already imported, nothing to do.
fn plan(
    opts: &ImportOptions,
    state: &State,
    accepted: &Accepted,
    attempt: &mut Attempt,
) -> Result<Option<Plan>, ImportError> {
    let mut units = Vec::new();
    for unit in select(opts, accepted.units())? {
        let planned = plan_unit(opts, state, accepted, unit)?;
        attempt.slots.push(SlotReport {
            slot: planned.unit.key.clone(),
            dir: match &opts.target {
                Target::S3(m) => m.show(&planned.dest.current()),
                _ => planned.dest.current(),
            },
            before: planned.baseline.versions(),
            after: Some(planned.unit.versions.clone()),
            published: false,
        });
        units.push(planned);
    }
    match judge(opts, state, accepted, &units)? {
        Go::AlreadyImported => Ok(None),
        Go::Import { downgrades } => {
            attempt.downgrades = downgrades;
            Ok(Some(Plan { units }))
        }
    }
}

/// Where `unit` goes, what its folder serves now, and whether it must be
/// published.
fn plan_unit(
    opts: &ImportOptions,
    state: &State,
    accepted: &Accepted,
    unit: Unit,
) -> Result<PlannedUnit, ImportError> {
    let dest = match &opts.target {
        Target::Mirror(root) => Destination::in_mirror(root, &unit.placement)?,
        Target::Ring(dir) => Destination::in_target(dir, &unit.placement.leaf)?,
        Target::S3(m) => Destination::in_mirror(m.shadow_root(), &unit.placement)?,
    };
    // Before anything is read from or staged next to these folders.
    dest.check_folders()?;
    let (baseline, damaged) = baseline_of(
        state,
        accepted.profile(),
        &unit.key,
        &dest.current(),
        opts.target.tree(),
    );
    let publish = baseline.manifest_sha256() != Some(&accepted.head().manifest_sha256);
    Ok(PlannedUnit {
        unit,
        dest,
        baseline,
        damaged,
        publish,
    })
}

/// What the folder `current` of unit `key` serves, and why a record of it
/// no longer holds, if it does not.
///
/// What the state says a folder serves only counts while the folder still
/// holds it (size and SHA-256 of every file): one removed or damaged since
/// is judged by what is on disk, so importing the bundle again restores it
/// rather than answering "already imported"; and a damaged set is
/// discarded, never kept as n-1.
fn baseline_of(
    state: &State,
    profile: &dyn Profile,
    key: &UnitKey,
    current: &Path,
    tree: setcheck::Tree<'_>,
) -> (Baseline, Option<String>) {
    let recorded = state.served(key).filter(|s| !s.files.is_empty());
    let damaged = recorded
        .and_then(|s| tree.check(current, &s.files, setcheck::Depth::Hashes).err())
        .map(|m| m.to_string());
    let baseline = match state.served(key) {
        Some(s) if damaged.is_none() => Baseline::Recorded(s.clone()),
        _ => match profile.versions_on_disk(current) {
            Some(v) => Baseline::OnDiskOnly(v),
            None => Baseline::Empty,
        },
    };
    (baseline, damaged)
}

/// The rollback policy and the withdrawn set, over the planned units.
fn judge(
    opts: &ImportOptions,
    state: &State,
    accepted: &Accepted,
    units: &[PlannedUnit],
) -> Result<Go, ImportError> {
    let head = accepted.head();
    let items: Vec<IncomingItem> = units
        .iter()
        .map(|u| IncomingItem {
            key: u.unit.key.clone(),
            versions: u.unit.versions.clone(),
            served: u.baseline.clone(),
        })
        .collect();
    let m = &head.manifest;
    let incoming = Incoming {
        channel: &m.channel,
        sequence: m.sequence,
        bundle_id: &m.bundle_id,
        manifest_sha256: &head.manifest_sha256,
        items: &items,
        profile: accepted.profile(),
    };
    let go = state
        .check_rollback(&incoming)?
        .enforce(opts.allow_downgrade)
        .map_err(|policy| ImportError::Rollback {
            bundle: opts.bundle.clone(),
            policy: Box::new(policy),
        })?;
    if state.withdrawn.contains(&head.manifest_sha256) && !opts.allow_downgrade {
        return Err(refused(
            &opts.bundle,
            "this bundle was withdrawn by `gapferry rollback`; run `gapferry rollback` again to roll forward, import a newer bundle, or add --allow-downgrade to publish it anyway".into(),
        ));
    }
    Ok(go)
}

/// Refuses early, before staging a byte, when the mirror's filesystem
/// cannot hold what this import would stage (plus a margin), instead of
/// failing half-way with ENOSPC.
fn check_free_space(bundle: &Path, plan: &Plan, accepted: &Accepted) -> Result<(), ImportError> {
    let files = &accepted.head().manifest.files;
    let need: u64 = plan
        .units
        .iter()
        .filter(|u| u.publish)
        .flat_map(|u| &u.unit.files)
        .map(|f| files[f.index].size)
        .sum();
    let Some(probe) = plan.units.first().and_then(|u| {
        u.dest
            .area()
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
        return Err(ImportError::from(publish::PublishError::Write {
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

/// The carried units this import publishes, after the filters.
fn select(opts: &ImportOptions, carried: &[Unit]) -> Result<Vec<Unit>, ImportError> {
    let selected: Vec<Unit> = carried
        .iter()
        .filter(|u| opts.only.admits(u))
        .cloned()
        .collect();
    let usage = |reason: String| ImportError::Usage {
        bundle: opts.bundle.clone(),
        reason,
    };
    let carried_list = || {
        carried
            .iter()
            .map(|u| u.key.to_string())
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
        let mut groups: Vec<(&str, &str)> = selected
            .iter()
            .map(|u| (u.placement.area.as_str(), u.placement.group.as_str()))
            .collect();
        groups.sort();
        groups.dedup();
        if groups.len() > 1 {
            return Err(usage(format!(
                "--target {} is one platform and ring, but the bundle carries several ({}); choose one with --platform and --ring",
                dir.display(),
                carried_list()
            )));
        }
    }
    Ok(selected)
}

/// Stage: streams every payload file once, hashing each; files of units to
/// publish go into staging on the mirror's filesystem. Then the end of the
/// archive, and each staged unit against what was signed for it.
fn stage(
    opts: &ImportOptions,
    plan: &Plan,
    mut reader: BundleReader<BundleInput>,
    accepted: &Accepted,
    attempt: &mut Attempt,
    observer: &dyn Observer,
) -> Result<Staged, ImportError> {
    let m = &accepted.head().manifest;
    let mut owner: BTreeMap<usize, (usize, &str)> = BTreeMap::new();
    for (i, u) in plan.units.iter().enumerate() {
        for f in &u.unit.files {
            owner.insert(f.index, (i, f.name.as_str()));
        }
    }
    let mut staged = Staged {
        staging: Staging::new(opts.publish.clone()),
        folders: plan.units.iter().map(|_| None).collect(),
        files: plan.units.iter().map(|_| Vec::new()).collect(),
        uploads: match &opts.target {
            Target::S3(m) => Some(m.start_uploads()),
            _ => None,
        },
    };
    observer.start("importing", m.total_size());
    for idx in 0..m.files.len() {
        let Some(&(i, name)) = owner.get(&idx) else {
            reader.copy_file(&mut std::io::sink(), Path::new("-"), observer)?;
            continue;
        };
        let entry = if plan.units[i].publish {
            if staged.folders[i].is_none() {
                staged.folders[i] = Some(staged.staging.stage(&plan.units[i].dest)?);
            }
            let signed = &m.files[idx];
            if let Some(u) = staged.uploads.as_ref().filter(|_| {
                super::s3mirror::Uploads::streams(accepted.profile(), name, signed.size)
            }) {
                // Straight from the bundle into the store's staging folder;
                // completed only once every byte matched the signed hash.
                let key = plan.units[i].unit.key.as_str();
                let mut w = u.stream(key, name, signed.size, signed.sha256.as_str())?;
                let url = PathBuf::from(w.url());
                let entry = match reader.copy_file(&mut w, &url, observer) {
                    Ok(entry) => entry,
                    Err(e) => {
                        return Err(match w.fail() {
                            Some(upload) => upload.into(),
                            None => e.into(),
                        })
                    }
                };
                w.finish(u)?;
                attempt.bytes_written += entry.size;
                staged.files[i].push(ServedFile {
                    name: name.to_string(),
                    size: entry.size,
                    sha256: entry.sha256.clone(),
                });
                continue;
            }
            let folder = staged.folders[i].as_ref().expect("just staged");
            let mut file = folder.create_file(name)?;
            let path = file.path().to_path_buf();
            let entry = reader
                .copy_file(&mut file, &path, observer)
                .map_err(|e| match e {
                    BundleError::Io { path, source } => {
                        ImportError::from(publish::PublishError::Write { path, source })
                    }
                    other => other.into(),
                })?;
            attempt.bytes_written += file.finish()?;
            if let Some(u) = &staged.uploads {
                u.send(
                    plan.units[i].unit.key.as_str(),
                    name,
                    &path,
                    entry.sha256.as_str(),
                );
            }
            entry
        } else {
            reader.copy_file(&mut std::io::sink(), Path::new("-"), observer)?
        };
        staged.files[i].push(ServedFile {
            name: name.to_string(),
            size: entry.size,
            sha256: entry.sha256.clone(),
        });
    }
    reader.finish()?;
    observer.finish();
    for (u, folder) in plan.units.iter().zip(&staged.folders) {
        if let Some(f) = folder {
            accepted
                .profile()
                .check_staged(&u.unit, f.dir())
                .map_err(|reason| rejected(&opts.bundle, reason))?;
        }
    }
    Ok(staged)
}

/// Commit: records the intent, publishes unit by unit, then records what
/// is served, the accepted sequence and the ledger line together.
#[allow(clippy::too_many_arguments)]
fn commit(
    opts: &ImportOptions,
    state_dir: &StateDir,
    state: &mut State,
    accepted: &Accepted,
    plan: &Plan,
    mut staged: Staged,
    attempt: &mut Attempt,
    observer: &dyn Observer,
) -> Result<Outcome, ImportError> {
    let head = accepted.head();
    let m = &head.manifest;
    let now = Timestamp::from_time(SystemTime::now());
    let record = AcceptedBundle {
        manifest_sha256: head.manifest_sha256.clone(),
        bundle_id: m.bundle_id.clone(),
        accepted_at: now.clone(),
    };
    let served: Vec<ServedSlot> = plan
        .units
        .iter()
        .zip(&staged.files)
        .map(|(u, files)| served_slot(&u.unit, accepted, files, &now))
        .collect();
    // Every staged file is in the store's staging folder (s3:// mirrors)
    // before anything is decided.
    let staged_objects = match staged.uploads.take() {
        Some(u) => u.finish()?,
        None => Default::default(),
    };
    // What is about to be published, saved before the first folder moves,
    // so that a run killed mid-publish is settled by the next one.
    state.pending = Some(intent(accepted, plan, &staged, &served, &record, attempt));
    state_dir.save(state)?;
    publish_units(
        opts,
        state,
        accepted,
        plan,
        &mut staged,
        served,
        attempt,
        &staged_objects,
        observer,
    )?;
    state.record_accepted(&m.channel, m.sequence, record);
    state.withdrawn.remove(&head.manifest_sha256);
    state.pending = None;
    let trust_updated = adopt_trust(opts, state, accepted, &now, attempt);
    let entry = LedgerEntry {
        trust_updated,
        ..ledger_entry(opts, attempt, Outcome::Imported, None)
    };
    super::session::save_due(state_dir, state, entry)?;
    attempt.logged = true;
    if let Err(e) = super::session::settle(state_dir, state) {
        attempt.ledger_error = Some(e.into());
    }
    Ok(Outcome::Imported)
}

/// What the import is about to publish: the folders staged and what each
/// will serve.
fn intent(
    accepted: &Accepted,
    plan: &Plan,
    staged: &Staged,
    served: &[ServedSlot],
    record: &AcceptedBundle,
    attempt: &Attempt,
) -> PendingImport {
    let m = &accepted.head().manifest;
    let mut pending_slots = BTreeMap::new();
    for ((u, folder), s) in plan.units.iter().zip(&staged.folders).zip(served) {
        if folder.is_some() {
            pending_slots.insert(
                u.unit.key.clone(),
                PendingSlot {
                    dir: u.dest.current(),
                    served: s.clone(),
                },
            );
        }
    }
    PendingImport {
        channel: m.channel.clone(),
        sequence: m.sequence,
        accepted: record.clone(),
        slots: pending_slots,
        signers: attempt.signers.clone(),
    }
}

/// Publishes the staged units one by one and records in `state` what each
/// folder and its n-1 now serve.
#[allow(clippy::too_many_arguments)]
fn publish_units(
    opts: &ImportOptions,
    state: &mut State,
    accepted: &Accepted,
    plan: &Plan,
    staged: &mut Staged,
    served: Vec<ServedSlot>,
    attempt: &mut Attempt,
    staged_objects: &super::s3mirror::StagedObjects,
    observer: &dyn Observer,
) -> Result<(), ImportError> {
    let bundle_id = accepted.head().manifest.bundle_id.as_str();
    for (i, (u, s)) in plan.units.iter().zip(served).enumerate() {
        if let Some(folder) = staged.folders[i].take() {
            // A set that no longer matches its record must never become
            // n-1: rolling back would serve it. Discard it, keep n-1.
            let old_set = match u.damaged {
                Some(_) => publish::OldSet::Discard,
                None => publish::OldSet::KeepAsBack,
            };
            let (rotated, discarded_old) = match &opts.target {
                Target::S3(m) => {
                    let p = m.publish(
                        accepted.profile(),
                        u.unit.key.as_str(),
                        folder.dir(),
                        &u.unit.placement,
                        &s.files,
                        old_set == publish::OldSet::KeepAsBack,
                        bundle_id,
                        staged_objects,
                        observer,
                    )?;
                    (p.rotated, u.damaged.is_some())
                }
                _ => {
                    let p = staged.staging.publish_with(folder, bundle_id, old_set)?;
                    (p.back.is_some(), p.discarded_old)
                }
            };
            attempt.slots[i].published = true;
            if let (true, Some(why)) = (discarded_old, &u.damaged) {
                attempt.discarded.push(format!("{}: {why}", u.unit.key));
            }
            if rotated {
                match state.served(&u.unit.key).cloned() {
                    Some(old) => {
                        state.back.insert(u.unit.key.clone(), old);
                    }
                    None => {
                        state.back.remove(&u.unit.key);
                    }
                }
            }
        }
        state.record_served(&u.unit.key, s);
    }
    Ok(())
}

fn served_slot(
    unit: &Unit,
    accepted: &Accepted,
    files: &[ServedFile],
    now: &Timestamp,
) -> ServedSlot {
    let head = accepted.head();
    ServedSlot {
        engine_version: unit.versions.engine_version.clone(),
        definition_version: unit.versions.definition_version.clone(),
        bundle_id: Some(head.manifest.bundle_id.clone()),
        channel: Some(head.manifest.channel.clone()),
        sequence: Some(head.manifest.sequence),
        manifest_sha256: Some(head.manifest_sha256.clone()),
        files: files.to_vec(),
        imported_at: now.clone(),
        expires: Some(accepted.expires().clone()),
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

/// `s3://bucket/prefix/<rel>`, for reports of folders in an `s3://` mirror.
fn m_url(opts: &ImportOptions, rel: &str) -> String {
    match &opts.target {
        Target::S3(m) => m.client().url_of(rel),
        _ => rel.to_string(),
    }
}
