//! Publishing into an `s3://BUCKET/PREFIX` mirror: the same layout as a
//! folder mirror (`<platform>/<ring>/arch_<arch>/`, n-1 in `<ring>_back/`),
//! written object by object, because object stores have no rename.
//!
//! # What a client polling the store sees (the guarantee)
//!
//! - **Per object**: every GET returns a complete object that an import
//!   uploaded and the store verified (each upload and each part carries
//!   the SHA-256 of its bytes, which the store checks; a multipart upload
//!   is invisible until it completes, and is completed only once the
//!   bundle reader has matched the whole file against its signed hash).
//!   Served objects are server-side copies of such objects, or such
//!   uploads. Never a truncated or mixed object.
//! - **Per folder**: the files of a unit are written in one order: payload
//!   files first, the profile's index files last (`mde`: `manifest.json`
//!   after `updates.zip`). So an index file never names a version whose
//!   payload is not yet there: a client that reads `manifest.json` and then
//!   `updates.zip` gets a payload at least as new as the manifest it read.
//!   For the few milliseconds between two PUTs, a client may read a new
//!   payload beside the previous index; it then installs the newer payload
//!   (or waits for its next poll), never an older one than announced.
//! - **n-1 first**: before the first byte of the new set is written, the
//!   served set is copied server-side into `<ring>_back/` (a metadata-only
//!   copy on Garage), each copy conditional on the object still being the
//!   one recorded (`x-amz-copy-source-if-match`), so n-1 can only ever hold
//!   what was served.
//!
//! # The journal
//!
//! While the bundle is read, every staged file is also put into the store
//! under `.gapferry-staging/<import>/`; files the profile's check does not
//! read go there straight from the decompressor and are never written here
//! (`staging`). At publish, what was staged here (already verified and
//! checked by its profile) is moved into `<state-dir>/s3/publish/<unit>/files/`,
//! and `journal.json` beside it records the unit, the new files (name,
//! size, SHA-256, staged object), the objects it replaces (with their
//! ETags) and whether n-1 is done. From the moment the journal is on disk
//! the publish is decided: a run killed at any step is rolled forward by
//! the next run ([`S3Mirror::recover`]), which re-does only what the store
//! does not already hold (an object whose size and SHA-256 metadata match
//! is not copied or uploaded again). The journal, its files and the staged
//! objects are removed last. The state and the ledger are written by the
//! import only after every object of the unit was verified (HEAD: size and
//! SHA-256).
//!
//! # Several importers
//!
//! The import lock is the state directory's (as for a folder mirror), so
//! importers sharing one state directory run one after the other. A
//! prefix is claimed by one state directory with the object
//! `.gapferry-claim` ([`S3Mirror::claim`]), written with `If-None-Match: *`
//! (honoured by stores with conditional writes; Garage 2.5 ignores it) and
//! read back: an import from another state directory is refused.
//!
//! The parts: `journal` (the journaled publish of a unit and recovery),
//! `staging` (uploads into `.gapferry-staging/` while the bundle is
//! read), `swap` (rollback in the store); this file holds the mirror
//! itself, its errors, the prefix claim and the check of a folder. The
//! module owns the object order, the journal and recovery; it never reads
//! bundles or decides policy, and it never writes the state.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::setcheck::{self, Depth, Mismatch, Problem};
use super::state::ServedFile;
use crate::durable::{self, Clobber};
use crate::error::{Classify, ExitKind};
use crate::profile::Placement;
use crate::s3::{Client, Location, S3Error};

mod journal;
mod staging;
mod swap;

pub use journal::{S3Published, S3Recovered};
pub use staging::{StagedObjects, StreamUpload, Uploads};
pub use swap::SwapDone;

/// Every crash step of an S3 publish, in order, for the crash tests.
pub const S3_CRASH_STEPS: &[&str] = &[
    "s3-journal-written",
    "s3-back-copied",
    "s3-back-done",
    "s3-object-uploaded",
    "s3-current-done",
];

/// The crash step of a rollback in the store, reached after each of its
/// three copy phases.
pub const S3_SWAP_STEP: &str = "s3-swap-step";

/// The hidden folder under the prefix where an import uploads each staged
/// file while the bundle is still being read; a publish then copies them
/// into place server-side.
pub const STAGING_PREFIX: &str = ".gapferry-staging";

/// Files uploaded at once into the staging folder.
const UPLOAD_THREADS: usize = 3;

/// The object that names the state directory owning a prefix.
pub const CLAIM_OBJECT: &str = ".gapferry-claim";

const JOURNAL_FORMAT: u32 = 1;

