//! Publishing into an `s3://BUCKET/PREFIX` mirror: the same layout as a
//! folder mirror (`<platform>/<ring>/arch_<arch>/`, n-1 in `<ring>_back/`),
//! written object by object, because object stores have no rename.
//!
//! # What a client polling the store sees (the guarantee)
//!
//! - **Per object**: every GET returns a complete object that an import
//!   uploaded and the store verified (each upload carries the SHA-256 of its
//!   bytes, which the store checks before the object becomes visible; a
//!   multipart upload is invisible until it completes). Never a truncated
//!   or mixed object.
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
//! The staged unit (already verified and checked by its profile) is moved
//! into `<state-dir>/s3/publish/<unit>/files/`, and `journal.json` beside it
//! records the unit, the new files (name, size, SHA-256), the objects it
//! replaces (with their ETags) and whether n-1 is done. From the moment the
//! journal is on disk the publish is decided: a run killed at any step is
//! rolled forward by the next run ([`recover`]), which re-does only what
//! the store does not already hold (an object whose size and SHA-256
//! metadata match is not uploaded again). The journal and its files are
//! removed last. The state and the ledger are written by the import only
//! after every object of the unit was verified (HEAD: size and SHA-256).
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
//! This module owns the object order, the journal and recovery; it never
//! reads bundles or decides policy, and it never writes the state.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::setcheck::{self, Depth, Mismatch, Problem};
use super::state::ServedFile;
use crate::durable::{self, Clobber};
use crate::error::{Classify, ExitKind};
use crate::faults::crash_point;
use crate::profile::{Placement, Profile};
use crate::progress::Observer;
use crate::s3::{Client, Location, S3Error};

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

/// What publishing one unit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Published {
    /// Whether the replaced set was copied to n-1.
    pub rotated: bool,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    format: u32,
    location: String,
    unit: String,
    current: String,
    back: String,
    /// The new set, in upload order (index files last).
    new: Vec<JFile>,
    /// What the folder held when the publish was decided, in copy order.
    old: Vec<JFile>,
    /// Copy the old set to n-1 (false: it was found damaged, or empty).
    keep_old: bool,
    back_done: bool,
    tag: String,
    /// File name -> the object under [`STAGING_PREFIX`] holding it,
    /// uploaded while the bundle was read; copied into place (a local
    /// file is uploaded when its staged object is missing).
    #[serde(default)]
    staged_objects: std::collections::BTreeMap<String, String>,
}

/// What [`S3Mirror::recover`] finished.
#[derive(Debug, Clone, Default)]
pub struct S3Recovered {
    /// Store folders whose interrupted publish it completed.
    pub published: Vec<String>,
    /// Rollbacks whose swap is done in the store.
    pub swaps: Vec<SwapDone>,
}

/// A rollback whose swap in the store is complete.
#[derive(Debug, Clone)]
pub struct SwapDone {
    pub unit: String,
    /// (name, SHA-256) of what the unit's folder serves after the swap.
    pub now_served: Vec<(String, String)>,
}

impl SwapDone {
    /// Whether `files` (a state record) is what the folder now serves: if
    /// the state's n-1 record is, the swap is not recorded yet.
    pub fn serves(&self, files: &[ServedFile]) -> bool {
        !files.is_empty()
            && files.len() == self.now_served.len()
            && files.iter().all(|f| {
                self.now_served
                    .iter()
                    .any(|(n, h)| *n == f.name && f.sha256.as_str() == h)
            })
    }
}

/// Files uploaded into [`STAGING_PREFIX`] by a background thread while an
/// import reads its bundle ([`S3Mirror::start_uploads`]): each file is sent
/// once it is staged and its SHA-256 checked against the signed manifest,
/// so only signed bytes ever reach the store, and nothing endpoints read
/// changes until the publish.
#[derive(Debug)]
pub struct Uploads {
    token: String,
    /// Files streamed from the bundle ([`Uploads::stream`]) and completed.
    streamed: std::sync::Mutex<Vec<(String, String)>>,
    tx: Option<std::sync::mpsc::SyncSender<UploadJob>>,
    handle: Option<std::thread::JoinHandle<UploadResult>>,
    mirror: std::sync::Arc<S3Mirror>,
}

