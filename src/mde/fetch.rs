//! `fetch`: keeps a download folder
//! (`<folder>/<platform>/<ring>/arch_<arch>/{updates.zip,manifest.json}`,
//! n-1 in `<ring>_back/`) in step with Microsoft's upstream, doing the job of
//! Microsoft's `xplat_offline_updates_download.sh` and reading the same
//! `settings.json`, without that script's faults.
//!
//! It owns the plan (flags or `settings.json` turned into a checked list of
//! slots before any I/O), the per-slot cycle (read info, skip if current,
//! download into a staging folder beside the target, check it is a zip, read
//! info again, publish through [`crate::mirror::publish`], the journaled
//! staging and folder exchange imports use, so a crash at any instant is
//! rolled forward by the next run and never costs the previous set), and
//! the report. It
//! must never leave a partial file, an HTML page or a temp file where an
//! endpoint or `export` would take it for a package, never touch the previous
//! set before the new one is complete, and never print: callers get log lines
//! and progress through a [`FetchObserver`].

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::layout::{Arch, FolderManifest, Platform, Ring, Slot};
use super::upstream::{self, ExtraRoots, HttpConfig, Upstream, UpstreamError};
use super::{MANIFEST_JSON, UPDATES_ZIP};
use crate::durable;
use crate::error::{Classify, ExitKind};
use crate::mirror::lock::{ImportLock, LockError};
use crate::mirror::publish::{
    self, Destination, OldSet, PublishError, PublishOptions, RecoveryAction, Staging,
};
use crate::progress::{NoProgress, Observer};

/// Default cap on one `updates.zip` (they are about 250 MB today).
pub const DEFAULT_MAX_PACKAGE_SIZE: u64 = 1 << 30;
/// Default number of times upstream may change release during one slot's
/// download before fetch gives up on that slot.
pub const DEFAULT_MAX_INFO_CHANGES: u32 = 3;
/// Microsoft's script's download folder when `settings.json` names none
/// (`$HOME/wdav-update`).
pub const MS_DEFAULT_DOWNLOAD_DIR: &str = "wdav-update";
/// Name prefix of the staging folders earlier releases of fetch created
/// beside arch folders; anything with it is such a leftover and is removed
/// on the next run. Fetch now stages through [`crate::mirror::publish`]
/// (`<folder>/<platform>/.gapferry-staging-*`, journaled and recovered).
pub const STAGE_PREFIX: &str = ".gapferry-fetch-";
/// The private lock file in the download folder (mode 0600, ours): a
/// second fetch of the same folder fails at once. The folder itself is
/// never locked: other local users may read it, so any of them could hold
/// a lock on it.
pub const LOCK_FILE: &str = ".gapferry-fetch.lock";
/// Largest `settings.json` accepted.
const MAX_SETTINGS_SIZE: u64 = 1024 * 1024;

/// How important a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warning",
            Level::Error => "error",
        }
    }
}

/// Progress of the downloads plus log lines about each slot. Both have
/// no-op defaults.
pub trait FetchObserver: Observer {
    /// One line of the fetch log (no trailing newline).
    fn log(&self, _level: Level, _line: &str) {}
}

impl FetchObserver for NoProgress {}

/// The raw fetch options, as a command line gives them. Turn them into a
/// [`FetchPlan`] with [`FetchPlan::from_options`].
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Microsoft's `settings.json`.
    pub settings: Option<PathBuf>,
    /// Overrides `downloadFolder`.
    pub download_folder: Option<PathBuf>,
    /// Filters; without settings they replace the default (both platforms,
    /// production, both arches), with settings they narrow what it selects.
    pub platforms: Vec<Platform>,
    pub rings: Vec<Ring>,
    pub arches: Vec<Arch>,
    /// Overrides [`upstream::DEFAULT_UPSTREAM`].
    pub upstream: Option<String>,
    /// Overrides `backupPreviousUpdates`.
    pub no_backup: bool,
    /// Overrides `logFilePath`.
    pub log_file: Option<PathBuf>,
    pub http: HttpConfig,
    /// `--ca-cert` PEM files, read into `http.extra_roots` by the plan.
    pub ca_certs: Vec<PathBuf>,
    /// Defaults to [`DEFAULT_MAX_PACKAGE_SIZE`].
    pub max_package_size: Option<u64>,
    /// Defaults to [`DEFAULT_MAX_INFO_CHANGES`].
    pub max_info_changes: Option<u32>,
}

