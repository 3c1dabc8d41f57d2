//! Staging and atomic publish of one `arch_<arch>` folder, with n-1 rotation
//! and crash recovery. This module owns the only code that renames folders
//! in the served tree; it must never leave an arch folder missing, mixed or
//! half-written after a crash, and never touch a folder it was not asked to
//! publish. It knows nothing of bundles, signatures or policy: callers stage
//! files that are already verified.
//!
//! # Layout
//!
//! A [`Destination`] is an arch folder `R/arch_<arch>` inside a ring folder
//! `R` (`<mirror>/<platform>/<ring>` or `--target DIR`), with n-1 in the
//! sibling `R_back/arch_<arch>`. Staging lives next to the ring folder, in its
//! parent (the *area*: `<mirror>/<platform>/` or the parent of `--target`):
//!
//! ```text
//! <area>/.gapferry-staging-<pid>-<nanos>-<n>/      mode 0700
//!        <ring>/arch_<arch>/                       the new set (0755, files 0644)
//!        <ring>/arch_<arch>.journal                intent record, see below
//!        <ring>/arch_<arch>.old                    fallback only: old set moved aside
//!        <ring>/arch_<arch>.older                  fallback only: old n-1 moved aside
//! ```
//!
//! Why there: `renameat2` only works within one filesystem, and the area is
//! the one folder that certainly shares a filesystem with both `R` and
//! `R_back` (a mount at `<mirror>/<platform>` would break a staging folder in
//! the mirror root, and `--target` has no mirror root at all). The staging
//! root is hidden (leading dot) and mode 0700, so an HTTP server running as
//! another user cannot list or serve a half-written set; operators may also
//! deny dot-folders in the server. The next run recognises leftovers by the
//! `.gapferry-staging-` prefix and [`recover`]s them.
//!
//! # Publish steps
//!
//! 1. Stage: create the staging folder, write and fsync every file
//!    ([`StagedFile::finish`]), fsync the folders.
//! 2. Journal: write `arch_<arch>.journal` with the identities (device, inode)
//!    of the staged folder ("new") and of the current folder ("old", if any),
//!    fsync it and its folder. From here on the publish is decided: a crash
//!    rolls it forward, never back.
//! 3. Swap: make "new" the current folder. If a current folder exists, Linux
//!    `renameat2(RENAME_EXCHANGE)` (macOS `renamex_np(RENAME_SWAP)`, through
//!    rustix) swaps the two in one step, so the path never disappears and
//!    never holds a mix; the old set is now at the staged path. Without a
//!    current folder, a plain rename. Then fsync both parents.
//! 4. Rotate: move "old" to `R_back/arch_<arch>`: exchange with the existing
//!    back set (which lands in staging) or rename when there is none.
//!    Skipped when the journal says to discard "old" ([`OldSet::Discard`]:
//!    the caller found it damaged, and a damaged set must never become n-1).
//! 5. Clean: remove what is left in staging (the old n-1, or the discarded
//!    old set), the journal, and the staging root when empty; fsync.
//!
//! Steps 3-5 are one idempotent function driven by what is on disk: it looks
//! up where "new" and "old" are by inode, and does only what is still
//! missing. [`recover`] runs the same function for every journal it finds,
//! and removes staging without a journal (an import that never reached step
//! 2: nothing was published). So after a crash at any instant each arch
//! folder holds the complete old set or the complete new set, and the next
//! run finishes the rotation.
//!
//! # Fallback when the filesystem cannot exchange
//!
//! NFS, SMB and some FUSE filesystems refuse `RENAME_EXCHANGE` (EINVAL,
//! ENOSYS, EOPNOTSUPP). Then the swap is two renames done back to back:
//! current -> `arch_<arch>.old` in staging, staged -> current. Between them
//! (microseconds, no I/O in between) the arch folder is missing: a client
//! polling at that instant gets a 404 / ENOENT and tries again at its next
//! interval; it never sees a mixed folder. A crash inside that window leaves
//! the folder missing until the next run, whose recovery completes the swap
//! from the journal. (Symlink flips were rejected: endpoints and HTTP
//! servers must see a real folder. Per-file renames were rejected: they can
//! show a new `updates.zip` beside an old `manifest.json`.) The back rotation
//! uses the same fallback. [`PublishOptions::force_fallback`] (or
//! the fault-injection build's `GAPFERRY_TEST_FORCE_FALLBACK=1`, see
//! [`crate::faults`])
//! forces it, for tests.
//!
//! # Where the primitives live
//!
//! The moves themselves (one exchange, the two-rename fallback, `rename`),
//! the fsyncs and the journal's create-new write are [`crate::durable`]'s;
//! this module owns the protocol on top of them: the staging layout, the
//! journal, the idempotent roll-forward and [`recover`]. `fetch` publishes
//! through it too, so an interrupted fetch is recovered the same way.
//!
//! # Test-only crash hooks
//!
//! [`crate::faults`] kills a publish at named steps for the crash tests; it
//! exists only in builds with the `fault-injection` feature.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use super::fsx::{self, fix};
pub use crate::durable::SwapMethod;
use crate::durable::{self, MoveError, SyncingWriter};
use crate::error::{Classify, ExitKind};
use crate::profile::Placement;

/// Name prefix of every staging root; leftovers are recognised by it.
pub const STAGING_PREFIX: &str = ".gapferry-staging-";
use crate::faults::crash_after_bytes;
pub use crate::faults::{crash_point, CRASH_STEPS};
#[cfg(feature = "fault-injection")]
pub use crate::faults::{ENV_CRASH_AFTER_BYTES, ENV_CRASH_AT, ENV_FORCE_FALLBACK};

