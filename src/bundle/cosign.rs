//! Adding manifest signatures to a bundle after export (`gapferry sign`,
//! `gapferry attach`), so a second signer's key never has to touch the
//! exporting host.
//!
//! It owns the rewrite of a bundle's head: the leading zstd frames up to
//! the end of the signature entries are decoded (at most the head's budget
//! of docs/FORMAT.md section 1), the new signature entries are inserted right
//! after the existing ones, every other byte of the decoded head is kept,
//! and the result becomes one new frame; every frame after it is copied
//! verbatim, never recompressed. In a single file the new frame is stored
//! (raw blocks) and exactly a whole number of filesystem blocks longer than
//! the old head, so the copy is block-aligned on both sides and a
//! filesystem that shares blocks clones it (time proportional to the head). A signature is added only after it
//! verifies against the manifest's exact bytes with the signer's public key
//! and carries the manifest's trusted comment; a key already present, or a
//! 17th signature, is refused.
//!
//! A single-file bundle is rewritten under a temporary name beside the
//! target, synced, checked (its head read back) and renamed over it, so a
//! crash leaves the old bundle or the new one. A split bundle is written as
//! a new set (`--out`): the head grows, so every volume changes; the index
//! is rewritten through [`VolumeIndex`] and signed by the new signer only
//! (the old index signatures cannot vouch for the new volumes). It never
//! decides trust: the importer counts the signatures.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::frames::{self, Frames};
use super::hashing::to_hex;
use super::parity;
use super::reader::{BundleReader, Head};
use super::volumes::{self, OpenChecks, SplitBundle, VolumeEntry, VolumeIndex};
use super::writer::{header, tar_padding};
use super::{
    BundleError, MANIFEST_PATH, MAX_HEAD_FRAMES, MAX_HEAD_INPUT, MAX_SIGNATURES, SIGNATURES_DIR,
};
use crate::durable::{self, Clobber};
use crate::error::{Classify, ExitKind};
use crate::keys::{KeyId, PublicKey, SecretKey};
use crate::progress::{NoProgress, Observer};
use crate::sign::Signature;

/// Why a signature was not added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CosignError {
    /// Reading or writing the bundle failed (its own exit code).
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The signature does not belong on this bundle: it does not verify
    /// against the manifest, carries another trusted comment, or is by
    /// another key than the one given (exit 3).
    #[error("{path}: signature not added: {reason}")]
    Rejected { path: PathBuf, reason: String },
    /// Not done as asked: the key has signed already, the bundle holds the
    /// most signatures it may, or its layout cannot take one (exit 2).
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
}

impl Classify for CosignError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            CosignError::Bundle(e) => e.exit_kind(),
            CosignError::Rejected { .. } => ExitKind::Rejected,
            CosignError::Refused { .. } => ExitKind::Usage,
        }
    }
}

