//! The `mde` profile: Defender's arch folders as units of the profile seam
//! ([`crate::profile::Profile`]). It owns the mapping from a slot to a unit
//! key and placement, and the ordering "definitions, then engine"; it never
//! writes to a mirror.

use std::path::Path;

use super::check::{self, CarriedSlot};
use super::layout::{Platform, Slot};
use super::{FolderManifest, Version, MANIFEST_JSON, PROFILE, UPDATES_ZIP};
use crate::manifest::{Manifest, ManifestError};
use crate::profile::{Older, Placement, Profile, Unit, UnitFile, UnitKey, Versions};

/// Microsoft Defender for Endpoint offline updates.
#[derive(Debug, Clone, Copy)]
pub struct Mde;

impl Slot {
    /// The unit key of this slot: its layout path.
    pub fn key(&self) -> UnitKey {
        UnitKey::from(self.rel())
    }

    /// Where this slot's folder goes in a mirror.
    pub fn placement(&self) -> Placement {
        Placement {
            area: self.platform.as_str().to_string(),
            group: self.ring.as_str().to_string(),
            leaf: self.arch_dir(),
        }
    }

    /// The slot a unit key names, if it names one.
    pub fn from_key(key: &UnitKey) -> Option<Slot> {
        Slot::all().find(|s| s.rel() == key.as_str())
    }
}

fn unit(c: &CarriedSlot) -> Unit {
    Unit {
        key: c.slot.key(),
        versions: Versions {
            engine_version: c.engine_version.to_string(),
            definition_version: c.definition_version.to_string(),
        },
        files: vec![
            UnitFile {
                index: c.updates_zip,
                name: UPDATES_ZIP.to_string(),
            },
            UnitFile {
                index: c.manifest_json,
                name: MANIFEST_JSON.to_string(),
            },
        ],
        placement: c.slot.placement(),
        tags: vec![
            ("platform", c.slot.platform.to_string()),
            ("ring", c.slot.ring.to_string()),
            ("arch", c.slot.arch.to_string()),
        ],
    }
}

fn parse(v: &Versions) -> Result<(Version, Version), String> {
    let eng = v
        .engine_version
        .parse::<Version>()
        .map_err(|e| format!("engine_version: {e}"))?;
    let def = v
        .definition_version
        .parse::<Version>()
        .map_err(|e| format!("definition_version: {e}"))?;
    Ok((def, eng))
}

impl Profile for Mde {
    fn name(&self) -> &'static str {
        PROFILE
    }

    fn units(&self, m: &Manifest) -> Result<Vec<Unit>, ManifestError> {
        Ok(check::slots(m)?.iter().map(unit).collect())
    }

    fn check_staged(&self, unit: &Unit, dir: &Path) -> Result<(), String> {
        // The carried manifest.json must say what the signed item says, or
        // endpoints would be served versions nobody signed for.
        let fm = FolderManifest::read(&dir.join(MANIFEST_JSON))
            .map_err(|e| format!("{}/{MANIFEST_JSON}: {e}", unit.key))?;
        let v = &unit.versions;
        if fm.engine_version != v.engine_version || fm.definition_version != v.definition_version {
            return Err(format!(
                "{}/{MANIFEST_JSON} says engine {} definitions {}, but the signed item says engine {} definitions {}",
                unit.key,
                fm.engine_version,
                fm.definition_version,
                v.engine_version,
                v.definition_version
            ));
        }
        Ok(())
    }

    fn read_versions(&self, dir: &Path) -> Result<Versions, String> {
        // FolderManifest::read checks both are dotted versions.
        let fm = FolderManifest::read(&dir.join(MANIFEST_JSON)).map_err(|e| e.to_string())?;
        Ok(Versions {
            engine_version: fm.engine_version,
            definition_version: fm.definition_version,
        })
    }

    fn older(&self, incoming: &Versions, served: &Versions) -> Result<Option<Older>, String> {
        let (i_def, i_eng) = parse(incoming)?;
        let (s_def, s_eng) = parse(served)?;
        Ok(if i_def < s_def {
            Some(Older::Primary)
        } else if i_def == s_def && i_eng < s_eng {
            Some(Older::Secondary)
        } else {
            None
        })
    }

    fn check_versions(&self, v: &Versions) -> Result<(), String> {
        parse(v).map(|_| ())
    }

    fn areas(&self) -> Vec<String> {
        Platform::ALL.iter().map(|p| p.to_string()).collect()
    }

    fn index_files(&self) -> &'static [&'static str] {
        // Endpoints read manifest.json for the versions, then updates.zip.
        &["manifest.json"]
    }

    fn check_reads(&self) -> Option<&'static [&'static str]> {
        // check_staged compares the folder's manifest.json with the signed
        // item; updates.zip is checked by its signed SHA-256 alone.
        Some(&["manifest.json"])
    }

    fn all_units(&self) -> Vec<(UnitKey, Placement)> {
        Slot::all().map(|s| (s.key(), s.placement())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mde::{Arch, Ring};

    fn v(e: &str, d: &str) -> Versions {
        Versions {
            engine_version: e.into(),
            definition_version: d.into(),
        }
    }

    #[test]
    fn definitions_first_then_engine() {
        let p = Mde;
        assert_eq!(
            p.older(&v("9.9", "1.1"), &v("1.1", "1.2")).unwrap(),
            Some(Older::Primary)
        );
        assert_eq!(
            p.older(&v("1.0", "1.2"), &v("1.1", "1.2")).unwrap(),
            Some(Older::Secondary)
        );
        assert_eq!(p.older(&v("1.0", "1.3"), &v("1.1", "1.2")).unwrap(), None);
        assert!(p.older(&v("x", "1.3"), &v("1.1", "1.2")).is_err());
    }

    #[test]
    fn slot_keys_round_trip() {
        for s in Slot::all() {
            assert_eq!(Slot::from_key(&s.key()), Some(s));
        }
        let s = Slot {
            platform: Platform::Linux,
            ring: Ring::Production,
            arch: Arch::X86_64,
        };
        assert_eq!(s.key().as_str(), "linux/production/arch_x86_64");
    }
}