/// A checked fetch: everything decided, nothing touched yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPlan {
    pub download_folder: PathBuf,
    /// In layout order, no duplicates, never empty.
    pub slots: Vec<Slot>,
    /// The base URL query strings are appended to.
    pub upstream: String,
    /// Keep the replaced set in `<ring>_back/arch_<arch>`.
    pub backup: bool,
    /// Where the caller should append log lines (fetch itself never writes it).
    pub log_file: Option<PathBuf>,
    pub http: HttpConfig,
    pub max_package_size: u64,
    pub max_info_changes: u32,
    /// Things worth a warning found while planning (unknown settings keys).
    pub notes: Vec<String>,
}

/// Microsoft's `settings.json`, read with the meanings its script gives it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MsSettings {
    /// `downloadFolder`; the script falls back to `$HOME/wdav-update`.
    pub download_folder: Option<PathBuf>,
    /// `downloadLinuxUpdates` (missing = false, as in the script).
    pub download_linux: bool,
    /// `downloadMacUpdates` (missing = false).
    pub download_mac: bool,
    /// `downloadPreviewUpdates`: preview in addition to production.
    pub download_preview: bool,
    /// `backupPreviousUpdates`; missing = gapferry's default (on).
    pub backup_previous: Option<bool>,
    /// `logFilePath`; missing = no log file (stderr only).
    pub log_file_path: Option<PathBuf>,
    /// Keys the script does not read (typos are worth a warning).
    pub unknown_keys: Vec<String>,
}

impl MsSettings {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self, FetchError> {
        let file = File::open(path).map_err(|source| FetchError::SettingsRead {
            path: path.to_path_buf(),
            source,
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_SETTINGS_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| FetchError::SettingsRead {
                path: path.to_path_buf(),
                source,
            })?;
        if bytes.len() as u64 > MAX_SETTINGS_SIZE {
            return Err(FetchError::Settings {
                path: path.to_path_buf(),
                reason: format!("larger than {MAX_SETTINGS_SIZE} bytes"),
            });
        }
        Self::parse(&bytes, path)
    }

    /// Parses the bytes of a `settings.json`; `path` names it in errors.
    /// Booleans may be JSON booleans or the strings "true"/"false" (the
    /// script compares `jq -r` output, which treats both alike); `null` is
    /// the same as a missing key.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, FetchError> {
        let bad = |reason: String| FetchError::Settings {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        let text = text.trim_start_matches('\u{feff}');
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let mut s = MsSettings::default();
        for (key, v) in obj {
            if v.is_null() {
                continue;
            }
            let boolean = || -> Result<bool, FetchError> {
                match v {
                    serde_json::Value::Bool(b) => Ok(*b),
                    serde_json::Value::String(t) if t == "true" => Ok(true),
                    serde_json::Value::String(t) if t == "false" => Ok(false),
                    other => Err(bad(format!("{key} must be true or false, not {other}"))),
                }
            };
            let string = || -> Result<PathBuf, FetchError> {
                match v {
                    serde_json::Value::String(t) if !t.is_empty() => Ok(PathBuf::from(t)),
                    other => Err(bad(format!(
                        "{key} must be a non-empty string, not {other}"
                    ))),
                }
            };
            match key.as_str() {
                "downloadFolder" => s.download_folder = Some(string()?),
                "downloadLinuxUpdates" => s.download_linux = boolean()?,
                "downloadMacUpdates" => s.download_mac = boolean()?,
                "downloadPreviewUpdates" => s.download_preview = boolean()?,
                "backupPreviousUpdates" => s.backup_previous = Some(boolean()?),
                "logFilePath" => s.log_file_path = Some(string()?),
                _ => s.unknown_keys.push(key.clone()),
            }
        }
        Ok(s)
    }
}

impl FetchPlan {
    /// A plan with the defaults: both platforms, production, both arches,
    /// Microsoft's upstream, backups on, no log file.
    pub fn new(download_folder: PathBuf) -> Self {
        FetchPlan {
            download_folder,
            slots: select(Platform::ALL, &[Ring::Production], Arch::ALL),
            upstream: upstream::DEFAULT_UPSTREAM.to_string(),
            backup: true,
            log_file: None,
            http: HttpConfig::default(),
            max_package_size: DEFAULT_MAX_PACKAGE_SIZE,
            max_info_changes: DEFAULT_MAX_INFO_CHANGES,
            notes: Vec::new(),
        }
    }

