//! The inbox job: import every complete bundle that has arrived in a
//! directory (a data diode's receiving folder, a transfer share), in
//! sequence order, and sort what was done into `processed/` and `rejected/`.
//!
//! A single-file bundle (`*.tar.zst`) counts as complete when it has not
//! been modified for the settle time (and, in watch mode, its size and
//! modification time did not change since the previous scan) and its zstd
//! frame runs to its end; a split bundle when its index (`*.volumes.json`),
//! at least one index signature and every volume at its indexed size are
//! there and settled. Anything else is left alone for a later pass. Hidden
//! files (exporters' and copy tools' temporaries) are never touched.
//!
//! It never changes how a bundle is checked: each one goes through
//! [`super::import::import`] exactly as `gapferry import` runs it. It never
//! deletes anything: files are only renamed into the two subdirectories.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::import::{self, ImportOptions, ImportReport};
use super::ledger::Outcome;
use crate::bundle::reader::BundleReader;
use crate::bundle::volumes::{self, SplitBundle, INDEX_SUFFIX};
use crate::error::{Classify, ExitKind};
use crate::progress::Observer;

/// Where processed (imported or already imported) bundles go.
pub const PROCESSED: &str = "processed";
/// Where rejected and refused bundles go, each with `<name>.reason.json`.
pub const REJECTED: &str = "rejected";

/// Errors of the inbox itself (not of one bundle).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl Classify for InboxError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Operational
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InboxError + '_ {
    move |source| InboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One bundle found complete in the inbox.
#[derive(Debug, Clone)]
pub enum Candidate {
    Single(PathBuf),
    Split(Box<SplitBundle>),
}

impl Candidate {
    /// The path handed to import: the file, or the split bundle's index.
    pub fn path(&self) -> &Path {
        match self {
            Candidate::Single(p) => p,
            Candidate::Split(s) => &s.index_path,
        }
    }

    /// The file name it is known by.
    pub fn name(&self) -> String {
        file_name(self.path())
    }

    /// Every file of it, the one that makes it complete first (so a crash
    /// while moving never leaves a set that looks complete).
    fn files(&self) -> Result<Vec<PathBuf>, InboxError> {
        match self {
            Candidate::Single(p) => Ok(vec![p.clone()]),
            Candidate::Split(s) => {
                let mut v = vec![s.index_path.clone()];
                v.extend(s.volume_paths());
                v.extend(s.signature_paths().map_err(|e| InboxError::Io {
                    path: s.index_path.clone(),
                    source: io::Error::other(e.to_string()),
                })?);
                Ok(v)
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
    /// left in place for the next pass (operational failures).
    pub moved_to: Option<PathBuf>,
    pub bundle_id: Option<String>,
    pub sequence: Option<u64>,
    pub manifest_sha256: Option<String>,
    pub receipt: Option<String>,
    pub error: Option<String>,
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
    pub manifest_sha256: Option<String>,
}

/// The summary of one pass.
#[derive(Debug, Default)]
pub struct PassSummary {
    pub results: Vec<BundleResult>,
    /// Files left alone because they are still arriving.
    pub waiting: Vec<String>,
    /// The pass stopped early because the stop flag was raised.
    pub stopped: bool,
}

impl PassSummary {
    /// 0 when nothing was rejected or failed; 1 when a bundle failed
    /// operationally (left in place to retry); else 3 when any bundle was
    /// moved to `rejected/`.
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
    seen: HashMap<PathBuf, (u64, Option<SystemTime>)>,
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

    fn settled(&mut self, path: &Path, meta: &std::fs::Metadata, settle: Duration) -> bool {
        let now_sig = (meta.len(), meta.modified().ok());
        let prev = self.seen.insert(path.to_path_buf(), now_sig);
        let age_ok = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age >= settle);
        age_ok && (!self.watching || prev == Some(now_sig))
    }

    fn forget(&mut self, paths: &[PathBuf]) {
        for p in paths {
            self.seen.remove(p);
        }
    }
}

/// Whether a file holds complete zstd frames, walking only the frame and
/// block headers (never decompressing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameState {
    /// The file ends exactly where a frame ends.
    Complete,
    /// The file ends inside a frame: still being written, or truncated.
    Incomplete,
    /// Not (only) standard zstd frames: the import will reject it.
    NotZstd,
}

/// Walks the zstd frames of `path` (RFC 8878, section 3.1.1): a bundle is
/// one or more standard frames back to back, and a complete one ends exactly
/// at the end of its last frame.
pub fn frame_state(path: &Path) -> io::Result<FrameState> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(FrameState::Incomplete);
    }
    let mut pos = 0u64;
    while pos < len {
        match walk_frame(&mut f, pos, len)? {
            Ok(end) => pos = end,
            Err(state) => return Ok(state),
        }
    }
    Ok(if pos == len {
        FrameState::Complete
    } else {
        FrameState::Incomplete
    })
}

