//! Split bundles: one bundle cut into numbered volumes (`b.tar.zst.001`,
//! `.002`, ...) that fit on FAT32 sticks or optical discs, plus a small
//! signed index (`b.tar.zst.volumes.json`, with detached minisign signatures
//! `b.tar.zst.volumes.json.<KEYID>.minisig`).
//!
//! This module owns the index (types, strict parsing, trusted comment), the
//! split writer (volumes under temporary names, renamed into place, index
//! last), finding a split bundle from its first volume, its index or its
//! directory, checking every volume against the index *before* a byte is
//! decompressed, and a [`Read`] that chains the volumes in order. It never
//! builds a joined copy on disk, and it never trusts the index for anything
//! but naming a bad volume early: the manifest inside the bundle, with its
//! own signatures and per-file hashes, stays the authority.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::hashing::{to_hex, CHUNK};
use super::parity::{self, ParityEntry, ParityIndex, Shape, Source};
use super::reader::{BundleReader, Head};
use super::writer::{self, BundleSpec, WriteOptions, Written};
use super::{BundleError, MAX_SIGNATURES};
use crate::durable;
use crate::keys::{KeyId, SecretKey, TrustSet};
use crate::progress::Observer;
use crate::sign::{Signature, MAX_SIGNATURE_FILE};

/// The `format` of a volume index without parity volumes.
pub const INDEX_FORMAT: &str = "gapferry-volumes/1";
/// The `format` of a volume index with parity volumes (a `parity` object);
/// written only when parity is asked for, so sets without parity stay
/// readable by releases that know only `gapferry-volumes/1`.
pub const INDEX_FORMAT_PARITY: &str = "gapferry-volumes/2";
/// What the index's name adds to the bundle's name.
pub const INDEX_SUFFIX: &str = ".volumes.json";
/// Most volumes one bundle may be split into (three-digit suffixes).
pub const MAX_VOLUMES: usize = 999;
/// Largest index accepted (999 volumes take about 150 KiB).
pub const MAX_INDEX_SIZE: u64 = 1024 * 1024;

/// One volume in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeEntry {
    /// 1-based; the file is `<bundle>.<number as 3 digits>`.
    pub number: usize,
    pub size: u64,
    /// Lower-case hex SHA-256 of the volume file.
    pub sha256: String,
}

