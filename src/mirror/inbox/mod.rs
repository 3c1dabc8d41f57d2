//! The inbox job: import every complete bundle that has arrived in a
//! directory (a data diode's receiving folder, a transfer share), in
//! sequence order, and sort what was done into `processed/` and `rejected/`.
//!
//! A single-file bundle (`*.tar.zst`) counts as complete when it has not
//! been modified for the settle time (and, in watch mode, its size and
//! modification time did not change since the previous scan) and its zstd
//! frame runs to its end; a split bundle when its index (`*.volumes.json`),
//! at least one index signature and every volume at its indexed size are
//! there and settled, or with parity volumes any `n` of its data and parity
//! volumes, none of its files still changing. Anything else is left alone
//! for a later pass, until `give_up_after` past its last change: then it is
//! moved to `rejected/` with what is missing. Hidden files (exporters' and
//! copy tools' temporaries) are never touched.
//!
//! Other users may write the inbox, so every operation in it goes through
//! the opened folder ([`dirfd`]): nothing in it is reached through a
//! symbolic link, a bundle is read from the descriptor whose `fstat` said
//! "regular file" (a FIFO swapped in cannot block), `processed/` and
//! `rejected/` must be real folders of the importer's (or root's), and
//! reason files are created inside them by descriptor. A problem with one
//! file or folder is reported with that file and the pass goes on.
//!
//! It never changes how a bundle is checked: each one goes through
//! [`super::import`] exactly as `gapferry import` runs it, its head read
//! once, before the import lock is taken. It never deletes anything: files
//! are only renamed into the two subdirectories.

mod dirfd;
mod frames;
pub mod waiting;

use std::collections::HashMap;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::import::{self, ImportOptions, ImportReport};
use super::ledger::Outcome;
use crate::bundle::reader::BundleReader;
use crate::bundle::volumes::{self, BundleInput, SplitBundle, VolumeIndex, INDEX_SUFFIX};
use crate::bundle::BundleError;
use crate::error::{Classify, ExitKind};
use crate::progress::Observer;

use dirfd::{DirFd, InboxFiles};
pub use dirfd::{EntryError, REASON_MODE, SUBDIR_MODE};
pub use frames::{frame_state, FrameState};
use std::sync::Arc;

/// Where processed (imported or already imported) bundles go.
pub const PROCESSED: &str = "processed";
/// Where rejected and refused bundles go, each with `<name>.reason.json`.
pub const REJECTED: &str = "rejected";
/// At most this many single-file bundles are opened in one pass (oldest
/// first); the rest wait for the next. Each opened bundle holds its decoder
/// (up to the 16 MiB zstd window) until it is imported.
pub const MAX_OPEN_PER_PASS: usize = 16;

/// Errors of the inbox itself (not of one bundle).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Entry(#[from] EntryError),
}

impl Classify for InboxError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Operational
    }
}

/// One bundle found complete in the inbox.
#[derive(Debug)]
enum Candidate {
    /// A single-file bundle, opened by descriptor and its head read (or the
    /// reason it could not be).
    Single(Box<Single>),
    Split(Box<SplitBundle>),
}

/// A single-file bundle opened in the inbox.
#[derive(Debug)]
struct Single {
    pub name: String,
    pub path: PathBuf,
    /// Device and inode of what was opened.
    pub id: (u64, u64),
    /// The reader with its head read, or why the head could not be read.
    pub opened: Result<volumes::Opened, BundleError>,
}

impl Candidate {
    /// The path handed to import: the file, or the split bundle's index.
    pub fn path(&self) -> &Path {
        match self {
            Candidate::Single(s) => &s.path,
            Candidate::Split(s) => &s.index_path,
        }
    }

    /// The file name it is known by.
    pub fn name(&self) -> String {
        file_name(self.path())
    }