/// Why an S3 publish failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3PublishError {
    #[error(transparent)]
    Store(#[from] S3Error),
    #[error("cannot write {path}: {source}")]
    Local { path: PathBuf, source: io::Error },
    #[error(
        "the journal {path} cannot be read ({reason}); check the store by hand, then remove {dir}"
    )]
    Journal {
        path: PathBuf,
        dir: PathBuf,
        reason: String,
    },
    #[error(
        "{url} changed while this import was publishing (another writer?); \
         nothing more was written: check who else writes {location}, then run the import again"
    )]
    Changed { url: String, location: String },
    #[error(
        "{location} is claimed by another state directory ({found}); this one is {ours}: \
         import into this prefix with that state directory, or remove {claim} if that \
         state directory is gone for good"
    )]
    Claimed {
        location: String,
        claim: String,
        found: String,
        ours: String,
    },
}

impl Classify for S3PublishError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            S3PublishError::Store(e) => e.exit_kind(),
            _ => ExitKind::Operational,
        }
    }
}

/// An `s3://` mirror as the import, status and rollback see it: the store,
/// and a local shadow root in the state directory where units are staged
/// (paths under it name the unit's folder in the store).
#[derive(Debug)]
pub struct S3Mirror {
    client: Client,
    state_dir: PathBuf,
    shadow: PathBuf,
}

/// One file in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct JFile {
    name: String,
    size: u64,
    sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
}