/// The signed index of a split bundle. Field names are a public contract
/// (docs/FORMAT.md, section 10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeIndex {
    pub format: String,
    /// The bundle's file name when it was exported (information only: the
    /// volumes are found beside the index, named after the index).
    pub bundle: String,
    pub bundle_id: String,
    pub channel: String,
    pub sequence: u64,
    /// SHA-256 of the bundle's `gapferry/manifest.json`.
    pub manifest_sha256: String,
    /// Size of every volume but the last.
    pub volume_size: u64,
    /// Sum of the volumes' sizes: the size of the joined `.tar.zst`.
    pub total_size: u64,
    pub volumes: Vec<VolumeEntry>,
    /// The parity volumes (`gapferry-volumes/2` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<ParityIndex>,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl VolumeIndex {
    /// Parses index bytes strictly: size cap, UTF-8, no duplicate keys, no
    /// deep nesting, no unknown fields, and the rules of [`Self::validate`].
    pub fn parse(bytes: &[u8]) -> Result<VolumeIndex, String> {
        if bytes.len() as u64 > MAX_INDEX_SIZE {
            return Err(format!("{} bytes is larger than 1 MiB", bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        crate::manifest::check_structure(text).map_err(|e| e.0)?;
        let idx: VolumeIndex = serde_json::from_str(text).map_err(|e| e.to_string())?;
        idx.validate()?;
        Ok(idx)
    }

    /// The index's own rules.
    pub fn validate(&self) -> Result<(), String> {
        match (self.format.as_str(), &self.parity) {
            (INDEX_FORMAT, None) | (INDEX_FORMAT_PARITY, Some(_)) => {}
            (INDEX_FORMAT, Some(_)) => {
                return Err(format!(
                    "format {INDEX_FORMAT:?} has no parity volumes; an index with `parity` is {INDEX_FORMAT_PARITY:?}"
                ))
            }
            (INDEX_FORMAT_PARITY, None) => {
                return Err(format!("format {INDEX_FORMAT_PARITY:?} must list its parity volumes"))
            }
            _ => {
                return Err(format!(
                    "format is {:?}, this gapferry reads {INDEX_FORMAT:?} and {INDEX_FORMAT_PARITY:?} (a newer gapferry wrote it?)",
                    self.format
                ))
            }
        }
        let plain = |name: &str, v: &str, max: usize| {
            if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
                Err(format!(
                    "{name} must be 1-{max} bytes without control characters"
                ))
            } else {
                Ok(())
            }
        };
        plain("bundle", &self.bundle, 255)?;
        if self.bundle.contains(['/', '\\']) {
            return Err("bundle must be a file name, not a path".into());
        }
        plain("bundle_id", &self.bundle_id, crate::manifest::MAX_FIELD_LEN)?;
        crate::manifest::check_channel(&self.channel).map_err(|e| e.0)?;
        if !is_hex64(&self.manifest_sha256) {
            return Err("manifest_sha256 must be 64 lower-case hex digits".into());
        }
        let n = self.volumes.len();
        if n == 0 || n > MAX_VOLUMES {
            return Err(format!("must list 1 to {MAX_VOLUMES} volumes, lists {n}"));
        }
        if self.volume_size == 0 {
            return Err("volume_size must be at least 1".into());
        }
        let mut sum: u64 = 0;
        for (i, v) in self.volumes.iter().enumerate() {
            if v.number != i + 1 {
                return Err(format!(
                    "volumes must be numbered 1 to {n} in order; entry {} says {}",
                    i + 1,
                    v.number
                ));
            }
            if !is_hex64(&v.sha256) {
                return Err(format!(
                    "volume {}: sha256 must be 64 lower-case hex digits",
                    v.number
                ));
            }
            let last = i + 1 == n;
            if v.size == 0 || v.size > self.volume_size || (!last && v.size != self.volume_size) {
                return Err(format!(
                    "volume {} is {} bytes; every volume but the last must be volume_size ({}) and the last 1 to volume_size",
                    v.number, v.size, self.volume_size
                ));
            }
            sum = sum
                .checked_add(v.size)
                .ok_or_else(|| "volume sizes overflow".to_string())?;
        }
        if sum != self.total_size {
            return Err(format!(
                "total_size is {} but the volumes add up to {sum}",
                self.total_size
            ));
        }
        if let Some(p) = &self.parity {
            if p.scheme != parity::SCHEME {
                return Err(format!(
                    "parity scheme is {:?}, this gapferry reads {:?}",
                    p.scheme,
                    parity::SCHEME
                ));
            }
            let layout = self.layout().expect("parity checked above");
            layout.check()?;
            for (j, v) in p.volumes.iter().enumerate() {
                if v.number != j + 1 {
                    return Err(format!(
                        "parity volumes must be numbered 1 to {} in order; entry {} says {}",
                        p.volumes.len(),
                        j + 1,
                        v.number
                    ));
                }
                if !is_hex64(&v.sha256) {
                    return Err(format!(
                        "parity volume {}: sha256 must be 64 lower-case hex digits",
                        v.number
                    ));
                }
                if v.size != layout.parity_size() {
                    return Err(format!(
                        "parity volume {} is {} bytes; every parity volume is stripes x block_size ({})",
                        v.number,
                        v.size,
                        layout.parity_size()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The erasure-code layout, when the index has parity volumes.
    pub fn layout(&self) -> Option<Shape> {
        self.parity.as_ref().map(|p| Shape {
            n: self.volumes.len(),
            k: p.volumes.len(),
            volume_size: self.volume_size,
            block: p.block_size,
        })
    }

    /// The bytes gapferry writes: pretty JSON and a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("plain data serializes");
        v.push(b'\n');
        v
    }

    /// The trusted comment of the index signatures, so `minisign -V` shows
    /// what the index vouches for and a reader can require it.
    pub fn trusted_comment(&self) -> String {
        let parity = match &self.parity {
            Some(p) => format!(" parity:{}", p.volumes.len()),
            None => String::new(),
        };
        format!(
            "gapferry volumes bundle_id:{} channel:{} sequence:{} volumes:{} total_size:{} manifest_sha256:{}{parity}",
            self.bundle_id,
            self.channel,
            self.sequence,
            self.volumes.len(),
            self.total_size,
            self.manifest_sha256
        )
    }
}

fn append(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// `<bundle>.volumes.json`.
pub fn index_path(bundle: &Path) -> PathBuf {
    append(bundle, INDEX_SUFFIX)
}

/// `<bundle>.NNN`.
pub fn volume_path(bundle: &Path, number: usize) -> PathBuf {
    append(bundle, &format!(".{number:03}"))
}

/// `<index>.<KEYID>.minisig`.
pub fn signature_path(index: &Path, id: KeyId) -> PathBuf {
    append(index, &format!(".{id}.minisig"))
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into())
}

/// Where the files of a split bundle are opened: by path as given ([`ByPath`],
/// for files the operator names), or through an opened folder that never
/// follows a link (the inbox, which other users may write).
pub trait SplitFiles: std::fmt::Debug + Send + Sync {
    /// Opens a file for reading. A FIFO, device or folder is an
    /// [`io::ErrorKind::InvalidInput`] error, never a read that blocks.
    fn open(&self, path: &Path) -> io::Result<File>;
    /// The names in `dir`.
    fn names(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether anything is at `path`.
    fn exists(&self, path: &Path) -> bool;
}

/// [`SplitFiles`] by path, links followed (the operator's own files).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByPath;

impl SplitFiles for ByPath {
    fn open(&self, path: &Path) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking open, so a FIFO is refused below instead of waiting
        // for a writer; a regular file reads the same either way.
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)?;
        if !f.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a folder, FIFO, socket or device",
            ));
        }
        Ok(f)
    }

    fn names(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            if let Some(n) = e?.file_name().to_str() {
                out.push(n.to_string());
            }
        }
        Ok(out)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

fn input_err(path: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::Input {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What [`write_split`] wrote.
#[derive(Debug, Clone)]
pub struct SplitWritten {
    pub written: Written,
    pub index_path: PathBuf,
    pub index: VolumeIndex,
    pub volume_paths: Vec<PathBuf>,
    pub parity_paths: Vec<PathBuf>,
    pub signature_paths: Vec<PathBuf>,
}

fn temp_in(dir: &Path, name: &str) -> Result<tempfile::NamedTempFile, BundleError> {
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(BundleError::io(dir))
}

fn persist(tmp: tempfile::TempPath, to: &Path, overwrite: bool) -> Result<(), BundleError> {
    let clobber = if overwrite {
        durable::Clobber::Replace
    } else {
        durable::Clobber::Refuse
    };
    durable::persist_path(tmp, to, clobber).map_err(BundleError::io(to))
}

/// Copies `len` bytes from `src` into `dst`, returning their SHA-256.
fn copy_hashing(
    src: &mut File,
    dst: Option<&mut File>,
    len: u64,
    src_path: &Path,
    dst_path: &Path,
    observer: &dyn Observer,
) -> Result<String, BundleError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    let mut dst = dst;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        src.read_exact(&mut buf[..n])
            .map_err(BundleError::io(src_path))?;
        if let Some(d) = dst.as_deref_mut() {
            d.write_all(&buf[..n]).map_err(BundleError::io(dst_path))?;
        }
        h.update(&buf[..n]);
        observer.advance(n as u64);
        left -= n as u64;
    }
    Ok(to_hex(&h.finalize().into()))
}

/// The volumes of a bundle being written: each under a hidden temporary
/// name, cut at `volume_size`, synced as it goes and hashed as the bytes
/// pass; the writer streams the bundle straight into it.
struct VolumeSink {
    dir: PathBuf,
    name: String,
    volume_size: u64,
    current: Option<OpenVolume>,
    done: Vec<(tempfile::TempPath, VolumeEntry)>,
    buf: Vec<u8>,
    /// Set when the bundle needs more than [`MAX_VOLUMES`].
    too_many: bool,
}

struct OpenVolume {
    tmp: tempfile::TempPath,
    out: durable::SyncingWriter,
    hash: Sha256,
    len: u64,
}

impl std::fmt::Debug for VolumeSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeSink")
            .field("name", &self.name)
            .field("volumes", &self.done.len())
            .finish()
    }
}

impl VolumeSink {
    fn close(&mut self) -> io::Result<()> {
        if let Some(v) = self.current.take() {
            v.out.finish()?;
            let number = self.done.len() + 1;
            self.done.push((
                v.tmp,
                VolumeEntry {
                    number,
                    size: v.len,
                    sha256: to_hex(&v.hash.finalize().into()),
                },
            ));
        }
        Ok(())
    }

    fn open_next(&mut self) -> io::Result<&mut OpenVolume> {
        if self.current.is_none() {
            let number = self.done.len() + 1;
            if number > MAX_VOLUMES {
                self.too_many = true;
                return Err(io::Error::other(format!("more than {MAX_VOLUMES} volumes")));
            }
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".{}.{number:03}.", self.name))
                .suffix(".partial")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .tempfile_in(&self.dir)?;
            let file = tmp.as_file().try_clone()?;
            self.current = Some(OpenVolume {
                tmp: tmp.into_temp_path(),
                out: durable::SyncingWriter::new(file),
                hash: Sha256::new(),
                len: 0,
            });
        }
        Ok(self.current.as_mut().expect("just opened"))
    }
}

