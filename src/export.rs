//! Export as a library call, used by `gapferry export` and the demo: take
//! what a profile collected ([`Collection`]: items and payload files), take
//! the channel's next sequence number, and write and sign the bundle (one
//! file, or split into volumes with a signed index). It never names a
//! profile: the caller collects through one (`mde::collect` today).
//!
//! It owns the order of those steps: an existing output is refused before a
//! sequence number is spent on it, and nothing is written at the output on
//! failure. It never prints; progress goes to the observer it is given.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::bundle::volumes::{self, SplitWritten, VolumeIndex};
use crate::bundle::writer::{self, BundleSpec, WriteOptions, Written};
use crate::bundle::BundleError;
use crate::error::{Classify, ExitKind};
use crate::keys::SecretKey;
use crate::profile::Collection;
use crate::progress::Observer;
use crate::sequence::{self, SequenceError};

/// What to export, checked by the caller.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// What to carry, collected by the caller through its profile.
    pub collection: Collection,
    /// The bundle file (with `split`: the name the volumes and index take).
    pub out: PathBuf,
    pub channel: String,
    pub expires_in: Duration,
    /// Where the channel's sequence counter lives.
    pub sequence_dir: PathBuf,
    /// A sequence number to use instead of the next one.
    pub sequence: Option<u64>,
    /// The manifest's `producer`.
    pub producer: String,
    /// Split into volumes of at most this many bytes.
    pub split: Option<u64>,
    /// With `split`: this many parity volumes (0: none).
    pub parity: usize,
    /// Compression level and whether to replace `out`.
    pub write: WriteOptions,
    /// Trust policy versions to carry in the head (`--trust-policy`).
    pub trust: Vec<crate::trustpolicy::SignedPolicy>,
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    /// The bundle (for a split one: the whole stream).
    pub written: Written,
    /// The volumes and index of a split bundle.
    pub split: Option<SplitParts>,
}

/// The files of a split bundle.
#[derive(Debug)]
pub struct SplitParts {
    pub index_path: PathBuf,
    pub index: VolumeIndex,
    pub volume_paths: Vec<PathBuf>,
    pub parity_paths: Vec<PathBuf>,
    pub signature_paths: Vec<PathBuf>,
}

/// Why an export did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error("{} already exists; choose another --out or add --force to replace it", .path.display())]
    Exists { path: PathBuf },
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error("export to {} failed; nothing was written there", .out.display())]
    Write {
        out: PathBuf,
        #[source]
        source: BundleError,
    },
}

impl Classify for ExportError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            ExportError::Exists { .. } => ExitKind::Operational,
            ExportError::Sequence(e) => e.exit_kind(),
            ExportError::Write { source, .. } => source.exit_kind(),
        }
    }
}

/// A fresh random bundle id: 32 hex digits.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the operating system's random source failed");
    hex::encode(b)
}

/// Numbers, writes and signs one bundle of `req.collection` with every key
/// in `keys` (at least one).
pub fn export(
    req: &ExportRequest,
    keys: &[SecretKey],
    observer: &dyn Observer,
) -> Result<Exported, ExportError> {
    // Refuse an existing output before a sequence number is spent on it.
    if !req.write.overwrite && req.out.exists() {
        return Err(ExportError::Exists {
            path: req.out.clone(),
        });
    }
    let now = SystemTime::now();
    let seq = sequence::allocate(&req.sequence_dir, &req.channel, now, req.sequence)?;
    let spec = BundleSpec {
        bundle_id: random_id(),
        channel: req.channel.clone(),
        sequence: seq,
        created: now,
        expires: now + req.expires_in,
        producer: req.producer.clone(),
        profile: req.collection.profile.to_string(),
        items: req.collection.items.clone(),
        files: req.collection.files.clone(),
        trust: req.trust.clone(),
    };
    let failed = |source| ExportError::Write {
        out: req.out.clone(),
        source,
    };
    let (written, split) = match req.split {
        None => (
            writer::write_bundle(&spec, keys, &req.out, &req.write, observer).map_err(failed)?,
            None,
        ),
        Some(size) => {
            let SplitWritten {
                written,
                index_path,
                index,
                volume_paths,
                parity_paths,
                signature_paths,
            } = volumes::write_split(
                &spec, keys, &req.out, size, req.parity, &req.write, observer,
            )
            .map_err(failed)?;
            let parts = SplitParts {
                index_path,
                index,
                volume_paths,
                parity_paths,
                signature_paths,
            };
            (written, Some(parts))
        }
    };
    Ok(Exported { written, split })
}
