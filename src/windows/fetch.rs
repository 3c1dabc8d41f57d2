//! `fetch --platform windows`: keeps `<download>/windows/<arch>/mpam-fe.exe`
//! in step with Microsoft's full security intelligence package
//! (`https://go.microsoft.com/fwlink/?LinkID=121721&arch=<arch>`), n-1 in
//! `<download>/windows_back/<arch>/`.
//!
//! Per arch: download into a staging folder beside the target (through
//! [`crate::mirror::publish`], journaled, as the `mde` fetch does), then
//! check the complete file ([`super::pe`]): a PE for this architecture,
//! with a version resource and an embedded Authenticode signature whose
//! digest matches. Microsoft publishes no version document for this link
//! that gapferry relies on, so "unchanged" is decided after the download:
//! the same version as the held package discards the download. A package
//! older than the one held is refused (the held one stays). The HTTP side
//! (retries, proxies, redirect rule, size cap, `--upstream`) is
//! [`crate::mde::upstream`]'s. It never prints; log lines go to a
//! [`FetchObserver`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::profile::placement;
use super::{pe, WinArch, MPAM_FE};
use crate::durable;
use crate::error::{Classify, ExitKind};
use crate::mde::fetch::{lock_download_folder, FetchError, FetchObserver, Level};
use crate::mde::upstream::{HttpConfig, Upstream, UpstreamError};
use crate::mde::Version;
use crate::mirror::publish::{self, Destination, OldSet, PublishError, PublishOptions, Staging};

/// The fwlink id of the full security intelligence package for Windows
/// (Microsoft's "manually download the update" page; see OPERATIONS.md).
pub const LINK_ID: &str = "121721";

/// The package URL of `arch` under `base`: `?LinkID=121721&arch=<arch>`.
pub fn package_url(base: &str, arch: WinArch) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}LinkID={LINK_ID}&arch={arch}")
}

/// A checked Windows fetch.
#[derive(Debug, Clone)]
pub struct WinFetchPlan {
    pub download_folder: PathBuf,
    /// In layout order, no duplicates, never empty.
    pub arches: Vec<WinArch>,
    pub upstream: String,
    /// Keep the replaced package in `windows_back/<arch>/`.
    pub backup: bool,
    pub http: HttpConfig,
    pub max_package_size: u64,
}

/// Why one arch failed; the package it held is untouched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WinSlotError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the download from {url} {reason}; it was discarded (a proxy, captive portal or wrong --upstream may be answering instead of Microsoft)")]
    NotPackage { url: String, reason: String },
    #[error("the download from {url} has no embedded Authenticode signature; Microsoft signs every package, so it was discarded (check --upstream and any proxy in between)")]
    Unsigned { url: String },
    #[error("{url} sent version {offered}, older than the {held} already held in {dir}; kept {held}. If Microsoft withdrew a release, remove {dir} and fetch again")]
    Older {
        url: String,
        offered: String,
        held: String,
        dir: PathBuf,
    },
    #[error("cannot {action} {path}: {source}; check free space and permissions")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl Classify for WinSlotError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Operational
    }
}

/// What happened to one arch.
#[derive(Debug)]
#[non_exhaustive]
pub enum WinOutcome {
    Updated {
        version: String,
        previous: Option<String>,
        signer: Option<String>,
        bytes: u64,
        sha256: String,
        backed_up: bool,
    },
    /// Upstream serves the version already held; the download was discarded.
    Unchanged {
        version: String,
    },
    Failed {
        error: WinSlotError,
    },
}

/// One arch's result.
#[derive(Debug)]
pub struct WinSlotReport {
    pub arch: WinArch,
    pub outcome: WinOutcome,
}

/// The whole run.
#[derive(Debug)]
pub struct WinFetchReport {
    pub download_folder: PathBuf,
    pub upstream: String,
    pub items: Vec<WinSlotReport>,
}

impl WinFetchReport {
    /// Whether any arch failed.
    pub fn failed(&self) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i.outcome, WinOutcome::Failed { .. }))
    }
}

/// The version of the package held in `dir`, if it is a usable package.
fn held_version(dir: &Path, arch: WinArch, observer: &dyn FetchObserver) -> Option<String> {
    let path = dir.join(MPAM_FE);
    if !path.exists() {
        return None;
    }
    match pe::read_package(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| pe::analyze(&b))
    {
        Ok(info) => Some(info.version),
        Err(why) => {
            observer.log(
                Level::Warn,
                &format!(
                    "windows/{arch}: {} {why}; downloading a fresh one",
                    path.display()
                ),
            );
            None
        }
    }
}