impl Write for VolumeSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let volume_size = self.volume_size;
        let v = self.open_next()?;
        let room = (volume_size - v.len).min(buf.len() as u64) as usize;
        let n = v.out.write(&buf[..room])?;
        v.hash.update(&buf[..n]);
        v.len += n as u64;
        if v.len == volume_size {
            self.close()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl writer::Sink for VolumeSink {
    /// Through user space: every byte is hashed for its volume's entry.
    fn copy_from(&mut self, src: &File, n: u64) -> io::Result<u64> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(CHUNK, 0);
        let mut copied = 0;
        let result = loop {
            if copied == n {
                break Ok(copied);
            }
            let want = (n - copied).min(CHUNK as u64) as usize;
            match (&*src).read(&mut buf[..want]) {
                Ok(0) => break Ok(copied),
                Ok(got) => {
                    if let Err(e) = self.write_all(&buf[..got]) {
                        break Err(e);
                    }
                    copied += got as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buf = buf;
        result
    }
}

/// Writes a signed bundle split into volumes of `volume_size` bytes beside
/// `out`: `out.001`, `out.002`, ..., with `parity` parity volumes `out.p001`
/// ... (none when 0), then the signatures of the index, then the index
/// `out.volumes.json` last. Nothing appears under a final name before it is
/// complete and synced; a watcher that waits for the index never sees a
/// partial set.
///
/// One pass: the bundle streams straight into the volumes (each byte
/// written once, hashed on the way); the parity volumes are then computed
/// stripe by stripe from the volumes just written (read back, from the page
/// cache when they fit), so memory stays at one stripe whatever the size.
pub fn write_split(
    spec: &BundleSpec,
    keys: &[SecretKey],
    out: &Path,
    volume_size: u64,
    parity: usize,
    opts: &WriteOptions,
    observer: &dyn Observer,
) -> Result<SplitWritten, BundleError> {
    assert!(!keys.is_empty(), "at least one signing key");
    assert!(volume_size > 0, "volume size checked by units::parse_size");
    let idx_path = index_path(out);
    if parity > parity::MAX_PARITY {
        return Err(input_err(
            out,
            format!("--parity {parity} is more than {}", parity::MAX_PARITY),
        ));
    }
    if !opts.overwrite {
        for p in [
            &idx_path,
            &volume_path(out, 1),
            &parity::parity_path(out, 1),
        ] {
            if p.exists() {
                return Err(input_err(
                    p,
                    "already exists; choose another --out or add --force to replace the split bundle",
                ));
            }
        }
    }
    let dir = dir_of(out);
    let name = file_name(out);
    if !dir.is_dir() {
        return Err(input_err(
            &dir,
            "the folder of --out does not exist (or is not a folder); create it first",
        ));
    }
    let prepared = writer::prepare(spec, keys, opts, observer)?;
    let mut sink = VolumeSink {
        dir: dir.clone(),
        name: name.clone(),
        volume_size,
        current: None,
        done: Vec::new(),
        buf: Vec::new(),
        too_many: false,
    };
    let written =
        writer::write_prepared(spec, prepared, opts, &mut sink, out, observer).and_then(|w| {
            sink.close().map_err(BundleError::io(out))?;
            Ok(w)
        });
    if sink.too_many {
        return Err(input_err(
            out,
            format!(
                "the bundle does not fit in {MAX_VOLUMES} volumes of {volume_size} bytes; choose a larger --split"
            ),
        ));
    }
    let written = written?;
    let total = written.bundle_size;
    let parts = std::mem::take(&mut sink.done);
    let n = parts.len();

    let parity_parts = if parity > 0 {
        let layout = Shape {
            n,
            k: parity,
            volume_size,
            block: parity::block_size_for(volume_size, n, parity),
        };
        Some((
            layout,
            write_parity(&dir, &name, &layout, &parts, observer)?,
        ))
    } else {
        None
    };

    let m = &written.manifest;
    let index = VolumeIndex {
        format: if parity > 0 {
            INDEX_FORMAT_PARITY
        } else {
            INDEX_FORMAT
        }
        .into(),
        bundle: name.clone(),
        bundle_id: m.bundle_id.to_string(),
        channel: m.channel.clone(),
        sequence: m.sequence,
        manifest_sha256: written.manifest_sha256.to_string(),
        volume_size,
        total_size: total,
        volumes: parts.iter().map(|p| p.1.clone()).collect(),
        parity: parity_parts.as_ref().map(|(layout, pv)| ParityIndex {
            scheme: parity::SCHEME.into(),
            block_size: layout.block,
            volumes: pv.iter().map(|p| p.1.clone()).collect(),
        }),
    };
    index
        .validate()
        .expect("the writer makes a valid index by construction");
    let index_bytes = index.to_bytes();
    let comment = index.trusted_comment();

    // Replacing an older split bundle: its index goes first, so between now
    // and the new index there is no complete set under these names.
    if opts.overwrite {
        match std::fs::remove_file(&idx_path) {
            Ok(()) => durable::sync_dir(&dir).map_err(BundleError::io(&dir))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(BundleError::io(&idx_path)(e)),
        }
    }
    let mut volume_paths = Vec::with_capacity(n);
    for (tmp, entry) in parts {
        let to = volume_path(out, entry.number);
        persist(tmp, &to, opts.overwrite)?;
        volume_paths.push(to);
    }
    let mut parity_paths = Vec::new();
    for (tmp, entry) in parity_parts.into_iter().flat_map(|(_, pv)| pv) {
        let to = parity::parity_path(out, entry.number);
        persist(tmp, &to, opts.overwrite)?;
        parity_paths.push(to);
    }
    if opts.overwrite {
        // Volumes of a longer split under the same name would join a
        // `cat out.0*` pipeline; they go too, and stale parity volumes.
        for (first, path) in [
            (n + 1, volume_path as fn(&Path, usize) -> PathBuf),
            (parity + 1, parity::parity_path),
        ] {
            for k in first..=MAX_VOLUMES {
                let stale = path(out, k);
                match std::fs::remove_file(&stale) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) => return Err(BundleError::io(&stale)(e)),
                }
            }
        }
        for old in find_signature_files(&idx_path).map_err(BundleError::io(&dir))? {
            if !keys
                .iter()
                .any(|k| signature_path(&idx_path, k.key_id) == old)
            {
                let _ = std::fs::remove_file(&old);
            }
        }
    }
    let mut signature_paths = Vec::new();
    for k in keys {
        let sig = Signature::sign(k, &index_bytes, &comment);
        let text = sig.to_text(&format!(
            "gapferry signature of {name}{INDEX_SUFFIX} by key {}",
            k.key_id
        ));
        let to = signature_path(&idx_path, k.key_id);
        durable::write_atomic(
            &to,
            text.as_bytes(),
            durable::FILE_MODE,
            durable::Clobber::Replace,
        )
        .map_err(BundleError::io(&to))?;
        signature_paths.push(to);
    }
    let clobber = if opts.overwrite {
        durable::Clobber::Replace
    } else {
        durable::Clobber::Refuse
    };
    durable::write_atomic(&idx_path, &index_bytes, durable::FILE_MODE, clobber)
        .map_err(BundleError::io(&idx_path))?;
    Ok(SplitWritten {
        written,
        index_path: idx_path,
        index,
        volume_paths,
        parity_paths,
        signature_paths,
    })
}

/// Bytes between background syncs of a parity volume: the K volumes are
/// written side by side and all finished at the end, so their unsynced
/// tails add up; a shorter interval than the data volumes' keeps the last
/// wait short.
const PARITY_SYNC_EVERY: u64 = 8 << 20;

/// Computes the parity volumes of the data volumes `parts` into hidden
/// temporary files in `dir`, synced, with their entries.
pub(crate) fn write_parity(
    dir: &Path,
    name: &str,
    layout: &Shape,
    parts: &[(tempfile::TempPath, VolumeEntry)],
    observer: &dyn Observer,
) -> Result<Vec<(tempfile::TempPath, ParityEntry)>, BundleError> {
    let files = parts
        .iter()
        .map(|(p, _)| File::open(p).map_err(BundleError::io(p.to_path_buf())))
        .collect::<Result<Vec<_>, _>>()?;
    let data: Vec<Source<'_>> = parts
        .iter()
        .zip(&files)
        .map(|((p, e), f)| Source {
            file: f,
            path: p,
            size: e.size,
        })
        .collect();
    let mut outs = Vec::with_capacity(layout.k);
    for j in 1..=layout.k {
        let tmp = temp_in(dir, &format!("{name}.p{j:03}"))?;
        let path = tmp.path().to_path_buf();
        let file = tmp.as_file().try_clone().map_err(BundleError::io(&path))?;
        outs.push((
            tmp.into_temp_path(),
            path,
            durable::SyncingWriter::syncing_every(file, PARITY_SYNC_EVERY),
            Sha256::new(),
        ));
    }
    observer.start("computing parity", layout.parity_size() * layout.n as u64);
    // Lanes of the encoder read and encode while this thread hashes and
    // writes what they computed.
    parity::encode(
        layout,
        &data,
        &vec![true; layout.k],
        parity::lanes(),
        &mut |j, b| {
            let (_, path, w, h) = &mut outs[j];
            w.write_all(b).map_err(BundleError::io(&*path))?;
            h.update(b);
            Ok(())
        },
        observer,
    )?;
    observer.finish();
    let mut done = Vec::with_capacity(layout.k);
    for (j, (tmp, path, w, h)) in outs.into_iter().enumerate() {
        w.finish().map_err(BundleError::io(&path))?;
        done.push((
            tmp,
            ParityEntry {
                number: j + 1,
                size: layout.parity_size(),
                sha256: to_hex(&h.finalize().into()),
            },
        ));
    }
    Ok(done)
}

/// The `<index>.<KEYID>.minisig` files beside an index, sorted.
fn find_signature_files(index: &Path) -> io::Result<Vec<PathBuf>> {
    find_signature_files_in(&ByPath, index)
}

fn find_signature_files_in(files: &dyn SplitFiles, index: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = dir_of(index);
    let prefix = format!("{}.", file_name(index));
    let mut out = Vec::new();
    for n in files.names(&dir)? {
        if let Some(mid) = n
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".minisig"))
        {
            if mid.len() == 16 && !mid.contains('.') {
                out.push(dir.join(&n));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A bundle as the user named it: one file, or a split bundle's index.
#[derive(Debug)]
pub enum Layout {
    Single(PathBuf),
    Split(Box<SplitBundle>),
}

/// A split bundle found on disk, its index parsed (not yet checked).
#[derive(Debug, Clone)]
pub struct SplitBundle {
    pub index_path: PathBuf,
    /// The index path without `.volumes.json`; volumes are `<base>.NNN`.
    pub base: PathBuf,
    pub index: VolumeIndex,
    pub index_bytes: Vec<u8>,
    /// How its volumes and signatures are opened.
    pub files: std::sync::Arc<dyn SplitFiles>,
    /// What [`SplitBundle::check_volumes`] rebuilt from parity.
    pub recovery: Recovery,
    /// The rebuilt data volumes (number, unnamed temporary file).
    pub rebuilt: Vec<(usize, std::sync::Arc<File>)>,
}

/// What the parity volumes were needed for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Data volumes rebuilt (number, what was wrong with it), in order.
    pub rebuilt: Vec<(usize, String)>,
    /// Parity volumes missing or damaged, never used (number, why).
    pub bad_parity: Vec<(usize, String)>,
}

/// `NAME.NNN` → (`NAME`, NNN) for a three-digit suffix.
pub fn split_volume_name(path: &Path) -> Option<(PathBuf, usize)> {
    let s = path.to_str()?;
    let (base, num) = s.rsplit_once('.')?;
    if num.len() == 3 && num.bytes().all(|b| b.is_ascii_digit()) && !base.is_empty() {
        Some((PathBuf::from(base), num.parse().ok()?))
    } else {
        None
    }
}

/// `NAME.pNNN` → (`NAME`, NNN) for a parity volume.
pub fn split_parity_name(path: &Path) -> Option<(PathBuf, usize)> {
    let s = path.to_str()?;
    let (base, num) = s.rsplit_once(".p")?;
    if num.len() == 3 && num.bytes().all(|b| b.is_ascii_digit()) && !base.is_empty() {
        Some((PathBuf::from(base), num.parse().ok()?))
    } else {
        None
    }
}

fn reject(path: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::Rejected {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Finds what `path` names: a directory holding one split bundle, a split
/// bundle's index or any of its volumes, or a single-file bundle.
pub fn resolve(path: &Path) -> Result<Layout, BundleError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        // A lost volume named on the command line: its set may still be
        // whole through its parity volumes.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // The name given to `export --out` of a split bundle.
            let idx = index_path(path);
            if idx.exists() {
                return load_split(&idx).map(|s| Layout::Split(Box::new(s)));
            }
            if let Some((base, _)) = split_volume_name(path).or_else(|| split_parity_name(path)) {
                let idx = index_path(&base);
                if idx.exists() {
                    return load_split(&idx).map(|s| Layout::Split(Box::new(s)));
                }
            }
            return Err(BundleError::io(path)(e));
        }
        Err(e) => return Err(BundleError::io(path)(e)),
    };
    if meta.is_dir() {
        let mut found = Vec::new();
        for e in std::fs::read_dir(path).map_err(BundleError::io(path))? {
            let e = e.map_err(BundleError::io(path))?;
            let n = e.file_name();
            if let Some(n) = n.to_str() {
                if n.ends_with(INDEX_SUFFIX) && !n.starts_with('.') {
                    found.push(path.join(n));
                }
            }
        }
        found.sort();
        return match found.len() {
            1 => load_split(&found[0]).map(|s| Layout::Split(Box::new(s))),
            0 => Err(input_err(
                path,
                format!("is a directory without a split bundle (no *{INDEX_SUFFIX}); give the bundle file itself"),
            )),
            _ => Err(input_err(
                path,
                format!(
                    "holds {} split bundles ({}); give the index of the one you mean",
                    found.len(),
                    found.iter().map(|p| file_name(p)).collect::<Vec<_>>().join(", ")
                ),
            )),
        };
    }
    let name = file_name(path);
    if name.ends_with(INDEX_SUFFIX) {
        return load_split(path).map(|s| Layout::Split(Box::new(s)));
    }
    if let Some((base, k)) = split_volume_name(path).or_else(|| split_parity_name(path)) {
        let idx = index_path(&base);
        if idx.exists() {
            return load_split(&idx).map(|s| Layout::Split(Box::new(s)));
        }
        return Err(reject(
            path,
            format!(
                "looks like volume {k} of a split bundle, but its index {} is not beside it; copy the index (and its .minisig files) from the export too",
                file_name(&idx)
            ),
        ));
    }
    Ok(Layout::Single(path.to_path_buf()))
}

/// Reads and strictly parses an index.
pub fn load_split(index_path: &Path) -> Result<SplitBundle, BundleError> {
    let f = File::open(index_path).map_err(BundleError::io(index_path))?;
    let mut bytes = Vec::new();
    f.take(MAX_INDEX_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(BundleError::io(index_path))?;
    let index = VolumeIndex::parse(&bytes).map_err(|e| {
        reject(
            index_path,
            format!("invalid volume index: {e}; copy the index again from the export"),
        )
    })?;
    let s = index_path.to_string_lossy();
    let base = PathBuf::from(s.strip_suffix(INDEX_SUFFIX).unwrap_or(&s));
    Ok(SplitBundle {
        index_path: index_path.to_path_buf(),
        base,
        index,
        index_bytes: bytes,
        files: std::sync::Arc::new(ByPath),
        recovery: Recovery::default(),
        rebuilt: Vec::new(),
    })
}

impl SplitBundle {
    /// The file of volume `number` (1-based).
    pub fn volume_path(&self, number: usize) -> PathBuf {
        volume_path(&self.base, number)
    }

    /// The file of parity volume `number` (1-based).
    pub fn parity_path(&self, number: usize) -> PathBuf {
        parity::parity_path(&self.base, number)
    }

    /// All volume files, in order.
    pub fn volume_paths(&self) -> Vec<PathBuf> {
        (1..=self.index.volumes.len())
            .map(|k| self.volume_path(k))
            .collect()
    }

    /// All parity volume files, in order (none without parity).
    pub fn parity_paths(&self) -> Vec<PathBuf> {
        let k = self.index.parity.as_ref().map_or(0, |p| p.volumes.len());
        (1..=k).map(|j| self.parity_path(j)).collect()
    }

    /// The detached signature files beside the index.
    pub fn signature_paths(&self) -> Result<Vec<PathBuf>, BundleError> {
        find_signature_files_in(self.files.as_ref(), &self.index_path)
            .map_err(BundleError::io(dir_of(&self.index_path)))
    }

    /// Every file of the set: volumes, signatures, index.
    pub fn all_files(&self) -> Result<Vec<PathBuf>, BundleError> {
        let mut v = self.volume_paths();
        v.extend(self.parity_paths());
        v.extend(self.signature_paths()?);
        v.push(self.index_path.clone());
        Ok(v)
    }

    /// The index signatures must include at least one valid signature by a
    /// trusted key, and none by a trusted key id that fails. Returns the
    /// signers.
    pub fn check_signatures(&self, trust: &TrustSet) -> Result<Vec<KeyId>, BundleError> {
        let files = self.signature_paths()?;
        let fix = "the index was altered or is not from this export; copy the index and its .minisig files again from the export";
        if files.is_empty() {
            return Err(reject(
                &self.index_path,
                format!("volume index is not signed (no {}.<KEYID>.minisig beside it); copy the .minisig files from the export too", file_name(&self.index_path)),
            ));
        }
        if files.len() > MAX_SIGNATURES {
            return Err(reject(
                &self.index_path,
                format!("more than {MAX_SIGNATURES} signature files beside the volume index"),
            ));
        }
        let comment = self.index.trusted_comment();
        let mut signers = Vec::new();
        let mut seen = Vec::new();
        for p in &files {
            let mut bytes = Vec::new();
            self.files
                .open(p)
                .map_err(BundleError::io(p))?
                .take(MAX_SIGNATURE_FILE as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(BundleError::io(p))?;
            if bytes.len() > MAX_SIGNATURE_FILE {
                return Err(reject(p, "signature file is larger than 8 KiB"));
            }
            let sig = Signature::parse(&bytes).map_err(|e| reject(p, e.to_string()))?;
            if signature_path(&self.index_path, sig.key_id) != *p {
                return Err(reject(
                    p,
                    format!(
                        "holds a signature by key {}, not the key its name says",
                        sig.key_id
                    ),
                ));
            }
            let Some(key) = trust.get(&sig.key_id) else {
                continue;
            };
            sig.verify(key, &self.index_bytes)
                .map_err(|e| reject(p, format!("volume index signature is invalid: {e}; {fix}")))?;
            if sig.trusted_comment != comment {
                return Err(reject(
                    p,
                    format!(
                        "trusted comment {:?} does not describe this volume index (expected {comment:?}); {fix}",
                        sig.trusted_comment
                    ),
                ));
            }
            if !seen.contains(&key.key.to_bytes()) {
                seen.push(key.key.to_bytes());
                signers.push(sig.key_id);
            }
        }
        if signers.is_empty() {
            return Err(reject(
                &self.index_path,
                format!(
                    "no signature of the volume index by a trusted key (signed by {}); add the signer's public key with --trust if you trust it",
                    files
                        .iter()
                        .map(|p| file_name(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(signers)
    }

    /// Checks one volume's presence and size: `Ok(None)` when it is
    /// present and exactly `size` bytes, else what is wrong with it (and
    /// whether to add the advice to copy it again).
    fn size_problem(
        &self,
        path: &Path,
        what: &str,
        size: u64,
    ) -> Result<Option<(String, bool)>, BundleError> {
        let meta = match self.files.open(path).and_then(|f| f.metadata()) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Some((format!("{what} is missing"), true)))
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return Ok(Some((format!("{what} is not a regular file ({e})"), false)))
            }
            Err(e) => return Err(BundleError::io(path)(e)),
        };
        Ok(if meta.len() < size {
            Some((
                format!(
                    "{what} is truncated: {} bytes, the index says {size}",
                    meta.len()
                ),
                true,
            ))
        } else if meta.len() > size {
            Some((
                format!(
                    "{what} is damaged: {} bytes, the index says {size}",
                    meta.len()
                ),
                true,
            ))
        } else {
            None
        })
    }

    /// Hashes one volume: `Ok(None)` when its SHA-256 is `sha256`, else what
    /// is wrong with it.
    fn hash_problem(
        &self,
        path: &Path,
        what: &str,
        size: u64,
        sha256: &str,
        copy_of: &dyn Fn(&str) -> Option<String>,
        observer: &dyn Observer,
    ) -> Result<Option<String>, BundleError> {
        let mut f = self.files.open(path).map_err(BundleError::io(path))?;
        let got = match copy_hashing(&mut f, None, size, path, path, observer) {
            Ok(got) => got,
            Err(BundleError::Io { source, .. })
                if source.kind() == io::ErrorKind::UnexpectedEof =>
            {
                return Ok(Some(format!("{what} is truncated")))
            }
            Err(e) => return Err(e),
        };
        if got == sha256 {
            return Ok(None);
        }
        Ok(Some(match copy_of(&got) {
            Some(other) => format!("{what} is damaged: it is a duplicate of {other}"),
            None => format!(
                "{what} is damaged or from another bundle: SHA-256 is {got}, the index says {sha256}"
            ),
        }))
    }

    /// Checks every volume against the index: present, exactly its size,
    /// and (with `hash`) its SHA-256; and no volume beyond the last. Without
    /// parity volumes, names the first bad one by number.
    ///
    /// With parity volumes, a bad data volume is not the end: every volume
    /// (data and parity) is hashed, and when no more data volumes are bad
    /// than parity volumes are good, the bad ones are rebuilt into unnamed
    /// temporary files ([`SplitBundle::recovery`] says which), which
    /// [`SplitBundle::chain`] then reads instead. More bad volumes than
    /// that is a rejection naming every one and how many more are needed.
    pub fn check_volumes(
        &mut self,
        hash: bool,
        observer: &dyn Observer,
    ) -> Result<(), BundleError> {
        let n = self.index.volumes.len();
        let again = "copy it again from the export (or the original medium)";
        let mut bad: Vec<(usize, String)> = Vec::new();
        for v in &self.index.volumes {
            let p = self.volume_path(v.number);
            let what = format!("volume {} of {n}", v.number);
            if let Some((reason, advice)) = self.size_problem(&p, &what, v.size)? {
                if self.index.parity.is_none() {
                    return Err(reject(
                        &p,
                        if advice {
                            format!("{reason}; {again}")
                        } else {
                            reason
                        },
                    ));
                }
                bad.push((v.number, reason));
            }
        }
        let extra = self.volume_path(n + 1);
        if n < MAX_VOLUMES && self.files.exists(&extra) {
            return Err(reject(
                &extra,
                format!(
                    "volume {} is present but the index lists only {n} volumes (a stale or foreign file: it would join `cat` of the volumes); remove it",
                    n + 1
                ),
            ));
        }
        if !hash && bad.is_empty() {
            return Ok(());
        }
        let parity_entries: Vec<ParityEntry> = self
            .index
            .parity
            .as_ref()
            .map(|p| p.volumes.clone())
            .unwrap_or_default();
        let parity_total: u64 = parity_entries.iter().map(|p| p.size).sum();
        observer.start("checking volumes", self.index.total_size + parity_total);
        let volumes = self.index.volumes.clone();
        let copy_of = |got: &str, me: usize| {
            volumes
                .iter()
                .find(|o| o.sha256 == got && o.number != me)
                .map(|o| format!("volume {}", o.number))
        };
        for v in &volumes {
            if bad.iter().any(|(k, _)| *k == v.number) {
                continue;
            }
            let p = self.volume_path(v.number);
            let what = format!("volume {} of {n}", v.number);
            let problem = self.hash_problem(
                &p,
                &what,
                v.size,
                &v.sha256,
                &|got| copy_of(got, v.number),
                observer,
            )?;
            if let Some(reason) = problem {
                if self.index.parity.is_none() {
                    return Err(reject(&p, format!("{reason}; {again}")));
                }
                bad.push((v.number, reason));
            }
        }
        let Some(layout) = self.index.layout() else {
            observer.finish();
            return Ok(());
        };
        let mut bad_parity: Vec<(usize, String)> = Vec::new();
        for e in &parity_entries {
            let p = self.parity_path(e.number);
            let what = format!("parity volume {} of {}", e.number, layout.k);
            let problem = match self.size_problem(&p, &what, e.size)? {
                Some((reason, _)) => Some(reason),
                None => self.hash_problem(&p, &what, e.size, &e.sha256, &|_| None, observer)?,
            };
            if let Some(reason) = problem {
                bad_parity.push((e.number, reason));
            }
        }
        observer.finish();
        bad.sort();
        self.recovery.bad_parity = bad_parity.clone();
        if bad.is_empty() {
            return Ok(());
        }
        let good_parity = layout.k - bad_parity.len();
        if bad.len() > good_parity {
            let more = bad.len() - good_parity;
            let list = bad
                .iter()
                .chain(&bad_parity)
                .map(|(_, r)| r.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(reject(
                &self.index_path,
                format!(
                    "{} of {n} data volumes and {} of {} parity volumes are missing or damaged ({list}); {} good parity volume(s) can rebuild at most {good_parity}, so {more} more good volume(s) (data or parity) are needed: copy at least {more} of them again from the export (or the original medium)",
                    bad.len(),
                    bad_parity.len(),
                    layout.k,
                    good_parity,
                ),
            ));
        }
        self.rebuild(&layout, &bad, &bad_parity, observer)
    }

    /// Rebuilds the data volumes `bad` into unnamed temporary files.
    fn rebuild(
        &mut self,
        layout: &Shape,
        bad: &[(usize, String)],
        bad_parity: &[(usize, String)],
        observer: &dyn Observer,
    ) -> Result<(), BundleError> {
        let is_bad = |k: usize| bad.iter().any(|(b, _)| *b == k);
        let parity_bad = |k: usize| bad_parity.iter().any(|(b, _)| *b == k);
        let mut data_files = Vec::with_capacity(layout.n);
        for v in &self.index.volumes {
            let p = self.volume_path(v.number);
            data_files.push(if is_bad(v.number) {
                None
            } else {
                Some((self.files.open(&p).map_err(BundleError::io(&p))?, p, v.size))
            });
        }
        let mut parity_files = Vec::with_capacity(layout.k);
        for j in 1..=layout.k {
            let p = self.parity_path(j);
            parity_files.push(if parity_bad(j) {
                None
            } else {
                Some((self.files.open(&p).map_err(BundleError::io(&p))?, p))
            });
        }
        let data: Vec<Option<Source<'_>>> = data_files
            .iter()
            .map(|d| {
                d.as_ref().map(|(f, p, size)| Source {
                    file: f,
                    path: p,
                    size: *size,
                })
            })
            .collect();
        let parity: Vec<Option<Source<'_>>> = parity_files
            .iter()
            .map(|d| {
                d.as_ref().map(|(f, p)| Source {
                    file: f,
                    path: p,
                    size: layout.parity_size(),
                })
            })
            .collect();
        let scratch_dir = std::env::temp_dir();
        let mut outs: Vec<Option<(File, Sha256)>> = Vec::with_capacity(layout.n);
        for v in &self.index.volumes {
            outs.push(if is_bad(v.number) {
                let f =
                    tempfile::tempfile_in(&scratch_dir).map_err(BundleError::io(&scratch_dir))?;
                Some((f, Sha256::new()))
            } else {
                None
            });
        }
        let sizes: Vec<u64> = self.index.volumes.iter().map(|v| v.size).collect();
        observer.start(
            "rebuilding volumes",
            layout.parity_size() * bad.len() as u64,
        );
        parity::rebuild(
            layout,
            &sizes,
            &data,
            &parity,
            &mut |i, block| {
                let (f, h) = outs[i].as_mut().expect("a missing volume");
                f.write_all(block).map_err(BundleError::io(&scratch_dir))?;
                h.update(block);
                Ok(())
            },
            observer,
        )?;
        observer.finish();
        let mut rebuilt = Vec::new();
        for (v, out) in self.index.volumes.iter().zip(outs) {
            let Some((f, h)) = out else { continue };
            let got = to_hex(&h.finalize().into());
            if got != v.sha256 {
                return Err(reject(
                    &self.volume_path(v.number),
                    format!(
                        "volume {} rebuilt from parity does not match the signed index (SHA-256 {got}); the surviving volumes are not one export: copy the whole set again",
                        v.number
                    ),
                ));
            }
            rebuilt.push((v.number, std::sync::Arc::new(f)));
        }
        self.recovery.rebuilt = bad.to_vec();
        self.rebuilt = rebuilt;
        Ok(())
    }

    /// The bundle inside must be the one the index describes.
    pub fn check_head(&self, head: &Head) -> Result<(), BundleError> {
        let m = &head.manifest;
        let i = &self.index;
        if head.manifest_sha256 != i.manifest_sha256
            || m.bundle_id != *i.bundle_id
            || m.sequence != i.sequence
            || m.channel != i.channel
        {
            return Err(reject(
                &self.index_path,
                format!(
                    "the volume index describes another bundle (bundle {} sequence {} manifest {}) than its volumes hold (bundle {} sequence {} manifest {}); the index and volumes of two exports were mixed: copy the whole set again",
                    i.bundle_id, i.sequence, i.manifest_sha256, m.bundle_id, m.sequence, head.manifest_sha256
                ),
            ));
        }
        Ok(())
    }

    /// A reader of the volumes joined, in order.
    pub fn chain(&self) -> VolumeChain {
        VolumeChain {
            volumes: self
                .index
                .volumes
                .iter()
                .map(|v| (self.volume_path(v.number), v.size))
                .collect(),
            rebuilt: self.rebuilt.clone(),
            next: 0,
            current: None,
            files: std::sync::Arc::clone(&self.files),
        }
    }
}

/// Reads volumes one after another as one stream, each exactly its indexed
/// size; a volume that ends early is an `UnexpectedEof` naming it.
#[derive(Debug)]
pub struct VolumeChain {
    volumes: Vec<(PathBuf, u64)>,
    /// Volumes rebuilt from parity, read instead of their path.
    rebuilt: Vec<(usize, std::sync::Arc<File>)>,
    next: usize,
    current: Option<(io::Take<VolumeFile>, usize)>,
    files: std::sync::Arc<dyn SplitFiles>,
}

impl Read for VolumeChain {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.current.is_none() {
                let Some((p, size)) = self.volumes.get(self.next) else {
                    return Ok(0);
                };
                let number = self.next + 1;
                let f =
                    match self.rebuilt.iter().find(|(k, _)| *k == number) {
                        Some((_, f)) => VolumeFile::Rebuilt(std::sync::Arc::clone(f), 0),
                        None => VolumeFile::Disk(self.files.open(p).map_err(|e| {
                            io::Error::new(e.kind(), format!("{}: {e}", p.display()))
                        })?),
                    };
                self.current = Some((f.take(*size), self.next));
                self.next += 1;
            }
            let (cur, i) = self.current.as_mut().expect("just set");
            let n = cur.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            if cur.limit() > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "volume {} ({}) ended early",
                        *i + 1,
                        self.volumes[*i].0.display()
                    ),
                ));
            }
            self.current = None;
        }
    }
}

/// One volume being read: its file, or its rebuilt copy (read by offset,
/// as it is shared).
#[derive(Debug)]
enum VolumeFile {
    Disk(File),
    Rebuilt(std::sync::Arc<File>, u64),
}

impl Read for VolumeFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            VolumeFile::Disk(f) => f.read(buf),
            VolumeFile::Rebuilt(f, pos) => {
                let n = std::os::unix::fs::FileExt::read_at(&**f, buf, *pos)?;
                *pos += n as u64;
                Ok(n)
            }
        }
    }
}

