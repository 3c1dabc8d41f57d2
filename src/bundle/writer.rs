//! Bundle writer: hashes the payload in parallel, builds and signs the
//! manifest, then streams tar into multithreaded zstd into a temporary file
//! beside the output, syncing as it goes, and renames it into place.
//!
//! A watcher never sees a partial bundle under the final name, and nothing is
//! left behind on failure (the temporary file is removed on drop).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::hashing::{to_hex, CHUNK};
use super::{BundleError, MANIFEST_PATH, PAYLOAD_DIR, SIGNATURES_DIR, TRUST_DIR};
use crate::durable::{self, Clobber, SyncingWriter};
use crate::keys::SecretKey;
use crate::manifest::{FileEntry, Item, Manifest};
use crate::progress::Observer;
use crate::safepath::SafePath;
use crate::sign::Signature;
use crate::timestamp::Timestamp;

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
    /// Trust policy versions to carry in the head (ascending; none: the
    /// bundle is byte for byte what it was before policies existed).
    pub trust: Vec<crate::trustpolicy::SignedPolicy>,
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
    pub manifest_sha256: crate::sha256hex::Sha256Hex,
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

pub(crate) fn header(path: &str, size: u64, mtime: u64) -> io::Result<tar::Header> {
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

/// Zero bytes that pad a tar entry of `size` bytes to a 512-byte block.
pub(crate) fn tar_padding(size: u64) -> &'static [u8] {
    const ZEROS: [u8; 512] = [0; 512];
    &ZEROS[..((512 - size % 512) % 512) as usize]
}

/// Largest zstd window the writer ever uses (log2): one below what readers
/// accept ([`super::MAX_WINDOW_LOG`]), whatever level a caller asks for.
/// Levels up to 19 stay within 2^23 on their own; 20 to 22 would not.
const WRITER_MAX_WINDOW_LOG: u32 = 23;

/// Output buffer between zstd and the file: few, large writes.
const ZSTD_OUT_BUFFER: usize = 1 << 20;

/// A zstd encoder writing one frame into `out`. `threads` > 1 uses zstd's
/// worker threads, whose job buffers are what bounds export's memory: jobs
/// are `4 x window` (2 MiB at level 1), so a few are in flight per worker.
fn encoder<W: Write>(
    out: W,
    level: i32,
    threads: u32,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    use zstd::stream::raw::CParameter;
    let raw = zstd::stream::raw::Encoder::new(level)?;
    let mut enc = zstd::stream::write::Encoder::with_writer(
        zstd::stream::zio::Writer::new_with_capacity(out, raw, ZSTD_OUT_BUFFER),
    );
    if level > 19 {
        enc.set_parameter(CParameter::WindowLog(WRITER_MAX_WINDOW_LOG))?;
    }
    if threads > 1 {
        enc.multithread(threads)?;
    }
    enc.include_checksum(true)?;
    Ok(enc)
}

/// Stored ("raw") zstd frames: the bytes of an entry that does not compress
/// are carried as raw blocks, copied from the source file by the kernel.
/// Stock `zstd -d` and every decoder read them; only libzstd's effort to
/// compress incompressible data (and three user-space copies) is saved.
mod raw_frame {
    use super::*;

    /// Frame magic number, little-endian.
    const MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
    /// Raw blocks of 128 KiB, the largest a block may be.
    pub(super) const BLOCK: u64 = 128 << 10;
    /// Window log of a stored frame: one block (decoders allocate this much).
    const WINDOW_LOG: u8 = 17;

    /// Frame header: Frame_Header_Descriptor with an 8-byte Frame_Content_Size,
    /// no single segment, no checksum, no dictionary; then the
    /// Window_Descriptor; then the content size.
    pub(super) fn frame_header(content_size: u64) -> [u8; 14] {
        let mut h = [0u8; 14];
        h[..4].copy_from_slice(&MAGIC);
        h[4] = 0b1100_0000;
        h[5] = (WINDOW_LOG - 10) << 3;
        h[6..].copy_from_slice(&content_size.to_le_bytes());
        h
    }

    /// Block header of a raw block of `size` bytes.
    pub(super) fn block_header(size: u64, last: bool) -> [u8; 3] {
        debug_assert!(size <= BLOCK);
        let v = (size as u32) << 3 | u32::from(last);
        [v as u8, (v >> 8) as u8, (v >> 16) as u8]
    }

