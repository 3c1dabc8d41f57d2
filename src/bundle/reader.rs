//! Streaming bundle reader. It decodes zstd, walks tar headers itself and
//! hands out only what the format allows, in order:
//!
//! 1. [`BundleReader::read_head`]: the manifest (size-capped, strictly
//!    parsed) and the signature entries. Nothing of the payload is read
//!    beyond the first header block, so inspecting a 2 GB bundle costs the
//!    same as a 10 MB one.
//! 2. [`BundleReader::copy_file`], once per manifest file in order: checks the
//!    next header is that regular file with that size, streams exactly that
//!    many bytes to a writer and checks the SHA-256.
//! 3. [`BundleReader::finish`]: the end-of-archive marker, then only zero
//!    padding (bounded), then the end of the last zstd frame, with nothing
//!    after it.
//!
//! The zstd frames themselves are walked by [`super::frames`], which holds
//! the head to its frame and byte budget until [`BundleReader::read_head`]
//! is done, so the work before a signature is checked stays bounded.
//!
//! The reader never creates files and never trusts a header field it has not
//! checked against the manifest; links, devices, FIFOs, PAX and GNU
//! extension headers are all refused.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::frames::{Frames, FramingError};
use super::hashing::{to_hex, BackgroundHasher, CHUNK};
use super::{
    BundleError, MANIFEST_PATH, MAX_SIGNATURES, MAX_TRAILING_ZEROS, MAX_TRUST_BYTES, PAYLOAD_DIR,
    SIGNATURES_DIR, TRUST_DIR,
};
use crate::keys::KeyId;
use crate::manifest::{FileEntry, Manifest, DAMAGED_IN_TRANSIT, MAX_MANIFEST_SIZE};
use crate::progress::Observer;
use crate::sign::{Signature, MAX_SIGNATURE_FILE};

/// The manifest and signatures at the start of a bundle.
#[derive(Debug, Clone)]
pub struct Head {
    pub manifest: Manifest,
    /// The exact signed bytes.
    pub manifest_bytes: Vec<u8>,
    /// Lower-case hex SHA-256 of `manifest_bytes`.
    pub manifest_sha256: crate::sha256hex::Sha256Hex,
    pub signatures: Vec<Signature>,
    /// The trust policy versions the bundle carries, ascending, with their
    /// root signatures (parsed, not checked: see [`crate::trustpolicy`]).
    /// Empty for a bundle that carries none.
    pub trust: Vec<crate::trustpolicy::SignedPolicy>,
}

/// A parsed tar header we have accepted as a regular file.
#[derive(Debug)]
struct FileHeader {
    path: Vec<u8>,
    size: u64,
}

/// Reads one bundle from a byte stream.
pub struct BundleReader<R: Read> {
    input: Frames<R>,
    path: PathBuf,
    pending: Option<FileHeader>,
    head: Option<Head>,
    next_file: usize,
}

impl<R: Read> std::fmt::Debug for BundleReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl BundleReader<std::fs::File> {
    /// Opens a bundle file.
    pub fn open(path: &Path) -> Result<Self, BundleError> {
        let f = std::fs::File::open(path).map_err(BundleError::io(path))?;
        Self::new(f, path)
    }
}

/// Where a tar block came from when it went wrong.
fn describe(path: &[u8]) -> String {
    path.escape_ascii().to_string()
}

impl<R: Read> BundleReader<R> {
    /// Wraps a byte stream; `path` names it in errors.
    pub fn new(input: R, path: &Path) -> Result<Self, BundleError> {
        let dec = Frames::new(input).map_err(BundleError::io(path))?;
        Ok(BundleReader {
            input: dec,
            path: path.to_path_buf(),
            pending: None,
            head: None,
            next_file: 0,
        })
    }

    fn reject(&self, reason: impl Into<String>) -> BundleError {
        BundleError::Rejected {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Maps a read error: data errors from zstd mean a damaged bundle.
    fn read_err(&self, e: io::Error, what: &str) -> BundleError {
        if let Some(rule) = e.get_ref().and_then(|e| e.downcast_ref::<FramingError>()) {
            return self.reject(rule.to_string());
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof => self.reject(format!(
                "truncated: the archive ends inside {what}; {DAMAGED_IN_TRANSIT}"
            )),
            io::ErrorKind::Other | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => self
                .reject(format!(
                    "damaged compressed data in {what}: {e}; {DAMAGED_IN_TRANSIT}"
                )),
            _ => BundleError::Io {
                path: self.path.clone(),
                source: e,
            },
        }
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), BundleError> {
        match self.input.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.read_err(e, what)),
        }
    }