/// The byte stream of a bundle, whole or split.
#[derive(Debug)]
pub enum BundleInput {
    File(File),
    Volumes(VolumeChain),
}

impl Read for BundleInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BundleInput::File(f) => f.read(buf),
            BundleInput::Volumes(c) => c.read(buf),
        }
    }
}

/// How much [`open`] checks of a split bundle before reading its head.
#[derive(Debug, Clone, Copy)]
pub struct OpenChecks<'a> {
    /// Check the index signatures against this trust set.
    pub trust: Option<&'a TrustSet>,
    /// Hash every volume (verify, import); without it only presence and
    /// sizes are checked (inspect reads a few kilobytes).
    pub hash_volumes: bool,
}

/// A bundle opened for reading, its head read.
#[derive(Debug)]
pub struct Opened {
    pub reader: BundleReader<BundleInput>,
    pub head: Head,
    /// The split bundle, when it is one.
    pub split: Option<SplitBundle>,
}

/// Opens a bundle given as a file, a split bundle's first volume (or any
/// volume), its index or its directory. For a split bundle every check of
/// `checks` runs before a byte is decompressed; then the head is read and
/// matched against the index.
pub fn open(
    path: &Path,
    checks: OpenChecks<'_>,
    observer: &dyn Observer,
) -> Result<Opened, BundleError> {
    match resolve(path)? {
        Layout::Single(p) => {
            let f = File::open(&p).map_err(BundleError::io(&p))?;
            let mut reader = BundleReader::new(BundleInput::File(f), &p)?;
            let head = reader.read_head()?;
            Ok(Opened {
                reader,
                head,
                split: None,
            })
        }
        Layout::Split(s) => open_split(*s, path, checks, observer),
    }
}

