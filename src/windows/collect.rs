//! Reads a download folder's `windows/<arch>/mpam-fe.exe` packages (as
//! `gapferry fetch --platform windows` leaves them, or copied there by
//! hand) and turns them into the `windows` profile's bundle items and
//! payload files. Every package is checked before it is carried: a
//! complete PE with a version resource and an embedded Authenticode
//! signature whose digest matches. `windows_back/` is never carried.

use std::path::{Path, PathBuf};

use crate::bundle::writer::SourceFile;
use crate::manifest::Item;
use crate::profile::Collection;
use crate::safepath::SafePath;

use super::{pe, WinArch, MPAM_FE, PLATFORM, PROFILE, RING};

/// A download folder whose Windows packages cannot be exported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WinCollectError {
    #[error("{path} {reason}; re-run `gapferry fetch --platform windows`, or remove the folder or leave its arch out with --arch")]
    Package { path: PathBuf, reason: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{root}: nothing to carry: no windows/<arch>/mpam-fe.exe{filter} (has `gapferry fetch --platform windows` run into this folder?)")]
    Nothing { root: PathBuf, filter: String },
}

impl crate::error::Classify for WinCollectError {
    fn exit_kind(&self) -> crate::error::ExitKind {
        crate::error::ExitKind::Operational
    }
}

/// One package to carry.
#[derive(Debug, Clone)]
pub struct Collected {
    pub arch: WinArch,
    pub version: String,
    /// The signer subject, when the signature names one.
    pub signer: Option<String>,
    pub path: PathBuf,
}

/// Finds and checks the packages under `root/windows/`, for `arches`
/// (empty: all).
pub fn collect(root: &Path, arches: &[WinArch]) -> Result<Vec<Collected>, WinCollectError> {
    let mut out = Vec::new();
    for &arch in WinArch::ALL {
        if !arches.is_empty() && !arches.contains(&arch) {
            continue;
        }
        let dir = root.join(arch.rel());
        if !dir.exists() {
            continue;
        }
        let path = dir.join(MPAM_FE);
        let bytes = match pe::read_package(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(WinCollectError::Package {
                    path: dir.clone(),
                    reason: format!("has no {MPAM_FE}"),
                })
            }
            Err(source) => return Err(WinCollectError::Read { path, source }),
        };
        let package = |reason: String| WinCollectError::Package {
            path: path.clone(),
            reason,
        };
        let info = pe::analyze(&bytes).map_err(package)?;
        if info.machine != arch.machine() {
            return Err(package(format!(
                "is built for machine {:#06x}, not {arch} ({:#06x})",
                info.machine,
                arch.machine()
            )));
        }
        let Some(sig) = info.signature else {
            return Err(package(
                "has no embedded Authenticode signature (Microsoft signs every package)".into(),
            ));
        };
        out.push(Collected {
            arch,
            version: info.version,
            signer: sig.signer_subject,
            path,
        });
    }
    if out.is_empty() {
        let filter = if arches.is_empty() {
            String::new()
        } else {
            format!(
                " for --arch {}",
                arches
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        return Err(WinCollectError::Nothing {
            root: root.to_path_buf(),
            filter,
        });
    }
    Ok(out)
}

/// The collected packages as what export carries.
pub fn to_collection(collected: &[Collected]) -> Collection {
    let mut items = Vec::new();
    let mut files = Vec::new();
    for c in collected {
        items.push(Item {
            platform: PLATFORM.to_string(),
            ring: RING.to_string(),
            arch: c.arch.to_string(),
            engine_version: c.version.clone(),
            definition_version: c.version.clone(),
        });
        files.push(SourceFile {
            path: SafePath::new(&format!("{}/{MPAM_FE}", c.arch.rel()))
                .expect("layout paths are safe"),
            source: c.path.clone(),
        });
    }
    Collection {
        profile: PROFILE,
        items,
        files,
    }
}