    /// Reads the next header block. `None` at the end-of-archive marker.
    fn next_header(&mut self) -> Result<Option<FileHeader>, BundleError> {
        if let Some(h) = self.pending.take() {
            return Ok(Some(h));
        }
        let mut block = [0u8; 512];
        self.read_exact(&mut block, "a tar header")?;
        if block.iter().all(|&b| b == 0) {
            let mut second = [0u8; 512];
            self.read_exact(&mut second, "the end-of-archive marker")?;
            if second.iter().any(|&b| b != 0) {
                return Err(
                    self.reject("a zero block is followed by data (not an end-of-archive marker)")
                );
            }
            return Ok(None);
        }
        let header = tar::Header::from_byte_slice(&block);
        let stored = header
            .cksum()
            .map_err(|_| self.reject("tar header checksum field is not octal"))?;
        let computed: u32 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u32
                }
            })
            .sum();
        if stored != computed {
            return Err(self.reject(format!(
                "tar header checksum mismatch (damaged or not a tar header); {DAMAGED_IN_TRANSIT}"
            )));
        }
        if header.as_ustar().is_none() && header.as_gnu().is_none() {
            return Err(self.reject("tar header is not ustar or GNU format"));
        }
        let path = header.path_bytes().into_owned();
        let kind = header.entry_type();
        if !(kind.is_file() && matches!(block[156], b'0' | 0)) {
            let what = match block[156] {
                b'1' => "a hard link",
                b'2' => "a symbolic link",
                b'3' => "a character device",
                b'4' => "a block device",
                b'5' => "a directory",
                b'6' => "a FIFO",
                b'x' | b'g' => "a PAX extended header",
                b'L' | b'K' => "a GNU long-name header",
                _ => "an unsupported entry type",
            };
            return Err(self.reject(format!(
                "entry {} is {what}; bundles hold regular files only",
                describe(&path)
            )));
        }
        let size = header.entry_size().map_err(|_| {
            self.reject(format!("entry {} has an unreadable size", describe(&path)))
        })?;
        Ok(Some(FileHeader { path, size }))
    }

    /// Reads exactly `size` bytes of entry data (only used for small entries).
    fn read_small(&mut self, size: u64, what: &str) -> Result<Vec<u8>, BundleError> {
        let mut v = vec![0u8; size as usize];
        self.read_exact(&mut v, what)?;
        self.skip_padding(size, what)?;
        Ok(v)
    }

    fn skip_padding(&mut self, size: u64, what: &str) -> Result<(), BundleError> {
        let pad = ((512 - size % 512) % 512) as usize;
        let mut buf = [0u8; 512];
        self.read_exact(&mut buf[..pad], what)?;
        if buf[..pad].iter().any(|&b| b != 0) {
            return Err(self.reject(format!("non-zero padding after {what}")));
        }
        Ok(())
    }

    /// Reads the manifest and signatures. Call once, first.
    pub fn read_head(&mut self) -> Result<Head, BundleError> {
        assert!(self.head.is_none(), "read_head called twice");
        let first = self
            .next_header()?
            .ok_or_else(|| self.reject("the archive is empty"))?;
        if first.path != MANIFEST_PATH.as_bytes() {
            return Err(self.reject(format!(
                "first entry is {}, expected {MANIFEST_PATH} (not a gapferry bundle, or entries out of order)",
                describe(&first.path)
            )));
        }
        if first.size > MAX_MANIFEST_SIZE {
            return Err(self.reject(format!(
                "manifest is {} bytes, more than the 16 MiB limit",
                first.size
            )));
        }
        let manifest_bytes = self.read_small(first.size, MANIFEST_PATH)?;
        let manifest = Manifest::parse(&manifest_bytes).map_err(|e| self.reject(e.to_string()))?;
        let mut signatures: Vec<Signature> = Vec::new();
        while let Some(h) = self.next_header()? {
            let Some(name) = h.path.strip_prefix(SIGNATURES_DIR.as_bytes()) else {
                self.pending = Some(h);
                break;
            };
            let shown = describe(&h.path);
            let id = name
                .strip_suffix(b".minisig")
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse::<KeyId>().ok())
                .ok_or_else(|| {
                    self.reject(format!(
                        "signature entry {shown} is not named <16 upper-case hex digits>.minisig"
                    ))
                })?;
            if signatures.len() >= MAX_SIGNATURES {
                return Err(self.reject(format!("more than {MAX_SIGNATURES} signatures")));
            }
            if h.size > MAX_SIGNATURE_FILE as u64 {
                return Err(self.reject(format!("signature entry {shown} is larger than 8 KiB")));
            }
            let bytes = self.read_small(h.size, &shown)?;
            let sig = Signature::parse(&bytes).map_err(|e| self.reject(format!("{shown}: {e}")))?;
            if sig.key_id != id {
                return Err(self.reject(format!(
                    "{shown} holds a signature by key {}, not {id}",
                    sig.key_id
                )));
            }
            if signatures.iter().any(|s| s.key_id == id) {
                return Err(self.reject(format!("duplicate entry {shown}")));
            }
            signatures.push(sig);
        }
        if signatures.is_empty() {
            return Err(self.reject(format!(
                "no signatures: expected {SIGNATURES_DIR}<KEYID>.minisig after the manifest"
            )));
        }
        let trust = self.read_trust()?;
        let head = Head {
            manifest_sha256: crate::sha256hex::Sha256Hex::of(&manifest_bytes),
            manifest,
            manifest_bytes,
            signatures,
            trust,
        };
        self.head = Some(head.clone());
        // The header after the signatures was read too: the head is complete.
        self.input.end_head();
        Ok(head)
    }

    /// The trust entries after the signatures, if any: `<N>.json` then its
    /// signatures, versions going up by one, within the size bounds.
    fn read_trust(&mut self) -> Result<Vec<crate::trustpolicy::SignedPolicy>, BundleError> {
        use crate::trustpolicy::{files::MAX_CHAIN, SignedPolicy, MAX_POLICY_SIZE};
        let mut trust: Vec<SignedPolicy> = Vec::new();
        let mut used: u64 = 0;
        while let Some(h) = self.pending.take() {
            let Some(name) = h.path.strip_prefix(TRUST_DIR.as_bytes()) else {
                self.pending = Some(h);
                break;
            };
            let shown = describe(&h.path);
            used += 512 + h.size.div_ceil(512) * 512;
            if used > MAX_TRUST_BYTES {
                return Err(self.reject(format!(
                    "the trust entries take more than {MAX_TRUST_BYTES} bytes"
                )));
            }
            let name = std::str::from_utf8(name).unwrap_or("");
            let (number, sig_id) = match name.split_once(".json") {
                Some((n, "")) => (n, None),
                Some((n, rest)) => match rest
                    .strip_prefix('.')
                    .and_then(|r| r.strip_suffix(".minisig"))
                    .and_then(|r| r.parse::<KeyId>().ok())
                {
                    Some(id) => (n, Some(id)),
                    None => ("", None),
                },
                None => ("", None),
            };
            let number: u64 = match number.parse() {
                Ok(n) if !number.starts_with(['0', '+']) => n,
                _ => {
                    return Err(self.reject(format!(
                        "trust entry {shown} is not named <N>.json or <N>.json.<KEYID>.minisig"
                    )))
                }
            };
            match sig_id {
                None => {
                    if let Some(last) = trust.last() {
                        if number != last.version() + 1 {
                            return Err(self.reject(format!(
                                "trust entry {shown} follows version {} (carried versions go up by one)",
                                last.version()
                            )));
                        }
                    }
                    if trust.len() >= MAX_CHAIN {
                        return Err(
                            self.reject(format!("more than {MAX_CHAIN} trust policy versions"))
                        );
                    }
                    if h.size > MAX_POLICY_SIZE as u64 {
                        return Err(self.reject(format!(
                            "trust entry {shown} is larger than {MAX_POLICY_SIZE} bytes"
                        )));
                    }
                    let bytes = self.read_small(h.size, &shown)?;
                    let policy = SignedPolicy::parse(bytes)
                        .map_err(|e| self.reject(format!("{shown}: {e}")))?;
                    if policy.version() != number {
                        return Err(
                            self.reject(format!("{shown} holds version {}", policy.version()))
                        );
                    }
                    trust.push(policy);
                }
                Some(id) => {
                    if trust.last().map(SignedPolicy::version) != Some(number) {
                        return Err(self.reject(format!(
                            "trust entry {shown} is out of place (a signature follows the policy it signs)"
                        )));
                    }
                    if h.size > MAX_SIGNATURE_FILE as u64 {
                        return Err(
                            self.reject(format!("trust entry {shown} is larger than 8 KiB"))
                        );
                    }
                    let bytes = self.read_small(h.size, &shown)?;
                    let sig = Signature::parse(&bytes)
                        .map_err(|e| self.reject(format!("{shown}: {e}")))?;
                    if sig.key_id != id {
                        return Err(self.reject(format!(
                            "{shown} holds a signature by key {}, not {id}",
                            sig.key_id
                        )));
                    }
                    let last = trust.last_mut().expect("checked above");
                    last.add_signature(sig).map_err(|e| BundleError::Rejected {
                        path: self.path.clone(),
                        reason: format!("{shown}: {e}"),
                    })?;
                }
            }
            if let Some(next) = self.next_header()? {
                self.pending = Some(next);
            }
        }
        Ok(trust)
    }

    /// The manifest's file list (after [`Self::read_head`]).
    fn files(&self) -> &[FileEntry] {
        &self.head.as_ref().expect("read_head first").manifest.files
    }

    /// Streams the next payload file (manifest order) into `out`, checking its
    /// header, size and SHA-256. `out` sees unverified bytes: callers must
    /// treat what they wrote as untrusted until this returns `Ok`.
    pub fn copy_file(
        &mut self,
        out: &mut dyn Write,
        out_path: &Path,
        observer: &dyn Observer,
    ) -> Result<FileEntry, BundleError> {
        let idx = self.next_file;
        let entry = self
            .files()
            .get(idx)
            .cloned()
            .expect("copy_file called more often than the manifest has files");
        let want = format!("{PAYLOAD_DIR}{}", entry.path);
        let h = match self.next_header()? {
            Some(h) => h,
            None => {
                return Err(self.reject(format!(
                    "the archive ends before {want} (listed in the manifest)"
                )))
            }
        };
        if h.path != want.as_bytes() {
            let got = describe(&h.path);
            let listed = self
                .files()
                .iter()
                .any(|f| h.path == format!("{PAYLOAD_DIR}{}", f.path).as_bytes());
            return Err(self.reject(
                if h.path.starts_with(SIGNATURES_DIR.as_bytes())
                    || h.path.starts_with(TRUST_DIR.as_bytes())
                    || h.path == MANIFEST_PATH.as_bytes()
                {
                    format!("entry {got} is out of place (expected {want})")
                } else if listed {
                    format!("entry {got} is a duplicate or out of order (expected {want})")
                } else {
                    format!("entry {got} is not listed in the manifest (expected {want})")
                },
            ));
        }
        if h.size != entry.size {
            return Err(self.reject(format!(
                "{want} is {} bytes in the archive but {} in the manifest",
                h.size, entry.size
            )));
        }
        let hasher = BackgroundHasher::new();
        let mut left = entry.size;
        while left > 0 {
            let n = (left.min(CHUNK as u64)) as usize;
            let mut buf = hasher.buffer_of_len(n);
            if let Err(e) = self.input.read_exact(&mut buf) {
                return Err(self.read_err(e, &want));
            }
            out.write_all(&buf).map_err(BundleError::io(out_path))?;
            observer.advance(n as u64);
            hasher.update(buf);
            left -= n as u64;
        }
        self.skip_padding(entry.size, &want)?;
        let got = to_hex(&hasher.finish());
        if entry.sha256 != got {
            return Err(self.reject(format!(
                "{want}: SHA-256 is {got}, the manifest says {} (altered or damaged)",
                entry.sha256
            )));
        }
        self.next_file += 1;
        Ok(entry)
    }

    /// Checks that nothing follows the last listed file but the
    /// end-of-archive marker and bounded zero padding.
    pub fn finish(mut self) -> Result<(), BundleError> {
        if let Some(h) = self.next_header()? {
            return Err(self.reject(format!(
                "entry {} follows the last listed file (not in the manifest, or a duplicate)",
                describe(&h.path)
            )));
        }
        let mut seen: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match self.input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_err(e, "the data after the archive")),
            };
            if buf[..n].iter().any(|&b| b != 0) {
                return Err(self.reject("trailing data after the end of the archive"));
            }
            seen += n as u64;
            if seen > MAX_TRAILING_ZEROS {
                return Err(self.reject("more than 1 MiB of padding after the end of the archive"));
            }
        }
        Ok(())
    }

    /// Reads the whole payload into `io::sink()`, checking everything.
    pub fn verify_payload(mut self, observer: &dyn Observer) -> Result<(), BundleError> {
        let n = self.files().len();
        for _ in 0..n {
            self.copy_file(&mut io::sink(), Path::new("-"), observer)?;
        }
        self.finish()
    }
}