#[derive(Debug)]
struct UploadJob {
    unit: String,
    name: String,
    path: PathBuf,
    sha256: String,
}

impl Uploads {
    /// Queues the staged file `path` of unit `unit` for upload. A failed
    /// upload is reported by [`Uploads::finish`].
    pub fn send(&self, unit: &str, name: &str, path: &Path, sha256: &str) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(UploadJob {
                unit: unit.to_string(),
                name: name.to_string(),
                path: path.to_path_buf(),
                sha256: sha256.to_string(),
            });
        }
    }

    /// Waits for every queued upload: (unit key + `/` + file name, staged
    /// object) of each.
    pub fn finish(mut self) -> Result<StagedObjects, S3PublishError> {
        drop(self.tx.take());
        let done = match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r?,
            Some(Err(_)) => {
                return Err(S3PublishError::Local {
                    path: PathBuf::from("(upload thread)"),
                    source: io::Error::other("the upload thread panicked"),
                })
            }
            None => Vec::new(),
        };
        let streamed =
            std::mem::take(&mut *self.streamed.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(StagedObjects(done.into_iter().chain(streamed).collect()))
    }

    /// Whether file `name` of a unit, `size` bytes, goes to the store
    /// straight from the bundle instead of being staged here: what the
    /// profile's staged check does not read, when it is at least one part.
    pub fn streams(profile: &dyn Profile, name: &str, size: u64) -> bool {
        size >= STREAM_PART as u64
            && profile
                .check_reads()
                .is_some_and(|reads| !reads.contains(&name))
    }

    /// A writer that uploads what is written to it into the staging folder
    /// as file `name` of unit `unit`, in parts, as it comes: for a file
    /// that [`Uploads::streams`]. `sha256` is the signed hash the bundle
    /// reader checks the bytes against; complete the upload with
    /// [`StreamUpload::finish`] only once it has.
    pub fn stream(
        &self,
        unit: &str,
        name: &str,
        size: u64,
        sha256: &str,
    ) -> Result<StreamUpload, S3PublishError> {
        let key = format!(
            "{STAGING_PREFIX}/{}/{}/{name}",
            self.token,
            unit.replace('/', "_")
        );
        StreamUpload::start(
            std::sync::Arc::clone(&self.mirror),
            key,
            format!("{unit}/{name}"),
            size,
            sha256,
            content_type(name),
        )
    }

    fn note_streamed(&self, id: String, key: String) {
        self.streamed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, key));
    }

    /// Removes what was uploaded (the import failed); errors are left for
    /// the next run's recovery, which removes every staged object.
    pub fn discard(mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let prefix = format!("{STAGING_PREFIX}/{}/", self.token);
        if let Ok(list) = self.mirror.client.list(&prefix) {
            for (key, _) in list {
                let _ = self.mirror.client.delete(&key);
            }
        }
    }
}

/// Size of the parts of a streamed upload.
const STREAM_PART: usize = 8 << 20;
/// Parts of a streamed upload in flight at once (besides the one filling).
const STREAM_THREADS: usize = 2;

type PartResult = Result<Vec<(u16, String)>, S3Error>;
/// What the upload threads of [`Uploads`] did: (unit/name, staged key).
type UploadResult = Result<Vec<(String, String)>, S3PublishError>;

/// One file streamed from the bundle into the store ([`Uploads::stream`]):
/// full parts go to [`STREAM_THREADS`] threads while the bundle reader
/// goes on decompressing. Dropped without [`StreamUpload::finish`], the
/// upload is aborted.
#[derive(Debug)]
pub struct StreamUpload {
    mirror: std::sync::Arc<S3Mirror>,
    key: String,
    id: String,
    upload_id: String,
    size: u64,
    sha256: String,
    buf: Vec<u8>,
    parts: u16,
    written: u64,
    tx: Option<std::sync::mpsc::SyncSender<(u16, Vec<u8>)>>,
    workers: Vec<std::thread::JoinHandle<PartResult>>,
    done: bool,
}

