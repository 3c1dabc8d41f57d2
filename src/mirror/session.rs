//! The session phase every change to a mirror starts with, shared by import
//! and rollback: open the state directory, take the import lock, claim the
//! served folder, then finish whatever a crashed run left (journaled
//! publishes rolled forward, a ledger line still due, an import killed
//! while publishing recorded). It also owns writing a change to the state
//! together with its ledger line ([`commit`]), so that neither the ledger
//! nor the state module needs the other's writer. It never looks at a
//! bundle.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ledger::{self, LedgerEntry, Outcome, SlotChange};
use super::lock::{ImportLock, LockError};
use super::publish::{self, PublishOptions};
use super::setcheck;
use super::state::{ServedSlot, State, StateDir, StateError};
use crate::error::{Classify, ExitKind};
use crate::faults::crash_point;
use crate::profile::UnitKey;

/// A mirror held by this process: its state directory under the import
/// lock. The lock is released when the session is dropped.
#[derive(Debug)]
pub struct Session {
    dir: StateDir,
    _lock: ImportLock,
}

/// Why the session phase failed: taking the state directory or the lock,
/// recovering an interrupted publish, or writing a change with its ledger
/// line. Shared by [`super::import::ImportError`] and
/// [`super::rollback::RollbackError`] (each converts from it and from its
/// four parts), so the variants are written once. Transparent: the message
/// and the source chain are the part's own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
}

impl Classify for SessionError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            SessionError::State(e) => e.exit_kind(),
            SessionError::Lock(e) => e.exit_kind(),
            SessionError::Ledger(e) => e.exit_kind(),
            SessionError::Publish(e) => e.exit_kind(),
        }
    }
}

/// Lets `?` turn each part of a [`SessionError`] into an error type that
/// holds a `Session(SessionError)` variant.
macro_rules! from_session_parts {
    ($target:ty) => {
        impl From<$crate::mirror::state::StateError> for $target {
            fn from(e: $crate::mirror::state::StateError) -> Self {
                $crate::mirror::session::SessionError::from(e).into()
            }
        }
        impl From<$crate::mirror::lock::LockError> for $target {
            fn from(e: $crate::mirror::lock::LockError) -> Self {
                $crate::mirror::session::SessionError::from(e).into()
            }
        }
        impl From<$crate::mirror::ledger::LedgerError> for $target {
            fn from(e: $crate::mirror::ledger::LedgerError) -> Self {
                $crate::mirror::session::SessionError::from(e).into()
            }
        }
        impl From<$crate::mirror::publish::PublishError> for $target {
            fn from(e: $crate::mirror::publish::PublishError) -> Self {
                $crate::mirror::session::SessionError::from(e).into()
            }
        }
    };
}
pub(crate) use from_session_parts;

impl Session {
    /// Opens `state_dir`, takes the lock (waiting at most `wait`) and claims
    /// `served` for it.
    pub fn open(state_dir: &Path, served: &Path, wait: Duration) -> Result<Session, SessionError> {
        let dir = StateDir::open(state_dir)?;
        let lock = dir.lock(wait)?;
        super::lock::claim_served(served, dir.path())?;
        Ok(Session { dir, _lock: lock })
    }

    /// The state directory.
    pub fn dir(&self) -> &StateDir {
        &self.dir
    }

    /// Finishes what an interrupted run left in `areas` and in the state,
    /// and returns the state to work from with the folders whose publish
    /// it completed.
    pub fn recover(
        &self,
        areas: &[PathBuf],
        opts: &PublishOptions,
        tree: setcheck::Tree<'_>,
    ) -> Result<(State, Vec<PathBuf>), SessionError> {
        let mut completed = Vec::new();
        for area in areas {
            for r in publish::recover(area, opts)? {
                // Staging that never reached its journal published nothing:
                // removing it is not completing an interrupted publish.
                if r.action == publish::RecoveryAction::Completed {
                    completed.push(r.current);
                }
            }
        }
        let mut state = self.dir.load()?;
        settle_interrupted(&self.dir, &mut state, tree)?;
        Ok((state, completed))
    }
}

/// Saves `state` together with the ledger `entry` that records its change,
/// appends the entry, then clears it from the state. Call it under the
/// import lock. A kill after the first save leaves the entry in
/// `state.json`; the next run's [`settle`] appends it (once), so a change
/// the state holds is never missing from the ledger.
pub fn commit(dir: &StateDir, state: &mut State, entry: LedgerEntry) -> Result<(), SessionError> {
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
pub fn settle(dir: &StateDir, state: &mut State) -> Result<(), SessionError> {
    let Some(entry) = state.ledger_due.clone() else {
        return Ok(());
    };
    dir.ledger().append_once(&entry)?;
    crash_point("ledger-appended");
    state.ledger_due = None;
    dir.save(state)?;
    Ok(())
}

/// Records what an interrupted run left, once `publish::recover` has
/// completed its folders (call it under the lock): a ledger line still due,
/// and an import killed while publishing, whose ledger line is written now
/// (or the ledger would never show that bundle as imported). Rollback runs
/// it too, so that it checks n-1 against an up-to-date record.
fn settle_interrupted(
    state_dir: &StateDir,
    state: &mut State,
    tree: setcheck::Tree<'_>,
) -> Result<(), SessionError> {
    settle(state_dir, state)?;
    if state.pending.is_some() {
        match reconcile(state, tree) {
            Some(entry) => commit(state_dir, state, entry)?,
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
fn reconcile(state: &mut State, tree: setcheck::Tree<'_>) -> Option<LedgerEntry> {
    let p = state.pending.take()?;
    let mut changes = Vec::new();
    for (key, ps) in &p.slots {
        if tree
            .check(&ps.dir, &ps.served.files, setcheck::Depth::Hashes)
            .is_ok()
        {
            changes.push(SlotChange {
                slot: key.clone(),
                before: state.served(key).map(ServedSlot::versions),
                after: Some(ps.served.versions()),
            });
            let replaced = state.served(key).cloned();
            state.record_served(key, ps.served.clone());
            settle_back(state, key, replaced, &ps.dir, tree);
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
        bundle_id: Some(p.accepted.bundle_id.to_string()),
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

/// Makes the record of a unit's n-1 say what its folder holds after an
/// interrupted publish that recovery completed: the replaced set when it was
/// rotated there, else the record it had, or none when neither matches (a
/// record that does not match would make `rollback` refuse a good n-1).
fn settle_back(
    state: &mut State,
    key: &UnitKey,
    replaced: Option<ServedSlot>,
    current: &Path,
    tree: setcheck::Tree<'_>,
) {
    let Some(back) = publish::back_of(current) else {
        return;
    };
    let holds = |r: &ServedSlot| {
        !r.files.is_empty() && tree.check(&back, &r.files, setcheck::Depth::Hashes).is_ok()
    };
    match replaced.filter(|r| holds(r)) {
        Some(r) => {
            state.back.insert(key.clone(), r);
        }
        None => {
            if state.back.get(key).is_some_and(|b| !holds(b)) {
                state.back.remove(key);
            }
        }
    }
}