const JOURNAL_SUFFIX: &str = ".journal";
const ASIDE_SUFFIX: &str = ".old";
const OLDER_SUFFIX: &str = ".older";
const STAGE_ROOT_MODE: u32 = 0o700;

/// A staging or publish failure. Every variant names the path and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("cannot create folder {path}: {source}{}", fix(.source))]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}{}", fix(.source))]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot flush {path} to disk: {source}{}", fix(.source))]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}{}", fix(.source))]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot move {from} to {to}: {source}{}", fix(.source))]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot remove {path}: {source}{}; remove it by hand", fix(.source))]
    Remove { path: PathBuf, source: io::Error },
    #[error(
        "{path} is a {kind}, not a folder: gapferry publishes real folders; \
         move it out of the mirror and run the import again"
    )]
    NotAFolder { path: PathBuf, kind: &'static str },
    #[error("{path} is already staged in this import (a bundle carries each folder once)")]
    AlreadyStaged { path: PathBuf },
    #[error("{name:?} is not a plain file name for a staged folder")]
    BadName { name: String },
    #[error("{path} cannot be published to: {reason}")]
    BadDestination { path: PathBuf, reason: String },
    #[error(
        "the staged set for {current} is gone from {staging}; the journal \
         {journal} cannot be completed: check the mirror by hand, then remove {staging}"
    )]
    Lost {
        current: PathBuf,
        staging: PathBuf,
        journal: PathBuf,
    },
}

impl Classify for PublishError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            // Only `--target` paths that name no folder get here.
            PublishError::BadDestination { .. } => ExitKind::Usage,
            _ => ExitKind::Operational,
        }
    }
}

/// How a publish is carried out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Use the two-rename fallback even where the filesystem can exchange.
    pub force_fallback: bool,
}

impl PublishOptions {
    /// Defaults; a fault-injection build (tests) also honours
    /// `GAPFERRY_TEST_FORCE_FALLBACK=1`.
    pub fn from_env() -> Self {
        PublishOptions {
            force_fallback: crate::faults::force_fallback(),
        }
    }
}

/// One arch folder to publish into, and where its n-1 goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    area: PathBuf,
    ring: OsString,
    arch: OsString,
    /// Whether the area and the ring folder are gapferry's (a mirror's
    /// `<platform>/<ring>`) rather than named by the operator (`--target`).
    managed_ring: bool,
}

impl Destination {
    /// `<root>/<area>/<group>/<leaf>` (`mde`:
    /// `<root>/<platform>/<ring>/arch_<arch>`), n-1 in `<group>_back`.
    pub fn in_mirror(root: &Path, place: &Placement) -> Result<Self, PublishError> {
        let area = absolute(&root.join(&place.area))?;
        Ok(Destination {
            area,
            ring: place.group.as_str().into(),
            arch: place.leaf.as_str().into(),
            managed_ring: true,
        })
    }

    /// `<target>/<leaf>` (`mde`: `<target>/arch_<arch>`), n-1 in the sibling
    /// `<target>_back`; `target` is the folder an endpoint's
    /// `offlineDefinitionUpdateUrl` names.
    pub fn in_target(target: &Path, leaf: &str) -> Result<Self, PublishError> {
        let abs = absolute(target)?;
        let bad = |reason: &str| PublishError::BadDestination {
            path: target.to_path_buf(),
            reason: reason.to_string(),
        };
        let name = match abs.file_name() {
            Some(n) if n != ".." && n != "." => n.to_os_string(),
            _ => return Err(bad("it has no folder name (name the ring folder itself)")),
        };
        let area = abs
            .parent()
            .ok_or_else(|| bad("the filesystem root cannot be a target"))?
            .to_path_buf();
        Ok(Destination {
            area,
            ring: name,
            arch: leaf.into(),
            managed_ring: false,
        })
    }

    /// Refuses a symbolic link (or a file) anywhere gapferry creates, swaps
    /// or rotates folders: the mirror's `<platform>` and `<ring>` folders,
    /// `<ring>_back`, and both arch folders. Renames follow symlinks in
    /// every component but the last, so a link planted there (by anyone
    /// who can write to the mirror) would make a publish write, and its n-1
    /// clean-up delete, outside the mirror. Call it before staging: a
    /// refusal then leaves every folder as it was. Parents are checked
    /// before children, so no check looks through a link. The mirror root
    /// and a `--target` folder are the operator's to place, links included.
    pub fn check_folders(&self) -> Result<(), PublishError> {
        let mut dirs = Vec::new();
        if self.managed_ring {
            dirs.push(self.area.clone());
            dirs.push(self.area.join(&self.ring));
        }
        dirs.push(self.area.join(back_ring_name(&self.ring)));
        dirs.push(self.current());
        dirs.push(self.back());
        for d in dirs {
            folder_id(&d)?;
        }
        Ok(())
    }

    /// The arch folder endpoints read.
    pub fn current(&self) -> PathBuf {
        self.area.join(&self.ring).join(&self.arch)
    }

    /// The n-1 arch folder.
    pub fn back(&self) -> PathBuf {
        self.area.join(back_ring_name(&self.ring)).join(&self.arch)
    }

    /// The folder holding the ring folder, its `_back` sibling and staging;
    /// pass it to [`recover`].
    pub fn area(&self) -> &Path {
        &self.area
    }
}

fn absolute(p: &Path) -> Result<PathBuf, PublishError> {
    std::path::absolute(p).map_err(|source| PublishError::Read {
        path: p.to_path_buf(),
        source,
    })
}