    /// Checks the options (reading `settings.json` if named) and decides
    /// everything; touches nothing else on disk or on the network.
    pub fn from_options(opts: &FetchOptions) -> Result<Self, FetchError> {
        let settings = match &opts.settings {
            Some(p) => Some((p.clone(), MsSettings::read(p)?)),
            None => None,
        };
        let download_folder = match (&opts.download_folder, &settings) {
            (Some(d), _) => d.clone(),
            (None, Some((_, s))) => match &s.download_folder {
                Some(d) => d.clone(),
                None => std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(MS_DEFAULT_DOWNLOAD_DIR))
                    .ok_or(FetchError::NoDownloadFolder)?,
            },
            (None, None) => return Err(FetchError::NoDownloadFolder),
        };
        if download_folder.as_os_str().is_empty() {
            return Err(FetchError::NoDownloadFolder);
        }
        let mut plan = FetchPlan::new(download_folder);

        let (platforms, rings, arches) = match &settings {
            Some((path, s)) => {
                let mut platforms = Vec::new();
                if s.download_linux {
                    platforms.push(Platform::Linux);
                }
                if s.download_mac {
                    platforms.push(Platform::Mac);
                }
                let mut rings = vec![Ring::Production];
                if s.download_preview {
                    rings.push(Ring::Preview);
                }
                let mut arches = Arch::ALL.to_vec();
                if platforms.is_empty() {
                    return Err(FetchError::NothingSelected {
                        why: format!(
                            "{} sets neither downloadLinuxUpdates nor downloadMacUpdates to true; set one of them",
                            path.display()
                        ),
                    });
                }
                narrow(&mut platforms, &opts.platforms);
                narrow(&mut rings, &opts.rings);
                narrow(&mut arches, &opts.arches);
                if platforms.is_empty() || rings.is_empty() || arches.is_empty() {
                    return Err(FetchError::NothingSelected {
                        why: format!(
                            "--platform/--ring/--arch only narrow what {} selects, and together they leave nothing (preview needs \"downloadPreviewUpdates\": true); drop a filter or change settings.json",
                            path.display()
                        ),
                    });
                }
                plan.backup = s.backup_previous.unwrap_or(true);
                plan.log_file = s.log_file_path.clone();
                for k in &s.unknown_keys {
                    plan.notes.push(format!(
                        "{}: ignoring unknown key {k:?} (known: downloadFolder, downloadLinuxUpdates, downloadMacUpdates, downloadPreviewUpdates, backupPreviousUpdates, logFilePath)",
                        path.display()
                    ));
                }
                (platforms, rings, arches)
            }
            None => (
                pick(&opts.platforms, Platform::ALL),
                pick(&opts.rings, &[Ring::Production]),
                pick(&opts.arches, Arch::ALL),
            ),
        };
        plan.slots = select(&platforms, &rings, &arches);
        if opts.no_backup {
            plan.backup = false;
        }
        if let Some(l) = &opts.log_file {
            plan.log_file = Some(l.clone());
        }
        if let Some(u) = &opts.upstream {
            plan.upstream = u.clone();
        }
        upstream::check_base(&plan.upstream).map_err(FetchError::BadUpstream)?;
        plan.http = opts.http.clone();
        if !opts.ca_certs.is_empty() {
            plan.http.extra_roots = ExtraRoots::read(&opts.ca_certs).map_err(FetchError::CaCert)?;
        }
        if let Some(m) = opts.max_package_size {
            if m == 0 {
                return Err(FetchError::Usage(
                    "--max-package-size must be more than 0 bytes".into(),
                ));
            }
            plan.max_package_size = m;
        }
        if let Some(m) = opts.max_info_changes {
            plan.max_info_changes = m;
        }
        if plan.http.read_timeout.is_zero() || plan.http.connect_timeout.is_zero() {
            return Err(FetchError::Usage(
                "timeouts must be longer than 0s (e.g. --timeout 30s)".into(),
            ));
        }
        Ok(plan)
    }
}

