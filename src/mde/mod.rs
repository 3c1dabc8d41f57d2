//! Microsoft Defender for Endpoint knowledge: the download-folder and mirror
//! layout (`<platform>/<ring>/arch_<arch>/{updates.zip,manifest.json}`),
//! Microsoft's per-folder `manifest.json`, and dotted version numbers.
//!
//! The bundle core knows nothing of Defender; everything MDE-specific lives
//! here so that other profiles can come later.

pub mod fetch;
pub mod layout;
pub mod profile;
pub mod upstream;
pub mod version;

pub use layout::{Arch, FolderManifest, FolderManifestError, Platform, Ring, Slot};
pub use version::Version;

/// The profile name recorded in bundle manifests for this layout.
pub const PROFILE: &str = "mde";
/// The package file in every arch folder.
pub const UPDATES_ZIP: &str = "updates.zip";
/// Microsoft's version file in every arch folder.
pub const MANIFEST_JSON: &str = "manifest.json";
pub mod check;
pub mod collect;
pub mod endpoint;
pub mod zipcheck;