/// The n-1 folder of the arch folder `current` (`R/arch_x` ->
/// `R_back/arch_x`), for either layout.
pub fn back_of(current: &Path) -> Option<PathBuf> {
    let arch = current.file_name()?;
    let ring_dir = current.parent()?;
    let ring = ring_dir.file_name()?;
    Some(ring_dir.with_file_name(back_ring_name(ring)).join(arch))
}

fn back_ring_name(ring: &OsStr) -> OsString {
    let mut b = ring.to_os_string();
    b.push("_back");
    b
}

fn with_suffix(name: &OsStr, suffix: &str) -> OsString {
    let mut s = name.to_os_string();
    s.push(suffix);
    s
}

/// The areas of a mirror root for [`recover`]: those of every profile this
/// build knows (`mde`: one per platform).
pub fn mirror_areas(root: &Path) -> Vec<PathBuf> {
    let mut names: Vec<String> = crate::profile::all()
        .iter()
        .flat_map(|p| p.areas())
        .collect();
    names.sort();
    names.dedup();
    names.into_iter().map(|n| root.join(n)).collect()
}

/// Every path one slot's publish touches, derived from the staging layout
/// alone so that recovery can rebuild it from a leftover folder.
#[derive(Debug, Clone)]
struct SlotPaths {
    ring_dir: PathBuf,
    back_ring_dir: PathBuf,
    current: PathBuf,
    back: PathBuf,
    stage_root: PathBuf,
    stage_ring: PathBuf,
    staged: PathBuf,
    aside: PathBuf,
    older: PathBuf,
    journal: PathBuf,
}

impl SlotPaths {
    fn new(area: &Path, ring: &OsStr, arch: &OsStr, stage_root: &Path) -> Self {
        let ring_dir = area.join(ring);
        let back_ring_dir = area.join(back_ring_name(ring));
        let stage_ring = stage_root.join(ring);
        SlotPaths {
            current: ring_dir.join(arch),
            back: back_ring_dir.join(arch),
            ring_dir,
            back_ring_dir,
            stage_root: stage_root.to_path_buf(),
            staged: stage_ring.join(arch),
            aside: stage_ring.join(with_suffix(arch, ASIDE_SUFFIX)),
            older: stage_ring.join(with_suffix(arch, OLDER_SUFFIX)),
            journal: stage_ring.join(with_suffix(arch, JOURNAL_SUFFIX)),
            stage_ring,
        }
    }
}

/// A folder's identity on disk; renames keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FileId {
    dev: u64,
    ino: u64,
}

/// The intent record of step 2.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    format: u32,
    new: FileId,
    old: Option<FileId>,
    tag: String,
    /// Remove the old set in step 5 instead of rotating it into n-1 in
    /// step 4 ([`OldSet::Discard`]). Absent (false) in every other journal,
    /// so those stay byte-identical to what earlier releases wrote.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    discard_old: bool,
}

/// What becomes of the set a publish replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldSet {
    /// It becomes n-1 (`R_back/arch_<arch>`); the previous n-1 is removed.
    KeepAsBack,
    /// It is removed and n-1 stays as it is: for a set that no longer
    /// matches what was imported, which must never become n-1.
    Discard,
}