/// Walks the frame starting at `start`; `Ok(end)` is where it ends (which
/// may lie beyond `len` when the file is cut inside the checksum).
fn walk_frame(f: &mut File, start: u64, len: u64) -> io::Result<Result<u64, FrameState>> {
    let mut hdr = [0u8; 6];
    if len - start < 6 {
        return Ok(Err(FrameState::Incomplete));
    }
    f.seek(SeekFrom::Start(start))?;
    f.read_exact(&mut hdr)?;
    if u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) != 0xFD2F_B528 {
        return Ok(Err(FrameState::NotZstd));
    }
    let fhd = hdr[4];
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    let checksum = fhd & 0x04 != 0;
    let dict_len = [0u64, 1, 2, 4][(fhd & 3) as usize];
    let fcs_len = match fcs_flag {
        0 => u64::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let mut pos = start + 5 + u64::from(!single_segment) + dict_len + fcs_len;
    loop {
        if pos + 3 > len {
            return Ok(Err(FrameState::Incomplete));
        }
        let mut b = [0u8; 3];
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut b)?;
        let h = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
        let last = h & 1 != 0;
        let size = u64::from(h >> 3);
        let content = match (h >> 1) & 3 {
            0 | 2 => size,
            1 => 1,
            _ => return Ok(Err(FrameState::NotZstd)),
        };
        pos += 3 + content;
        if last {
            break;
        }
    }
    if checksum {
        pos += 4;
    }
    if pos > len {
        return Ok(Err(FrameState::Incomplete));
    }
    Ok(Ok(pos))
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Complete bundles, in import order (sequence, then name).
    pub ready: Vec<Candidate>,
    pub waiting: Vec<String>,
    /// Split indexes that cannot be parsed (after settling): rejected as they are.
    pub broken: Vec<(PathBuf, String)>,
}

/// Looks through `dir` (not its subdirectories) for complete bundles.
pub fn scan(dir: &Path, settle: Duration, tracker: &mut Tracker) -> Result<Scan, InboxError> {
    let mut names: Vec<String> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        if let Some(n) = e.file_name().to_str() {
            if !n.starts_with('.') {
                names.push(n.to_string());
            }
        }
    }
    names.sort();
    let mut out = Scan::default();
    let mut claimed: Vec<PathBuf> = Vec::new();
    let mut ready: Vec<(u64, String, Candidate)> = Vec::new();
    for n in names.iter().filter(|n| n.ends_with(INDEX_SUFFIX)) {
        let p = dir.join(n);
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if !meta.is_file() || !tracker.settled(&p, &meta, settle) {
            out.waiting.push(n.clone());
            continue;
        }
        let split = match volumes::load_split(&p) {
            Ok(s) => s,
            Err(e) => {
                out.broken.push((p, e.to_string()));
                continue;
            }
        };
        claimed.extend(split.volume_paths());
        let sigs = split.signature_paths().unwrap_or_default();
        claimed.extend(sigs.iter().cloned());
        let mut complete = !sigs.is_empty();
        for (v, vp) in split.index.volumes.iter().zip(split.volume_paths()) {
            match std::fs::metadata(&vp) {
                Ok(m) if m.len() >= v.size && tracker.settled(&vp, &m, settle) => {}
                _ => complete = false,
            }
        }
        if complete {
            ready.push((
                split.index.sequence,
                n.clone(),
                Candidate::Split(Box::new(split)),
            ));
        } else {
            out.waiting.push(n.clone());
        }
    }
    for n in &names {
        let p = dir.join(n);
        if n.ends_with(INDEX_SUFFIX) || claimed.contains(&p) {
            continue;
        }
        if volumes::split_volume_name(&p).is_some() {
            out.waiting.push(n.clone());
            continue;
        }
        if !n.ends_with(".tar.zst") {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if !meta.is_file() || !tracker.settled(&p, &meta, settle) {
            out.waiting.push(n.clone());
            continue;
        }
        match frame_state(&p) {
            Ok(FrameState::Incomplete) => {
                out.waiting.push(n.clone());
                continue;
            }
            Ok(_) => {}
            Err(_) => {
                out.waiting.push(n.clone());
                continue;
            }
        }
        // The sequence only orders the work; import checks everything.
        let seq = BundleReader::open(&p)
            .and_then(|mut r| r.read_head())
            .map(|h| h.manifest.sequence)
            .unwrap_or(u64::MAX);
        ready.push((seq, n.clone(), Candidate::Single(p)));
    }
    ready.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    out.ready = ready.into_iter().map(|(_, _, c)| c).collect();
    Ok(out)
}