fn refused(path: &Path, reason: impl Into<String>) -> CosignError {
    CosignError::Refused {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CosignError + '_ {
    move |e| CosignError::Bundle(BundleError::io(path)(e))
}

/// Step at which the fault-injection hooks may kill a rewrite: the new
/// bundle is complete and synced under its temporary name, not yet renamed.
pub const CRASH_BEFORE_RENAME: &str = "cosign-before-rename";

/// A bundle opened to take more signatures.
#[derive(Debug)]
pub struct Cosign {
    /// The path as given (file, volume, index or directory).
    path: PathBuf,
    single: Option<PathBuf>,
    split: Option<SplitBundle>,
    head: Head,
    added: Vec<Signature>,
}

/// What [`Cosign::write`] wrote.
#[derive(Debug, Clone)]
pub struct CosignWritten {
    /// The bundle file written, or the new set's index.
    pub bundle: PathBuf,
    /// The new set's volumes (split bundles only).
    pub volumes: Vec<PathBuf>,
    /// Its index signatures (split bundles only).
    pub index_signatures: Vec<PathBuf>,
    /// Key ids of the signatures added, in order.
    pub added: Vec<KeyId>,
    /// Key ids of every signature the bundle now carries, in order.
    pub signers: Vec<KeyId>,
    /// Compressed bytes of the head frames before and after.
    pub head_before: u64,
    pub head_after: u64,
    /// Compressed bytes copied verbatim after the head.
    pub copied: u64,
}

impl Cosign {
    /// Opens a bundle (a file, or a split bundle by any of its names) and
    /// reads its head. Split bundles have their volumes' sizes checked here
    /// and their hashes when written.
    pub fn open(path: &Path) -> Result<Cosign, CosignError> {
        let opened = volumes::open(
            path,
            OpenChecks {
                trust: None,
                hash_volumes: false,
            },
            &NoProgress,
        )?;
        let single = match opened.split {
            Some(_) => None,
            None => Some(match volumes::resolve(path)? {
                volumes::Layout::Single(p) => p,
                volumes::Layout::Split(_) => unreachable!("opened as a single file"),
            }),
        };
        Ok(Cosign {
            path: path.to_path_buf(),
            single,
            split: opened.split,
            head: opened.head,
            added: Vec::new(),
        })
    }

    /// The head as read.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Whether the bundle is split into volumes.
    pub fn is_split(&self) -> bool {
        self.split.is_some()
    }

    /// Checks `sig` (read from `from`, named in errors) against the manifest
    /// with the signer's public key `key` and queues it: it must be by `key`,
    /// verify strictly over the manifest's exact bytes, carry the manifest's
    /// trusted comment, be by a key that has not signed yet, and fit under
    /// the limit of [`MAX_SIGNATURES`].
    pub fn add(&mut self, sig: Signature, key: &PublicKey, from: &Path) -> Result<(), CosignError> {
        let m = &self.head.manifest;
        let rejected = |reason: String| CosignError::Rejected {
            path: from.to_path_buf(),
            reason,
        };
        if sig.key_id != key.key_id {
            return Err(rejected(format!(
                "it is a signature by key {}, but the public key given is {}",
                sig.key_id, key.key_id
            )));
        }
        if self
            .head
            .signatures
            .iter()
            .chain(&self.added)
            .any(|s| s.key_id == sig.key_id)
        {
            return Err(refused(
                &self.path,
                format!(
                    "already carries a signature by key {}; nothing added (a key counts once)",
                    sig.key_id
                ),
            ));
        }
        sig.verify(key, &self.head.manifest_bytes).map_err(|e| {
            rejected(format!(
                "{e}: it does not sign the manifest of bundle {} sequence {} (manifest SHA-256 {}); sign the manifest `gapferry manifest` writes for this bundle",
                m.bundle_id, m.sequence, self.head.manifest_sha256
            ))
        })?;
        let comment = m.trusted_comment();
        if sig.trusted_comment != comment {
            return Err(rejected(format!(
                "its trusted comment {:?} is not this manifest's {comment:?}; sign again with -t and the comment `gapferry manifest` prints",
                sig.trusted_comment
            )));
        }
        if self.head.signatures.len() + self.added.len() >= MAX_SIGNATURES {
            return Err(refused(
                &self.path,
                format!("already carries {MAX_SIGNATURES} signatures, the most a bundle may hold (docs/FORMAT.md section 2)"),
            ));
        }
        self.added.push(sig);
        Ok(())
    }

    /// Signs the manifest with `key` and queues the signature ([`Self::add`]).
    pub fn sign(&mut self, key: &SecretKey, from: &Path) -> Result<(), CosignError> {
        let sig = Signature::sign(
            key,
            &self.head.manifest_bytes,
            &self.head.manifest.trusted_comment(),
        );
        self.add(sig, &key.public(), from)
    }

    /// Writes the bundle with the queued signatures: over the original (a
    /// single file, `out` absent) or to `out` (`overwrite` to replace an
    /// existing one). A split bundle needs `out` (a new set) and
    /// `index_keys` to sign its new index.
    pub fn write(
        self,
        out: Option<&Path>,
        index_keys: &[SecretKey],
        overwrite: bool,
        observer: &dyn Observer,
    ) -> Result<CosignWritten, CosignError> {
        assert!(!self.added.is_empty(), "nothing to add");
        match (&self.single, &self.split) {
            (Some(src), _) => {
                let src = src.clone();
                self.write_single(&src, out, overwrite)
            }
            (None, Some(s)) => {
                let mut s = s.clone();
                self.write_split(&mut s, out, index_keys, overwrite, observer)
            }
            (None, None) => unreachable!("a bundle is single or split"),
        }
    }

    /// The tar entries of the queued signatures, as the writer makes them.
    fn new_entries(&self) -> Vec<u8> {
        let mtime = self
            .head
            .manifest
            .created_time()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut out = Vec::new();
        for s in &self.added {
            let text = s.to_text(&format!(
                "gapferry signature of {MANIFEST_PATH} by key {}",
                s.key_id
            ));
            let h = header(
                &format!("{SIGNATURES_DIR}{}.minisig", s.key_id),
                text.len() as u64,
                mtime,
            )
            .expect("a short ASCII name fits a ustar header");
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(tar_padding(text.len() as u64));
        }
        out
    }

    /// Reads the head frames from `input` and returns the new head frame
    /// and the compressed length of the frames it replaces.
    fn new_head_content(
        &self,
        input: &mut dyn Read,
        name: &Path,
    ) -> Result<(Vec<u8>, u64), CosignError> {
        let (content, consumed, at) = read_head_frames(input, self.head.signatures.len(), name)?;
        let mut new = Vec::with_capacity(content.len() + 2048);
        new.extend_from_slice(&content[..at]);
        new.extend_from_slice(&self.new_entries());
        new.extend_from_slice(&content[at..]);
        Ok((new, consumed))
    }

    /// Reads the head frames from `input` and returns the new head as one
    /// compressed frame and the compressed length of the frames it replaces.
    fn new_head_frame(
        &self,
        input: &mut dyn Read,
        name: &Path,
    ) -> Result<(Vec<u8>, u64), CosignError> {
        let (new, consumed) = self.new_head_content(input, name)?;
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).map_err(io_err(name))?;
        enc.include_checksum(true).map_err(io_err(name))?;
        enc.write_all(&new).map_err(io_err(name))?;
        let frame = enc.finish().map_err(io_err(name))?;
        Ok((frame, consumed))
    }

    fn signers(&self) -> Vec<KeyId> {
        self.head
            .signatures
            .iter()
            .chain(&self.added)
            .map(|s| s.key_id)
            .collect()
    }

    fn write_single(
        self,
        src: &Path,
        out: Option<&Path>,
        overwrite: bool,
    ) -> Result<CosignWritten, CosignError> {
        let dest = out.unwrap_or(src);
        let in_place = out.is_none() || same_file(src, dest);
        if !in_place && !overwrite && dest.exists() {
            return Err(refused(
                dest,
                "already exists; choose another --out or add --force to replace it",
            ));
        }
        let f = File::open(src).map_err(io_err(src))?;
        let meta = f.metadata().map_err(io_err(src))?;
        let len = meta.len();
        let (content, consumed) = {
            let mut r = BufReader::new(&f);
            self.new_head_content(&mut r, src)?
        };
        // The new head is a whole number of filesystem blocks longer than
        // the old one, so the bytes after it keep their offset within a
        // block and a filesystem that shares blocks (XFS, Btrfs) clones them
        // instead of copying; elsewhere the kernel copies them.
        // (At most 4 KiB: the padding costs a 3-byte block per 3 bytes, so
        // about 1 400 blocks; larger filesystem blocks just copy.)
        let block = {
            use std::os::unix::fs::MetadataExt;
            match meta.blksize() {
                b if b.is_power_of_two() && (512..=4096).contains(&b) => b,
                _ => 4096,
            }
        };
        let frame = (1..)
            .map(|k| consumed + k * block)
            .find_map(|target| stored_frame_of_len(&content, target))
            .expect("some multiple of the block fits every overhead");
        let dir = dir_of(dest);
        let tmp = temp_in(&dir, &file_name(dest))?;
        let tmp_path = tmp.path().to_path_buf();
        if in_place {
            // Keep the bundle's own mode (a 0600 bundle stays 0600).
            tmp.as_file()
                .set_permissions(meta.permissions())
                .map_err(io_err(&tmp_path))?;
        }
        let out_file = tmp.as_file();
        // From the block holding the old head's end: aligned on both sides.
        let from = consumed / block * block;
        let shift = frame.len() as u64 - consumed;
        (&f).seek(SeekFrom::Start(from)).map_err(io_err(src))?;
        (&*out_file)
            .seek(SeekFrom::Start(from + shift))
            .map_err(io_err(&tmp_path))?;
        let copied =
            io::copy(&mut (&f).take(len - from), &mut &*out_file).map_err(io_err(&tmp_path))?;
        if copied != len - from || f.metadata().map_err(io_err(src))?.len() != len {
            return Err(refused(
                src,
                "changed while it was being rewritten; try again when nothing else writes it",
            ));
        }
        let copied = len - consumed;
        {
            use std::os::unix::fs::FileExt;
            out_file
                .write_all_at(&frame, 0)
                .map_err(io_err(&tmp_path))?;
        }
        out_file.sync_all().map_err(io_err(&tmp_path))?;
        // Read the new head back before it replaces anything.
        let back = BundleReader::open(&tmp_path)?.read_head()?;
        let signers = self.signers();
        if back.manifest_sha256 != self.head.manifest_sha256
            || back.signatures.iter().map(|s| s.key_id).collect::<Vec<_>>() != signers
        {
            return Err(refused(
                dest,
                "the rewritten head does not read back as written; the original is unchanged",
            ));
        }
        crate::faults::crash_point(CRASH_BEFORE_RENAME);
        let clobber = if in_place || overwrite {
            Clobber::Replace
        } else {
            Clobber::Refuse
        };
        durable::persist(tmp, dest, clobber).map_err(io_err(dest))?;
        Ok(CosignWritten {
            bundle: dest.to_path_buf(),
            volumes: Vec::new(),
            index_signatures: Vec::new(),
            added: self.added.iter().map(|s| s.key_id).collect(),
            signers,
            head_before: consumed,
            head_after: frame.len() as u64,
            copied,
        })
    }

    fn write_split(
        self,
        s: &mut SplitBundle,
        out: Option<&Path>,
        index_keys: &[SecretKey],
        overwrite: bool,
        observer: &dyn Observer,
    ) -> Result<CosignWritten, CosignError> {
        if index_keys.is_empty() {
            return Err(refused(
                &self.path,
                "is a split bundle, whose new volume index must be signed too, and attach has no key to sign it: join the volumes (cat NAME.0* > NAME), attach to the joined file, and carry that; or sign with `gapferry sign --secret-key`",
            ));
        }
        let Some(out) = out else {
            return Err(refused(
                &self.path,
                "is a split bundle: every volume changes when a signature is added, so it is written as a new set; add --out NEW.tar.zst (the old set stays as it is; delete it afterwards)",
            ));
        };
        let idx_path = volumes::index_path(out);
        if same_file(&idx_path, &s.index_path)
            || same_file(&volumes::volume_path(out, 1), &s.volume_path(1))
        {
            return Err(refused(
                out,
                "names the split bundle being signed; a split bundle is written as a new set: choose another --out",
            ));
        }
        if !overwrite {
            for p in [&idx_path, &volumes::volume_path(out, 1)] {
                if p.exists() {
                    return Err(refused(
                        p,
                        "already exists; choose another --out or add --force to replace the split bundle",
                    ));
                }
            }
        }
        // Damage would otherwise be carried into a freshly signed index.
        s.check_volumes(true, observer)?;
        let mut chain = BufReader::new(s.chain());
        let (frame, consumed) = self.new_head_frame(&mut chain, &s.index_path)?;
        let dir = dir_of(out);
        let name = file_name(out);
        let mut vw = VolumeWriter {
            dir: dir.clone(),
            name: name.clone(),
            volume_size: s.index.volume_size,
            current: None,
            done: Vec::new(),
        };
        vw.write_all(&frame).map_err(io_err(&dir))?;
        let copied = io::copy(&mut chain, &mut vw).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => CosignError::Bundle(BundleError::Rejected {
                path: s.index_path.clone(),
                reason: e.to_string(),
            }),
            _ => io_err(&dir)(e),
        })?;
        let parts = vw.finish().map_err(io_err(&dir))?;
        if parts.len() > volumes::MAX_VOLUMES {
            return Err(refused(
                out,
                format!(
                    "would take {} volumes, more than {}",
                    parts.len(),
                    volumes::MAX_VOLUMES
                ),
            ));
        }
        // A set with parity volumes keeps as many: they are computed anew
        // over the new data volumes (the old ones protect the old bytes).
        let parity_parts = match &s.index.parity {
            Some(p) => {
                let layout = parity::Shape {
                    n: parts.len(),
                    k: p.volumes.len(),
                    volume_size: s.index.volume_size,
                    block: parity::block_size_for(
                        s.index.volume_size,
                        parts.len(),
                        p.volumes.len(),
                    ),
                };
                let pv = volumes::write_parity(&dir, &name, &layout, &parts, observer)?;
                Some((layout, pv))
            }
            None => None,
        };
        let mut index: VolumeIndex = s.index.clone();
        index.bundle = name.clone();
        index.volumes = parts.iter().map(|(_, e)| e.clone()).collect();
        index.total_size = index.volumes.iter().map(|v| v.size).sum();
        if let (Some(p), Some((layout, pv))) = (index.parity.as_mut(), &parity_parts) {
            p.block_size = layout.block;
            p.volumes = pv.iter().map(|(_, e)| e.clone()).collect();
        }
        index
            .validate()
            .map_err(|e| refused(out, format!("the new volume index is invalid: {e}")))?;
        let index_bytes = index.to_bytes();
        let comment = index.trusted_comment();
        let clobber = if overwrite {
            Clobber::Replace
        } else {
            Clobber::Refuse
        };
        if overwrite && idx_path.exists() {
            // The set being replaced goes first, index first, so no stale
            // volume or index signature joins the new set.
            let old = volumes::load_split(&idx_path).ok();
            std::fs::remove_file(&idx_path).map_err(io_err(&idx_path))?;
            durable::sync_dir(&dir).map_err(io_err(&dir))?;
            if let Some(old) = old {
                for p in old.all_files()? {
                    match std::fs::remove_file(&p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err(&p)(e)),
                    }
                }
            }
        }
        let mut volume_paths = Vec::new();
        for (tmp, entry) in parts {
            let to = volumes::volume_path(out, entry.number);
            durable::persist_path(tmp, &to, clobber).map_err(io_err(&to))?;
            volume_paths.push(to);
        }
        for (tmp, entry) in parity_parts.into_iter().flat_map(|(_, pv)| pv) {
            let to = parity::parity_path(out, entry.number);
            durable::persist_path(tmp, &to, clobber).map_err(io_err(&to))?;
            volume_paths.push(to);
        }
        let mut index_signatures = Vec::new();
        for k in index_keys {
            let sig = Signature::sign(k, &index_bytes, &comment);
            let text = sig.to_text(&format!(
                "gapferry signature of {name}{} by key {}",
                volumes::INDEX_SUFFIX,
                k.key_id
            ));
            let to = volumes::signature_path(&idx_path, k.key_id);
            durable::write_atomic(&to, text.as_bytes(), durable::FILE_MODE, Clobber::Replace)
                .map_err(io_err(&to))?;
            index_signatures.push(to);
        }
        durable::write_atomic(&idx_path, &index_bytes, durable::FILE_MODE, clobber)
            .map_err(io_err(&idx_path))?;
        Ok(CosignWritten {
            bundle: idx_path,
            volumes: volume_paths,
            index_signatures,
            added: self.added.iter().map(|s| s.key_id).collect(),
            signers: self.signers(),
            head_before: consumed,
            head_after: frame.len() as u64,
            copied,
        })
    }
}