/// The identity of the folder at `path`, `None` when nothing is there; an
/// error when something other than a real folder is there.
fn folder_id(path: &Path) -> Result<Option<FileId>, PublishError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })),
        Ok(m) => Err(PublishError::NotAFolder {
            path: path.to_path_buf(),
            kind: if m.file_type().is_symlink() {
                "symbolic link"
            } else {
                "file"
            },
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PublishError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn sync_dir(path: &Path) -> Result<(), PublishError> {
    fsx::sync_dir(path).map_err(|source| PublishError::Sync {
        path: path.to_path_buf(),
        source,
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), PublishError> {
    durable::rename(from, to).map_err(PublishError::from)
}

impl From<MoveError> for PublishError {
    fn from(e: MoveError) -> Self {
        PublishError::Rename {
            from: e.from,
            to: e.to,
            source: e.source,
        }
    }
}

fn remove_any(path: &Path) -> Result<(), PublishError> {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    res.map_err(|source| PublishError::Remove {
        path: path.to_path_buf(),
        source,
    })
}

/// Swaps two existing folders in one step and makes it durable (used by
/// `gapferry rollback`). `Ok(false)` when the filesystem cannot exchange;
/// nothing moved then.
pub fn swap_folders(a: &Path, b: &Path) -> Result<bool, PublishError> {
    if !durable::exchange(a, b)? {
        return Ok(false);
    }
    for dir in [a.parent(), b.parent()].into_iter().flatten() {
        sync_dir(dir)?;
    }
    Ok(true)
}

/// [`durable::swap_in`] with this publish's options.
fn swap_in(
    from: &Path,
    to: &Path,
    aside: &Path,
    opts: &PublishOptions,
    aside_step: &str,
) -> Result<SwapMethod, PublishError> {
    Ok(durable::swap_in(
        from,
        to,
        aside,
        opts.force_fallback,
        aside_step,
    )?)
}

/// The first of `candidates` that holds the folder `id`.
fn find(id: FileId, candidates: &[&Path]) -> Result<Option<PathBuf>, PublishError> {
    for c in candidates {
        if let Ok(m) = fs::symlink_metadata(c) {
            if m.is_dir() && m.dev() == id.dev && m.ino() == id.ino {
                return Ok(Some(c.to_path_buf()));
            }
        }
    }
    Ok(None)
}

/// Steps 3-5, idempotent: does whatever is still missing for the journal.
fn drive(
    p: &SlotPaths,
    j: &Journal,
    opts: &PublishOptions,
) -> Result<Option<SwapMethod>, PublishError> {
    let candidates = [p.staged.as_path(), p.aside.as_path(), p.older.as_path()];
    let lost = || PublishError::Lost {
        current: p.current.clone(),
        staging: p.stage_ring.clone(),
        journal: p.journal.clone(),
    };

    // Step 3: new becomes current.
    let mut method = None;
    let cur = folder_id(&p.current)?;
    if cur != Some(j.new) {
        let new_at = find(j.new, &candidates)?.ok_or_else(lost)?;
        method = Some(match cur {
            Some(_) => swap_in(&new_at, &p.current, &p.aside, opts, "fallback-aside")?,
            None => {
                rename(&new_at, &p.current)?;
                SwapMethod::Rename
            }
        });
        sync_dir(&p.ring_dir)?;
        sync_dir(&p.stage_ring)?;
        crash_point("current-swapped");
    }

    // Step 4: old becomes n-1 (unless it is to be discarded: then step 5
    // removes it with the leftovers, and n-1 stays as it is).
    if let Some(old) = j.old.filter(|_| !j.discard_old) {
        let back = folder_id(&p.back)?;
        if back != Some(old) {
            // Not finding it means it was rotated and then replaced, which a
            // journal never asks for; leave the back folder alone then.
            if let Some(old_at) = find(old, &candidates)? {
                fsx::ensure_dir_all(&p.back_ring_dir).map_err(|source| {
                    PublishError::CreateDir {
                        path: p.back_ring_dir.clone(),
                        source,
                    }
                })?;
                match back {
                    Some(_) => {
                        swap_in(&old_at, &p.back, &p.older, opts, "back-aside")?;
                    }
                    None => rename(&old_at, &p.back)?,
                }
                sync_dir(&p.back_ring_dir)?;
                sync_dir(&p.stage_ring)?;
                crash_point("back-rotated");
            }
        }
    }

    // Step 5: drop the previous n-1 and the journal (journal last, so that a
    // crash in between still finds it and finishes the job).
    for leftover in &candidates {
        remove_any(leftover)?;
    }
    remove_any(&p.journal)?;
    sync_dir(&p.stage_ring)?;
    crash_point("cleaned");
    Ok(method)
}

/// Removes the staging folders of one root when they are empty, then fsyncs
/// the area. Non-empty folders stay (another slot is still staged).
fn prune_stage_root(stage_root: &Path) -> Result<(), PublishError> {
    let rm_empty = |p: &Path| match fs::remove_dir(p) {
        Ok(()) => Ok(true),
        // ErrorKind::DirectoryNotEmpty needs Rust 1.83; the MSRV is 1.80.
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(rustix::io::Errno::NOTEMPTY.raw_os_error()) =>
        {
            Ok(false)
        }
        Err(source) => Err(PublishError::Remove {
            path: p.to_path_buf(),
            source,
        }),
    };
    if let Ok(rd) = fs::read_dir(stage_root) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rm_empty(&e.path())?;
            }
        }
    }
    if rm_empty(stage_root)? {
        if let Some(area) = stage_root.parent() {
            sync_dir(area)?;
        }
    }
    Ok(())
}

/// One import's staging: a staging root per area, created on demand.
/// Dropping it removes everything staged and not yet published (what a
/// rejected or failed import leaves); journaled slots stay for [`recover`].
#[derive(Debug)]
pub struct Staging {
    token: String,
    opts: PublishOptions,
    roots: Vec<PathBuf>,
    staged: Vec<PathBuf>,
}

/// What publishing one slot did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The arch folder now holding the new set.
    pub current: PathBuf,
    /// The n-1 folder, when a previous set was rotated into it.
    pub back: Option<PathBuf>,
    /// The previous set was removed ([`OldSet::Discard`]); n-1 is unchanged.
    pub discarded_old: bool,
    /// How the swap was done.
    pub method: SwapMethod,
}

impl Staging {
    /// A new staging for one import. Nothing is created until [`stage`](Self::stage).
    pub fn new(opts: PublishOptions) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let token = format!(
            "{}-{:x}-{}",
            std::process::id(),
            nanos,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Staging {
            token,
            opts,
            roots: Vec::new(),
            staged: Vec::new(),
        }
    }

    /// Creates an empty staged folder for `dest` (and the ring folder, the
    /// area and the mirror root when missing, mode 0755).
    pub fn stage(&mut self, dest: &Destination) -> Result<StagedSlot, PublishError> {
        let stage_root = dest.area.join(format!("{STAGING_PREFIX}{}", self.token));
        let paths = SlotPaths::new(&dest.area, &dest.ring, &dest.arch, &stage_root);
        if self.staged.contains(&paths.current) {
            return Err(PublishError::AlreadyStaged {
                path: paths.current,
            });
        }
        let create = |path: &Path, mode: u32| -> Result<(), PublishError> {
            fsx::create_dir(path, mode).map_err(|source| PublishError::CreateDir {
                path: path.to_path_buf(),
                source,
            })
        };
        fsx::ensure_dir_all(&paths.ring_dir).map_err(|source| PublishError::CreateDir {
            path: paths.ring_dir.clone(),
            source,
        })?;
        if !self.roots.contains(&stage_root) {
            create(&stage_root, STAGE_ROOT_MODE)?;
            self.roots.push(stage_root.clone());
            sync_dir(&dest.area)?;
        }
        if !paths.stage_ring.is_dir() {
            create(&paths.stage_ring, STAGE_ROOT_MODE)?;
        }
        create(&paths.staged, fsx::DIR_MODE)?;
        self.staged.push(paths.current.clone());
        crash_point("staging-created");
        Ok(StagedSlot {
            dest: dest.clone(),
            paths,
        })
    }