    /// Writes one stored frame holding `head`, then `size` bytes of `src`
    /// from its current position, then `tail`. Returns the bytes of `src`
    /// copied, fewer than `size` only if `src` ended early (the frame is then
    /// malformed and the caller must fail).
    pub(super) fn write(
        out: &mut dyn Sink,
        head: &[u8],
        src: &File,
        size: u64,
        tail: &[u8],
        observer: &dyn Observer,
    ) -> io::Result<u64> {
        let (head_len, tail_len) = (head.len() as u64, tail.len() as u64);
        debug_assert!(head_len <= BLOCK && tail_len <= BLOCK);
        out.write_all(&frame_header(head_len + size + tail_len))?;
        out.write_all(&block_header(head_len, size == 0 && tail_len == 0))?;
        out.write_all(head)?;
        let mut left = size;
        while left > 0 {
            let n = left.min(BLOCK);
            let final_data = n == left;
            // The tail shares the last data block when it fits.
            let with_tail = final_data && n + tail_len <= BLOCK;
            let block = if with_tail { n + tail_len } else { n };
            out.write_all(&block_header(block, with_tail))?;
            let got = out.copy_from(src, n)?;
            observer.advance(got);
            if got < n {
                return Ok(size - left + got);
            }
            left -= n;
            if with_tail {
                out.write_all(tail)?;
            }
            if final_data && !with_tail {
                out.write_all(&block_header(tail_len, true))?;
                out.write_all(tail)?;
            }
        }
        if size == 0 && tail_len > 0 {
            out.write_all(&block_header(tail_len, true))?;
            out.write_all(tail)?;
        }
        Ok(size)
    }

    /// A stored frame of bytes in memory (at most one block).
    pub(super) fn write_bytes(out: &mut dyn Sink, bytes: &[u8]) -> io::Result<()> {
        let len = bytes.len() as u64;
        assert!(len <= BLOCK);
        out.write_all(&frame_header(len))?;
        out.write_all(&block_header(len, true))?;
        out.write_all(bytes)
    }
}

/// Files smaller than this are always compressed, single-threaded.
const SMALL_FILE: u64 = 4 << 20;
/// How many samples of a large file are compressed to judge it.
const SAMPLES: u64 = 4;
const SAMPLE_SIZE: usize = 1 << 20;
/// A file is stored when compressing its samples saves less than this
/// fraction (percent): already-compressed zips save about nothing.
const MIN_SAVING_PERCENT: usize = 2;
/// Sampling never uses a slower level than this (level 19 on 4 MiB would
/// take seconds per file; a file level 3 cannot shrink is stored).
const MAX_SAMPLE_LEVEL: i32 = 3;

/// Whether a large file is worth compressing at `level`: compresses a few
/// samples spread over it and compares sizes.
fn worth_compressing(path: &Path, len: u64, level: i32) -> Result<bool, BundleError> {
    use std::io::{Seek, SeekFrom};
    if len < SMALL_FILE {
        return Ok(true);
    }
    let mut f = File::open(path).map_err(BundleError::io(path))?;
    let mut buf = vec![0u8; SAMPLE_SIZE];
    let (mut raw, mut packed) = (0usize, 0usize);
    let span = len - SAMPLE_SIZE as u64;
    for i in 0..SAMPLES {
        f.seek(SeekFrom::Start(span * i / (SAMPLES - 1)))
            .map_err(BundleError::io(path))?;
        f.read_exact(&mut buf).map_err(BundleError::io(path))?;
        let c = zstd::bulk::compress(&buf, level.min(MAX_SAMPLE_LEVEL))
            .map_err(BundleError::io(path))?;
        raw += buf.len();
        packed += c.len();
    }
    Ok(packed * 100 < raw * (100 - MIN_SAVING_PERCENT))
}

/// Builds the manifest for `spec` (hashing every file) without writing.
/// Also decides, per file, whether it is worth compressing at `level`.
fn build_manifest(
    spec: &BundleSpec,
    level: i32,
    observer: &dyn Observer,
) -> Result<(Manifest, Vec<Stamp>, Vec<bool>), BundleError> {
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
    let compress = spec
        .files
        .iter()
        .zip(&hashed)
        .map(|(f, (size, _, _))| worth_compressing(&f.source, *size, level))
        .collect::<Result<Vec<bool>, _>>()?;
    let files: Vec<FileEntry> = spec
        .files
        .iter()
        .zip(&hashed)
        .map(|(f, (size, sha, _))| FileEntry {
            path: f.path.clone(),
            size: *size,
            sha256: sha.parse().expect("a SHA-256 we computed"),
        })
        .collect();
    let manifest = Manifest {
        format: crate::manifest::FORMAT.to_string(),
        bundle_id: spec
            .bundle_id
            .parse()
            .map_err(|e: String| input_err(Path::new(&spec.bundle_id), e))?,
        channel: spec.channel.clone(),
        sequence: spec.sequence,
        created: Timestamp::from_time(spec.created),
        expires: Timestamp::from_time(spec.expires),
        producer: spec.producer.clone(),
        profile: spec.profile.clone(),
        items: spec.items.clone(),
        files,
    };
    manifest
        .validate()
        .map_err(|e| input_err(Path::new(&spec.bundle_id), e.0))?;
    Ok((
        manifest,
        hashed.into_iter().map(|(_, _, s)| s).collect(),
        compress,
    ))
}