fn narrow<T: PartialEq>(chosen: &mut Vec<T>, filter: &[T]) {
    if !filter.is_empty() {
        chosen.retain(|x| filter.contains(x));
    }
}

fn pick<T: Copy>(filter: &[T], default: &[T]) -> Vec<T> {
    if filter.is_empty() {
        default.to_vec()
    } else {
        filter.to_vec()
    }
}

fn select(platforms: &[Platform], rings: &[Ring], arches: &[Arch]) -> Vec<Slot> {
    Slot::all()
        .filter(|s| {
            platforms.contains(&s.platform) && rings.contains(&s.ring) && arches.contains(&s.arch)
        })
        .collect()
}

/// A failure that stops the whole fetch before any slot is attempted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("no download folder: pass --download-folder DIR or --settings settings.json (with \"downloadFolder\")")]
    NoDownloadFolder,
    #[error("cannot read settings file {path}: {source}; check the --settings path")]
    SettingsRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable settings.json: {reason}; see docs/OPERATIONS.md for its keys")]
    Settings { path: PathBuf, reason: String },
    #[error("nothing to fetch: {why}")]
    NothingSelected { why: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    BadUpstream(UpstreamError),
    /// A `--ca-cert` file that cannot be read or holds no usable certificate.
    #[error(transparent)]
    CaCert(UpstreamError),
    #[error(transparent)]
    Client(UpstreamError),
    #[error("cannot create download folder {path}: {source}; check the path and permissions")]
    CreateFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another gapferry fetch is working in {path}; wait for it to finish (it holds the lock {lock})", lock = .path.join(LOCK_FILE).display())]
    Locked { path: PathBuf },
    /// The lock file cannot be opened or is not a private file of ours.
    #[error(transparent)]
    Lock(LockError),
}

impl Classify for FetchError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            FetchError::NoDownloadFolder
            | FetchError::SettingsRead { .. }
            | FetchError::Settings { .. }
            | FetchError::NothingSelected { .. }
            | FetchError::Usage(_)
            | FetchError::BadUpstream(_)
            | FetchError::CaCert(_) => ExitKind::Usage,
            FetchError::Client(_)
            | FetchError::CreateFolder { .. }
            | FetchError::Locked { .. }
            | FetchError::Lock(_) => ExitKind::Operational,
        }
    }
}

/// Why one slot failed. The previous set of that slot is untouched unless
/// the variant says otherwise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the download from {url} is not a complete zip ({reason}); it was discarded, try again later or check the proxy")]
    NotZip { url: String, reason: String },
    #[error("upstream changed release {times} times while {url} was downloading (last: {last}); try again later")]
    KeptChanging {
        url: String,
        times: u32,
        last: String,
    },
    #[error("cannot {action} {path}: {source}; check free space and permissions")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Staging or publishing the new set failed; see [`PublishError`] for
    /// what each variant leaves on disk (never a mixed or missing folder
    /// after the next run's recovery).
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl Classify for SlotError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Operational
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SlotError {
    let path = path.to_path_buf();
    move |source| SlotError::Io {
        action,
        path,
        source,
    }
}

/// What happened to one slot.
#[derive(Debug)]
#[non_exhaustive]
pub enum SlotOutcome {
    /// A new set was downloaded and published.
    Updated {
        current: FolderManifest,
        /// The set it replaced, when there was a complete one.
        previous: Option<FolderManifest>,
        /// The replaced set now sits in `<ring>_back/arch_<arch>`.
        backed_up: bool,
        bytes: u64,
        /// SHA-256 of the new `updates.zip`, lower-case hex.
        sha256: String,
        /// Package downloads made (more than one when upstream changed).
        downloads: u32,
    },
    /// The local set already is upstream's release; nothing was downloaded.
    Unchanged { current: FolderManifest },
    /// Nothing changed on disk for this slot (see [`SlotError`]).
    Failed { error: SlotError },
}

/// One slot's result.
#[derive(Debug)]
pub struct SlotReport {
    pub slot: Slot,
    pub outcome: SlotOutcome,
}

/// The result of a fetch, one entry per planned slot, in plan order.
#[derive(Debug)]
pub struct FetchReport {
    pub download_folder: PathBuf,
    pub upstream: String,
    pub items: Vec<SlotReport>,
}