    /// Publishes a staged folder (steps 2-5 of the module docs). `tag`
    /// (e.g. the bundle id) is kept in the journal and reported by
    /// [`recover`] if this publish is completed by a later run.
    pub fn publish(&mut self, slot: StagedSlot, tag: &str) -> Result<Published, PublishError> {
        self.publish_with(slot, tag, OldSet::KeepAsBack)
    }

    /// [`publish`](Self::publish), saying what becomes of the replaced set.
    /// The choice is journaled, so recovery after a crash honours it.
    pub fn publish_with(
        &mut self,
        slot: StagedSlot,
        tag: &str,
        old_set: OldSet,
    ) -> Result<Published, PublishError> {
        let p = &slot.paths;
        sync_dir(&p.staged)?;
        let new = folder_id(&p.staged)?.ok_or_else(|| PublishError::Lost {
            current: p.current.clone(),
            staging: p.stage_ring.clone(),
            journal: p.journal.clone(),
        })?;
        let old = folder_id(&p.current)?;
        // Refuse a non-folder n-1 before anything moves.
        folder_id(&p.back)?;
        let discard_old = old.is_some() && old_set == OldSet::Discard;
        let journal = Journal {
            format: 1,
            new,
            old,
            tag: tag.to_string(),
            discard_old,
        };
        let bytes = serde_json::to_vec(&journal).expect("journal serializes");
        durable::write_new_synced(&p.journal, &bytes, durable::PRIVATE_FILE_MODE).map_err(
            |source| PublishError::Write {
                path: p.journal.clone(),
                source,
            },
        )?;
        sync_dir(&p.stage_root)?;
        crash_point("journal-written");

        let method = drive(p, &journal, &self.opts)?.unwrap_or(SwapMethod::Rename);
        prune_stage_root(&p.stage_root)?;
        Ok(Published {
            current: p.current.clone(),
            back: old.filter(|_| !discard_old).map(|_| p.back.clone()),
            discarded_old: discard_old,
            method,
        })
    }

    /// Removes everything staged and not published. Same as dropping, but
    /// reports errors.
    pub fn discard(mut self) -> Result<(), PublishError> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> Result<(), PublishError> {
        let mut first_err = None;
        for root in std::mem::take(&mut self.roots) {
            if let Err(e) = discard_unjournaled(&root) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = self.cleanup();
    }
}

/// Removes every staged folder of `stage_root` that has no journal, then the
/// root when empty.
fn discard_unjournaled(stage_root: &Path) -> Result<(), PublishError> {
    let Ok(rings) = fs::read_dir(stage_root) else {
        return Ok(());
    };
    for ring in rings.flatten() {
        let ring_path = ring.path();
        let groups = group_entries(&ring_path)?;
        for (arch, has_journal) in groups {
            if !has_journal {
                for suffix in ["", ASIDE_SUFFIX, OLDER_SUFFIX] {
                    remove_any(&ring_path.join(with_suffix(&arch, suffix)))?;
                }
            }
        }
        if ring_path.is_dir() {
            sync_dir(&ring_path)?;
        }
    }
    prune_stage_root(stage_root)
}

/// The arch names found in one staging ring folder, each with whether it
/// has a journal.
fn group_entries(stage_ring: &Path) -> Result<BTreeMap<OsString, bool>, PublishError> {
    let mut groups = BTreeMap::new();
    let rd = match fs::read_dir(stage_ring) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(groups),
        Err(source) => {
            return Err(PublishError::Read {
                path: stage_ring.to_path_buf(),
                source,
            })
        }
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let s = name.to_string_lossy();
        let (arch, journal) = if let Some(a) = s.strip_suffix(JOURNAL_SUFFIX) {
            (a.to_string(), true)
        } else if let Some(a) = s.strip_suffix(OLDER_SUFFIX) {
            (a.to_string(), false)
        } else if let Some(a) = s.strip_suffix(ASIDE_SUFFIX) {
            (a.to_string(), false)
        } else {
            (s.to_string(), false)
        };
        // Non-UTF-8 names are never ours; the lossy form still groups them.
        let key = if arch == s {
            name.clone()
        } else {
            OsString::from(arch)
        };
        let entry = groups.entry(key).or_insert(false);
        *entry |= journal;
    }
    Ok(groups)
}

/// A staged, still unpublished arch folder.
#[derive(Debug)]
pub struct StagedSlot {
    dest: Destination,
    paths: SlotPaths,
}

impl StagedSlot {
    /// The folder files are staged in.
    pub fn dir(&self) -> &Path {
        &self.paths.staged
    }

    /// Where this folder will be published.
    pub fn destination(&self) -> &Destination {
        &self.dest
    }