/// Runs `plan`; every arch is attempted even when an earlier one fails.
pub fn fetch(
    plan: &WinFetchPlan,
    observer: &dyn FetchObserver,
) -> Result<WinFetchReport, FetchError> {
    let upstream = Upstream::new(&plan.upstream, plan.http.clone()).map_err(FetchError::Client)?;
    let lock = lock_download_folder(&plan.download_folder)?;
    if lock.is_some() {
        // The arch folders' group sits in the download folder itself.
        match publish::recover(&plan.download_folder, &PublishOptions::from_env()) {
            Ok(done) => {
                for r in done {
                    observer.log(
                        Level::Info,
                        &format!(
                            "finished what an interrupted run left for {}",
                            r.current.display()
                        ),
                    );
                }
            }
            Err(e) => observer.log(
                Level::Warn,
                &format!("cannot recover an interrupted run: {e}"),
            ),
        }
    } else {
        observer.log(
            Level::Warn,
            &format!(
                "{}: this filesystem cannot lock; make sure no other fetch runs at the same time",
                plan.download_folder.display()
            ),
        );
    }
    let mut items = Vec::new();
    for &arch in &plan.arches {
        let outcome = match fetch_arch(plan, &upstream, arch, observer) {
            Ok(o) => o,
            Err(error) => WinOutcome::Failed { error },
        };
        match &outcome {
            WinOutcome::Updated {
                version,
                previous,
                signer,
                bytes,
                sha256,
                ..
            } => observer.log(
                Level::Info,
                &format!(
                    "windows/{arch}: now {version} (was {}), {bytes} bytes, sha256 {sha256}, signed by {}",
                    previous.as_deref().unwrap_or("none"),
                    signer.as_deref().unwrap_or("(signer not named)")
                ),
            ),
            WinOutcome::Unchanged { version } => observer.log(
                Level::Info,
                &format!("windows/{arch}: {version} is current; nothing to do"),
            ),
            WinOutcome::Failed { error } => {
                observer.log(Level::Error, &format!("windows/{arch}: {error}"))
            }
        }
        items.push(WinSlotReport { arch, outcome });
    }
    drop(lock);
    Ok(WinFetchReport {
        download_folder: plan.download_folder.clone(),
        upstream: plan.upstream.clone(),
        items,
    })
}

fn fetch_arch(
    plan: &WinFetchPlan,
    upstream: &Upstream,
    arch: WinArch,
    observer: &dyn FetchObserver,
) -> Result<WinOutcome, WinSlotError> {
    let on_retry = |e: &UpstreamError, delay: Duration| {
        observer.log(
            Level::Warn,
            &format!(
                "windows/{arch}: {e}; retrying in {}",
                humantime::format_duration(delay)
            ),
        )
    };
    let dest = Destination::in_mirror(&plan.download_folder, &placement(arch))?;
    let held = held_version(&dest.current(), arch, observer);
    dest.check_folders()?;
    let mut staging = Staging::new(PublishOptions::from_env());
    let staged = staging.stage(&dest)?;
    let path = staged.dir().join(MPAM_FE);
    let io = |action: &'static str| {
        let path = path.clone();
        move |source| WinSlotError::Io {
            action,
            path,
            source,
        }
    };
    let mut file = durable::create_new_file(&path, durable::FILE_MODE).map_err(io("create"))?;
    let url = package_url(upstream.base(), arch);
    observer.log(Level::Info, &format!("windows/{arch}: downloading {url}"));
    let d = upstream.download_url(
        &url,
        &format!("windows {arch}"),
        false,
        &mut file,
        &path,
        plan.max_package_size,
        observer,
        &on_retry,
    )?;
    file.sync_all().map_err(io("flush"))?;
    drop(file);
    let bytes = pe::read_package(&path).map_err(io("read"))?;
    let not_package = |reason: String| WinSlotError::NotPackage {
        url: url.clone(),
        reason,
    };
    let info = pe::analyze(&bytes).map_err(not_package)?;
    drop(bytes);
    if info.machine != arch.machine() {
        return Err(not_package(format!(
            "is built for machine {:#06x}, not {arch}",
            info.machine
        )));
    }
    let Some(sig) = info.signature else {
        return Err(WinSlotError::Unsigned { url });
    };
    if let Some(h) = &held {
        let (offered, have) = (info.version.parse::<Version>(), h.parse::<Version>());
        if let (Ok(o), Ok(have)) = (offered, have) {
            if o == have {
                staging.discard()?;
                return Ok(WinOutcome::Unchanged {
                    version: info.version,
                });
            }
            if o < have {
                return Err(WinSlotError::Older {
                    url,
                    offered: info.version,
                    held: h.clone(),
                    dir: dest.current(),
                });
            }
        }
    }
    let old_set = if plan.backup && held.is_some() {
        OldSet::KeepAsBack
    } else {
        OldSet::Discard
    };
    let published = staging.publish_with(staged, &format!("fetch windows/{arch}"), old_set)?;
    Ok(WinOutcome::Updated {
        version: info.version,
        previous: held,
        signer: sig.signer_subject,
        bytes: d.bytes,
        sha256: d.sha256,
        backed_up: published.back.is_some(),
    })
}
