//! Staging in the store: files uploaded into `.gapferry-staging/` while
//! the bundle is read, either from their staged copy here ([`Uploads`]) or
//! straight from the decompressor ([`StreamUpload`]), and what is left of
//! a failed import removed.

use std::io;
use std::path::{Path, PathBuf};

use super::{content_type, S3Mirror, S3PublishError, STAGING_PREFIX, UPLOAD_THREADS};
use crate::profile::Profile;
use crate::s3::S3Error;

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
}

/// Size of the parts of a streamed upload.
const STREAM_PART: usize = 8 << 20;
/// Parts of a streamed upload in flight at once (besides the one filling).
const STREAM_THREADS: usize = 2;

type PartResult = Result<Vec<(u16, String)>, S3Error>;
/// What the upload threads of [`Uploads`] did: (unit/name, staged key).
type UploadResult = Result<Vec<(String, String)>, S3PublishError>;

/// One file streamed from the bundle into the store ([`Uploads::stream`]):
/// full parts go to `STREAM_THREADS` threads while the bundle reader
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
    pub(super) fn of(&self, unit: &str) -> std::collections::BTreeMap<String, String> {
        let p = format!("{unit}/");
        self.0
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&p).map(|n| (n.to_string(), v.clone())))
            .collect()
    }
}

impl S3Mirror {
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
                    // put_file checks the object by HEAD (size, SHA-256).
                    mirror.client.put_file(
                        &key,
                        &job.path,
                        &job.sha256,
                        content_type(&job.name),
                        &crate::progress::NoProgress,
                    )?;
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
    pub(super) fn remove_orphan_staging(&self) -> Result<(), S3PublishError> {
        for (key, _) in self.client.list(&format!("{STAGING_PREFIX}/"))? {
            self.client.delete(&key)?;
        }
        Ok(())
    }
}