    /// Creates a new file `name` (one plain component, e.g. `updates.zip`)
    /// in the staged folder, mode 0644.
    pub fn create_file(&self, name: &str) -> Result<StagedFile, PublishError> {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains(['/', '\\', '\0'])
            || name.len() > 255
        {
            return Err(PublishError::BadName {
                name: name.chars().take(300).collect(),
            });
        }
        let path = self.paths.staged.join(name);
        let file =
            fsx::create_new_file(&path, fsx::FILE_MODE).map_err(|source| PublishError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(StagedFile {
            file: SyncingWriter::new(file),
            path,
            written: 0,
        })
    }

    /// Stages a small file from memory (e.g. `manifest.json`).
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<u64, PublishError> {
        let mut f = self.create_file(name)?;
        if let Err(e) = f.write_all(bytes) {
            return Err(f.error(e));
        }
        f.finish()
    }
}

/// A file being written into a staged folder. Call [`finish`](Self::finish)
/// to make it durable; dropping it without leaves it for staging cleanup.
#[derive(Debug)]
pub struct StagedFile {
    file: SyncingWriter,
    path: PathBuf,
    written: u64,
}

impl StagedFile {
    /// The file's path (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wraps an I/O error from writing this file (e.g. ENOSPC from
    /// `io::copy`) so that it names the file and the fix.
    pub fn error(&self, source: io::Error) -> PublishError {
        PublishError::Write {
            path: self.path.clone(),
            source,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes the file to disk and returns its size. Large files have been
    /// syncing in the background while they were written
    /// ([`SyncingWriter`]), so little is left to flush here.
    pub fn finish(self) -> Result<u64, PublishError> {
        self.file.finish().map_err(|source| PublishError::Sync {
            path: self.path.clone(),
            source,
        })?;
        crash_point("file-written");
        Ok(self.written)
    }
}

impl Write for StagedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        crash_after_bytes(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// What [`recover`] did with one leftover slot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryAction {
    /// Staged but never journaled: nothing was published; removed.
    Discarded,
    /// Journaled: the publish was completed (new set current, old set n-1).
    Completed,
}

/// One leftover slot [`recover`] dealt with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The arch folder concerned.
    pub current: PathBuf,
    pub action: RecoveryAction,
    /// The journal's tag (the interrupted import's bundle id), if journaled.
    pub tag: Option<String>,
}

/// Finds staging leftovers in `area` (a crashed or killed import), completes
/// every journaled publish and removes the rest. Call it under the import
/// lock, before staging anything. Staging roots whose creating process is
/// still alive on this host are left alone (an import sharing the mirror
/// under another lock, i.e. a misconfiguration; never a crashed one). A
/// journal whose arch folder was replaced since it was written (its pid
/// had been reused, so an import ran in between) is stale: discarded, never
/// rolled forward over the newer set.
pub fn recover(area: &Path, opts: &PublishOptions) -> Result<Vec<Recovered>, PublishError> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(area) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(PublishError::Read {
                path: area.to_path_buf(),
                source,
            })
        }
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(STAGING_PREFIX)) else {
            continue;
        };
        if owner_alive(rest) {
            continue;
        }
        let stage_root = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_any(&stage_root)?;
            continue;
        }
        let rings = fs::read_dir(&stage_root).map_err(|source| PublishError::Read {
            path: stage_root.clone(),
            source,
        })?;
        for ring in rings.flatten() {
            let ring_name = ring.file_name();
            let ring_path = ring.path();
            if !ring.file_type().is_ok_and(|t| t.is_dir()) {
                remove_any(&ring_path)?;
                continue;
            }
            for (arch, has_journal) in group_entries(&ring_path)? {
                let p = SlotPaths::new(area, &ring_name, &arch, &stage_root);
                let journal = if has_journal {
                    read_journal(&p.journal)?
                } else {
                    None
                };
                match journal {
                    Some(j) if is_stale(&p, &j)? => {
                        for path in [&p.staged, &p.aside, &p.older, &p.journal] {
                            remove_any(path)?;
                        }
                        out.push(Recovered {
                            current: p.current.clone(),
                            action: RecoveryAction::Discarded,
                            tag: Some(j.tag),
                        });
                    }
                    Some(j) => {
                        drive(&p, &j, opts)?;
                        out.push(Recovered {
                            current: p.current.clone(),
                            action: RecoveryAction::Completed,
                            tag: Some(j.tag),
                        });
                    }
                    None => {
                        // A torn journal was never followed by a rename: the
                        // rename comes only after the journal is on disk.
                        for path in [&p.staged, &p.aside, &p.older, &p.journal] {
                            remove_any(path)?;
                        }
                        out.push(Recovered {
                            current: p.current.clone(),
                            action: RecoveryAction::Discarded,
                            tag: None,
                        });
                    }
                }
            }
        }
        remove_any(&stage_root)?;
        sync_dir(area)?;
    }
    Ok(out)
}

/// Whether a journal is stale: its arch folder holds neither its old nor
/// its new set, so a later publish replaced the folder after this journal
/// was written (while its leftover's owner looked alive: a reused pid).
/// Rolling it forward would put an older set back over a newer one.
fn is_stale(p: &SlotPaths, j: &Journal) -> Result<bool, PublishError> {
    Ok(folder_id(&p.current)?.is_some_and(|cur| cur != j.new && Some(cur) != j.old))
}