impl FetchReport {
    /// True when any slot failed (the command then exits 1).
    pub fn failed(&self) -> bool {
        self.count_failed() > 0
    }

    pub fn count_updated(&self) -> usize {
        self.count(|o| matches!(o, SlotOutcome::Updated { .. }))
    }

    pub fn count_unchanged(&self) -> usize {
        self.count(|o| matches!(o, SlotOutcome::Unchanged { .. }))
    }

    pub fn count_failed(&self) -> usize {
        self.count(|o| matches!(o, SlotOutcome::Failed { .. }))
    }

    fn count(&self, f: impl Fn(&SlotOutcome) -> bool) -> usize {
        self.items.iter().filter(|i| f(&i.outcome)).count()
    }
}

/// Holds the download folder against a second concurrent fetch: an
/// exclusive `flock` on [`LOCK_FILE`] in it, a regular file of ours with
/// mode 0600, opened without following a symbolic link (see
/// [`crate::mirror::lock`]). No other local user can open it, so none can
/// hold it and stop every fetch.
#[derive(Debug)]
pub struct FolderLock {
    _lock: ImportLock,
}

/// Creates `dir` if needed and locks it. Fails at once if another process
/// holds the lock. On filesystems without `flock` (some NFS setups) the
/// lock is skipped and `Ok(None)` is returned.
pub fn lock_download_folder(dir: &Path) -> Result<Option<FolderLock>, FetchError> {
    let create_err = |source| FetchError::CreateFolder {
        path: dir.to_path_buf(),
        source,
    };
    durable::ensure_dir_all(dir).map_err(create_err)?;
    if !fs::metadata(dir).map_err(create_err)?.is_dir() {
        return Err(create_err(std::io::Error::other(
            "it exists and is not a directory",
        )));
    }
    // Unnoted: the file stays empty, so a fetch that changes nothing
    // leaves the folder byte for byte as it was.
    match ImportLock::acquire_unnoted(&dir.join(LOCK_FILE), Duration::ZERO) {
        Ok(lock) => Ok(Some(FolderLock { _lock: lock })),
        Err(LockError::Held { .. }) => Err(FetchError::Locked {
            path: dir.to_path_buf(),
        }),
        // The filesystem cannot lock (ENOLCK, EOPNOTSUPP on some NFS).
        Err(LockError::Lock { .. }) => Ok(None),
        Err(e) => Err(FetchError::Lock(e)),
    }
}

/// Runs `plan`: every slot is attempted even when an earlier one fails.
/// Errors only for what stops everything (the folder cannot be created, or
/// another fetch holds it); per-slot failures are in the report.
pub fn fetch(plan: &FetchPlan, observer: &dyn FetchObserver) -> Result<FetchReport, FetchError> {
    let upstream = Upstream::new(&plan.upstream, plan.http.clone()).map_err(FetchError::Client)?;
    let lock = lock_download_folder(&plan.download_folder)?;
    if lock.is_none() {
        observer.log(
            Level::Warn,
            &format!(
                "{}: this filesystem cannot lock; make sure no other fetch runs at the same time",
                plan.download_folder.display()
            ),
        );
    }
    for note in &plan.notes {
        observer.log(Level::Warn, note);
    }
    if lock.is_some() {
        // Without the lock a staging folder may belong to a live run.
        remove_stale_stages(plan, observer);
        recover_publishes(plan, observer);
    }
    observer.log(
        Level::Info,
        &format!(
            "fetching {} item{} from {} into {}",
            plan.slots.len(),
            if plan.slots.len() == 1 { "" } else { "s" },
            plan.upstream,
            plan.download_folder.display()
        ),
    );
    for file in plan.http.extra_roots.files() {
        observer.log(
            Level::Info,
            &format!(
                "trusting {} CA certificate{} from {} in addition to the built-in and system roots",
                file.len(),
                if file.len() == 1 { "" } else { "s" },
                file.path.display()
            ),
        );
    }
    let mut items = Vec::with_capacity(plan.slots.len());
    for &slot in &plan.slots {
        let outcome = match fetch_slot(plan, &upstream, slot, observer) {
            Ok(o) => o,
            Err(error) => SlotOutcome::Failed { error },
        };
        log_outcome(slot, &outcome, observer);
        items.push(SlotReport { slot, outcome });
    }
    drop(lock);
    Ok(FetchReport {
        download_folder: plan.download_folder.clone(),
        upstream: plan.upstream.clone(),
        items,
    })
}

