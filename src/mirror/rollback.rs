//! `gapferry rollback`: swap a served arch folder with its n-1
//! (`<ring>_back/arch_<arch>`), atomically, and record it. Running it again
//! swaps back ("roll forward").
//!
//! Where the filesystem can exchange folders, one `renameat2(RENAME_EXCHANGE)`
//! does it. Elsewhere the n-1 set is copied into staging and published like
//! an import (journaled, crash-safe), which moves the served set into n-1.
//!
//! The set rolled away from is marked withdrawn in the state, so that a
//! re-delivered copy of the same bundle is refused (exit 4) instead of
//! quietly undoing the rollback; newer bundles import as usual, and a roll
//! forward lifts the mark.
//!
//! Before anything moves, every n-1 folder is checked against the record of
//! what gapferry put there (size and SHA-256 of each file): a damaged n-1 is
//! refused (exit 3, naming the file) unless `--force`, since swapping it in
//! would serve it to every endpoint. An n-1 without a record (put there by
//! hand, or before gapferry recorded it) cannot be checked and is swapped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::ledger::{LedgerEntry, Outcome, SlotChange, Versions};
use super::publish::{self, Destination, PublishOptions, Staging};
use super::session::{Session, SessionError};
use super::setcheck;
use super::state::State;
use crate::error::{Classify, ExitKind};
use crate::profile::{Placement, Profile, UnitKey};

/// What to roll back.
#[derive(Debug, Clone)]
pub struct RollbackOptions {
    pub mirror: PathBuf,
    /// `mirror` is one folder of leaves (`import --target`/`--share`):
    /// each unit at `<mirror>/<leaf>`, n-1 in `<mirror>_back/<leaf>`.
    pub target: bool,
    pub state_dir: PathBuf,
    /// The units to swap and where their folders are.
    pub slots: Vec<(UnitKey, Placement)>,
    /// Reads the versions a folder serves, for the report and the ledger.
    pub profile: &'static dyn Profile,
    pub lock_wait: Duration,
    pub publish: PublishOptions,
    /// Swap in an n-1 that no longer matches its record.
    pub force: bool,
    /// An `s3://` mirror (then `mirror` is its shadow root): the swap is
    /// done in the store ([`super::s3mirror::S3Mirror::swap`]).
    pub s3: Option<std::sync::Arc<super::s3mirror::S3Mirror>>,
}

/// One folder swapped.
#[derive(Debug, Clone, Serialize)]
pub struct RolledSlot {
    pub slot: UnitKey,
    pub dir: PathBuf,
    /// What it served before and serves now.
    pub before: Option<Versions>,
    pub after: Option<Versions>,
    /// `exchange` or `copy`.
    pub method: &'static str,
    /// With `--force`: how the n-1 swapped in differed from its record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced_past: Option<String>,
}

/// The `--json` output of rollback.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub slots: Vec<RolledSlot>,
}

/// Why a rollback did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RollbackError {
    #[error("{dir}: nothing to roll back to: there is no n-1 folder {back} (it appears after the second import)")]
    NoBack { dir: PathBuf, back: PathBuf },
    #[error("{dir}: not served: the folder does not exist")]
    NotServed { dir: PathBuf },
    #[error(
        "refused: the n-1 set no longer matches what was imported: {mismatch}; rolling back \
         would serve it to every endpoint, so nothing was changed. Restore n-1 by importing \
         a newer bundle (the served set then becomes n-1), or add --force to roll back anyway"
    )]
    BackDamaged { mismatch: String },
    /// The lock, the state, the ledger or recovery failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The swap in an `s3://` mirror failed.
    #[error(transparent)]
    S3(#[from] super::s3mirror::S3PublishError),
    #[error("cannot copy {path} into staging: {source}")]
    Copy {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Classify for RollbackError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            RollbackError::Session(e) => e.exit_kind(),
            RollbackError::S3(e) => e.exit_kind(),
            RollbackError::BackDamaged { .. } => ExitKind::Rejected,
            RollbackError::NoBack { .. }
            | RollbackError::NotServed { .. }
            | RollbackError::Copy { .. } => ExitKind::Operational,
        }
    }
}

super::session::from_session_parts!(RollbackError);

