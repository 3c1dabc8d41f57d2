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
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::hashing::{to_hex, CHUNK};
use super::reader::{BundleReader, Head};
use super::writer::{self, BundleSpec, WriteOptions, Written};
use super::{BundleError, MAX_SIGNATURES};
use crate::durable;
use crate::keys::{KeyId, SecretKey, TrustSet};
use crate::progress::Observer;
use crate::sign::{Signature, MAX_SIGNATURE_FILE};

/// The `format` of a volume index.
pub const INDEX_FORMAT: &str = "gapferry-volumes/1";
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
        if self.format != INDEX_FORMAT {
            return Err(format!(
                "format is {:?}, this gapferry reads {INDEX_FORMAT:?} (a newer gapferry wrote it?)",
                self.format
            ));
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
        Ok(())
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
        format!(
            "gapferry volumes bundle_id:{} channel:{} sequence:{} volumes:{} total_size:{} manifest_sha256:{}",
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

/// Writes a signed bundle split into volumes of `volume_size` bytes beside
/// `out`: `out.001`, `out.002`, ..., then the signatures of the index, then
/// the index `out.volumes.json` last. Nothing appears under a final name
/// before it is complete and synced; a watcher that waits for the index
/// never sees a partial set.
///
/// The bundle is first written whole under a temporary name, then cut from
/// its end (each volume copied out, then the file truncated), so the extra
/// disk space needed is one volume, not a second bundle; what is left is
/// volume 1.
pub fn write_split(
    spec: &BundleSpec,
    keys: &[SecretKey],
    out: &Path,
    volume_size: u64,
    opts: &WriteOptions,
    observer: &dyn Observer,
) -> Result<SplitWritten, BundleError> {
    assert!(!keys.is_empty(), "at least one signing key");
    assert!(volume_size > 0, "volume size checked by units::parse_size");
    let idx_path = index_path(out);
    if !opts.overwrite {
        for p in [&idx_path, &volume_path(out, 1)] {
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
    let whole = temp_in(&dir, &format!("{name}.split"))?.into_temp_path();
    let whole_path = whole.to_path_buf();
    let written = writer::write_bundle(
        spec,
        keys,
        &whole_path,
        &WriteOptions {
            overwrite: true,
            ..opts.clone()
        },
        observer,
    )?;
    let total = written.bundle_size;
    let n = total.div_ceil(volume_size).max(1) as usize;
    if n > MAX_VOLUMES {
        return Err(input_err(
            out,
            format!(
                "{total} bytes in volumes of {volume_size} bytes would make {n} volumes, more than {MAX_VOLUMES}; choose a larger --split"
            ),
        ));
    }
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&whole_path)
        .map_err(BundleError::io(&whole_path))?;
    observer.start("splitting", total);
    let mut parts: Vec<Option<(tempfile::TempPath, VolumeEntry)>> = (0..n).map(|_| None).collect();
    for k in (2..=n).rev() {
        let start = (k as u64 - 1) * volume_size;
        let len = (total - start).min(volume_size);
        let tmp = temp_in(&dir, &format!("{name}.{k:03}"))?;
        let tmp_path = tmp.path().to_path_buf();
        let mut vf = tmp
            .as_file()
            .try_clone()
            .map_err(BundleError::io(&tmp_path))?;
        f.seek(SeekFrom::Start(start))
            .map_err(BundleError::io(&whole_path))?;
        let sha = copy_hashing(&mut f, Some(&mut vf), len, &whole_path, &tmp_path, observer)?;
        vf.sync_all().map_err(BundleError::io(&tmp_path))?;
        // Cutting the copied tail off keeps the extra space at one volume.
        f.set_len(start).map_err(BundleError::io(&whole_path))?;
        parts[k - 1] = Some((
            tmp.into_temp_path(),
            VolumeEntry {
                number: k,
                size: len,
                sha256: sha,
            },
        ));
    }
    f.seek(SeekFrom::Start(0))
        .map_err(BundleError::io(&whole_path))?;
    let len1 = total.min(volume_size);
    let sha1 = copy_hashing(&mut f, None, len1, &whole_path, &whole_path, observer)?;
    f.sync_all().map_err(BundleError::io(&whole_path))?;
    drop(f);
    observer.finish();
    parts[0] = Some((
        whole,
        VolumeEntry {
            number: 1,
            size: len1,
            sha256: sha1,
        },
    ));

    let m = &written.manifest;
    let index = VolumeIndex {
        format: INDEX_FORMAT.into(),
        bundle: name.clone(),
        bundle_id: m.bundle_id.to_string(),
        channel: m.channel.clone(),
        sequence: m.sequence,
        manifest_sha256: written.manifest_sha256.to_string(),
        volume_size,
        total_size: total,
        volumes: parts
            .iter()
            .map(|p| p.as_ref().expect("every volume cut").1.clone())
            .collect(),
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
    for (tmp, entry) in parts.into_iter().map(|p| p.expect("every volume cut")) {
        let to = volume_path(out, entry.number);
        persist(tmp, &to, opts.overwrite)?;
        volume_paths.push(to);
    }
    if opts.overwrite {
        // Volumes of a longer split under the same name would join a
        // `cat out.0*` pipeline; they go too.
        for k in n + 1..=MAX_VOLUMES {
            let stale = volume_path(out, k);
            match std::fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(BundleError::io(&stale)(e)),
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
        signature_paths,
    })
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

fn reject(path: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::Rejected {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Finds what `path` names: a directory holding one split bundle, a split
/// bundle's index or any of its volumes, or a single-file bundle.
pub fn resolve(path: &Path) -> Result<Layout, BundleError> {
    let meta = std::fs::metadata(path).map_err(BundleError::io(path))?;
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
    if let Some((base, k)) = split_volume_name(path) {
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
    })
}

impl SplitBundle {
    /// The file of volume `number` (1-based).
    pub fn volume_path(&self, number: usize) -> PathBuf {
        volume_path(&self.base, number)
    }

    /// All volume files, in order.
    pub fn volume_paths(&self) -> Vec<PathBuf> {
        (1..=self.index.volumes.len())
            .map(|k| self.volume_path(k))
            .collect()
    }

    /// The detached signature files beside the index.
    pub fn signature_paths(&self) -> Result<Vec<PathBuf>, BundleError> {
        find_signature_files_in(self.files.as_ref(), &self.index_path)
            .map_err(BundleError::io(dir_of(&self.index_path)))
    }

    /// Every file of the set: volumes, signatures, index.
    pub fn all_files(&self) -> Result<Vec<PathBuf>, BundleError> {
        let mut v = self.volume_paths();
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

    /// Checks every volume against the index: present, exactly its size,
    /// and (with `hash`) its SHA-256; and no volume beyond the last. Names
    /// the first bad one by number.
    pub fn check_volumes(&self, hash: bool, observer: &dyn Observer) -> Result<(), BundleError> {
        let n = self.index.volumes.len();
        let again = "copy it again from the export (or the original medium)";
        for v in &self.index.volumes {
            let p = self.volume_path(v.number);
            let k = v.number;
            let meta = match self.files.open(&p).and_then(|f| f.metadata()) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(reject(&p, format!("volume {k} of {n} is missing; {again}")))
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    return Err(reject(
                        &p,
                        format!("volume {k} of {n} is not a regular file ({e})"),
                    ))
                }
                Err(e) => return Err(BundleError::io(&p)(e)),
            };
            if meta.len() < v.size {
                return Err(reject(
                    &p,
                    format!(
                        "volume {k} of {n} is truncated: {} bytes, the index says {}; {again}",
                        meta.len(),
                        v.size
                    ),
                ));
            }
            if meta.len() > v.size {
                return Err(reject(
                    &p,
                    format!(
                        "volume {k} of {n} is damaged: {} bytes, the index says {}; {again}",
                        meta.len(),
                        v.size
                    ),
                ));
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
        if !hash {
            return Ok(());
        }
        observer.start("checking volumes", self.index.total_size);
        for v in &self.index.volumes {
            let p = self.volume_path(v.number);
            let k = v.number;
            let mut f = self.files.open(&p).map_err(BundleError::io(&p))?;
            let got =
                copy_hashing(&mut f, None, v.size, &p, &p, observer).map_err(|e| match e {
                    BundleError::Io { source, .. }
                        if source.kind() == io::ErrorKind::UnexpectedEof =>
                    {
                        reject(&p, format!("volume {k} of {n} is truncated; {again}"))
                    }
                    e => e,
                })?;
            if got != v.sha256 {
                let copy_of = self
                    .index
                    .volumes
                    .iter()
                    .find(|o| o.sha256 == got && o.number != k);
                return Err(reject(
                    &p,
                    match copy_of {
                        Some(o) => format!(
                            "volume {k} of {n} is damaged: it is a duplicate of volume {}; {again}",
                            o.number
                        ),
                        None => format!(
                            "volume {k} of {n} is damaged or from another bundle: SHA-256 is {got}, the index says {}; {again}",
                            v.sha256
                        ),
                    },
                ));
            }
        }
        observer.finish();
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
    next: usize,
    current: Option<(io::Take<File>, usize)>,
    files: std::sync::Arc<dyn SplitFiles>,
}

impl Read for VolumeChain {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.current.is_none() {
                let Some((p, size)) = self.volumes.get(self.next) else {
                    return Ok(0);
                };
                let f = self
                    .files
                    .open(p)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
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
    s: SplitBundle,
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
    fn volume_names() {
        assert_eq!(
            split_volume_name(Path::new("d/b.tar.zst.003")),
            Some((PathBuf::from("d/b.tar.zst"), 3))
        );
        assert_eq!(split_volume_name(Path::new("b.tar.zst")), None);
        assert_eq!(split_volume_name(Path::new("b.tar.zst.1234")), None);
    }

    #[test]
    fn chain_reads_in_order_and_notices_short_volumes() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("b");
        std::fs::write(volume_path(&base, 1), b"hello ").unwrap();
        std::fs::write(volume_path(&base, 2), b"world").unwrap();
        let mut c = VolumeChain {
            volumes: vec![(volume_path(&base, 1), 6), (volume_path(&base, 2), 5)],
            next: 0,
            current: None,
            files: std::sync::Arc::new(ByPath),
        };
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");
        let mut c = VolumeChain {
            volumes: vec![(volume_path(&base, 1), 7), (volume_path(&base, 2), 5)],
            next: 0,
            current: None,
            files: std::sync::Arc::new(ByPath),
        };
        let e = c.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("volume 1"), "{e}");
    }
}