fn log_outcome(slot: Slot, outcome: &SlotOutcome, observer: &dyn FetchObserver) {
    match outcome {
        SlotOutcome::Updated {
            current,
            previous,
            backed_up,
            bytes,
            sha256,
            ..
        } => {
            let was = match previous {
                Some(p) => format!(
                    "was engine {}, definitions {}",
                    p.engine_version, p.definition_version
                ),
                None => "first download".to_string(),
            };
            let kept = if *backed_up {
                format!("; previous set kept in {}", slot.back_rel())
            } else {
                String::new()
            };
            observer.log(
                Level::Info,
                &format!(
                    "{slot}: updated to engine {}, definitions {} ({was}); updates.zip {bytes} bytes, sha256 {sha256}{kept}",
                    current.engine_version, current.definition_version
                ),
            );
        }
        SlotOutcome::Unchanged { current } => observer.log(
            Level::Info,
            &format!(
                "{slot}: unchanged, already the newest (engine {}, definitions {})",
                current.engine_version, current.definition_version
            ),
        ),
        SlotOutcome::Failed { error } => {
            observer.log(Level::Error, &format!("{slot}: FAILED: {error}"))
        }
    }
}

/// Removes staging folders a killed run left beside the arch folders. Only
/// called under the folder lock, so they cannot belong to a live fetch.
fn remove_stale_stages(plan: &FetchPlan, observer: &dyn FetchObserver) {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for s in &plan.slots {
        for d in [
            s.dir_in(&plan.download_folder),
            s.back_dir_in(&plan.download_folder),
        ] {
            if let Some(p) = d.parent() {
                if !dirs.iter().any(|x| x == p) {
                    dirs.push(p.to_path_buf());
                }
            }
        }
    }
    for dir in dirs {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(STAGE_PREFIX) {
                let p = e.path();
                let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                match r {
                    Ok(()) => observer.log(
                        Level::Info,
                        &format!("removed {} left by an interrupted run", p.display()),
                    ),
                    Err(e) => observer.log(
                        Level::Warn,
                        &format!(
                            "cannot remove {} left by an interrupted run: {e}",
                            p.display()
                        ),
                    ),
                }
            }
        }
    }
}

/// Completes every publish a killed run had journaled (the new set becomes
/// current, the old one n-1) and removes staging it never journaled, with
/// the same [`publish::recover`] imports use. Only called under the lock.
fn recover_publishes(plan: &FetchPlan, observer: &dyn FetchObserver) {
    let opts = PublishOptions::from_env();
    let mut areas: Vec<PathBuf> = Vec::new();
    for s in &plan.slots {
        let area = plan.download_folder.join(s.platform.as_str());
        if !areas.contains(&area) {
            areas.push(area);
        }
    }
    for area in areas {
        match publish::recover(&area, &opts) {
            Ok(done) => {
                for r in done {
                    let what = match r.action {
                        RecoveryAction::Completed => "completed the publish of",
                        _ => "removed the unpublished staging of",
                    };
                    observer.log(
                        Level::Info,
                        &format!("{what} {} left by an interrupted run", r.current.display()),
                    );
                }
            }
            Err(e) => observer.log(
                Level::Warn,
                &format!(
                    "cannot recover what an interrupted run left in {}: {e}",
                    area.display()
                ),
            ),
        }
    }
}

/// The set in an arch folder, if it is complete (a readable manifest.json
/// and an updates.zip file).
fn local_set(dir: &Path, slot: Slot, observer: &dyn FetchObserver) -> Option<FolderManifest> {
    let manifest = dir.join(MANIFEST_JSON);
    if !manifest.exists() {
        return None;
    }
    let m = match FolderManifest::read(&manifest) {
        Ok(m) => m,
        Err(e) => {
            observer.log(
                Level::Warn,
                &format!("{slot}: {e}; downloading a fresh set"),
            );
            return None;
        }
    };
    let zip = dir.join(UPDATES_ZIP);
    if !zip.is_file() {
        observer.log(
            Level::Warn,
            &format!(
                "{slot}: {} has no {UPDATES_ZIP}; downloading a fresh set",
                dir.display()
            ),
        );
        return None;
    }
    // Microsoft's script can leave an HTML error page here; a set whose zip
    // is not one is not worth keeping, so it is neither "up to date" nor n-1.
    let checked = File::open(&zip)
        .and_then(|mut f| {
            let len = f.metadata()?.len();
            Ok(check_zip(&mut f, len))
        })
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(reason) = checked {
        observer.log(
            Level::Warn,
            &format!(
                "{slot}: {} is not a valid zip ({reason}); downloading a fresh set",
                zip.display()
            ),
        );
        return None;
    }
    Some(m)
}