fn read_journal(path: &Path) -> Result<Option<Journal>, PublishError> {
    let bytes = fs::read(path).map_err(|source| PublishError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(serde_json::from_slice(&bytes).ok())
}

/// True when the staging token names a live process other than this one.
fn owner_alive(token: &str) -> bool {
    let Some(pid) = token.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
        return false;
    };
    if pid == std::process::id() as i32 {
        return false;
    }
    match rustix::process::Pid::from_raw(pid) {
        Some(pid) => rustix::process::test_kill_process(pid).is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::exchange;
    use crate::mde::{Arch, Platform, Ring, Slot};
    use std::os::unix::fs::PermissionsExt;

    fn slot() -> Placement {
        Slot {
            platform: Platform::Linux,
            ring: Ring::Production,
            arch: Arch::X86_64,
        }
        .placement()
    }

    fn stage_set(st: &mut Staging, dest: &Destination, v: &str) -> StagedSlot {
        let s = st.stage(dest).unwrap();
        s.write_file("updates.zip", format!("zip {v}").as_bytes())
            .unwrap();
        s.write_file("manifest.json", format!("man {v}").as_bytes())
            .unwrap();
        s
    }

    fn read_set(dir: &Path) -> Option<String> {
        let z = fs::read_to_string(dir.join("updates.zip")).ok()?;
        let m = fs::read_to_string(dir.join("manifest.json")).ok()?;
        let v = z.strip_prefix("zip ")?;
        assert_eq!(m, format!("man {v}"), "mixed set in {}", dir.display());
        assert_eq!(fs::read_dir(dir).unwrap().count(), 2, "extra files");
        Some(v.to_string())
    }

    fn only_served(area: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(area)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn publish_three(opts: PublishOptions) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("mirror");
        let dest = Destination::in_mirror(&root, &slot()).unwrap();
        let mut expect_method = SwapMethod::Rename;
        for v in ["1", "2", "3"] {
            let mut st = Staging::new(opts.clone());
            let s = stage_set(&mut st, &dest, v);
            let p = st.publish(s, v).unwrap();
            assert_eq!(p.method, expect_method);
            expect_method = if opts.force_fallback {
                SwapMethod::Fallback
            } else {
                SwapMethod::Exchange
            };
        }
        assert_eq!(read_set(&dest.current()).as_deref(), Some("3"));
        assert_eq!(read_set(&dest.back()).as_deref(), Some("2"));
        assert_eq!(dest.back(), root.join("linux/production_back/arch_x86_64"));
        assert_eq!(
            only_served(&root.join("linux")),
            ["production", "production_back"]
        );
        for d in [dest.current(), dest.back()] {
            assert_eq!(
                fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o755
            );
            let f = fs::metadata(d.join("updates.zip")).unwrap();
            assert_eq!(f.permissions().mode() & 0o777, 0o644);
        }
    }

    #[test]
    fn publish_exchange_rotates_back() {
        publish_three(PublishOptions::default());
    }

    #[test]
    fn publish_fallback_rotates_back() {
        publish_three(PublishOptions {
            force_fallback: true,
        });
    }

    /// A replaced set that the caller found damaged is removed, and n-1
    /// keeps the good set it had; also when a crash leaves the rest of
    /// the publish to recovery.
    #[test]
    fn discarding_the_old_set_keeps_n_1() {
        for fallback in [false, true] {
            let opts = PublishOptions {
                force_fallback: fallback,
            };
            for crash_after_swap in [false, true] {
                let t = tempfile::tempdir().unwrap();
                let dest = Destination::in_mirror(t.path(), &slot()).unwrap();
                for v in ["1", "2"] {
                    let mut st = Staging::new(opts.clone());
                    let s = stage_set(&mut st, &dest, v);
                    st.publish(s, v).unwrap();
                }
                fs::write(dest.current().join("updates.zip"), b"zip 2").unwrap();
                let mut st = Staging::new(opts.clone());
                let s = stage_set(&mut st, &dest, "3");
                if crash_after_swap {
                    // The publish got as far as the swap, then died.
                    let p = s.paths.clone();
                    let j = Journal {
                        format: 1,
                        new: folder_id(&p.staged).unwrap().unwrap(),
                        old: folder_id(&p.current).unwrap(),
                        tag: "b3".into(),
                        discard_old: true,
                    };
                    let text = serde_json::to_string(&j).unwrap();
                    assert!(text.contains("\"discard_old\":true"), "{text}");
                    fs::write(&p.journal, text).unwrap();
                    if fallback {
                        fs::rename(&p.current, &p.aside).unwrap();
                        fs::rename(&p.staged, &p.current).unwrap();
                    } else {
                        assert!(exchange(&p.staged, &p.current).unwrap());
                    }
                    std::mem::forget(st);
                    let rec = recover(dest.area(), &opts).unwrap();
                    assert_eq!(rec[0].action, RecoveryAction::Completed);
                } else {
                    let p = st.publish_with(s, "3", OldSet::Discard).unwrap();
                    assert!(p.discarded_old && p.back.is_none());
                }
                assert_eq!(read_set(&dest.current()).as_deref(), Some("3"));
                assert_eq!(
                    read_set(&dest.back()).as_deref(),
                    Some("1"),
                    "fallback={fallback} crash={crash_after_swap}"
                );
                assert_eq!(only_served(dest.area()), ["production", "production_back"]);
            }
        }
        // Journals of ordinary publishes do not mention it.
        let j = Journal {
            format: 1,
            new: FileId { dev: 1, ino: 2 },
            old: None,
            tag: "t".into(),
            discard_old: false,
        };
        assert!(!serde_json::to_string(&j).unwrap().contains("discard"));
    }

    #[test]
    fn target_layout_and_other_folders_untouched() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("production");
        fs::create_dir_all(target.join("arch_arm64")).unwrap();
        fs::write(target.join("arch_arm64/keep"), b"x").unwrap();
        let dest = Destination::in_target(&target, "arch_x86_64").unwrap();
        assert_eq!(dest.current(), target.join("arch_x86_64"));
        assert_eq!(dest.back(), t.path().join("production_back/arch_x86_64"));
        assert_eq!(back_of(&dest.current()), Some(dest.back()));
        for v in ["1", "2"] {
            let mut st = Staging::new(PublishOptions::default());
            let s = stage_set(&mut st, &dest, v);
            st.publish(s, v).unwrap();
        }
        assert_eq!(read_set(&dest.current()).as_deref(), Some("2"));
        assert_eq!(read_set(&dest.back()).as_deref(), Some("1"));
        assert_eq!(fs::read(target.join("arch_arm64/keep")).unwrap(), b"x");
        assert_eq!(only_served(t.path()), ["production", "production_back"]);
    }

    #[test]
    fn dropped_staging_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let dest = Destination::in_mirror(t.path(), &slot()).unwrap();
        {
            let mut st = Staging::new(PublishOptions::default());
            let _s = stage_set(&mut st, &dest, "1");
            assert!(st.stage(&dest).is_err(), "same folder twice");
        }
        assert_eq!(only_served(&t.path().join("linux")), ["production"]);
        assert!(!dest.current().exists());
    }

    #[test]
    fn refuses_symlinked_current_and_bad_names() {
        let t = tempfile::tempdir().unwrap();
        let dest = Destination::in_mirror(t.path(), &slot()).unwrap();
        fs::create_dir_all(t.path().join("elsewhere")).unwrap();
        fs::create_dir_all(t.path().join("linux/production")).unwrap();
        std::os::unix::fs::symlink(t.path().join("elsewhere"), dest.current()).unwrap();
        let mut st = Staging::new(PublishOptions::default());
        let s = stage_set(&mut st, &dest, "1");
        assert!(s.create_file("../x").is_err());
        assert!(s.create_file("").is_err());
        let err = st.publish(s, "t").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        drop(st);
        assert!(fs::symlink_metadata(dest.current())
            .unwrap()
            .file_type()
            .is_symlink());
    }

    /// Replays a publish up to each step by hand (the states a crash can
    /// leave) and checks that recovery completes it.
    #[test]
    fn recovery_from_every_intermediate_state() {
        for fallback in [false, true] {
            let opts = PublishOptions {
                force_fallback: fallback,
            };
            // state k: the first k renames of the publish have happened.
            for k in 0..=4 {
                let t = tempfile::tempdir().unwrap();
                let dest = Destination::in_mirror(t.path(), &slot()).unwrap();
                for v in ["1", "2"] {
                    let mut st = Staging::new(opts.clone());
                    let s = stage_set(&mut st, &dest, v);
                    st.publish(s, v).unwrap();
                }
                let mut st = Staging::new(opts.clone());
                let s = stage_set(&mut st, &dest, "3");
                let p = s.paths.clone();
                let j = Journal {
                    format: 1,
                    new: folder_id(&p.staged).unwrap().unwrap(),
                    old: folder_id(&p.current).unwrap(),
                    tag: "b3".into(),
                    discard_old: false,
                };
                fs::write(&p.journal, serde_json::to_vec(&j).unwrap()).unwrap();
                let mut steps: Vec<(PathBuf, PathBuf)> = if fallback {
                    vec![
                        (p.current.clone(), p.aside.clone()),
                        (p.staged.clone(), p.current.clone()),
                        (p.back.clone(), p.older.clone()),
                        (p.aside.clone(), p.back.clone()),
                    ]
                } else {
                    vec![]
                };
                if fallback {
                    steps.truncate(k);
                    for (a, b) in steps {
                        fs::rename(a, b).unwrap();
                    }
                } else {
                    if k >= 1 {
                        assert!(exchange(&p.staged, &p.current).unwrap());
                    }
                    if k >= 2 {
                        assert!(exchange(&p.staged, &p.back).unwrap());
                    }
                }
                std::mem::forget(st);
                let rec = recover(dest.area(), &opts).unwrap();
                assert_eq!(rec.len(), 1, "k={k} fallback={fallback}");
                assert_eq!(rec[0].action, RecoveryAction::Completed);
                assert_eq!(rec[0].tag.as_deref(), Some("b3"));
                assert_eq!(read_set(&dest.current()).as_deref(), Some("3"));
                assert_eq!(read_set(&dest.back()).as_deref(), Some("2"));
                assert_eq!(
                    only_served(dest.area()),
                    ["production", "production_back"],
                    "k={k} fallback={fallback}"
                );
            }
        }
    }

    #[test]
    fn recovery_discards_unjournaled_and_foreign_junk() {
        let t = tempfile::tempdir().unwrap();
        let dest = Destination::in_mirror(t.path(), &slot()).unwrap();
        let mut st = Staging::new(PublishOptions::default());
        let s = stage_set(&mut st, &dest, "1");
        let mut f = s.create_file("partial").unwrap();
        f.write_all(b"half").unwrap();
        std::mem::forget(f);
        std::mem::forget(st);
        // A stray file with the prefix (e.g. from a copy tool) goes too.
        fs::write(dest.area().join(".gapferry-staging-junk"), b"").unwrap();
        let rec = recover(dest.area(), &PublishOptions::default()).unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].action, RecoveryAction::Discarded);
        assert_eq!(only_served(dest.area()), ["production"]);
        assert!(!dest.current().exists());
    }

    #[test]
    fn disk_full_message_names_file_and_fix() {
        let t = tempfile::tempdir().unwrap();
        let dest = Destination::in_mirror(t.path(), &slot()).unwrap();
        let mut st = Staging::new(PublishOptions::default());
        let s = st.stage(&dest).unwrap();
        let f = s.create_file("updates.zip").unwrap();
        let msg = f
            .error(io::Error::from_raw_os_error(
                rustix::io::Errno::NOSPC.raw_os_error(),
            ))
            .to_string();
        assert!(
            msg.contains("updates.zip") && msg.contains("free space"),
            "{msg}"
        );
    }
}
