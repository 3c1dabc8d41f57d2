//! gapferry carries Microsoft Defender for Endpoint offline definition updates
//! across an air gap in signed, portable bundles.
//!
//! The library owns everything that can be tested without a terminal: key and
//! signature formats, the manifest, the bundle writer and reader, the mirror,
//! and the Defender-specific layout. It never prints, never prompts and never
//! draws progress bars; callers pass an [`progress::Observer`] instead.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod bundleid;
pub mod durable;
pub mod error;
pub mod eventlog;
pub mod export;
pub mod faults;
pub mod keys;
pub mod manifest;
pub mod mde;
pub mod mirror;
pub mod profile;
pub mod progress;
pub mod s3;
pub mod safepath;
pub mod sequence;
pub mod sha256hex;
pub mod sign;
pub mod text;
pub mod timestamp;
pub mod trustpolicy;
pub mod units;
pub mod verify;
pub mod windows;

pub use error::{Error, ExitKind};
