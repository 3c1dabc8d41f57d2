//! Bundle writer: hashes the payload in parallel, builds and signs the
//! manifest, then streams tar into multithreaded zstd into a temporary file
//! beside the output, syncing as it goes, and renames it into place.
//!
//! A watcher never sees a partial bundle under the final name, and nothing is
//! left behind on failure (the temporary file is removed on drop).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::hashing::{to_hex, CHUNK};
use super::{BundleError, MANIFEST_PATH, PAYLOAD_DIR, SIGNATURES_DIR};
use crate::keys::SecretKey;
use crate::manifest::{FileEntry, Item, Manifest};
use crate::progress::Observer;
use crate::safepath::SafePath;
use crate::sign::Signature;

/// One payload file to carry.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path inside `payload/`.
    pub path: SafePath,
    /// Where to read it.
    pub source: PathBuf,
}

/// Everything a bundle is made of except the payload bytes.
#[derive(Debug)]
pub struct BundleSpec {
    pub bundle_id: String,
    pub channel: String,
    pub sequence: u64,
    pub created: SystemTime,
    pub expires: SystemTime,
    pub producer: String,
    pub profile: String,
    pub items: Vec<Item>,
    pub files: Vec<SourceFile>,
}

/// How to write.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// zstd level; low levels suit already-compressed zips.
    pub level: i32,
    /// zstd worker threads (0: single-threaded).
    pub threads: u32,
    /// Replace an existing output file.
    pub overwrite: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            level: 1,
            threads: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            overwrite: false,
        }
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub manifest: Manifest,
    pub manifest_sha256: String,
    /// Size of the bundle file.
    pub bundle_size: u64,
}

/// Identity of a source file, to notice it changing while we read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    ino: u64,
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        #[cfg(unix)]
        ino: meta.ino(),
    }
}

fn input_err(path: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::Input {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Hashes one file, returning its size, hash and stamp.
fn hash_file(path: &Path, observer: &dyn Observer) -> Result<(u64, String, Stamp), BundleError> {
    let mut f = File::open(path).map_err(BundleError::io(path))?;
    let meta = f.metadata().map_err(BundleError::io(path))?;
    if !meta.is_file() {
        return Err(input_err(path, "is not a regular file"));
    }
    let before = stamp(&meta);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n_total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BundleError::io(path)(e)),
        };
        h.update(&buf[..n]);
        n_total += n as u64;
        observer.advance(n as u64);
    }
    if n_total != before.len {
        return Err(input_err(
            path,
            "changed size while being read; is a download still running?",
        ));
    }
    Ok((n_total, to_hex(&h.finalize().into()), before))
}

/// A hashed file: size, SHA-256 hex, identity.
type Hashed = (u64, String, Stamp);

/// Hashes all files on up to `threads` threads, in input order.
fn hash_all(
    files: &[SourceFile],
    threads: usize,
    observer: &dyn Observer,
) -> Result<Vec<(u64, String, Stamp)>, BundleError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<Hashed, BundleError>>> =
        (0..files.len()).map(|_| None).collect();
    let slots: Vec<std::sync::Mutex<Option<_>>> = (0..files.len())
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, files.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= files.len() {
                    break;
                }
                let r = hash_file(&files[i].source, observer);
                *slots[i].lock().expect("no panics while locked") = Some(r);
            });
        }
    });
    for (r, s) in results.iter_mut().zip(slots) {
        *r = s.into_inner().expect("no panics while locked");
    }
    results
        .into_iter()
        .map(|r| r.expect("every file hashed"))
        .collect()
}

/// A file writer that asks a background thread to `fdatasync` every
/// `SYNC_EVERY` bytes, so the final sync has little left to flush.
struct SyncingWriter {
    file: Arc<File>,
    since_sync: u64,
    tx: Option<mpsc::SyncSender<()>>,
    syncer: Option<std::thread::JoinHandle<io::Result<()>>>,
}

const SYNC_EVERY: u64 = 64 << 20;

impl SyncingWriter {
    fn new(file: File) -> Self {
        let file = Arc::new(file);
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let f2 = Arc::clone(&file);
        let syncer = std::thread::spawn(move || {
            for () in rx {
                rustix::fs::fdatasync(&*f2)?;
            }
            Ok(())
        });
        SyncingWriter {
            file,
            since_sync: 0,
            tx: Some(tx),
            syncer: Some(syncer),
        }
    }

    /// Stops the background syncer and syncs everything.
    fn finish(mut self) -> io::Result<()> {
        drop(self.tx.take());
        if let Some(h) = self.syncer.take() {
            h.join().expect("syncer thread panicked")?;
        }
        self.file.sync_all()
    }
}