impl StreamUpload {
    fn start(
        mirror: std::sync::Arc<S3Mirror>,
        key: String,
        id: String,
        size: u64,
        sha256: &str,
        content_type: &str,
    ) -> Result<StreamUpload, S3PublishError> {
        let upload_id = mirror.client.create_multipart(&key, sha256, content_type)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u16, Vec<u8>)>(1);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let workers = (0..STREAM_THREADS)
            .map(|_| {
                let (m, rx, key, upload_id) = (
                    std::sync::Arc::clone(&mirror),
                    std::sync::Arc::clone(&rx),
                    key.clone(),
                    upload_id.clone(),
                );
                std::thread::spawn(move || -> PartResult {
                    let mut etags = Vec::new();
                    loop {
                        let next = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => break,
                        };
                        let Ok((n, data)) = next else { break };
                        etags.push((n, m.client.upload_part(&key, &upload_id, n, &data)?));
                    }
                    Ok(etags)
                })
            })
            .collect();
        Ok(StreamUpload {
            mirror,
            key,
            id,
            upload_id,
            size,
            sha256: sha256.to_string(),
            buf: Vec::with_capacity(STREAM_PART),
            parts: 0,
            written: 0,
            tx: Some(tx),
            workers,
            done: false,
        })
    }

    /// The object's URL, for messages.
    pub fn url(&self) -> String {
        self.mirror.client.url_of(&self.key)
    }

    fn send_part(&mut self) -> io::Result<()> {
        self.parts = self
            .parts
            .checked_add(1)
            .ok_or_else(|| io::Error::other("more than 65535 parts"))?;
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(STREAM_PART));
        let sent = self.tx.as_ref().map(|tx| tx.send((self.parts, data)));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(io::Error::other(format!(
                "the upload to {} failed",
                self.url()
            ))),
        }
    }

    /// Waits for the parts in flight: their ETags in part order, or the
    /// first error.
    fn join(&mut self) -> Result<Vec<String>, S3Error> {
        drop(self.tx.take());
        let mut all = Vec::new();
        let mut first_err = None;
        for w in self.workers.drain(..) {
            match w.join() {
                Ok(Ok(e)) => all.extend(e),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(S3Error::Mismatch {
                        url: self.mirror.client.url_of(&self.key),
                        reason: "an upload thread panicked".into(),
                    });
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        all.sort();
        Ok(all.into_iter().map(|(_, e)| e).collect())
    }

    /// Completes the upload once the bundle reader has checked every byte
    /// against the signed SHA-256, and notes the object in `uploads`.
    pub fn finish(mut self, uploads: &Uploads) -> Result<(), S3PublishError> {
        if (!self.buf.is_empty() || self.parts == 0) && self.send_part().is_err() {
            // The part threads stopped: their error says why.
            return Err(match self.join() {
                Err(e) => e.into(),
                Ok(_) => S3Error::Mismatch {
                    url: self.url(),
                    reason: "the upload threads stopped".into(),
                }
                .into(),
            });
        }
        let etags = self.join()?;
        if self.written != self.size {
            return Err(S3Error::Mismatch {
                url: self.url(),
                reason: format!(
                    "{} bytes were streamed, {} were signed",
                    self.written, self.size
                ),
            }
            .into());
        }
        self.mirror.client.complete_multipart(
            &self.key,
            &self.upload_id,
            &etags,
            self.size,
            &self.sha256,
        )?;
        self.done = true;
        uploads.note_streamed(std::mem::take(&mut self.id), self.key.clone());
        Ok(())
    }

    /// Stops after a failure: the upload's own error, if it had one (else
    /// the caller's stands); the upload is aborted.
    pub fn fail(mut self) -> Option<S3PublishError> {
        self.join().err().map(S3PublishError::from)
    }
}

impl io::Write for StreamUpload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(STREAM_PART - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() == STREAM_PART {
            self.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for StreamUpload {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.join();
            self.mirror
                .client
                .abort_multipart(&self.key, &self.upload_id);
        }
    }
}

/// The staged objects of one import: `<unit>/<name>` -> object key.
#[derive(Debug, Clone, Default)]
pub struct StagedObjects(std::collections::BTreeMap<String, String>);

impl StagedObjects {
    /// The staged objects of unit `unit`, by file name.
    fn of(&self, unit: &str) -> std::collections::BTreeMap<String, String> {
        let p = format!("{unit}/");
        self.0
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&p).map(|n| (n.to_string(), v.clone())))
            .collect()
    }
}