/// Where the bundle's bytes go: one file ([`SyncingWriter`]) or a series of
/// volumes (`volumes::write_split`).
pub(crate) trait Sink: Write {
    /// Appends up to `n` bytes of `src` from its current position; returns
    /// how many were copied, fewer only at the end of `src`.
    fn copy_from(&mut self, src: &File, n: u64) -> io::Result<u64>;
}

impl Sink for SyncingWriter {
    fn copy_from(&mut self, src: &File, n: u64) -> io::Result<u64> {
        SyncingWriter::copy_from(self, src, n)
    }
}

/// Writes a signed bundle to `out` atomically.
///
/// The archive is a series of zstd frames, which decoders read as one
/// stream: the head (manifest and signatures) compressed; each payload entry
/// (tar header, data, padding) in a frame of its own, compressed when its
/// samples compress, else stored as raw blocks copied by the kernel; then the
/// end-of-archive marker.
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
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let prepared = prepare(spec, keys, opts, observer)?;
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
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(BundleError::io(&tmp_path))?;
    let mut sink = SyncingWriter::new(file);
    let written = write_prepared(spec, prepared, opts, &mut sink, &tmp_path, observer)?;
    sink.finish().map_err(BundleError::io(&tmp_path))?;
    let bundle_size = tmp
        .as_file()
        .metadata()
        .map_err(BundleError::io(&tmp_path))?
        .len();
    let clobber = if opts.overwrite {
        Clobber::Replace
    } else {
        Clobber::Refuse
    };
    durable::persist(tmp, out, clobber).map_err(BundleError::io(out))?;
    Ok(Written {
        bundle_size,
        ..written
    })
}

/// A bundle ready to stream: its manifest, signatures and what the writer
/// decided per file.
#[derive(Debug)]
pub(crate) struct Prepared {
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    sigs: Vec<Signature>,
    stamps: Vec<Stamp>,
    compress: Vec<bool>,
}

/// Hashes the payload, builds and signs the manifest.
pub(crate) fn prepare(
    spec: &BundleSpec,
    keys: &[SecretKey],
    opts: &WriteOptions,
    observer: &dyn Observer,
) -> Result<Prepared, BundleError> {
    let (manifest, stamps, compress) = build_manifest(spec, opts.level, observer)?;
    let manifest_bytes = manifest.to_bytes();
    let comment = manifest.trusted_comment();
    let sigs: Vec<Signature> = keys
        .iter()
        .map(|k| Signature::sign(k, &manifest_bytes, &comment))
        .collect();
    Ok(Prepared {
        manifest,
        manifest_bytes,
        sigs,
        stamps,
        compress,
    })
}

