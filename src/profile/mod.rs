//! The profile seam: what a kind of carried content (Defender's offline
//! updates today) tells the profile-neutral core. A profile turns a signed
//! manifest into units, checks a staged unit, reads the versions a folder
//! serves, orders versions, and places a unit in a mirror.
//!
//! The bundle format and the mirror only ever see the types here ([`Unit`],
//! [`UnitKey`], [`Versions`], [`Placement`]) and a `&dyn Profile` found by
//! the manifest's `profile` field ([`find`]); they never name a profile.
//! This module must never read bundles or write to a mirror.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, ManifestError};

/// The opaque key of one unit in a mirror (for `mde`, the layout path
/// `linux/production/arch_x86_64`). The mirror keys `state.json`, the
/// ledger and its reports by it, as the plain string it always was.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnitKey(String);

impl UnitKey {
    /// The key as written in `state.json` and the ledger.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that `{:<30}` lines keys up in tables.
        f.pad(&self.0)
    }
}

impl FromStr for UnitKey {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(UnitKey(s.to_string()))
    }
}

impl From<String> for UnitKey {
    fn from(s: String) -> Self {
        UnitKey(s)
    }
}

impl From<&str> for UnitKey {
    fn from(s: &str) -> Self {
        UnitKey(s.to_string())
    }
}

impl std::borrow::Borrow<str> for UnitKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The two versions a unit records, in the v1 shape of `state.json` and the
/// ledger (whose field names are a public contract). A profile with a
/// single version uses `definition_version` for it and repeats it in
/// `engine_version`; [`Profile::older`] alone decides what they mean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub engine_version: String,
    pub definition_version: String,
}

/// Which way a unit's incoming versions are older than the served ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Older {
    /// The primary version (Defender: definitions) is older.
    Primary,
    /// Same primary version, older secondary one (Defender: engine).
    Secondary,
}

/// One file of a unit: its index in `manifest.files` and its name in the
/// unit's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    pub index: usize,
    pub name: String,
}

/// Where a unit's folder goes: `<root>/<area>/<group>/<leaf>` in a mirror,
/// or `<target>/<leaf>` under a folder the operator names; n-1 goes to
/// `<group>_back/<leaf>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub area: String,
    pub group: String,
    pub leaf: String,
}

impl Placement {
    /// The unit's folder under a mirror `root`.
    pub fn dir_in(&self, root: &Path) -> std::path::PathBuf {
        root.join(&self.area).join(&self.group).join(&self.leaf)
    }

    /// Its n-1 folder under a mirror `root`.
    pub fn back_dir_in(&self, root: &Path) -> std::path::PathBuf {
        root.join(&self.area)
            .join(format!("{}_back", self.group))
            .join(&self.leaf)
    }
}

/// One unit a manifest carries, checked by its profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub key: UnitKey,
    pub versions: Versions,
    pub files: Vec<UnitFile>,
    pub placement: Placement,
    /// Named attributes an import may filter on (`mde`: `platform`, `ring`).
    pub tags: Vec<(&'static str, String)>,
}

impl Unit {
    /// The value of tag `name`, if the unit has it.
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a kind of content tells the core. Implementations are stateless.
/// What a profile collected from a folder for export: the signed items and
/// the payload files of one bundle, and the profile name its manifest
/// carries (the one that reads it back on import). Export takes this and
/// never looks inside: collecting is the profile's business.
#[derive(Debug, Clone)]
pub struct Collection {
    /// The manifest's `profile` value.
    pub profile: &'static str,
    /// The signed items, in manifest order.
    pub items: Vec<crate::manifest::Item>,
    /// The payload files, with where to read each one.
    pub files: Vec<crate::bundle::writer::SourceFile>,
}

pub trait Profile: fmt::Debug + Send + Sync {
    /// The `profile` value of its manifests.
    fn name(&self) -> &'static str;

    /// Checks a manifest against the profile's rules and returns its units
    /// in manifest order; every file belongs to exactly one unit.
    fn units(&self, m: &Manifest) -> Result<Vec<Unit>, ManifestError>;

    /// Checks a fully staged unit in `dir` against what was signed for it;
    /// the error is the reason the bundle is rejected.
    fn check_staged(&self, unit: &Unit, dir: &Path) -> Result<(), String>;

    /// The versions a unit's folder serves according to the folder itself;
    /// the error says why the folder does not say (for `status`).
    fn read_versions(&self, dir: &Path) -> Result<Versions, String>;

    /// [`Profile::read_versions`], when the folder says something readable.
    fn versions_on_disk(&self, dir: &Path) -> Option<Versions> {
        self.read_versions(dir).ok()
    }

    /// Whether `incoming` is older than `served`, and how. Versions that do
    /// not parse are an error, never silently "not older".
    fn older(&self, incoming: &Versions, served: &Versions) -> Result<Option<Older>, String>;

    /// Checks that a recorded versions pair is well formed.
    fn check_versions(&self, v: &Versions) -> Result<(), String>;

    /// The top-level folders (areas) of a mirror of this profile, for the
    /// recovery of interrupted publishes.
    fn areas(&self) -> Vec<String>;

    /// The files of a unit that describe the others (an endpoint reads them
    /// first to decide what to fetch). Where a folder cannot be replaced in
    /// one step (object storage), they are written after the files they
    /// describe.
    fn index_files(&self) -> &'static [&'static str] {
        &[]
    }

    /// The only files [`Profile::check_staged`] reads, when it reads only
    /// some (None: it may read every file). Others need not be staged on
    /// this machine: an import into object storage streams them straight
    /// into the store's staging folder.
    fn check_reads(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// The units a mirror of this profile can hold, for commands that walk
    /// it (status, rollback).
    fn all_units(&self) -> Vec<(UnitKey, Placement)>;
}

/// The profiles this build knows.
pub fn all() -> &'static [&'static dyn Profile] {
    &[&crate::mde::profile::Mde, &crate::windows::profile::Windows]
}

/// The profile a manifest names.
pub fn find(name: &str) -> Result<&'static dyn Profile, ManifestError> {
    all()
        .iter()
        .copied()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            let known: Vec<String> = all().iter().map(|p| format!("{:?}", p.name())).collect();
            ManifestError(format!(
                "profile {name:?} is not supported (this gapferry knows {})",
                known.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_key_is_a_plain_json_string() {
        let k: UnitKey = "linux/production/arch_x86_64".parse().unwrap();
        assert_eq!(
            serde_json::to_string(&k).unwrap(),
            "\"linux/production/arch_x86_64\""
        );
        let back: UnitKey = serde_json::from_str("\"a/b\"").unwrap();
        assert_eq!(back.as_str(), "a/b");
    }

    #[test]
    fn unknown_profile_is_named() {
        let e = find("macos").unwrap_err();
        assert!(e.0.contains("\"macos\""), "{e}");
        assert_eq!(find("mde").unwrap().name(), "mde");
        assert_eq!(find("windows").unwrap().name(), "windows");
    }
}
