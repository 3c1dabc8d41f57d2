//! The folder layout shared by Microsoft's downloader, the download folder,
//! and the mirror: `<platform>/<ring>/arch_<arch>/`, with n-1 in
//! `<platform>/<ring>_back/arch_<arch>/`, and Microsoft's `manifest.json`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::version::Version;

macro_rules! name_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident = $s:literal),+ $(,)? } what = $what:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($var),+ }

        impl $name {
            /// Every value, in layout order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The name used in paths, manifests and on the command line.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err(format!(
                        "unknown {} {:?}: expected one of {}",
                        $what,
                        s,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}

name_enum!(
    /// An endpoint operating system.
    Platform { Linux = "linux", Mac = "mac" } what = "platform"
);
name_enum!(
    /// A release ring.
    Ring { Production = "production", Preview = "preview" } what = "ring"
);
name_enum!(
    /// A CPU architecture.
    Arch { X86_64 = "x86_64", Arm64 = "arm64" } what = "arch"
);

/// One arch folder of the layout: a platform, ring and arch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    pub platform: Platform,
    pub ring: Ring,
    pub arch: Arch,
}

impl Slot {
    /// Every slot in layout order (linux before mac, production before preview).
    pub fn all() -> impl Iterator<Item = Slot> {
        Platform::ALL.iter().flat_map(|&platform| {
            Ring::ALL.iter().flat_map(move |&ring| {
                Arch::ALL.iter().map(move |&arch| Slot {
                    platform,
                    ring,
                    arch,
                })
            })
        })
    }

    /// `arch_<arch>`, the folder name an endpoint appends to its URL.
    pub fn arch_dir(&self) -> String {
        format!("arch_{}", self.arch)
    }

    /// `<platform>/<ring>`, the folder `offlineDefinitionUpdateUrl` names.
    pub fn ring_rel(&self) -> String {
        format!("{}/{}", self.platform, self.ring)
    }

    /// `<platform>/<ring>_back`, where n-1 lives.
    pub fn back_ring_rel(&self) -> String {
        format!("{}/{}_back", self.platform, self.ring)
    }

    /// `<platform>/<ring>/arch_<arch>` with forward slashes.
    pub fn rel(&self) -> String {
        format!("{}/{}", self.ring_rel(), self.arch_dir())
    }

    /// `<platform>/<ring>_back/arch_<arch>` with forward slashes.
    pub fn back_rel(&self) -> String {
        format!("{}/{}", self.back_ring_rel(), self.arch_dir())
    }

    /// The current folder under `root`.
    pub fn dir_in(&self, root: &Path) -> PathBuf {
        root.join(self.platform.as_str())
            .join(self.ring.as_str())
            .join(self.arch_dir())
    }

    /// The n-1 folder under `root`.
    pub fn back_dir_in(&self, root: &Path) -> PathBuf {
        root.join(self.platform.as_str())
            .join(format!("{}_back", self.ring))
            .join(self.arch_dir())
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rel())
    }
}

/// Microsoft's per-folder `manifest.json`:
/// `{"EngineVersion": "1.1.x.y", "DefinitionVersion": "1.4xx.y.0"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderManifest {
    #[serde(rename = "EngineVersion")]
    pub engine_version: String,
    #[serde(rename = "DefinitionVersion")]
    pub definition_version: String,
}

/// A `manifest.json` that cannot be read or does not hold two dotted versions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FolderManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a Defender manifest.json (expected {{\"EngineVersion\": ..., \"DefinitionVersion\": ...}}): {reason}")]
    Malformed { path: PathBuf, reason: String },
}

impl FolderManifest {
    /// Largest manifest.json accepted; Microsoft's are under 100 bytes.
    pub const MAX_SIZE: u64 = 64 * 1024;

    /// Parses and checks the bytes of a manifest.json; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, FolderManifestError> {
        let malformed = |reason: String| FolderManifestError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.len() as u64 > Self::MAX_SIZE {
            return Err(malformed(format!("{} bytes is too large", bytes.len())));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| malformed(e.to_string()))?;
        // Microsoft's script writes a UTF-8 BOM on some systems.
        let text = text.trim_start_matches('\u{feff}');
        let m: FolderManifest = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        m.engine()
            .map_err(|e| malformed(format!("EngineVersion: {e}")))?;
        m.definitions()
            .map_err(|e| malformed(format!("DefinitionVersion: {e}")))?;
        Ok(m)
    }

    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Self, FolderManifestError> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|source| FolderManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut bytes = Vec::new();
        file.take(Self::MAX_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| FolderManifestError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Self::parse(&bytes, path)
    }

    /// The engine version as a comparable number.
    pub fn engine(&self) -> Result<Version, super::version::VersionError> {
        self.engine_version.parse()
    }

    /// The definition version as a comparable number.
    pub fn definitions(&self) -> Result<Version, super::version::VersionError> {
        self.definition_version.parse()
    }

    /// The bytes gapferry writes for this manifest (Microsoft's key names).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("two strings always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_paths() {
        let s = Slot {
            platform: Platform::Mac,
            ring: Ring::Preview,
            arch: Arch::Arm64,
        };
        assert_eq!(s.rel(), "mac/preview/arch_arm64");
        assert_eq!(s.back_rel(), "mac/preview_back/arch_arm64");
        assert_eq!(Slot::all().count(), 8);
        assert_eq!("linux".parse::<Platform>().unwrap(), Platform::Linux);
        assert!("windows".parse::<Platform>().is_err());
    }

    #[test]
    fn folder_manifest_round_trip_and_rejects() {
        let p = Path::new("x/manifest.json");
        let m = FolderManifest::parse(
            br#"{"EngineVersion": "1.1.24090.4", "DefinitionVersion": "1.419.1.0"}"#,
            p,
        )
        .unwrap();
        assert_eq!(FolderManifest::parse(&m.to_bytes(), p).unwrap(), m);
        assert!(FolderManifest::parse(b"<html>", p).is_err());
        assert!(
            FolderManifest::parse(br#"{"EngineVersion": "x", "DefinitionVersion": "1"}"#, p)
                .is_err()
        );
    }
}