impl Write for SyncingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&*self.file).write(buf)?;
        self.since_sync += n as u64;
        if self.since_sync >= SYNC_EVERY {
            self.since_sync = 0;
            if let Some(tx) = &self.tx {
                // A sync already queued covers this data too.
                let _ = tx.try_send(());
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn header(path: &str, size: u64, mtime: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Builds the manifest for `spec` (hashing every file) without writing.
fn build_manifest(
    spec: &BundleSpec,
    observer: &dyn Observer,
) -> Result<(Manifest, Vec<Stamp>), BundleError> {
    let total: u64 = spec
        .files
        .iter()
        .map(|f| std::fs::metadata(&f.source).map(|m| m.len()).unwrap_or(0))
        .sum();
    observer.start("hashing", total);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let hashed = hash_all(&spec.files, threads, observer)?;
    observer.finish();
    let files: Vec<FileEntry> = spec
        .files
        .iter()
        .zip(&hashed)
        .map(|(f, (size, sha, _))| FileEntry {
            path: f.path.clone(),
            size: *size,
            sha256: sha.clone(),
        })
        .collect();
    let manifest = Manifest {
        format: crate::manifest::FORMAT.to_string(),
        bundle_id: spec.bundle_id.clone(),
        channel: spec.channel.clone(),
        sequence: spec.sequence,
        created: crate::manifest::format_time(spec.created),
        expires: crate::manifest::format_time(spec.expires),
        producer: spec.producer.clone(),
        profile: spec.profile.clone(),
        items: spec.items.clone(),
        files,
    };
    manifest
        .validate()
        .map_err(|e| input_err(Path::new(&spec.bundle_id), e.0))?;
    Ok((manifest, hashed.into_iter().map(|(_, _, s)| s).collect()))
}

/// Writes a signed bundle to `out` atomically.
pub fn write_bundle(
    spec: &BundleSpec,
    keys: &[SecretKey],
    out: &Path,
    opts: &WriteOptions,
    observer: &dyn Observer,
) -> Result<Written, BundleError> {
    assert!(!keys.is_empty(), "at least one signing key");
    if !opts.overwrite && out.exists() {
        return Err(input_err(
            out,
            "already exists; choose another --out or add --force to replace it",
        ));
    }
    let (manifest, stamps) = build_manifest(spec, observer)?;
    let manifest_bytes = manifest.to_bytes();
    let comment = manifest.trusted_comment();
    let sigs: Vec<Signature> = keys
        .iter()
        .map(|k| Signature::sign(k, &manifest_bytes, &comment))
        .collect();

    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    // Bundles are not secret: like any ordinary output file they get 0644
    // minus the umask (a temp file would otherwise stay 0600, unreadable by
    // an import job running as another user on a transfer share).
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(&dir)
        .map_err(BundleError::io(&dir))?;
    let tmp_path = tmp.path().to_path_buf();
    let io_tmp = BundleError::io(&tmp_path);
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(BundleError::io(&tmp_path))?;
    let writer = SyncingWriter::new(file);
    let mut enc = zstd::stream::write::Encoder::new(writer, opts.level)
        .map_err(BundleError::io(&tmp_path))?;
    if opts.threads > 1 {
        enc.multithread(opts.threads)
            .map_err(BundleError::io(&tmp_path))?;
    }
    enc.include_checksum(true)
        .map_err(BundleError::io(&tmp_path))?;
    let mtime = spec
        .created
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut tar = tar::Builder::new(BufWriter::with_capacity(CHUNK, enc));
    let write_entry = |tar: &mut tar::Builder<_>, path: &str, data: &mut dyn Read, size: u64| {
        let h = header(path, size, mtime)?;
        tar.append(&h, data)
    };
    let result: Result<(), BundleError> = (|| {
        write_entry(
            &mut tar,
            MANIFEST_PATH,
            &mut &manifest_bytes[..],
            manifest_bytes.len() as u64,
        )
        .map_err(BundleError::io(&tmp_path))?;
        for s in &sigs {
            let text = s.to_text(&format!(
                "gapferry signature of {MANIFEST_PATH} by key {}",
                s.key_id
            ));
            write_entry(
                &mut tar,
                &format!("{SIGNATURES_DIR}{}.minisig", s.key_id),
                &mut text.as_bytes(),
                text.len() as u64,
            )
            .map_err(BundleError::io(&tmp_path))?;
        }
        observer.start("writing", manifest.total_size());
        for ((src, entry), st) in spec.files.iter().zip(&manifest.files).zip(&stamps) {
            let f = File::open(&src.source).map_err(BundleError::io(&src.source))?;
            let mut reader = Observed {
                inner: f.take(entry.size),
                observer,
            };
            write_entry(
                &mut tar,
                &format!("{PAYLOAD_DIR}{}", entry.path),
                &mut reader,
                entry.size,
            )
            .map_err(BundleError::io(&src.source))?;
            let after = std::fs::metadata(&src.source).map_err(BundleError::io(&src.source))?;
            if stamp(&after) != *st {
                return Err(input_err(
                    &src.source,
                    "changed while the bundle was being written; is a download still running? Try again when it is done",
                ));
            }
        }
        observer.finish();
        Ok(())
    })();
    result?;
    let enc = tar
        .into_inner()
        .map_err(BundleError::io(&tmp_path))?
        .into_inner()
        .map_err(|e| BundleError::io(&tmp_path)(e.into_error()))?;
    let writer = enc.finish().map_err(BundleError::io(&tmp_path))?;
    writer.finish().map_err(io_tmp)?;
    let bundle_size = tmp
        .as_file()
        .metadata()
        .map_err(BundleError::io(&tmp_path))?
        .len();
    if opts.overwrite {
        tmp.persist(out)
            .map_err(|e| BundleError::io(out)(e.error))?;
    } else {
        tmp.persist_noclobber(out)
            .map_err(|e| BundleError::io(out)(e.error))?;
    }
    sync_dir(&dir).map_err(BundleError::io(&dir))?;
    Ok(Written {
        manifest_sha256: to_hex(&Sha256::digest(&manifest_bytes).into()),
        manifest,
        bundle_size,
    })
}

/// fsyncs a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

struct Observed<'a, R> {
    inner: R,
    observer: &'a dyn Observer,
}

impl<R: Read> Read for Observed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observer.advance(n as u64);
        Ok(n)
    }
}
