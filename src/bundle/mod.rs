//! The bundle container (format v1): a zstd-compressed tar holding
//! `gapferry/manifest.json`, then `gapferry/signatures/<KEYID>.minisig`, then
//! `payload/<path>` in manifest order, and nothing else.
//!
//! [`writer`] hashes the payload first so the manifest can lead the archive;
//! [`reader`] walks the tar headers itself (never `Archive::unpack`) so that
//! nothing but listed regular files, in order, with their listed sizes and
//! hashes, ever reaches a caller. [`trust`] applies the trust set and the
//! threshold to a bundle's signatures.

pub mod cosign;
pub mod frames;
pub mod hashing;
pub mod parity;
pub mod reader;
pub mod repair;
pub mod trust;
pub mod volumes;
pub mod writer;

use std::path::PathBuf;

use crate::error::{Classify, ExitKind};

/// Tar path of the manifest.
pub const MANIFEST_PATH: &str = "gapferry/manifest.json";
/// Tar folder of the signatures.
pub const SIGNATURES_DIR: &str = "gapferry/signatures/";
/// Tar folder of the carried trust policy versions (`<N>.json`) and their
/// root signatures (`<N>.json.<KEYID>.minisig`), between the signatures
/// and the payload (docs/FORMAT.md section 11).
pub const TRUST_DIR: &str = "gapferry/trust/";
/// Most bytes the trust entries of a head may take, tar headers and padding
/// included; with the largest manifest and signatures the head still fits
/// [`MAX_HEAD_INPUT`].
pub const MAX_TRUST_BYTES: u64 = 256 * 1024;
/// Tar folder of the payload.
pub const PAYLOAD_DIR: &str = "payload/";
/// Most signatures one bundle may carry.
pub const MAX_SIGNATURES: usize = 16;
/// Most zero bytes accepted after the end-of-archive marker (tar pads to a
/// record size; 1 MiB is far more than any tar writer adds).
pub const MAX_TRAILING_ZEROS: u64 = 1024 * 1024;
/// Largest zstd window accepted when decoding (log2): 16 MiB bounds memory
/// whatever the bundle claims. gapferry writes windows well below this.
pub const MAX_WINDOW_LOG: u32 = 24;
/// Most zstd frames the head (manifest, signatures and the tar header after
/// them) may span. gapferry's writer has always used one or two: the head
/// frame, then the first payload header in the next.
pub const MAX_HEAD_FRAMES: u64 = 8;
/// Bytes of the file within which the head's blocks must lie: 17 MiB, the
/// largest head (a 16 MiB manifest and 16 signatures of 8 KiB, about
/// 16.2 MiB) plus a 128 KiB block past its end, with room to spare.
/// Bounds what an unsigned file can make a reader decode before its
/// signatures are checked.
pub const MAX_HEAD_INPUT: u64 = 17 * 1024 * 1024;
/// Frames plus blocks a bundle may hold regardless of its size. gapferry's
/// writer uses one frame and one or two blocks per file at most (10 000
/// files), besides 128 KiB blocks.
pub const FRAMING_ALLOWANCE: u64 = 65_536;
/// Beyond the allowance, one more frame or block per this many decoded
/// bytes: a tiny frame or block costs a reader about what decoding 1 KiB does.
pub const FRAMING_BYTES_PER_UNIT: u64 = 1024;

/// Errors reading, verifying or writing a bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Reading or writing a file failed (exit 1).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The bundle is malformed, tampered or unsafe (exit 3).
    #[error("{path}: bundle rejected: {reason}")]
    Rejected { path: PathBuf, reason: String },
    /// The bundle is refused by policy (exit 4).
    #[error("{path}: refused by policy: {reason}")]
    Policy { path: PathBuf, reason: String },
    /// Making a bundle failed because of its inputs (exit 1).
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
}

impl Classify for BundleError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            BundleError::Io { .. } | BundleError::Input { .. } => ExitKind::Operational,
            BundleError::Rejected { .. } => ExitKind::Rejected,
            BundleError::Policy { .. } => ExitKind::Policy,
        }
    }
}

impl BundleError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BundleError {
        let path = path.into();
        move |source| BundleError::Io { path, source }
    }
}