/// The journal of a rollback in the store ([`S3Mirror::swap`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SwapJournal {
    format: u32,
    unit: String,
    location: String,
    current: String,
    back: String,
    tmp: String,
    current_files: Vec<JFile>,
    back_files: Vec<JFile>,
    /// 0: copy current to tmp; 1: back to current; 2: tmp to back; 3: done.
    phase: u32,
    /// n-1 is older than the served set: the index files go into the
    /// served folder first, so that it never announces more than its
    /// payload holds while it goes back.
    #[serde(default)]
    older: bool,
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

    /// Starts the background upload of staged files into
    /// `STAGING_PREFIX/<token>/` ([`Uploads`]).
    pub fn start_uploads(self: &std::sync::Arc<Self>) -> Uploads {
        let mut raw = [0u8; 8];
        let _ = getrandom::getrandom(&mut raw);
        let token = format!("{}-{}", std::process::id(), hex::encode(raw));
        // Staged files are on disk already: the queue holds paths only.
        // UPLOAD_THREADS files go up at once (as `rclone copy` sends
        // several), so the store's work overlaps ours.
        let (tx, rx) = std::sync::mpsc::sync_channel::<UploadJob>(UPLOAD_THREADS * 2);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let mut workers = Vec::new();
        for _ in 0..UPLOAD_THREADS {
            let mirror = std::sync::Arc::clone(self);
            let rx = std::sync::Arc::clone(&rx);
            let t = token.clone();
            workers.push(std::thread::spawn(move || {
                let mut done = Vec::new();
                loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => break,
                    };
                    let Ok(job) = job else { break };
                    let key = format!(
                        "{STAGING_PREFIX}/{t}/{}/{}",
                        job.unit.replace('/', "_"),
                        job.name
                    );
                    let info = mirror.client.put_file(
                        &key,
                        &job.path,
                        &job.sha256,
                        content_type(&job.name),
                        &crate::progress::NoProgress,
                    )?;
                    if info.sha256.as_deref() != Some(job.sha256.as_str()) {
                        return Err(S3Error::Mismatch {
                            url: mirror.client.url_of(&key),
                            reason: "the stored SHA-256 is not the staged file's".into(),
                        }
                        .into());
                    }
                    done.push((format!("{}/{}", job.unit, job.name), key));
                }
                Ok(done)
            }));
        }
        let handle = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut first_err = None;
            for w in workers {
                match w.join() {
                    Ok(Ok(d)) => all.extend(d),
                    Ok(Err(e)) => {
                        first_err.get_or_insert(e);
                    }
                    Err(_) => {
                        first_err.get_or_insert(S3PublishError::Local {
                            path: PathBuf::from("(upload thread)"),
                            source: io::Error::other("an upload thread panicked"),
                        });
                    }
                }
            }
            match first_err {
                Some(e) => Err(e),
                None => Ok(all),
            }
        });
        Uploads {
            token,
            streamed: std::sync::Mutex::new(Vec::new()),
            tx: Some(tx),
            handle: Some(handle),
            mirror: std::sync::Arc::clone(self),
        }
    }

    /// Removes every object under [`STAGING_PREFIX`]: staged files of
    /// imports that failed or were killed (call it once no journal is
    /// left, under the lock).
    fn remove_orphan_staging(&self) -> Result<(), S3PublishError> {
        for (key, _) in self.client.list(&format!("{STAGING_PREFIX}/"))? {
            self.client.delete(&key)?;
        }
        Ok(())
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

    /// Publishes the staged unit folder `staged` (a shadow staging folder,
    /// every file written and synced) to the store folder `current`
    /// (n-1 `back`), as the module docs say. `keep_old`: copy the served
    /// set to n-1 first. `files`: the unit's files as hashed when staged.
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &self,
        profile: &dyn Profile,
        unit_key: &str,
        staged: &Path,
        place: &Placement,
        files: &[ServedFile],
        keep_old: bool,
        tag: &str,
        staged_objects: &StagedObjects,
        observer: &dyn Observer,
    ) -> Result<S3Published, S3PublishError> {
        let (current, back) = Self::rel_of_placement(place);
        let index = profile.index_files();
        let new = ordered(
            files
                .iter()
                .map(|f| JFile {
                    name: f.name.clone(),
                    size: f.size,
                    sha256: f.sha256.as_str().to_string(),
                    etag: None,
                })
                .collect(),
            index,
        );
        let dir = self.publish_root().join(unit_key.replace('/', "_"));
        let local = |path: &Path, source| S3PublishError::Local {
            path: path.to_path_buf(),
            source,
        };
        if dir.join("journal.json").exists() {
            // An earlier publish of this unit is unfinished (recovery runs
            // before every import, so only if it failed): finish it first.
            self.run_journal(&dir, observer)?;
        } else if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| local(&dir, e))?;
        }
        let old = ordered(self.folder_objects(&current)?, index);
        durable::ensure_private_dir(&self.publish_root())
            .map_err(|e| local(&self.publish_root(), e))?;
        durable::create_dir(&dir, durable::PRIVATE_DIR_MODE).map_err(|e| local(&dir, e))?;
        let files_dir = dir.join("files");
        fs::rename(staged, &files_dir).map_err(|e| local(staged, e))?;
        durable::sync_dir(&dir).map_err(|e| local(&dir, e))?;
        let journal = Journal {
            format: JOURNAL_FORMAT,
            location: self.location().to_string(),
            unit: unit_key.to_string(),
            current,
            back,
            new,
            keep_old: keep_old && !old.is_empty(),
            old,
            back_done: false,
            tag: tag.to_string(),
            staged_objects: staged_objects.of(unit_key),
        };
        save_journal(&dir, &journal)?;
        crash_point("s3-journal-written");
        let rotated = journal.keep_old;
        self.run_journal(&dir, observer)?;
        Ok(S3Published { rotated })
    }

    /// Finishes every publish and rollback an interrupted run left: the
    /// store folders whose publish it completed, and the rollbacks whose
    /// swap is done in the store (the caller records them in the state,
    /// [`SwapDone::recorded`], then calls [`S3Mirror::forget_swap`]).
    pub fn recover(&self, observer: &dyn Observer) -> Result<S3Recovered, S3PublishError> {
        let swaps = self.recover_swaps()?;
        let root = self.publish_root();
        let entries = match fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.remove_orphan_staging()?;
                return Ok(S3Recovered {
                    published: Vec::new(),
                    swaps,
                });
            }
            Err(source) => return Err(S3PublishError::Local { path: root, source }),
        };
        let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        let mut done = Vec::new();
        for dir in dirs {
            if !dir.join("journal.json").exists() {
                // Killed between moving the files in and writing the
                // journal: nothing was written to the store.
                fs::remove_dir_all(&dir).map_err(|source| S3PublishError::Local {
                    path: dir.clone(),
                    source,
                })?;
                continue;
            }
            done.push(self.run_journal(&dir, observer)?);
        }
        self.remove_orphan_staging()?;
        Ok(S3Recovered {
            published: done,
            swaps,
        })
    }

    /// Steps 1-3 of a journaled publish, each skipped when already done.
    fn run_journal(&self, dir: &Path, observer: &dyn Observer) -> Result<String, S3PublishError> {
        let mut j = load_journal(dir)?;
        if j.location != self.location().to_string() {
            return Err(S3PublishError::Journal {
                path: dir.join("journal.json"),
                dir: dir.to_path_buf(),
                reason: format!("it belongs to {}, not {}", j.location, self.location()),
            });
        }
        if !j.back_done {
            if j.keep_old {
                self.copy_to_back(&j)?;
            }
            j.back_done = true;
            save_journal(dir, &j)?;
            crash_point("s3-back-done");
        }
        let files_dir = dir.join("files");
        for f in &j.new {
            let key = format!("{}/{}", j.current, f.name);
            let have = self.client.head(&key)?;
            if have.is_some_and(|h| h.size == f.size && h.sha256.as_deref() == Some(&f.sha256)) {
                continue;
            }
            // The staged object when it is there and whole (a server-side
            // copy), else the local file.
            let staged = match j.staged_objects.get(&f.name) {
                Some(sk) => self
                    .client
                    .head(sk)?
                    .filter(|h| h.size == f.size && h.sha256.as_deref() == Some(&f.sha256))
                    .map(|_| sk.clone()),
                None => None,
            };
            let local = files_dir.join(&f.name);
            if staged.is_none() && !local.exists() {
                // Streamed into the store and lost from its staging folder
                // since (removed by hand): this publish cannot be finished.
                // Every folder still holds whole objects (index files go
                // last); the state does not record it, so importing the
                // bundle again publishes it.
                fs::remove_dir_all(dir).map_err(|source| S3PublishError::Local {
                    path: dir.to_path_buf(),
                    source,
                })?;
                return Ok(j.current);
            }
            let info = match staged {
                Some(sk) => self.client.copy(&sk, &key, None)?,
                None => self.client.put_file(
                    &key,
                    &files_dir.join(&f.name),
                    &f.sha256,
                    content_type(&f.name),
                    observer,
                )?,
            };
            verify(&self.client, &key, &info, f)?;
            crash_point("s3-object-uploaded");
        }
        // Objects of the old set the new one does not have.
        remove_extra(&self.client, &j.current, &j.new)?;
        crash_point("s3-current-done");
        for sk in j.staged_objects.values() {
            self.client.delete(sk)?;
        }
        fs::remove_dir_all(dir).map_err(|source| S3PublishError::Local {
            path: dir.to_path_buf(),
            source,
        })?;
        let _ = durable::sync_dir(&self.publish_root());
        Ok(j.current)
    }

    /// Copies the old set to n-1, each object only if it is still the one
    /// recorded, then removes what n-1 held beyond it.
    fn copy_to_back(&self, j: &Journal) -> Result<(), S3PublishError> {
        for f in &j.old {
            let from = format!("{}/{}", j.current, f.name);
            let to = format!("{}/{}", j.back, f.name);
            match self.client.copy(&from, &to, f.etag.as_deref()) {
                Ok(info) => verify(&self.client, &to, &info, f)?,
                Err(S3Error::Precondition { .. }) => {
                    // The source changed. If n-1 already holds the recorded
                    // object (a run killed after this copy), go on.
                    let have = self.client.head(&to)?;
                    if !have
                        .is_some_and(|h| h.size == f.size && h.sha256.as_deref() == Some(&f.sha256))
                    {
                        return Err(S3PublishError::Changed {
                            url: self.client.url_of(&from),
                            location: self.location().to_string(),
                        });
                    }
                }
                Err(e) => return Err(e.into()),
            }
            crash_point("s3-back-copied");
        }
        remove_extra(&self.client, &j.back, &j.old)?;
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

    fn swap_root(&self) -> PathBuf {
        self.state_dir.join("s3").join("swap")
    }

    /// Whether store folder `rel` holds any object.
    pub fn folder_exists(&self, rel: &str) -> Result<bool, S3PublishError> {
        Ok(!self.client.list(&format!("{rel}/"))?.is_empty())
    }

    /// `rollback` in the store: swaps the sets of store folders `current`
    /// and `back` through a hidden folder (`.gapferry-swap/<unit>/`), with
    /// a journal in the state directory so that a run killed at any step
    /// is finished by the next one. Each folder is written index files
    /// last, as a publish writes it.
    pub fn swap(
        &self,
        unit_key: &str,
        current: &str,
        back: &str,
        profile: &dyn Profile,
        older: bool,
    ) -> Result<(), S3PublishError> {
        let index = profile.index_files();
        let name = unit_key.replace('/', "_");
        let journal = SwapJournal {
            format: JOURNAL_FORMAT,
            unit: unit_key.to_string(),
            location: self.location().to_string(),
            current: current.to_string(),
            back: back.to_string(),
            tmp: format!(".gapferry-swap/{name}"),
            current_files: ordered(self.folder_objects(current)?, index),
            back_files: ordered(self.folder_objects(back)?, index),
            phase: 0,
            older,
        };
        let root = self.swap_root();
        durable::ensure_private_dir(&root).map_err(|source| S3PublishError::Local {
            path: root.clone(),
            source,
        })?;
        let path = root.join(format!("{name}.json"));
        save_json(&path, &journal)?;
        self.run_swap(&path)
    }

    fn recover_swaps(&self) -> Result<Vec<SwapDone>, S3PublishError> {
        let root = self.swap_root();
        let Ok(entries) = fs::read_dir(&root) else {
            return Ok(Vec::new());
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        let mut done = Vec::new();
        for p in paths {
            self.run_swap(&p)?;
            let j: SwapJournal = load_json(&p)?;
            done.push(SwapDone {
                unit: j.unit,
                now_served: j
                    .back_files
                    .iter()
                    .map(|f| (f.name.clone(), f.sha256.clone()))
                    .collect(),
            });
        }
        Ok(done)
    }

    /// Removes the journal of a rollback whose swap is done and recorded.
    pub fn forget_swap(&self, unit_key: &str) -> Result<(), S3PublishError> {
        let path = self
            .swap_root()
            .join(format!("{}.json", unit_key.replace('/', "_")));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(S3PublishError::Local { path, source }),
        }
    }

    fn run_swap(&self, path: &Path) -> Result<(), S3PublishError> {
        let mut j: SwapJournal = load_json(path)?;
        if j.phase >= 3 {
            return Ok(());
        }
        if j.location != self.location().to_string() {
            return Err(S3PublishError::Journal {
                path: path.to_path_buf(),
                dir: path.to_path_buf(),
                reason: format!("it belongs to {}, not {}", j.location, self.location()),
            });
        }
        let copy_all = |files: &[JFile], from: &str, to: &str, cond: bool, index_first: bool| {
            let order: Vec<&JFile> = if index_first {
                files.iter().rev().collect()
            } else {
                files.iter().collect()
            };
            for f in order {
                let src = format!("{from}/{}", f.name);
                let dst = format!("{to}/{}", f.name);
                let etag = if cond { f.etag.as_deref() } else { None };
                match self.client.copy(&src, &dst, etag) {
                    Ok(info) => verify(&self.client, &dst, &info, f)?,
                    Err(S3Error::Precondition { .. }) => {
                        return Err(S3PublishError::Changed {
                            url: self.client.url_of(&src),
                            location: self.location().to_string(),
                        })
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            remove_extra(&self.client, to, files)
        };
        while j.phase < 3 {
            match j.phase {
                0 => copy_all(&j.current_files, &j.current, &j.tmp, true, false)?,
                1 => copy_all(&j.back_files, &j.back, &j.current, false, j.older)?,
                _ => copy_all(&j.current_files, &j.tmp, &j.back, false, false)?,
            }
            j.phase += 1;
            save_json(path, &j)?;
            crash_point(S3_SWAP_STEP);
        }
        for f in &j.current_files {
            self.client.delete(&format!("{}/{}", j.tmp, f.name))?;
        }
        // The journal stays (phase 3) until the caller has recorded the
        // swap in the state: see `forget_swap`.
        Ok(())
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

fn save_journal(dir: &Path, j: &Journal) -> Result<(), S3PublishError> {
    save_json(&dir.join("journal.json"), j)
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

fn load_journal(dir: &Path) -> Result<Journal, S3PublishError> {
    let j: Journal = load_json(&dir.join("journal.json"))?;
    if j.format != JOURNAL_FORMAT {
        return Err(S3PublishError::Journal {
            path: dir.join("journal.json"),
            dir: dir.to_path_buf(),
            reason: format!("format {} is not {JOURNAL_FORMAT}", j.format),
        });
    }
    Ok(j)
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