fn fetch_slot(
    plan: &FetchPlan,
    upstream: &Upstream,
    slot: Slot,
    observer: &dyn FetchObserver,
) -> Result<SlotOutcome, SlotError> {
    let on_retry = |e: &UpstreamError, delay: Duration| {
        observer.log(
            Level::Warn,
            &format!(
                "{slot}: {e}; retrying in {}",
                humantime::format_duration(delay)
            ),
        )
    };
    let mut info = upstream.info(slot, &on_retry)?;
    observer.log(Level::Info, &format!("{slot}: upstream has {info}"));
    let current_dir = slot.dir_in(&plan.download_folder);
    let local = local_set(&current_dir, slot, observer);
    if let Some(m) = local.as_ref().filter(|m| info.matches(m)) {
        return Ok(SlotOutcome::Unchanged { current: m.clone() });
    }
    if let Some(older) = local
        .as_ref()
        .filter(|m| m.definitions().is_ok_and(|d| d > info.definitions))
    {
        observer.log(
            Level::Warn,
            &format!(
                "{slot}: upstream offers older definitions ({}) than the local set ({}); following upstream",
                info.definitions, older.definition_version
            ),
        );
    }

    let dest = Destination::in_mirror(&plan.download_folder, &slot.placement())?;
    dest.check_folders()?;
    let mut staging = Staging::new(PublishOptions::from_env());
    let staged = staging.stage(&dest)?;
    let zip_path = staged.dir().join(UPDATES_ZIP);
    let mut zip =
        durable::create_new_file(&zip_path, durable::FILE_MODE).map_err(io("create", &zip_path))?;

    let url = upstream::package_url(upstream.base(), slot);
    let mut downloads = 0;
    let mut changes = 0;
    let (bytes, sha256) = loop {
        observer.log(Level::Info, &format!("{slot}: downloading {url}"));
        let d = upstream.download(
            slot,
            &mut zip,
            &zip_path,
            plan.max_package_size,
            observer,
            &on_retry,
        )?;
        downloads += 1;
        check_zip(&mut zip, d.bytes).map_err(|reason| SlotError::NotZip {
            url: url.clone(),
            reason,
        })?;
        let again = upstream.info(slot, &on_retry)?;
        if again.same_release(&info) {
            break (d.bytes, d.sha256);
        }
        changes += 1;
        if changes > plan.max_info_changes {
            return Err(SlotError::KeptChanging {
                url,
                times: changes,
                last: again.to_string(),
            });
        }
        observer.log(
            Level::Warn,
            &format!("{slot}: upstream moved from {info} to {again} during the download; downloading again"),
        );
        info = again;
        if let Some(m) = local.as_ref().filter(|m| info.matches(m)) {
            return Ok(SlotOutcome::Unchanged { current: m.clone() });
        }
    };

    let manifest = info.to_manifest();
    zip.sync_all().map_err(io("flush", &zip_path))?;
    drop(zip);
    staged.write_file(MANIFEST_JSON, &manifest.to_bytes())?;
    // Only a complete set becomes n-1; without --backup n-1 stays as it is.
    let old_set = if plan.backup && local.is_some() {
        OldSet::KeepAsBack
    } else {
        OldSet::Discard
    };
    let published = staging.publish_with(staged, &format!("fetch {slot}"), old_set)?;
    let backed_up = published.back.is_some();
    Ok(SlotOutcome::Updated {
        current: manifest,
        previous: local,
        backed_up,
        bytes,
        sha256,
        downloads,
    })
}