/// `content` as one zstd frame of raw blocks exactly `len` bytes long (no
/// checksum, window 128 KiB), or `None` when no such frame exists: the
/// header is 6, 10 or 14 bytes (no content size, or a 4- or 8-byte one) and
/// each block adds 3 bytes, so any length from about 20 bytes over the
/// content up to 3 bytes per content byte can be met exactly.
fn stored_frame_of_len(content: &[u8], len: u64) -> Option<Vec<u8>> {
    const BLOCK: u64 = 128 << 10;
    let c = content.len() as u64;
    let over = len.checked_sub(c)?;
    // (header length, descriptor byte, content size bytes)
    let (hdr, fhd, fcs): (u64, u8, Vec<u8>) = match over.checked_sub(6)? % 3 {
        0 => (6, 0x00, Vec::new()),
        1 => (10, 0x80, u32::try_from(c).ok()?.to_le_bytes().to_vec()),
        _ => (14, 0xC0, c.to_le_bytes().to_vec()),
    };
    let n = over.checked_sub(hdr)? / 3;
    if n == 0 || n > c.max(1) || c.div_ceil(n) > BLOCK {
        return None;
    }
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&[0x28, 0xB5, 0x2F, 0xFD, fhd, (17 - 10) << 3]);
    out.extend_from_slice(&fcs);
    let (base, extra) = (c / n, c % n);
    let mut at = 0usize;
    for i in 0..n {
        let size = base + u64::from(i < extra);
        let h = (size as u32) << 3 | u32::from(i + 1 == n);
        out.extend_from_slice(&h.to_le_bytes()[..3]);
        out.extend_from_slice(&content[at..at + size as usize]);
        at += size as usize;
    }
    debug_assert_eq!(out.len() as u64, len);
    Some(out)
}