/// [`open`] of a split bundle already found (`path` names it in errors):
/// every check of `checks` runs before a byte is decompressed; then the
/// head is read and matched against the index.
pub fn open_split(
    mut s: SplitBundle,
    path: &Path,
    checks: OpenChecks<'_>,
    observer: &dyn Observer,
) -> Result<Opened, BundleError> {
    if let Some(trust) = checks.trust {
        s.check_signatures(trust)?;
    }
    s.check_volumes(checks.hash_volumes, observer)?;
    let mut reader = BundleReader::new(BundleInput::Volumes(s.chain()), path)?;
    let head = reader.read_head()?;
    s.check_head(&head)?;
    Ok(Opened {
        reader,
        head,
        split: Some(s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VolumeIndex {
        VolumeIndex {
            format: INDEX_FORMAT.into(),
            bundle: "b.tar.zst".into(),
            bundle_id: "abc".into(),
            channel: "default".into(),
            sequence: 7,
            manifest_sha256: "a".repeat(64),
            volume_size: 10,
            total_size: 25,
            volumes: (1..=3)
                .map(|k| VolumeEntry {
                    number: k,
                    size: if k == 3 { 5 } else { 10 },
                    sha256: "b".repeat(64),
                })
                .collect(),
            parity: None,
        }
    }

    #[test]
    fn index_round_trip_and_strictness() {
        let i = sample();
        assert_eq!(VolumeIndex::parse(&i.to_bytes()).unwrap(), i);
        let text = String::from_utf8(i.to_bytes()).unwrap();
        let dup = text.replacen("\"sequence\": 7", "\"sequence\": 7, \"sequence\": 8", 1);
        assert!(VolumeIndex::parse(dup.as_bytes())
            .unwrap_err()
            .contains("duplicate"));
        let unknown = text.replacen("\"sequence\": 7", "\"sequence\": 7, \"x\": 1", 1);
        assert!(VolumeIndex::parse(unknown.as_bytes()).is_err());
        let mut bad = sample();
        bad.total_size = 26;
        assert!(bad.validate().unwrap_err().contains("add up"));
        let mut bad = sample();
        bad.volumes[1].number = 3;
        assert!(bad.validate().unwrap_err().contains("numbered"));
        let mut bad = sample();
        bad.volumes[0].size = 9;
        bad.total_size = 24;
        assert!(bad.validate().is_err());
        let mut bad = sample();
        bad.bundle = "../x".into();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn parity_needs_format_2_and_a_sound_layout() {
        let with_parity = |block: u64, size: u64| {
            let mut i = sample();
            i.format = INDEX_FORMAT_PARITY.into();
            i.parity = Some(ParityIndex {
                scheme: parity::SCHEME.into(),
                block_size: block,
                volumes: vec![ParityEntry {
                    number: 1,
                    size,
                    sha256: "c".repeat(64),
                }],
            });
            i
        };
        let good = with_parity(64, 64);
        good.validate().unwrap();
        assert_eq!(VolumeIndex::parse(&good.to_bytes()).unwrap(), good);
        assert!(good.trusted_comment().ends_with(" parity:1"));
        assert!(!sample().trusted_comment().contains("parity"));
        let mut v1 = good.clone();
        v1.format = INDEX_FORMAT.into();
        assert!(v1.validate().unwrap_err().contains("no parity volumes"));
        let mut v2 = sample();
        v2.format = INDEX_FORMAT_PARITY.into();
        assert!(v2.validate().unwrap_err().contains("must list"));
        assert!(
            with_parity(100, 100).validate().is_err(),
            "not a multiple of 64"
        );
        assert!(
            with_parity(2 << 20, 2 << 20).validate().is_err(),
            "above 1 MiB"
        );
        assert!(
            with_parity(64, 128).validate().is_err(),
            "not stripes x block"
        );
        let mut scheme = good.clone();
        scheme.parity.as_mut().unwrap().scheme = "par2".into();
        assert!(scheme.validate().unwrap_err().contains("scheme"));
        // An older reader's view: the v1 type would refuse `parity` as unknown.
        let text = String::from_utf8(good.to_bytes()).unwrap();
        assert!(text.contains("\"format\": \"gapferry-volumes/2\""));
    }

    #[test]
    fn volume_names() {
        assert_eq!(
            split_volume_name(Path::new("d/b.tar.zst.003")),
            Some((PathBuf::from("d/b.tar.zst"), 3))
        );
        assert_eq!(split_volume_name(Path::new("b.tar.zst")), None);
        assert_eq!(split_volume_name(Path::new("b.tar.zst.1234")), None);
        assert_eq!(split_volume_name(Path::new("b.tar.zst.p001")), None);
        assert_eq!(
            split_parity_name(Path::new("d/b.tar.zst.p002")),
            Some((PathBuf::from("d/b.tar.zst"), 2))
        );
        assert_eq!(split_parity_name(Path::new("d/b.tar.zst.002")), None);
    }

    #[test]
    fn chain_reads_in_order_and_notices_short_volumes() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("b");
        std::fs::write(volume_path(&base, 1), b"hello ").unwrap();
        std::fs::write(volume_path(&base, 2), b"world").unwrap();
        let mut c = VolumeChain {
            volumes: vec![(volume_path(&base, 1), 6), (volume_path(&base, 2), 5)],
            rebuilt: Vec::new(),
            next: 0,
            current: None,
            files: std::sync::Arc::new(ByPath),
        };
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");
        let mut c = VolumeChain {
            volumes: vec![(volume_path(&base, 1), 7), (volume_path(&base, 2), 5)],
            rebuilt: Vec::new(),
            next: 0,
            current: None,
            files: std::sync::Arc::new(ByPath),
        };
        let e = c.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("volume 1"), "{e}");
    }
}