    /// The names of every file of it, the one that makes it complete first
    /// (so a crash while moving never leaves a set that looks complete).
    fn files(&self) -> Vec<String> {
        match self {
            Candidate::Single(s) => vec![s.name.clone()],
            Candidate::Split(s) => {
                let mut v = vec![file_name(&s.index_path)];
                v.extend(s.volume_paths().iter().map(|p| file_name(p)));
                v.extend(s.parity_paths().iter().map(|p| file_name(p)));
                v.extend(
                    s.signature_paths()
                        .unwrap_or_default()
                        .iter()
                        .map(|p| file_name(p)),
                );
                v
            }
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What the inbox needs besides the import options.
#[derive(Debug)]
pub struct InboxOptions {
    pub dir: PathBuf,
    /// How long a file must be left unmodified before it is looked at.
    pub settle: Duration,
    /// A file or split set still incomplete this long after its last change
    /// is moved to `rejected/` with what is missing.
    pub give_up_after: Duration,
    /// Every import runs with these, `bundle` replaced.
    pub import: ImportOptions,
}

/// What became of one bundle in a pass (one `--json` line).
#[derive(Debug, Clone, Serialize)]
pub struct BundleResult {
    /// The file name in the inbox (a split bundle's index).
    pub bundle: String,
    /// `imported`, `already_imported`, `rejected`, `refused` or `failed`.
    pub outcome: Outcome,
    pub exit_code: i32,
    /// Where its files went (`processed/...`, `rejected/...`), or null when
    /// left in place (operational failures, retried next pass; or
    /// `not_moved`).
    pub moved_to: Option<PathBuf>,
    pub bundle_id: Option<String>,
    pub sequence: Option<u64>,
    pub manifest_sha256: Option<crate::sha256hex::Sha256Hex>,
    pub receipt: Option<String>,
    /// The error (in `--json`, the line's `error.message`).
    #[serde(skip)]
    pub error: Option<String>,
    /// Why its files were left in the inbox although the outcome is
    /// settled (e.g. `processed/` is not a usable folder); null otherwise.
    pub not_moved: Option<String>,
    /// The full import report.
    #[serde(skip)]
    pub report: Option<ImportReport>,
}

/// `<name>.reason.json` beside a rejected bundle.
#[derive(Debug, Clone, Serialize)]
pub struct Reason {
    pub bundle: String,
    pub files: Vec<String>,
    pub outcome: Outcome,
    pub exit_code: i32,
    pub reason: String,
    pub time: String,
    pub bundle_id: Option<String>,
    pub sequence: Option<u64>,
    pub manifest_sha256: Option<crate::sha256hex::Sha256Hex>,
}

/// The summary of one pass.
#[derive(Debug, Default)]
pub struct PassSummary {
    pub results: Vec<BundleResult>,
    /// Files left alone because they are still arriving, each with why.
    pub waiting: Vec<String>,
    /// The pass stopped early because the stop flag was raised.
    pub stopped: bool,
}

impl PassSummary {
    /// 0 when nothing was rejected or failed; 1 when a bundle failed
    /// operationally or could not be moved (left in place); else 3 when any
    /// bundle was moved to `rejected/`.
    pub fn exit_code(&self) -> i32 {
        if self.results.iter().any(|r| r.moved_to.is_none()) {
            1
        } else if self
            .results
            .iter()
            .any(|r| !matches!(r.outcome, Outcome::Imported | Outcome::AlreadyImported))
        {
            3
        } else {
            0
        }
    }
}

/// What a scan remembers between passes (watch mode): each file's size and
/// modification time when last seen.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: HashMap<String, (u64, SystemTime)>,
    /// False for a one-shot pass: then only the settle time counts.
    pub watching: bool,
}

impl Tracker {
    /// A tracker for one pass (`watching` false) or for watch mode.
    pub fn new(watching: bool) -> Tracker {
        Tracker {
            seen: HashMap::new(),
            watching,
        }
    }

    fn settled(&mut self, name: &str, size: u64, mtime: SystemTime, settle: Duration) -> bool {
        let now_sig = (size, mtime);
        let prev = self.seen.insert(name.to_string(), now_sig);
        let age_ok = SystemTime::now()
            .duration_since(mtime)
            .is_ok_and(|age| age >= settle);
        age_ok && (!self.watching || prev == Some(now_sig))
    }

    fn forget(&mut self, names: &[String]) {
        for n in names {
            self.seen.remove(n);
        }
    }
}

fn stat_parts(st: &rustix::fs::Stat) -> (u64, SystemTime) {
    let mtime = std::time::UNIX_EPOCH
        + Duration::new(
            u64::try_from(st.st_mtime).unwrap_or(0),
            u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        );
    (u64::try_from(st.st_size).unwrap_or(0), mtime)
}

fn is_regular(st: &rustix::fs::Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
}

/// A name in the inbox the pass cannot use as it is.
#[derive(Debug)]
struct Problem {
    /// The names involved, the one named in reports first.
    pub files: Vec<String>,
    pub why: String,
    /// Moved to `rejected/` (a link, a FIFO, a broken index: it will never
    /// become a bundle); otherwise left in place and reported each pass.
    pub reject: bool,
}

/// What a scan found.
#[derive(Debug, Default)]
struct Scan {
    /// Complete bundles, in import order (sequence, then name).
    pub ready: Vec<Candidate>,
    /// Names left alone, each with why.
    pub waiting: Vec<String>,
    /// Names that cannot be used as they are.
    pub problems: Vec<Problem>,
}

const WAITING: &str = "still arriving (modified within --settle), or waiting for the rest of a split bundle; a later pass takes it";

/// Looks through the opened inbox (not its subdirectories) for complete
/// bundles.
/// How long ago `mtime` was (zero for a time in the future).
fn age(mtime: SystemTime) -> Duration {
    SystemTime::now().duration_since(mtime).unwrap_or_default()
}

/// A duration for people, to the second.
fn show(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// The waiting line's clock: since when, and when the pass gives up.
fn waited(last: SystemTime, give_up: Duration) -> String {
    let a = age(last);
    format!(
        "last change {} ago; moved to {REJECTED}/ if still incomplete {} after it",
        show(a),
        show(give_up)
    )
}

fn scan(
    dir: &Arc<DirFd>,
    settle: Duration,
    give_up: Duration,
    tracker: &mut Tracker,
) -> Result<Scan, InboxError> {
    let names: Vec<String> = dir
        .names()?
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    let mut out = Scan::default();
    let mut claimed: Vec<String> = Vec::new();
    let mut ready: Vec<(u64, String, Candidate)> = Vec::new();
    for n in names.iter().filter(|n| n.ends_with(INDEX_SUFFIX)) {
        match scan_split(dir, n, settle, give_up, tracker, &mut claimed) {
            Ok(SplitScan::Ready(split)) => {
                ready.push((split.index.sequence, n.clone(), Candidate::Split(split)))
            }
            Ok(SplitScan::Waiting(why)) => out.waiting.push(format!("{n}: left alone ({why})")),
            Err(p) => out.problems.push(p),
        }
    }
    // Single files: `lstat` first (cheap, opens nothing), oldest first.
    let mut singles: Vec<(SystemTime, u64, String)> = Vec::new();
    for n in &names {
        if n.ends_with(INDEX_SUFFIX) || claimed.contains(n) {
            continue;
        }
        if volumes::split_volume_name(Path::new(n)).is_some()
            || volumes::split_parity_name(Path::new(n)).is_some()
        {
            // A volume whose index has not arrived (or never will).
            if let Ok(st) = dir.stat(n) {
                let (_, mtime) = stat_parts(&st);
                if age(mtime) >= give_up {
                    out.problems.push(Problem {
                        files: vec![n.clone()],
                        why: format!(
                            "{}: a volume of a split bundle whose index has not arrived {} after its last change; copy the whole set (index, .minisig files and volumes) again",
                            dir.display(n).display(),
                            show(age(mtime))
                        ),
                        reject: true,
                    });
                    continue;
                }
                out.waiting.push(format!(
                    "{n}: left alone (a volume waiting for its index; {})",
                    waited(mtime, give_up)
                ));
            }
            continue;
        }
        if !n.ends_with(".tar.zst") {
            continue;
        }
        let st = match dir.stat(n) {
            Ok(st) => st,
            // Gone since the listing: nothing to do.
            Err(_) => continue,
        };
        if !is_regular(&st) {
            out.problems.push(Problem {
                files: vec![n.clone()],
                why: not_regular(dir, n, &st),
                reject: true,
            });
            continue;
        }
        let (size, mtime) = stat_parts(&st);
        if !tracker.settled(n, size, mtime, settle) {
            out.waiting.push(format!(
                "{n}: left alone ({WAITING}; {size} bytes so far, {})",
                waited(mtime, give_up)
            ));
            continue;
        }
        singles.push((mtime, size, n.clone()));
    }
    singles.sort();
    for (i, (mtime, size, n)) in singles.into_iter().enumerate() {
        if i >= MAX_OPEN_PER_PASS {
            out.waiting.push(format!(
                "{n}: left for the next pass (at most {MAX_OPEN_PER_PASS} bundles are opened in one pass, oldest first)"
            ));
            continue;
        }
        match open_single(dir, &n, (size, mtime)) {
            Ok(Some((seq, c))) => ready.push((seq, n, c)),
            Ok(None) if age(mtime) >= give_up => out.problems.push(Problem {
                files: vec![n.clone()],
                why: format!(
                    "{}: still incomplete {} after its last change: {size} bytes, and its last zstd frame is cut short (bytes are missing at the end); copy it again",
                    dir.display(&n).display(),
                    show(age(mtime))
                ),
                reject: true,
            }),
            Ok(None) => out.waiting.push(format!(
                "{n}: left alone (incomplete: {size} bytes, its last zstd frame is cut short; {})",
                waited(mtime, give_up)
            )),
            Err(p) => out.problems.push(p),
        }
    }
    ready.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    out.ready = ready.into_iter().map(|(_, _, c)| c).collect();
    Ok(out)
}

fn not_regular(dir: &DirFd, name: &str, st: &rustix::fs::Stat) -> String {
    let path = dir.display(name);
    if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink {
        EntryError::Symlink { path }.to_string()
    } else {
        let kind = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
            rustix::fs::FileType::Directory => "folder",
            rustix::fs::FileType::Fifo => "FIFO (named pipe)",
            rustix::fs::FileType::Socket => "socket",
            _ => "special file",
        };
        EntryError::NotRegular { path, kind }.to_string()
    }
}

/// Opens one `*.tar.zst` by descriptor, checks it has finished arriving and
/// reads its head (once: the import uses this very reader). `None`: still
/// arriving. The sequence only orders the work; import checks everything.
fn open_single(
    dir: &DirFd,
    name: &str,
    seen: (u64, SystemTime),
) -> Result<Option<(u64, Candidate)>, Problem> {
    let problem = |e: EntryError| Problem {
        files: vec![name.to_string()],
        reject: matches!(
            e,
            EntryError::Symlink { .. } | EntryError::NotRegular { .. }
        ),
        why: e.to_string(),
    };
    let mut o = dir.open_regular(name).map_err(problem)?;
    if (o.size, o.mtime) != seen {
        // Changed since it was looked at: still being written (or swapped).
        return Ok(None);
    }
    let path = dir.display(name);
    let io_problem = |e: io::Error| {
        problem(EntryError::Io {
            path: path.clone(),
            source: e,
        })
    };
    match frame_state(&mut o.file).map_err(io_problem)? {
        FrameState::Incomplete => return Ok(None),
        FrameState::Complete | FrameState::NotZstd => {}
    }
    o.file.rewind().map_err(io_problem)?;
    let opened = BundleReader::new(BundleInput::File(o.file), &path).and_then(|mut reader| {
        let head = reader.read_head()?;
        Ok(volumes::Opened {
            reader,
            head,
            split: None,
        })
    });
    let seq = opened
        .as_ref()
        .map_or(u64::MAX, |o| o.head.manifest.sequence);
    Ok(Some((
        seq,
        Candidate::Single(Box::new(Single {
            name: name.to_string(),
            path,
            id: o.id,
            opened,
        })),
    )))
}

/// What [`scan_split`] found.
#[derive(Debug)]
enum SplitScan {
    Ready(Box<SplitBundle>),
    /// Still arriving: what is waited for.
    Waiting(String),
}

/// Looks at one split index and the files it names, all by `lstat` through
/// the folder. The set is ready when the index, at least one signature and
/// enough volumes are there, each at its indexed size: every data volume,
/// or with parity volumes any `n` of the data and parity volumes; and no
/// file of the set is still changing (younger than the settle time, or in
/// watch mode changed since the previous scan). A set still incomplete
/// `give_up` after its newest file last changed is a rejection naming what
/// is missing.
fn scan_split(
    dir: &Arc<DirFd>,
    name: &str,
    settle: Duration,
    give_up: Duration,
    tracker: &mut Tracker,
    claimed: &mut Vec<String>,
) -> Result<SplitScan, Problem> {
    let reject = |files: Vec<String>, why: String| Problem {
        files,
        why,
        reject: true,
    };
    let st = match dir.stat(name) {
        Ok(st) => st,
        Err(_) => return Ok(SplitScan::Waiting(WAITING.into())),
    };
    if !is_regular(&st) {
        return Err(reject(vec![name.to_string()], not_regular(dir, name, &st)));
    }
    let (size, mtime) = stat_parts(&st);
    if !tracker.settled(name, size, mtime, settle) {
        return Ok(SplitScan::Waiting(format!(
            "the index is still arriving; {}",
            waited(mtime, give_up)
        )));
    }
    let path = dir.display(name);
    let mut o = dir.open_regular(name).map_err(|e| Problem {
        files: vec![name.to_string()],
        reject: matches!(
            e,
            EntryError::Symlink { .. } | EntryError::NotRegular { .. }
        ),
        why: e.to_string(),
    })?;
    let mut bytes = Vec::new();
    (&mut o.file)
        .take(volumes::MAX_INDEX_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Problem {
            files: vec![name.to_string()],
            why: format!("{}: {e}", path.display()),
            reject: false,
        })?;
    let index = VolumeIndex::parse(&bytes).map_err(|e| {
        reject(
            vec![name.to_string()],
            format!(
                "{}: invalid volume index: {e}; copy the index again from the export",
                path.display()
            ),
        )
    })?;
    let base = dir.display(name.strip_suffix(INDEX_SUFFIX).unwrap_or(name));
    let split = SplitBundle {
        index_path: path,
        base,
        index,
        index_bytes: bytes,
        files: Arc::new(InboxFiles(Arc::clone(dir))),
        recovery: Default::default(),
        rebuilt: Vec::new(),
    };
    let pars: Vec<String> = split.parity_paths().iter().map(|p| file_name(p)).collect();
    let vols: Vec<String> = split.volume_paths().iter().map(|p| file_name(p)).collect();
    let sigs: Vec<String> = split
        .signature_paths()
        .unwrap_or_default()
        .iter()
        .map(|p| file_name(p))
        .collect();
    claimed.extend(vols.iter().cloned());
    claimed.extend(pars.iter().cloned());
    claimed.extend(sigs.iter().cloned());
    // A bad file rejects the whole set: its files all go to `rejected/`.
    let set: Vec<String> = std::iter::once(name.to_string())
        .chain(vols.iter().cloned())
        .chain(pars.iter().cloned())
        .chain(sigs.iter().cloned())
        .collect();
    let n = split.index.volumes.len();
    let parity_sizes: Vec<u64> = split
        .index
        .parity
        .as_ref()
        .map(|p| p.volumes.iter().map(|v| v.size).collect())
        .unwrap_or_default();
    let mut newest = mtime;
    let mut changing = false;
    let mut arrived = (0usize, 0usize);
    let mut missing: Vec<String> = Vec::new();
    let entries = split
        .index
        .volumes
        .iter()
        .map(|v| v.size)
        .zip(&vols)
        .map(|(size, vn)| (size, vn, true))
        .chain(
            parity_sizes
                .iter()
                .copied()
                .zip(&pars)
                .map(|(size, vn)| (size, vn, false)),
        );
    for (want, vn, data) in entries {
        match dir.stat(vn) {
            Ok(st) if !is_regular(&st) => {
                return Err(reject(set, not_regular(dir, vn, &st)));
            }
            Ok(st) => {
                let (size, mtime) = stat_parts(&st);
                newest = newest.max(mtime);
                if !tracker.settled(vn, size, mtime, settle) {
                    changing = true;
                } else if size >= want {
                    // Longer is damaged, not missing: the import's hash
                    // check names it (and rebuilds it from parity).
                    if data {
                        arrived.0 += 1;
                    } else {
                        arrived.1 += 1;
                    }
                } else {
                    missing.push(format!("{vn} ({size} of {want} bytes)"));
                }
            }
            Err(_) => missing.push(format!("{vn} (missing)")),
        }
    }
    for sn in &sigs {
        if let Ok(st) = dir.stat(sn) {
            if !is_regular(&st) {
                return Err(reject(set, not_regular(dir, sn, &st)));
            }
            newest = newest.max(stat_parts(&st).1);
        }
    }
    let enough = arrived.0 == n || (!pars.is_empty() && arrived.0 + arrived.1 >= n);
    if !sigs.is_empty() && !changing && enough {
        return Ok(SplitScan::Ready(Box::new(split)));
    }
    let mut what = Vec::new();
    if sigs.is_empty() {
        what.push(format!(
            "no signature of the index ({name}.<KEYID>.minisig)"
        ));
    }
    if !enough {
        let need = if pars.is_empty() {
            n - arrived.0
        } else {
            n - arrived.0 - arrived.1
        };
        what.push(format!(
            "{need} more volume(s) needed of {}",
            if missing.is_empty() {
                "those still arriving".to_string()
            } else {
                missing.join(", ")
            }
        ));
    }
    if changing {
        what.push("a volume is still changing".into());
    }
    let what = what.join("; ");
    if age(newest) >= give_up && !changing {
        return Err(reject(
            set,
            format!(
                "{}: split bundle still incomplete {} after its last change: {what}; copy the missing files again from the export (or the original medium)",
                dir.display(name).display(),
                show(age(newest))
            ),
        ));
    }
    Ok(SplitScan::Waiting(format!(
        "{what}; {}",
        waited(newest, give_up)
    )))
}

/// The two subfolders, each opened at most once per pass (or why not).
#[derive(Debug, Default)]
struct Subdirs {
    open: HashMap<&'static str, Result<DirFd, String>>,
}

impl Subdirs {
    fn get(&mut self, dir: &DirFd, sub: &'static str) -> Result<&DirFd, String> {
        self.open
            .entry(sub)
            .or_insert_with(|| dir.subdir(sub).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Moves `files` into `sub/`, prefixing them all with the first `N-` that
/// collides with nothing there (a name arriving twice keeps both), and
/// writes the reason file for a rejection. Returns the destination of the
/// first file, or why nothing (or not everything) was moved.
fn move_into(
    dir: &DirFd,
    subs: &mut Subdirs,
    sub: &'static str,
    files: &[String],
    reason: Option<&Reason>,
) -> Result<PathBuf, String> {
    let dest = subs.get(dir, sub)?;
    let mut prefix = String::new();
    for i in 1.. {
        let taken = files.iter().any(|f| {
            let to = format!("{prefix}{f}");
            dest.exists(&to) || dest.exists(&format!("{to}.reason.json"))
        });
        if !taken {
            break;
        }
        prefix = format!("{i}-");
    }
    let mut first = None;
    for f in files {
        let to = format!("{prefix}{f}");
        match dir.rename_into(f, dest, &to) {
            Ok(()) => {}
            // A signature file listed but gone meanwhile is not worth failing for.
            Err(EntryError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound && first.is_some() =>
            {
                continue
            }
            Err(e) => return Err(e.to_string()),
        }
        first.get_or_insert(to);
    }
    let first = first.unwrap_or_default();
    if let Some(r) = reason {
        let mut bytes = serde_json::to_vec_pretty(r).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        dest.write_new(&format!("{first}.reason.json"), &bytes, REASON_MODE)
            .map_err(|e| format!("moved to {}, but {e}", dest.display(&first).display()))?;
    }
    dest.sync()
        .and_then(|()| dir.sync())
        .map_err(|e| e.to_string())?;
    Ok(dest.display(&first))
}

/// Runs one pass: scans, then imports each complete bundle in order and
/// moves it. `after_import` sees each successful import's report (its
/// receipt already kept by the import, under the locks); `on_result` sees each
/// result as it happens. Stops between bundles when `stop` is raised. Only
/// a folder that cannot be opened or listed ends the pass with an error; a
/// problem with one file or folder in it is one result, and the pass goes on.
pub fn pass(
    opts: &InboxOptions,
    tracker: &mut Tracker,
    stop: &AtomicBool,
    observer: &dyn Observer,
    after_import: &mut dyn FnMut(&ImportReport),
    on_result: &mut dyn FnMut(&BundleResult),
) -> Result<PassSummary, InboxError> {
    let dir = Arc::new(DirFd::open(&opts.dir)?);
    let found = scan(&dir, opts.settle, opts.give_up_after, tracker)?;
    let mut summary = PassSummary {
        waiting: found.waiting,
        ..PassSummary::default()
    };
    // For `gapferry status`: what this pass leaves waiting, and since when.
    if let Err(e) = waiting::record(&opts.import.state_dir, &opts.dir, &summary.waiting) {
        summary.waiting.push(format!(
            "(could not record the waiting list in {}: {e})",
            opts.import.state_dir.display()
        ));
    }
    let mut subs = Subdirs::default();
    for p in found.problems {
        if stop.load(Ordering::Relaxed) {
            summary.stopped = true;
            return Ok(summary);
        }
        let name = p.files[0].clone();
        let (outcome, code) = if p.reject {
            (Outcome::Rejected, 3)
        } else {
            (Outcome::Failed, 1)
        };
        let (moved_to, not_moved) = if p.reject {
            let reason = Reason {
                bundle: name.clone(),
                files: p.files.clone(),
                outcome,
                exit_code: code,
                reason: p.why.clone(),
                time: crate::manifest::format_time(SystemTime::now()),
                bundle_id: None,
                sequence: None,
                manifest_sha256: None,
            };
            match move_into(&dir, &mut subs, REJECTED, &p.files, Some(&reason)) {
                Ok(to) => {
                    tracker.forget(&p.files);
                    (Some(to), None)
                }
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, None)
        };
        let r = BundleResult {
            bundle: name,
            outcome,
            exit_code: code,
            moved_to,
            bundle_id: None,
            sequence: None,
            manifest_sha256: None,
            receipt: None,
            error: Some(p.why),
            not_moved,
            report: None,
        };
        on_result(&r);
        summary.results.push(r);
    }
    for c in found.ready {
        if stop.load(Ordering::Relaxed) {
            summary.stopped = true;
            break;
        }
        let r = import_one(opts, &dir, &mut subs, tracker, c, observer, after_import);
        on_result(&r);
        summary.results.push(r);
    }
    Ok(summary)
}

fn import_one(
    opts: &InboxOptions,
    dir: &DirFd,
    subs: &mut Subdirs,
    tracker: &mut Tracker,
    c: Candidate,
    observer: &dyn Observer,
    after_import: &mut dyn FnMut(&ImportReport),
) -> BundleResult {
    let o = &opts.import;
    let io = ImportOptions {
        bundle: c.path().to_path_buf(),
        trust: o.trust.clone(),
        threshold: o.threshold,
        target: o.target.clone(),
        state_dir: o.state_dir.clone(),
        channel: o.channel.clone(),
        only: o.only.clone(),
        allow_downgrade: o.allow_downgrade,
        allow_expired: o.allow_expired,
        lock_wait: o.lock_wait,
        publish: o.publish.clone(),
        roots: o.roots.clone(),
        allow_expired_policy: o.allow_expired_policy,
    };
    let files = c.files();
    let name = c.name();
    let (report, err, id) = match c {
        Candidate::Single(s) => {
            let (r, e) = import::import_opened(&io, s.opened, observer);
            (r, e, Some(s.id))
        }
        Candidate::Split(split) => {
            // Outside the locks, like a single file's head; every file of
            // the set opened through the inbox folder.
            let opened = volumes::open_split(
                *split,
                &io.bundle,
                volumes::OpenChecks {
                    trust: io.index_trust(),
                    hash_volumes: true,
                },
                observer,
            );
            let (r, e) = import::import_opened(&io, opened, observer);
            (r, e, None)
        }
    };
    let code = err.as_ref().map_or(0, |e| e.exit_kind().code());
    let mut not_moved = None;
    // The name must still be the file that was imported: another user may
    // have swapped it meanwhile, and what is moved is what the name holds.
    if let Some(id) = id {
        let same = dir.stat(&name).is_ok_and(|st| (st.st_dev, st.st_ino) == id);
        if !same && code != 1 {
            not_moved = Some(format!(
                "{}: was replaced or removed while it was being imported; left alone",
                dir.display(&name).display()
            ));
        }
    }
    let moved_to = match (code, &not_moved) {
        (_, Some(_)) => None,
        (0, None) => {
            after_import(&report);
            match move_into(dir, subs, PROCESSED, &files, None) {
                Ok(to) => Some(to),
                Err(e) => {
                    not_moved = Some(e);
                    None
                }
            }
        }
        // Operational: the bundle may be fine; try again next pass.
        (1, None) => None,
        (_, None) => {
            let reason = Reason {
                bundle: name.clone(),
                files: files.clone(),
                outcome: report.outcome,
                exit_code: code,
                reason: report.error.clone().unwrap_or_default(),
                time: crate::manifest::format_time(SystemTime::now()),
                bundle_id: report.bundle_id.clone(),
                sequence: report.sequence,
                manifest_sha256: report.manifest_sha256.clone(),
            };
            match move_into(dir, subs, REJECTED, &files, Some(&reason)) {
                Ok(to) => Some(to),
                Err(e) => {
                    not_moved = Some(e);
                    None
                }
            }
        }
    };
    if moved_to.is_some() {
        tracker.forget(&files);
    }
    BundleResult {
        bundle: name,
        outcome: report.outcome,
        exit_code: code,
        moved_to,
        bundle_id: report.bundle_id.clone(),
        sequence: report.sequence,
        manifest_sha256: report.manifest_sha256.clone(),
        receipt: report.receipt.clone(),
        error: report.error.clone(),
        not_moved,
        report: Some(report),
    }
}