impl S3Mirror {
    /// A mirror at `client`'s location, with its local parts under
    /// `state_dir/s3/`.
    pub fn new(client: Client, state_dir: &Path) -> S3Mirror {
        let state_dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        S3Mirror {
            client,
            shadow: state_dir.join("s3").join("tree"),
            state_dir,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn location(&self) -> &Location {
        self.client.location()
    }

    /// The local shadow root: units are staged under it as if it were a
    /// folder mirror, and a path under it names the same folder in the
    /// store.
    pub fn shadow_root(&self) -> &Path {
        &self.shadow
    }

    fn publish_root(&self) -> PathBuf {
        self.state_dir.join("s3").join("publish")
    }

    /// The store-relative folder of a shadow path (`linux/production/arch_x86_64`).
    pub fn rel_of(&self, dir: &Path) -> Option<String> {
        let dir = std::path::absolute(dir).ok()?;
        let rel = dir.strip_prefix(&self.shadow).ok()?;
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        Some(parts.join("/"))
    }

    /// `s3://bucket/prefix/<folder>` of a shadow path, for reports.
    pub fn show(&self, dir: &Path) -> PathBuf {
        PathBuf::from(self.client.url_of(&self.rel_of(dir).unwrap_or_default()))
    }

    /// The store-relative folder of a placement and of its n-1.
    pub fn rel_of_placement(place: &Placement) -> (String, String) {
        let join = |group: &str| {
            [place.area.as_str(), group, place.leaf.as_str()]
                .iter()
                .filter(|p| !p.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("/")
        };
        (join(&place.group), join(&format!("{}_back", place.group)))
    }

    /// Claims the prefix for this state directory, or checks the claim.
    /// `id` is the state directory's identity (its path and a random id
    /// kept in it).
    pub fn claim(&self) -> Result<(), S3PublishError> {
        let ours = self.claim_id()?;
        let found = self.client.get_bytes(CLAIM_OBJECT, 4096)?;
        let found = match found {
            Some(b) => String::from_utf8_lossy(&b).trim().to_string(),
            None => {
                self.client.put_bytes(
                    CLAIM_OBJECT,
                    format!("{ours}\n").as_bytes(),
                    "text/plain",
                    true,
                )?;
                let back = self.client.get_bytes(CLAIM_OBJECT, 4096)?;
                back.map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .unwrap_or_default()
            }
        };
        if found != ours {
            return Err(S3PublishError::Claimed {
                location: self.location().to_string(),
                claim: self.client.url_of(CLAIM_OBJECT),
                found,
                ours,
            });
        }
        Ok(())
    }

    /// This state directory's claim text: a random id kept in
    /// `s3/claim-id`, made on first use.
    fn claim_id(&self) -> Result<String, S3PublishError> {
        let path = self.state_dir.join("s3").join("claim-id");
        let local = |source| S3PublishError::Local {
            path: path.clone(),
            source,
        };
        match fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(local(e)),
        }
        durable::ensure_private_dir(&self.state_dir.join("s3")).map_err(local)?;
        let mut raw = [0u8; 16];
        getrandom::getrandom(&mut raw).map_err(|e| local(io::Error::other(e.to_string())))?;
        let host = fs::read_to_string("/etc/hostname").unwrap_or_default();
        let id = format!(
            "gapferry state {} on {} ({})",
            hex::encode(raw),
            host.trim(),
            std::path::absolute(&self.state_dir)
                .unwrap_or_else(|_| self.state_dir.clone())
                .display()
        );
        durable::write_atomic(
            &path,
            format!("{id}\n").as_bytes(),
            durable::PRIVATE_FILE_MODE,
            Clobber::Refuse,
        )
        .map_err(local)?;
        Ok(id)
    }

    /// Checks the objects of the store folder that `dir` (a shadow path)
    /// names against recorded files, by HEAD: size, and with
    /// [`Depth::Hashes`] the SHA-256 gapferry stored with each object.
    pub fn check(&self, dir: &Path, files: &[ServedFile], depth: Depth) -> Result<(), Mismatch> {
        let Some(rel) = self.rel_of(dir) else {
            return setcheck::check(dir, files, depth);
        };
        for f in files {
            let key = format!("{rel}/{}", f.name);
            let fail = |problem| Mismatch {
                path: PathBuf::from(self.client.url_of(&key)),
                problem,
            };
            match self.client.head(&key) {
                Err(e) => return Err(fail(Problem::Unreadable(io::Error::other(e.to_string())))),
                Ok(None) => return Err(fail(Problem::Missing)),
                Ok(Some(info)) if info.size != f.size => {
                    return Err(fail(Problem::Size {
                        recorded: f.size,
                        found: info.size,
                    }))
                }
                Ok(Some(info)) => {
                    if depth == Depth::Hashes && info.sha256.as_deref() != Some(f.sha256.as_str()) {
                        return Err(fail(Problem::Sha256));
                    }
                }
            }
        }
        Ok(())
    }

    /// The objects directly in store folder `rel`, as journal files.
    fn folder_objects(&self, rel: &str) -> Result<Vec<JFile>, S3PublishError> {
        let mut out = Vec::new();
        for (key, _) in self.client.list(&format!("{rel}/"))? {
            let Some(name) = key.strip_prefix(&format!("{rel}/")) else {
                continue;
            };
            if name.is_empty() || name.contains('/') {
                continue;
            }
            if let Some(info) = self.client.head(&key)? {
                out.push(JFile {
                    name: name.to_string(),
                    size: info.size,
                    sha256: info.sha256.clone().unwrap_or_default(),
                    etag: Some(info.etag),
                });
            }
        }
        Ok(out)
    }
}

/// Payload files first, in their order; index files last.
fn ordered(mut files: Vec<JFile>, index: &[&str]) -> Vec<JFile> {
    files.sort_by_key(|f| index.iter().position(|i| *i == f.name).map_or(0, |p| p + 1));
    files
}

fn verify(
    client: &Client,
    key: &str,
    info: &crate::s3::ObjectInfo,
    f: &JFile,
) -> Result<(), S3PublishError> {
    let sha_ok = f.sha256.is_empty() || info.sha256.as_deref() == Some(f.sha256.as_str());
    if info.size != f.size || !sha_ok {
        return Err(S3Error::Mismatch {
            url: client.url_of(key),
            reason: format!(
                "the store holds {} bytes with SHA-256 {}, {} bytes with {} were written",
                info.size,
                info.sha256.as_deref().unwrap_or("(none)"),
                f.size,
                f.sha256
            ),
        }
        .into());
    }
    Ok(())
}

/// Deletes the objects directly in `folder` that `keep` does not name.
fn remove_extra(client: &Client, folder: &str, keep: &[JFile]) -> Result<(), S3PublishError> {
    let prefix = format!("{folder}/");
    for (key, _) in client.list(&prefix)? {
        let Some(name) = key.strip_prefix(&prefix) else {
            continue;
        };
        if name.contains('/') || keep.iter().any(|k| k.name == name) {
            continue;
        }
        client.delete(&key)?;
    }
    Ok(())
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, e)| e) {
        Some("json") => "application/json",
        Some("zip") => "application/zip",
        Some("exe") => "application/vnd.microsoft.portable-executable",
        _ => "application/octet-stream",
    }
}

fn save_json<T: Serialize>(path: &Path, j: &T) -> Result<(), S3PublishError> {
    let path = path.to_path_buf();
    let dir = durable::parent_of(&path).to_path_buf();
    let bytes = serde_json::to_vec_pretty(j).map_err(|e| S3PublishError::Local {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    durable::write_atomic(&path, &bytes, durable::PRIVATE_FILE_MODE, Clobber::Replace)
        .and_then(|()| durable::sync_dir(&dir))
        .map_err(|source| S3PublishError::Local { path, source })
}

fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, S3PublishError> {
    let bad = |reason: String| S3PublishError::Journal {
        path: path.to_path_buf(),
        dir: durable::parent_of(path).to_path_buf(),
        reason,
    };
    let bytes = fs::read(path).map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> JFile {
        JFile {
            name: name.into(),
            size: 1,
            sha256: String::new(),
            etag: None,
        }
    }

    #[test]
    fn index_files_go_last() {
        let got = ordered(
            vec![f("manifest.json"), f("updates.zip"), f("x")],
            &["manifest.json"],
        );
        let names: Vec<&str> = got.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["updates.zip", "x", "manifest.json"]);
    }
}
