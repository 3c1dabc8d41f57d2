//! Microsoft Defender Antivirus on Windows: the security intelligence
//! package `mpam-fe.exe` per architecture, the folders a Windows file-share
//! update source expects (`\\server\share\<arch>\mpam-fe.exe`), the package's
//! own checks (a complete PE with a version resource, an embedded
//! Authenticode signature), and the `windows` profile of the seam.
//!
//! Everything Windows-specific lives here; the bundle core and the mirror
//! only see it through [`crate::profile::Profile`].

pub mod collect;
pub mod endpoint;
pub mod fetch;
pub mod pe;
pub mod pe_fake;
pub mod profile;

use std::fmt;
use std::str::FromStr;

/// The profile name recorded in bundle manifests of Windows packages.
pub const PROFILE: &str = "windows";
/// The full security intelligence package in every arch folder.
pub const MPAM_FE: &str = "mpam-fe.exe";
/// The one `platform` value of a `windows` item.
pub const PLATFORM: &str = "windows";
/// The one `ring` value of a `windows` item: Microsoft publishes one
/// package stream per architecture, with no rings.
pub const RING: &str = "production";
/// The mirror folder holding the arch folders (`<mirror>/windows/<arch>/`).
pub const GROUP: &str = "windows";

/// Largest package accepted anywhere (Microsoft's are about 200 MB today);
/// the whole package is read into memory to check it.
pub const MAX_PACKAGE: u64 = 1 << 30;

/// A Windows architecture, as Microsoft's download link (`arch=`) and the
/// share's folder names spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WinArch {
    X64,
    X86,
    Arm64,
}

impl WinArch {
    /// Every architecture, in layout order.
    pub const ALL: &'static [WinArch] = &[WinArch::X64, WinArch::X86, WinArch::Arm64];
    /// What `fetch --platform windows` fetches without `--arch`: the two
    /// architectures whose link and share folder Microsoft documents
    /// (`arm64` is fetched only when asked for; see OPERATIONS.md).
    pub const DEFAULT: &'static [WinArch] = &[WinArch::X64, WinArch::X86];

    /// The folder name and the `arch=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            WinArch::X64 => "x64",
            WinArch::X86 => "x86",
            WinArch::Arm64 => "arm64",
        }
    }

    /// The PE `Machine` value of a package for this architecture.
    pub fn machine(self) -> u16 {
        match self {
            WinArch::X64 => 0x8664,
            WinArch::X86 => 0x014c,
            WinArch::Arm64 => 0xaa64,
        }
    }

    /// The unit key: `windows/<arch>`.
    pub fn key(self) -> crate::profile::UnitKey {
        crate::profile::UnitKey::from(self.rel())
    }

    /// `windows/<arch>`, the folder in a download folder and a mirror.
    pub fn rel(self) -> String {
        format!("{GROUP}/{}", self.as_str())
    }

    /// The arch a unit key names, if it names one.
    pub fn from_key(key: &crate::profile::UnitKey) -> Option<WinArch> {
        WinArch::ALL
            .iter()
            .copied()
            .find(|a| a.rel() == key.as_str())
    }
}

impl fmt::Display for WinArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WinArch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        WinArch::ALL
            .iter()
            .copied()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown Windows arch {s:?}: expected one of x64, x86, arm64"))
    }
}