/// Streams a prepared bundle into `sink` (`sink_path` names it in errors).
/// The returned `bundle_size` is the number of bytes written.
pub(crate) fn write_prepared(
    spec: &BundleSpec,
    prepared: Prepared,
    opts: &WriteOptions,
    sink: &mut dyn Sink,
    sink_path: &Path,
    observer: &dyn Observer,
) -> Result<Written, BundleError> {
    let Prepared {
        manifest,
        manifest_bytes,
        sigs,
        stamps,
        compress,
    } = prepared;
    let io_tmp = || BundleError::io(sink_path);
    let mut sink = Counting { inner: sink, n: 0 };
    let sink = &mut sink;
    let mtime = spec
        .created
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    // The head: manifest and signatures, in one small compressed frame.
    let mut head = Vec::new();
    let mut push_entry = |path: &str, data: &[u8]| -> io::Result<()> {
        head.extend_from_slice(header(path, data.len() as u64, mtime)?.as_bytes());
        head.extend_from_slice(data);
        head.extend_from_slice(tar_padding(data.len() as u64));
        Ok(())
    };
    push_entry(MANIFEST_PATH, &manifest_bytes).map_err(io_tmp())?;
    for s in &sigs {
        let text = s.to_text(&format!(
            "gapferry signature of {MANIFEST_PATH} by key {}",
            s.key_id
        ));
        push_entry(
            &format!("{SIGNATURES_DIR}{}.minisig", s.key_id),
            text.as_bytes(),
        )
        .map_err(io_tmp())?;
    }
    for p in &spec.trust {
        let name = format!("{TRUST_DIR}{}.json", p.version());
        push_entry(&name, &p.bytes).map_err(io_tmp())?;
        for s in &p.signatures {
            let text = s.to_text(&format!(
                "gapferry trust policy signature by root key {}",
                s.key_id
            ));
            push_entry(&format!("{name}.{}.minisig", s.key_id), text.as_bytes())
                .map_err(io_tmp())?;
        }
    }
    let mut enc = encoder(&mut *sink, opts.level, 0).map_err(io_tmp())?;
    enc.write_all(&head).map_err(io_tmp())?;
    enc.finish().map_err(io_tmp())?;

    observer.start("writing", manifest.total_size());
    let mut buf = Vec::new();
    for (((src, entry), st), &compressed) in spec
        .files
        .iter()
        .zip(&manifest.files)
        .zip(&stamps)
        .zip(&compress)
    {
        let changed = || {
            input_err(
                &src.source,
                "changed while the bundle was being written; is a download still running? Try again when it is done",
            )
        };
        let hdr = header(&format!("{PAYLOAD_DIR}{}", entry.path), entry.size, mtime)
            .map_err(BundleError::io(&src.source))?;
        let f = File::open(&src.source).map_err(BundleError::io(&src.source))?;
        let pad = tar_padding(entry.size);
        if compressed {
            let threads = if entry.size < SMALL_FILE {
                0
            } else {
                opts.threads
            };
            let mut enc = encoder(&mut *sink, opts.level, threads).map_err(io_tmp())?;
            enc.write_all(hdr.as_bytes()).map_err(io_tmp())?;
            buf.resize(CHUNK, 0);
            let mut left = entry.size;
            while left > 0 {
                let want = left.min(CHUNK as u64) as usize;
                let n = match (&f).read(&mut buf[..want]) {
                    Ok(0) => return Err(changed()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(BundleError::io(&src.source)(e)),
                };
                enc.write_all(&buf[..n]).map_err(io_tmp())?;
                observer.advance(n as u64);
                left -= n as u64;
            }
            enc.write_all(pad).map_err(io_tmp())?;
            enc.finish().map_err(io_tmp())?;
        } else {
            let copied = raw_frame::write(sink, hdr.as_bytes(), &f, entry.size, pad, observer)
                .map_err(io_tmp())?;
            if copied != entry.size {
                return Err(changed());
            }
        }
        let after = std::fs::metadata(&src.source).map_err(BundleError::io(&src.source))?;
        if stamp(&after) != *st {
            return Err(changed());
        }
    }
    observer.finish();
    // End-of-archive marker: two zero blocks.
    raw_frame::write_bytes(sink, &[0u8; 1024]).map_err(io_tmp())?;
    Ok(Written {
        manifest_sha256: crate::sha256hex::Sha256Hex::of(&manifest_bytes),
        manifest,
        bundle_size: sink.n,
    })
}

/// A sink that counts what passes.
struct Counting<'a> {
    inner: &'a mut dyn Sink,
    n: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Sink for Counting<'_> {
    fn copy_from(&mut self, src: &File, n: u64) -> io::Result<u64> {
        let got = self.inner.copy_from(src, n)?;
        self.n += got;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::reader::BundleReader;
    use crate::progress::NoProgress;

    /// Deterministic incompressible bytes (xorshift).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn text(len: usize) -> Vec<u8> {
        let line = b"EngineVersion 1.1.24090.4 DefinitionVersion 1.419.1.0 lorem ipsum\n";
        line.iter().copied().cycle().take(len).collect()
    }

    fn spec(dir: &Path, files: &[(&str, Vec<u8>)]) -> BundleSpec {
        let files = files
            .iter()
            .map(|(name, data)| {
                let source = dir.join(name.replace('/', "_"));
                std::fs::write(&source, data).unwrap();
                SourceFile {
                    path: SafePath::new(name).unwrap(),
                    source,
                }
            })
            .collect();
        let now = SystemTime::now();
        BundleSpec {
            bundle_id: "test".into(),
            channel: "default".into(),
            sequence: 1,
            created: now,
            expires: now + std::time::Duration::from_secs(3600),
            producer: "gapferry test".into(),
            profile: "mde".into(),
            items: vec![],
            files,
            trust: Vec::new(),
        }
    }

    /// Writes a bundle of `files` at `level` and checks it end to end with
    /// the reader (whose zstd window is capped at MAX_WINDOW_LOG).
    fn round_trip(files: &[(&str, Vec<u8>)], level: i32) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let spec = spec(&dir, files);
        let out = dir.join("b.tar.zst");
        let opts = WriteOptions {
            level,
            threads: 2,
            overwrite: false,
        };
        let written =
            write_bundle(&spec, &[SecretKey::generate()], &out, &opts, &NoProgress).unwrap();
        assert_eq!(written.bundle_size, std::fs::metadata(&out).unwrap().len());
        let mut r = BundleReader::open(&out).unwrap();
        let head = r.read_head().unwrap();
        assert_eq!(head.manifest.files.len(), files.len());
        for (entry, (_, data)) in head.manifest.files.iter().zip(files) {
            let mut got = Vec::new();
            r.copy_file(&mut got, Path::new("-"), &NoProgress).unwrap();
            assert_eq!(got.len() as u64, entry.size);
            assert!(got == *data, "{} differs", entry.path);
        }
        r.finish().unwrap();
        (tmp, out)
    }

    #[test]
    fn stored_and_compressed_entries_round_trip() {
        let big_noise = noise(SMALL_FILE as usize + 3 * 131072 + 1000, 1);
        let big_text = text(SMALL_FILE as usize + 12345);
        let (_dir, out) = round_trip(
            &[
                ("a/updates.zip", big_noise.clone()),
                ("a/manifest.json", b"{}".to_vec()),
                ("b/empty", Vec::new()),
                ("b/text", big_text.clone()),
                ("c/exact", noise(SMALL_FILE as usize + 131072 - 512, 2)),
            ],
            1,
        );
        // Noise is stored (the bundle is not smaller than it), text compressed.
        let size = std::fs::metadata(&out).unwrap().len() as usize;
        assert!(size > big_noise.len() + SMALL_FILE as usize);
        assert!(size < big_noise.len() + SMALL_FILE as usize * 2 + big_text.len() / 2);
    }

    #[test]
    fn stock_zstd_and_tar_read_the_bundle() {
        if std::process::Command::new("zstd")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("zstd not installed; skipped");
            return;
        }
        let data = noise(SMALL_FILE as usize + 777, 3);
        let (_dir, out) = round_trip(&[("x/updates.zip", data.clone())], -3);
        let tarball = std::process::Command::new("zstd")
            .args(["-dc", "--"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(tarball.status.success());
        let mut ar = tar::Archive::new(&tarball.stdout[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names[0], MANIFEST_PATH);
        assert_eq!(names.last().unwrap(), "payload/x/updates.zip");
    }

    #[test]
    fn highest_levels_stay_within_the_readers_window() {
        // Compressible, so the payload goes through zstd at this level; the
        // reader refuses windows above 2^MAX_WINDOW_LOG.
        let data = text(SMALL_FILE as usize + 1);
        for level in [19, 22] {
            round_trip(&[("x/updates.zip", data.clone())], level);
        }
    }

    #[test]
    fn raw_frames_decode_with_any_tail() {
        let dir = tempfile::tempdir().unwrap();
        for (size, tail) in [
            (0usize, 0usize),
            (0, 100),
            (1, 511),
            (131072, 0),
            (131072 - 10, 10),
            (131072 - 10, 20),
            (3 * 131072 + 5, 131072),
        ] {
            let data = noise(size, size as u64 + 7);
            let src_path = dir.path().join("src");
            std::fs::write(&src_path, &data).unwrap();
            let out_path = dir.path().join("out.zst");
            let mut sink = SyncingWriter::new(File::create(&out_path).unwrap());
            let src = File::open(&src_path).unwrap();
            let tail_bytes = vec![0xAB; tail];
            let n = raw_frame::write(
                &mut sink,
                b"head",
                &src,
                size as u64,
                &tail_bytes,
                &NoProgress,
            )
            .unwrap();
            assert_eq!(n, size as u64);
            sink.finish().unwrap();
            let got = zstd::stream::decode_all(File::open(&out_path).unwrap()).unwrap();
            let mut want = b"head".to_vec();
            want.extend_from_slice(&data);
            want.extend_from_slice(&tail_bytes);
            assert!(got == want, "size {size} tail {tail}");
        }
    }

    #[test]
    fn a_file_that_shrinks_fails_the_export() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        std::fs::write(&src_path, noise(1000, 9)).unwrap();
        let mut sink = SyncingWriter::new(File::create(dir.path().join("o")).unwrap());
        let src = File::open(&src_path).unwrap();
        let n = raw_frame::write(&mut sink, b"", &src, 5000, &[], &NoProgress).unwrap();
        assert_eq!(n, 1000);
    }
}