/// Structural zip check: a local file header at the start and an
/// end-of-central-directory record whose comment ends exactly at the end.
fn check_zip(file: &mut File, len: u64) -> Result<(), String> {
    const EOCD: &[u8; 4] = b"PK\x05\x06";
    const EOCD_LEN: u64 = 22;
    if len < 30 + EOCD_LEN {
        return Err(format!("{len} bytes is too short for a zip"));
    }
    let mut head = [0u8; 4];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut head))
        .map_err(|e| format!("cannot read it back: {e}"))?;
    if &head != upstream::ZIP_LOCAL_HEADER {
        return Err("no zip local file header at the start".into());
    }
    let tail_len = len.min(EOCD_LEN + u64::from(u16::MAX));
    let mut tail = vec![0u8; tail_len as usize];
    file.seek(SeekFrom::Start(len - tail_len))
        .and_then(|_| file.read_exact(&mut tail))
        .map_err(|e| format!("cannot read it back: {e}"))?;
    let found = (0..=tail.len() - EOCD_LEN as usize).rev().any(|i| {
        tail[i..i + 4] == *EOCD && {
            let comment = u16::from_le_bytes([tail[i + 20], tail[i + 21]]) as usize;
            i + EOCD_LEN as usize + comment == tail.len()
        }
    });
    if found {
        Ok(())
    } else {
        Err("no end-of-central-directory record at the end, so it is cut short or not a zip".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/etc/settings.json")
    }

    #[test]
    fn settings_read_like_microsofts_script() {
        let s = MsSettings::parse(
            br#"{"downloadFolder": "/srv/wdav", "downloadLinuxUpdates": true,
                 "downloadMacUpdates": "false", "downloadPreviewUpdates": true,
                 "backupPreviousUpdates": false, "logFilePath": null, "extra": 1}"#,
            p(),
        )
        .unwrap();
        assert_eq!(s.download_folder.as_deref(), Some(Path::new("/srv/wdav")));
        assert!(s.download_linux && !s.download_mac && s.download_preview);
        assert_eq!(s.backup_previous, Some(false));
        assert_eq!(s.log_file_path, None);
        assert_eq!(s.unknown_keys, vec!["extra".to_string()]);

        for bad in [
            &b"[]"[..],
            b"{",
            br#"{"downloadLinuxUpdates": 1}"#,
            br#"{"downloadFolder": ""}"#,
        ] {
            let e = MsSettings::parse(bad, p()).unwrap_err().to_string();
            assert!(e.contains("/etc/settings.json"), "{e}");
        }
    }

    #[test]
    fn plan_defaults_and_filters() {
        let opts = FetchOptions {
            download_folder: Some("/d".into()),
            ..Default::default()
        };
        let plan = FetchPlan::from_options(&opts).unwrap();
        assert_eq!(plan.slots.len(), 4);
        assert!(plan.slots.iter().all(|s| s.ring == Ring::Production));
        assert!(plan.backup);

        let opts = FetchOptions {
            download_folder: Some("/d".into()),
            rings: vec![Ring::Preview],
            arches: vec![Arch::Arm64],
            platforms: vec![Platform::Mac],
            no_backup: true,
            ..Default::default()
        };
        let plan = FetchPlan::from_options(&opts).unwrap();
        assert_eq!(plan.slots.len(), 1);
        assert_eq!(plan.slots[0].rel(), "mac/preview/arch_arm64");
        assert!(!plan.backup);

        let e = FetchPlan::from_options(&FetchOptions::default()).unwrap_err();
        assert!(matches!(e, FetchError::NoDownloadFolder));
        let e = FetchPlan::from_options(&FetchOptions {
            download_folder: Some("/d".into()),
            upstream: Some("ftp://x".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.exit_kind(), ExitKind::Usage);
    }

    #[test]
    fn zip_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z");
        let check = |bytes: &[u8]| {
            fs::write(&path, bytes).unwrap();
            let mut f = File::open(&path).unwrap();
            check_zip(&mut f, bytes.len() as u64)
        };
        let mut good = b"PK\x03\x04".to_vec();
        good.extend([0u8; 40]);
        good.extend(b"PK\x05\x06");
        good.extend([0u8; 16]);
        good.extend(2u16.to_le_bytes());
        good.extend(b"hi");
        assert!(check(&good).is_ok());
        assert!(check(&good[..good.len() - 1]).is_err());
        let mut html = b"<!DOCTYPE html>".to_vec();
        html.extend([b' '; 100]);
        assert!(check(&html).is_err());
    }
}