/// Moves `files` into `dir/sub/`, prefixing them all with the first `N-`
/// that collides with nothing there (a name arriving twice keeps both).
/// Returns the destination of the first file.
fn move_into(dir: &Path, sub: &str, files: &[PathBuf]) -> Result<PathBuf, InboxError> {
    let dest = dir.join(sub);
    std::fs::create_dir_all(&dest).map_err(io_err(&dest))?;
    let mut prefix = String::new();
    for i in 1.. {
        let taken = files.iter().any(|f| {
            let to = dest.join(format!("{prefix}{}", file_name(f)));
            to.exists() || dest.join(format!("{}.reason.json", to.display())).exists()
        });
        if !taken {
            break;
        }
        prefix = format!("{i}-");
    }
    let mut first = None;
    for f in files {
        let to = dest.join(format!("{prefix}{}", file_name(f)));
        match std::fs::rename(f, &to) {
            Ok(()) => {}
            // A signature file listed but gone meanwhile is not worth failing for.
            Err(e) if e.kind() == io::ErrorKind::NotFound && first.is_some() => continue,
            Err(e) => return Err(io_err(f)(e)),
        }
        first.get_or_insert(to);
    }
    crate::bundle::writer::sync_dir(&dest).map_err(io_err(&dest))?;
    crate::bundle::writer::sync_dir(dir).map_err(io_err(dir))?;
    Ok(first.unwrap_or(dest))
}