/// Decodes the leading frames of a bundle until they hold the manifest and
/// its `n_sigs` signature entries: returns the decoded bytes of those
/// frames, their compressed length and the offset just after the last
/// signature entry. Bounded by the head's budget (8 frames, 17 MiB); a
/// bundle whose first frame holds more (one frame for everything, as early
/// releases and `tar | zstd` wrote) is refused.
fn read_head_frames(
    input: &mut dyn Read,
    n_sigs: usize,
    name: &Path,
) -> Result<(Vec<u8>, u64, usize), CosignError> {
    let unaligned = || {
        refused(
            name,
            "its manifest and signatures share one large zstd frame with the payload (an early gapferry release or `tar | zstd` wrote it), so a signature cannot be added without recompressing the whole bundle; export it again with this gapferry, then sign",
        )
    };
    let mut content = Vec::new();
    let mut consumed = 0u64;
    for _ in 0..MAX_HEAD_FRAMES {
        let frame = match frames::read_frame(input, MAX_HEAD_INPUT - consumed) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => return Err(unaligned()),
            Err(e) => {
                return Err(CosignError::Bundle(BundleError::Rejected {
                    path: name.to_path_buf(),
                    reason: format!("damaged compressed data in the head: {e}"),
                }))
            }
        };
        consumed += frame.len() as u64;
        let room = MAX_HEAD_INPUT - content.len() as u64;
        let dec = Frames::new(&frame[..]).map_err(io_err(name))?;
        dec.take(room + 1).read_to_end(&mut content).map_err(|e| {
            CosignError::Bundle(BundleError::Rejected {
                path: name.to_path_buf(),
                reason: format!("damaged compressed data in the head: {e}"),
            })
        })?;
        if content.len() as u64 > MAX_HEAD_INPUT {
            return Err(unaligned());
        }
        if let Some(at) = signatures_end(&content, n_sigs).map_err(|e| refused(name, e))? {
            return Ok((content, consumed, at));
        }
    }
    Err(unaligned())
}

