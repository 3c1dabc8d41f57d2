//! Reads a download folder as Microsoft's downloader leaves it and turns its
//! current `<platform>/<ring>/arch_<arch>/` folders into bundle items and
//! payload files. `*_back` folders are never carried.

use std::path::{Path, PathBuf};

use crate::bundle::writer::SourceFile;
use crate::manifest::Item;
use crate::safepath::SafePath;

use super::layout::{FolderManifest, Platform, Ring, Slot};
use super::{MANIFEST_JSON, UPDATES_ZIP};

/// A download folder that cannot be exported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    #[error("{folder}: {reason}")]
    Folder { folder: PathBuf, reason: String },
    /// A file of the folder could not be read to check it.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{root}: nothing to carry: no <platform>/<ring>/arch_<arch>/ folder with updates.zip and manifest.json{filter} (is this the downloadFolder of Microsoft's script, or has gapferry fetch run yet?)")]
    Nothing { root: PathBuf, filter: String },
}

impl crate::error::Classify for CollectError {
    fn exit_kind(&self) -> crate::error::ExitKind {
        crate::error::ExitKind::Operational
    }
}

/// One folder to carry.
#[derive(Debug, Clone)]
pub struct Collected {
    pub slot: Slot,
    pub versions: FolderManifest,
    pub updates_zip: PathBuf,
    pub manifest_json: PathBuf,
}

/// Finds the folders to carry under `root`, filtered by platform and ring
/// (empty filter: all).
pub fn collect(
    root: &Path,
    platforms: &[Platform],
    rings: &[Ring],
) -> Result<Vec<Collected>, CollectError> {
    let folder_err = |folder: &Path, reason: String| CollectError::Folder {
        folder: folder.to_path_buf(),
        reason,
    };
    if !root.is_dir() {
        return Err(folder_err(
            root,
            "is not a directory; give the download folder with --from".into(),
        ));
    }
    let mut out = Vec::new();
    for slot in Slot::all() {
        if (!platforms.is_empty() && !platforms.contains(&slot.platform))
            || (!rings.is_empty() && !rings.contains(&slot.ring))
        {
            continue;
        }
        let dir = slot.dir_in(root);
        if !dir.exists() {
            continue;
        }
        if !dir.is_dir() {
            return Err(folder_err(&dir, "is not a directory".into()));
        }
        let zip = dir.join(UPDATES_ZIP);
        let manifest = dir.join(MANIFEST_JSON);
        match std::fs::metadata(&zip) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(folder_err(&dir, "updates.zip is not a regular file".into())),
            Err(_) => {
                return Err(folder_err(
                    &dir,
                    "has no updates.zip; re-run the download, or delete the folder or filter it out with --platform/--ring".into(),
                ))
            }
        }
        match super::zipcheck::check_zip(&zip) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                return Err(folder_err(
                    &dir,
                    format!("updates.zip {why}; re-run the download before exporting"),
                ))
            }
            Err(source) => {
                return Err(CollectError::Read {
                    path: zip.clone(),
                    source,
                })
            }
        }
        let versions = FolderManifest::read(&manifest)
            .map_err(|e| folder_err(&dir, format!("{e}; re-run the download before exporting")))?;
        out.push(Collected {
            slot,
            versions,
            updates_zip: zip,
            manifest_json: manifest,
        });
    }
    if out.is_empty() {
        let mut filter = String::new();
        if !platforms.is_empty() || !rings.is_empty() {
            filter = format!(
                " matching --platform {} --ring {}",
                if platforms.is_empty() {
                    "any".to_string()
                } else {
                    platforms
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                },
                if rings.is_empty() {
                    "any".to_string()
                } else {
                    rings
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                },
            );
        }
        return Err(CollectError::Nothing {
            root: root.to_path_buf(),
            filter,
        });
    }
    Ok(out)
}

/// The collected folders as what export carries: the `mde` profile's
/// items and payload files.
pub fn to_collection(collected: &[Collected]) -> crate::profile::Collection {
    let (items, files) = to_bundle_parts(collected);
    crate::profile::Collection {
        profile: super::PROFILE,
        items,
        files,
    }
}

/// The manifest items and payload files for the collected folders.
pub fn to_bundle_parts(collected: &[Collected]) -> (Vec<Item>, Vec<SourceFile>) {
    let mut items = Vec::new();
    let mut files = Vec::new();
    for c in collected {
        items.push(Item {
            platform: c.slot.platform.to_string(),
            ring: c.slot.ring.to_string(),
            arch: c.slot.arch.to_string(),
            engine_version: c.versions.engine_version.clone(),
            definition_version: c.versions.definition_version.clone(),
        });
        for (name, src) in [
            (UPDATES_ZIP, &c.updates_zip),
            (MANIFEST_JSON, &c.manifest_json),
        ] {
            files.push(SourceFile {
                path: SafePath::new(&format!("{}/{name}", c.slot.rel()))
                    .expect("layout paths are safe"),
                source: src.clone(),
            });
        }
    }
    (items, files)
}