fn write_reason(at: &Path, reason: &Reason) -> Result<PathBuf, InboxError> {
    let path = PathBuf::from(format!("{}.reason.json", at.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    let mut bytes = serde_json::to_vec_pretty(reason).map_err(|e| io_err(&path)(e.into()))?;
    bytes.push(b'\n');
    io::Write::write_all(&mut tmp, &bytes).map_err(io_err(&path))?;
    tmp.as_file().sync_all().map_err(io_err(&path))?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(io_err(&path))?;
    tmp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
    Ok(path)
}

/// Runs one pass: scans, then imports each complete bundle in order and
/// moves it. `after_import` sees each successful import's report first (to
/// keep a receipt) and may return the receipt text; `on_result` sees each
/// result as it happens. Stops between bundles when `stop` is raised.
pub fn pass(
    opts: &InboxOptions,
    tracker: &mut Tracker,
    stop: &AtomicBool,
    observer: &dyn Observer,
    after_import: &mut dyn FnMut(&ImportReport) -> Option<String>,
    on_result: &mut dyn FnMut(&BundleResult),
) -> Result<PassSummary, InboxError> {
    let found = scan(&opts.dir, opts.settle, tracker)?;
    let mut summary = PassSummary {
        waiting: found.waiting,
        ..PassSummary::default()
    };
    for (index, why) in found.broken {
        if stop.load(Ordering::Relaxed) {
            summary.stopped = true;
            return Ok(summary);
        }
        let name = file_name(&index);
        let moved = move_into(&opts.dir, REJECTED, std::slice::from_ref(&index))?;
        write_reason(
            &moved,
            &Reason {
                bundle: name.clone(),
                files: vec![name.clone()],
                outcome: Outcome::Rejected,
                exit_code: 3,
                reason: why.clone(),
                time: crate::manifest::format_time(SystemTime::now()),
                bundle_id: None,
                sequence: None,
                manifest_sha256: None,
            },
        )?;
        tracker.forget(&[index]);
        let r = BundleResult {
            bundle: name,
            outcome: Outcome::Rejected,
            exit_code: 3,
            moved_to: Some(moved),
            bundle_id: None,
            sequence: None,
            manifest_sha256: None,
            receipt: None,
            error: Some(why),
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
        let o = &opts.import;
        let io = ImportOptions {
            bundle: c.path().to_path_buf(),
            trust: o.trust.clone(),
            threshold: o.threshold,
            target: o.target.clone(),
            state_dir: o.state_dir.clone(),
            channel: o.channel.clone(),
            platforms: o.platforms.clone(),
            rings: o.rings.clone(),
            allow_downgrade: o.allow_downgrade,
            allow_expired: o.allow_expired,
            lock_wait: o.lock_wait,
            publish: o.publish.clone(),
        };
        let (mut report, err) = import::import(&io, observer);
        let files = c.files()?;
        let name = c.name();
        let code = err.as_ref().map_or(0, |e| e.exit_kind().code());
        let moved_to = match code {
            0 => {
                report.receipt = after_import(&report);
                Some(move_into(&opts.dir, PROCESSED, &files)?)
            }
            // Operational: the bundle may be fine; try again next pass.
            1 => None,
            _ => {
                let moved = move_into(&opts.dir, REJECTED, &files)?;
                write_reason(
                    &moved,
                    &Reason {
                        bundle: name.clone(),
                        files: files.iter().map(|f| file_name(f)).collect(),
                        outcome: report.outcome,
                        exit_code: code,
                        reason: report.error.clone().unwrap_or_default(),
                        time: crate::manifest::format_time(SystemTime::now()),
                        bundle_id: report.bundle_id.clone(),
                        sequence: report.sequence,
                        manifest_sha256: report.manifest_sha256.clone(),
                    },
                )?;
                Some(moved)
            }
        };
        if moved_to.is_some() {
            tracker.forget(&files);
        }
        let r = BundleResult {
            bundle: name,
            outcome: report.outcome,
            exit_code: code,
            moved_to,
            bundle_id: report.bundle_id.clone(),
            sequence: report.sequence,
            manifest_sha256: report.manifest_sha256.clone(),
            receipt: report.receipt.clone(),
            error: report.error.clone(),
            report: Some(report),
        };
        on_result(&r);
        summary.results.push(r);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(data: &[u8], checksum: bool) -> Vec<u8> {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        e.include_checksum(checksum).unwrap();
        io::Write::write_all(&mut e, data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn frame_walk_tells_complete_from_cut() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.tar.zst");
        let data: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for checksum in [true, false] {
            let z = frame(&data, checksum);
            std::fs::write(&p, &z).unwrap();
            assert_eq!(frame_state(&p).unwrap(), FrameState::Complete);
            for cut in [z.len() - 1, z.len() / 2, 7, 0] {
                std::fs::write(&p, &z[..cut]).unwrap();
                assert_eq!(
                    frame_state(&p).unwrap(),
                    FrameState::Incomplete,
                    "cut {cut}"
                );
            }
        }
        std::fs::write(&p, b"not zstd at all").unwrap();
        assert_eq!(frame_state(&p).unwrap(), FrameState::NotZstd);

        // Bundles may be several frames back to back (stored payload).
        let a = frame(&data, true);
        let b = frame(&data[..1000], false);
        let both = [&a[..], &b[..]].concat();
        std::fs::write(&p, &both).unwrap();
        assert_eq!(frame_state(&p).unwrap(), FrameState::Complete);
        for cut in [a.len() + 3, a.len() + b.len() - 1] {
            std::fs::write(&p, &both[..cut]).unwrap();
            assert_eq!(
                frame_state(&p).unwrap(),
                FrameState::Incomplete,
                "cut {cut}"
            );
        }
        std::fs::write(&p, [&a[..], b"garbage after"].concat()).unwrap();
        assert_eq!(frame_state(&p).unwrap(), FrameState::NotZstd);
    }
}