/// Swaps every requested slot with its n-1, under the import lock.
pub fn rollback(opts: &RollbackOptions) -> Result<RollbackReport, RollbackError> {
    let session = Session::open(&opts.state_dir, &opts.mirror, opts.lock_wait)?;
    let state_dir = session.dir();
    // An import killed while publishing: record what recovery completed
    // (including what n-1 now holds) before judging n-1.
    let areas = if opts.target {
        // Staging of a target lives in its parent, as the import put it.
        vec![std::path::absolute(&opts.mirror)
            .ok()
            .and_then(|d| d.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."))]
    } else {
        publish::mirror_areas(&opts.mirror)
    };
    // Units whose swap an interrupted rollback started and this run's
    // recovery finished: that rollback's intent, not swapped again.
    let mut finished: Vec<UnitKey> = Vec::new();
    let (tree, swaps) = match &opts.s3 {
        Some(m) => {
            m.claim()?;
            let r = m.recover(&crate::progress::NoProgress)?;
            (setcheck::Tree::S3(m), r.swaps)
        }
        None => (setcheck::Tree::Fs, Vec::new()),
    };
    let (mut state, _) = session.recover(&areas, &opts.publish, tree)?;
    if let Some(m) = &opts.s3 {
        finished = settle_s3_swaps::<RollbackError>(m, state_dir, &mut state, &swaps)?;
    }
    // What a folder serves: read from the folder, or for an s3:// mirror
    // from the record of what was published there.
    let served_by = |state: &State, key: &UnitKey, dir: &Path| match &opts.s3 {
        Some(_) => state.served(key).map(|s| s.versions()),
        None => opts.profile.versions_on_disk(dir),
    };
    let is_folder = |dir: &Path| -> Result<bool, RollbackError> {
        match (&opts.s3, tree) {
            (Some(m), _) => Ok(m
                .rel_of(dir)
                .map(|rel| m.folder_exists(&rel))
                .transpose()?
                .unwrap_or(false)),
            (None, _) => Ok(dir.is_dir()),
        }
    };
    // Check every slot before moving anything.
    let mut dests = Vec::new();
    let mut forced = Vec::new();
    for (key, place) in &opts.slots {
        let dest = if opts.target {
            Destination::in_target(&opts.mirror, &place.leaf)?
        } else {
            Destination::in_mirror(&opts.mirror, place)?
        };
        dest.check_folders()?;
        if !is_folder(&dest.current())? {
            return Err(RollbackError::NotServed {
                dir: dest.current(),
            });
        }
        if !is_folder(&dest.back())? {
            return Err(RollbackError::NoBack {
                dir: dest.current(),
                back: dest.back(),
            });
        }
        let mismatch = state
            .back
            .get(key)
            .filter(|r| !r.files.is_empty())
            .and_then(|r| {
                tree.check(&dest.back(), &r.files, setcheck::Depth::Hashes)
                    .err()
            });
        match mismatch {
            Some(m) if !opts.force => {
                let err = RollbackError::BackDamaged {
                    mismatch: m.to_string(),
                };
                // Refused attempts are recorded like refused imports.
                let entry = LedgerEntry {
                    reason: Some(format!("gapferry rollback {err}")),
                    ..LedgerEntry::new(Outcome::Rejected)
                };
                super::session::commit(state_dir, &mut state, entry)?;
                return Err(err);
            }
            m => forced.push(m.map(|m| format!("n-1 {}", m.by_file_name()))),
        }
        dests.push(dest);
    }
    // How a folder is named in the report.
    let shown = |dir: &Path| match &opts.s3 {
        Some(m) => m.show(dir),
        None => dir.to_path_buf(),
    };
    let mut report = RollbackReport { slots: Vec::new() };
    let mut result = Ok(());
    for (((key, _), dest), forced_past) in opts.slots.iter().zip(&dests).zip(forced) {
        let before = served_by(&state, key, &dest.current());
        if finished.contains(key) {
            // Its swap was finished above: report it, do not swap back.
            report.slots.push(RolledSlot {
                slot: key.clone(),
                dir: shown(&dest.current()),
                before: state.back.get(key).map(|b| b.versions()),
                after: before,
                method: "recovered",
                forced_past,
            });
            continue;
        }
        let swapped = match &opts.s3 {
            Some(m) => {
                let rel = |d: &Path| m.rel_of(d).unwrap_or_default();
                // Going back to older versions: index files first.
                let older = match (state.back.get(key), state.served(key)) {
                    (Some(b), Some(s)) => matches!(
                        opts.profile.older(&b.versions(), &s.versions()),
                        Ok(Some(_))
                    ),
                    _ => true,
                };
                m.swap(
                    key.as_str(),
                    &rel(&dest.current()),
                    &rel(&dest.back()),
                    opts.profile,
                    older,
                )
                .map(|()| "copy")
                .map_err(RollbackError::from)
            }
            None => swap_one(dest, &opts.publish),
        };
        let method = match swapped {
            Ok(m) => m,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        swap_state(&mut state, key);
        report.slots.push(RolledSlot {
            slot: key.clone(),
            dir: shown(&dest.current()),
            before,
            after: served_by(&state, key, &dest.current()),
            method,
            forced_past,
        });
    }
    let forward = result.is_ok() && rolled_forward(opts.profile, &report.slots);
    let entry = LedgerEntry {
        reason: Some(match &result {
            Ok(()) => {
                let mut r = "gapferry rollback: served set swapped with n-1".to_string();
                if forward {
                    r.push_str(" (a roll forward: the newer set is served again)");
                }
                for s in &report.slots {
                    if let Some(m) = &s.forced_past {
                        r.push_str(&format!(
                            "; {}: --force swapped in an n-1 that no longer matched what was imported ({m})",
                            s.slot
                        ));
                    }
                }
                r
            }
            Err(e) => format!("gapferry rollback failed: {e}"),
        }),
        slots: report
            .slots
            .iter()
            .map(|s| SlotChange {
                slot: s.slot.clone(),
                before: s.before.clone(),
                after: s.after.clone(),
            })
            .collect(),
        ..LedgerEntry::new(match (&result, forward) {
            (Ok(()), true) => Outcome::RolledForward,
            (Ok(()), false) => Outcome::RolledBack,
            (Err(_), _) => Outcome::Failed,
        })
    };
    super::session::commit(state_dir, &mut state, entry)?;
    if let (Some(m), Ok(())) = (&opts.s3, &result) {
        for s in &report.slots {
            m.forget_swap(s.slot.as_str())?;
        }
    }
    result.map(|()| report)
}

/// Records rollbacks in an `s3://` mirror that an interrupted run swapped
/// in the store but did not record: the state's records of the unit and
/// its n-1 are swapped when its n-1 record is what the folder now serves
/// (so a swap already recorded is not swapped twice), with a ledger line;
/// then the journals go.
pub(crate) fn settle_s3_swaps<E>(
    m: &super::s3mirror::S3Mirror,
    state_dir: &super::state::StateDir,
    state: &mut State,
    swaps: &[super::s3mirror::SwapDone],
) -> Result<Vec<UnitKey>, E>
where
    E: From<SessionError> + From<super::s3mirror::S3PublishError>,
{
    let mut finished = Vec::new();
    for done in swaps {
        let key = UnitKey::from(done.unit.as_str());
        let pending = state.back.get(&key).is_some_and(|b| done.serves(&b.files));
        if pending {
            let before = state.served(&key).map(|s| s.versions());
            swap_state(state, &key);
            let entry = LedgerEntry {
                reason: Some(
                    "gapferry rollback: swapped with n-1 by an earlier run that was interrupted \
                     before recording it; recorded by the next run"
                        .into(),
                ),
                slots: vec![SlotChange {
                    slot: key.clone(),
                    before,
                    after: state.served(&key).map(|s| s.versions()),
                }],
                ..LedgerEntry::new(Outcome::RolledBack)
            };
            super::session::commit(state_dir, state, entry)?;
            finished.push(key);
        }
        m.forget_swap(&done.unit)?;
    }
    Ok(finished)
}

/// Whether the swap served newer versions in every folder it swapped (a
/// rollback run again); versions the profile cannot order count as not.
fn rolled_forward(profile: &dyn Profile, slots: &[RolledSlot]) -> bool {
    !slots.is_empty()
        && slots.iter().all(|s| match (&s.before, &s.after) {
            (Some(before), Some(after)) => matches!(profile.older(before, after), Ok(Some(_))),
            _ => false,
        })
}

fn swap_one(dest: &Destination, opts: &PublishOptions) -> Result<&'static str, RollbackError> {
    if !opts.force_fallback && publish::swap_folders(&dest.current(), &dest.back())? {
        return Ok("exchange");
    }
    // Copy n-1 into staging and publish it: the served set becomes n-1.
    let mut staging = Staging::new(opts.clone());
    let staged = staging.stage(dest)?;
    let back = dest.back();
    let entries = std::fs::read_dir(&back).map_err(|source| RollbackError::Copy {
        path: back.clone(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| RollbackError::Copy {
            path: back.clone(),
            source,
        })?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|source| RollbackError::Copy {
            path: path.clone(),
            source,
        })?;
        if !ft.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut out = staged.create_file(&name)?;
        let mut src = std::fs::File::open(&path).map_err(|source| RollbackError::Copy {
            path: path.clone(),
            source,
        })?;
        std::io::copy(&mut src, &mut out).map_err(|e| out.error(e))?;
        out.finish()?;
    }
    staging.publish(staged, "rollback")?;
    Ok("copy")
}

/// Swaps what the state says `slot` and its n-1 serve; withdraws the set
/// rolled away from and lifts the mark from the set rolled back to.
fn swap_state(state: &mut State, key: &UnitKey) {
    let key = key.clone();
    let served = state.served.remove(&key);
    let back = state.back.remove(&key);
    if let Some(sha) = served.as_ref().and_then(|s| s.manifest_sha256.clone()) {
        state.withdrawn.insert(sha);
    }
    if let Some(sha) = back.as_ref().and_then(|b| b.manifest_sha256.as_ref()) {
        state.withdrawn.remove(sha);
    }
    if let Some(b) = back {
        state.served.insert(key.clone(), b);
    }
    if let Some(s) = served {
        state.back.insert(key, s);
    }
}