/// The offset just after the manifest entry and `n_sigs` signature entries
/// of a decoded head, or `None` when `content` does not hold them all yet.
fn signatures_end(content: &[u8], n_sigs: usize) -> Result<Option<usize>, String> {
    let mut at = 0usize;
    for i in 0..=n_sigs {
        let Some(block) = content.get(at..at + 512) else {
            return Ok(None);
        };
        let h = tar::Header::from_byte_slice(block);
        let path = h.path_bytes();
        let expected = if i == 0 {
            path.as_ref() == MANIFEST_PATH.as_bytes()
        } else {
            path.starts_with(SIGNATURES_DIR.as_bytes())
        };
        if !expected {
            return Err(format!(
                "the head does not read as it did a moment ago (entry {} is {}); try again",
                i + 1,
                path.escape_ascii()
            ));
        }
        let size = h
            .entry_size()
            .map_err(|_| "a head entry has an unreadable size".to_string())?;
        at += 512 + size.div_ceil(512) as usize * 512;
    }
    Ok((at <= content.len()).then_some(at))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
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

fn temp_in(dir: &Path, name: &str) -> Result<tempfile::NamedTempFile, CosignError> {
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(io_err(dir))
}

/// Cuts what is written into volumes of `volume_size` bytes under
/// temporary names, hashing each.
struct VolumeWriter {
    dir: PathBuf,
    name: String,
    volume_size: u64,
    current: Option<(tempfile::NamedTempFile, Sha256, u64)>,
    done: Vec<(tempfile::TempPath, VolumeEntry)>,
}

impl VolumeWriter {
    fn close_current(&mut self) -> io::Result<()> {
        if let Some((tmp, h, size)) = self.current.take() {
            tmp.as_file().sync_all()?;
            let number = self.done.len() + 1;
            self.done.push((
                tmp.into_temp_path(),
                VolumeEntry {
                    number,
                    size,
                    sha256: to_hex(&h.finalize().into()),
                },
            ));
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<Vec<(tempfile::TempPath, VolumeEntry)>> {
        self.close_current()?;
        Ok(self.done)
    }
}

impl Write for VolumeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self
            .current
            .as_ref()
            .is_some_and(|(_, _, n)| *n == self.volume_size)
        {
            self.close_current()?;
        }
        if self.current.is_none() {
            let number = self.done.len() + 1;
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".{}.{number:03}.", self.name))
                .suffix(".partial")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .tempfile_in(&self.dir)?;
            self.current = Some((tmp, Sha256::new(), 0));
        }
        let (tmp, h, n) = self.current.as_mut().expect("just opened");
        let room = (self.volume_size - *n).min(buf.len() as u64) as usize;
        let w = tmp.as_file_mut().write(&buf[..room])?;
        h.update(&buf[..w]);
        *n += w as u64;
        Ok(w)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_frames_of_any_reachable_length_decode_to_the_content() {
        for c in [1usize, 2, 700, 4096, 300_000] {
            let content: Vec<u8> = (0..c).map(|i| (i * 31 % 253) as u8).collect();
            for len in (c as u64 + 6)..(c as u64 + 40) {
                if let Some(f) = stored_frame_of_len(&content, len) {
                    assert_eq!(f.len() as u64, len);
                    let mut got = Vec::new();
                    Frames::new(&f[..]).unwrap().read_to_end(&mut got).unwrap();
                    assert!(got == content, "c {c} len {len}");
                    assert_eq!(zstd::stream::decode_all(&f[..]).unwrap(), content);
                }
            }
            // From a few bytes over to a block and more beyond, every
            // length is met when the content has bytes enough for the blocks.
            for len in (c as u64 + 20)..(c as u64 + 4200) {
                let over = len - c as u64;
                if (c as u64).div_ceil(128 << 10) * 3 + 14 <= over && over <= 3 * c as u64 {
                    assert!(
                        stored_frame_of_len(&content, len).is_some(),
                        "c {c} len {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn signatures_end_needs_every_entry_whole() {
        let mut head = Vec::new();
        for (name, size) in [
            (MANIFEST_PATH.to_string(), 700u64),
            (format!("{SIGNATURES_DIR}0000000000000001.minisig"), 300),
        ] {
            head.extend_from_slice(header(&name, size, 0).unwrap().as_bytes());
            head.extend(std::iter::repeat_n(b'x', size as usize));
            head.extend_from_slice(tar_padding(size));
        }
        assert_eq!(head.len(), 512 + 1024 + 512 + 512);
        assert_eq!(signatures_end(&head, 1).unwrap(), Some(head.len()));
        assert_eq!(signatures_end(&head[..head.len() - 1], 1).unwrap(), None);
        assert_eq!(signatures_end(&head[..100], 1).unwrap(), None);
        assert_eq!(signatures_end(&head, 0).unwrap(), Some(1536));
        // A payload header where a signature should be.
        let mut other = head[..1536].to_vec();
        other.extend_from_slice(header("payload/x", 3, 0).unwrap().as_bytes());
        assert!(signatures_end(&other, 1).is_err());
    }
}
