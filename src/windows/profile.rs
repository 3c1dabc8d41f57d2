//! The `windows` profile: one unit per architecture folder
//! `windows/<arch>/` holding `mpam-fe.exe`, its version read from the
//! package's own version resource. A manifest item is `{"platform":
//! "windows", "ring": "production", "arch": "<arch>"}` with the package
//! version as both `definition_version` and `engine_version` (the profile
//! seam's single-version convention). It never writes to a mirror.

use std::collections::BTreeSet;
use std::path::Path;

use super::{pe, WinArch, GROUP, MAX_PACKAGE, MPAM_FE, PLATFORM, PROFILE, RING};
use crate::manifest::{Manifest, ManifestError};
use crate::mde::Version;
use crate::profile::{Older, Placement, Profile, Unit, UnitFile, UnitKey, Versions};

/// Microsoft Defender Antivirus security intelligence packages for Windows.
#[derive(Debug, Clone, Copy)]
pub struct Windows;

/// Where an arch folder goes: `<mirror>/windows/<arch>/`, n-1 in
/// `<mirror>/windows_back/<arch>/`; with `import --share DIR`,
/// `DIR/<arch>/`.
pub fn placement(arch: WinArch) -> Placement {
    Placement {
        area: String::new(),
        group: GROUP.to_string(),
        leaf: arch.as_str().to_string(),
    }
}

/// The version a package file declares, checked as a package.
pub fn package_version(path: &Path) -> Result<String, String> {
    let bytes =
        pe::read_package(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    pe::analyze(&bytes)
        .map(|i| i.version)
        .map_err(|why| format!("{} {why}", path.display()))
}

fn one_version(v: &Versions) -> Result<Version, String> {
    let d = v
        .definition_version
        .parse::<Version>()
        .map_err(|e| format!("definition_version: {e}"))?;
    if v.engine_version != v.definition_version {
        return Err(format!(
            "engine_version {:?} differs from definition_version {:?}; a Windows package has one version",
            v.engine_version, v.definition_version
        ));
    }
    Ok(d)
}

impl Profile for Windows {
    fn name(&self) -> &'static str {
        PROFILE
    }

    fn units(&self, m: &Manifest) -> Result<Vec<Unit>, ManifestError> {
        let bad = |s: String| ManifestError(s);
        if m.profile != PROFILE {
            return Err(bad(format!("profile {:?} is not {PROFILE:?}", m.profile)));
        }
        if m.items.is_empty() {
            return Err(bad("lists no items".into()));
        }
        let mut seen = BTreeSet::new();
        let mut used = vec![false; m.files.len()];
        let mut out = Vec::new();
        for item in &m.items {
            if item.platform != PLATFORM || item.ring != RING {
                return Err(bad(format!(
                    "item {}/{}/{} is not a Windows item (platform {PLATFORM:?}, ring {RING:?})",
                    item.platform, item.ring, item.arch
                )));
            }
            let arch: WinArch = item.arch.parse().map_err(bad)?;
            if !seen.insert(arch) {
                return Err(bad(format!("item {} is listed twice", arch.rel())));
            }
            let versions = Versions {
                engine_version: item.engine_version.clone(),
                definition_version: item.definition_version.clone(),
            };
            one_version(&versions).map_err(|e| bad(format!("item {}: {e}", arch.rel())))?;
            let want = format!("{}/{MPAM_FE}", arch.rel());
            let index = m
                .files
                .iter()
                .position(|f| f.path.as_str() == want)
                .ok_or_else(|| bad(format!("item {} has no file {want}", arch.rel())))?;
            if m.files[index].size > MAX_PACKAGE {
                return Err(bad(format!(
                    "{want} is listed as {} bytes, more than the {MAX_PACKAGE} gapferry accepts for a Windows package",
                    m.files[index].size
                )));
            }
            used[index] = true;
            out.push(Unit {
                key: arch.key(),
                versions,
                files: vec![UnitFile {
                    index,
                    name: MPAM_FE.to_string(),
                }],
                placement: placement(arch),
                tags: vec![
                    ("platform", PLATFORM.to_string()),
                    ("ring", RING.to_string()),
                    ("arch", arch.to_string()),
                ],
            });
        }
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(bad(format!("file {} belongs to no item", m.files[i].path)));
        }
        Ok(out)
    }

    fn check_staged(&self, unit: &Unit, dir: &Path) -> Result<(), String> {
        // The package must say what the signed item says, or clients would
        // be served a version nobody signed for.
        let version = package_version(&dir.join(MPAM_FE))
            .map_err(|e| format!("{}/{MPAM_FE}: {e}", unit.key))?;
        if version != unit.versions.definition_version {
            return Err(format!(
                "{}/{MPAM_FE} is version {version}, but the signed item says {}",
                unit.key, unit.versions.definition_version
            ));
        }
        Ok(())
    }

    fn read_versions(&self, dir: &Path) -> Result<Versions, String> {
        let v = package_version(&dir.join(MPAM_FE))?;
        Ok(Versions {
            engine_version: v.clone(),
            definition_version: v,
        })
    }

    fn older(&self, incoming: &Versions, served: &Versions) -> Result<Option<Older>, String> {
        let i = one_version(incoming)?;
        let s = one_version(served)?;
        Ok((i < s).then_some(Older::Primary))
    }

    fn check_versions(&self, v: &Versions) -> Result<(), String> {
        one_version(v).map(|_| ())
    }

    fn areas(&self) -> Vec<String> {
        // The arch folders' group sits in the mirror root itself.
        vec![String::new()]
    }

    fn all_units(&self) -> Vec<(UnitKey, Placement)> {
        WinArch::ALL
            .iter()
            .map(|&a| (a.key(), placement(a)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Versions {
        Versions {
            engine_version: s.into(),
            definition_version: s.into(),
        }
    }

    #[test]
    fn one_version_orders_and_must_repeat() {
        let p = Windows;
        assert_eq!(
            p.older(&v("1.421.1.0"), &v("1.421.2.0")).unwrap(),
            Some(Older::Primary)
        );
        assert_eq!(p.older(&v("1.421.2.0"), &v("1.421.2.0")).unwrap(), None);
        assert_eq!(p.older(&v("1.422.0.0"), &v("1.421.9.0")).unwrap(), None);
        let mixed = Versions {
            engine_version: "1.1.1.1".into(),
            definition_version: "1.421.2.0".into(),
        };
        assert!(p.check_versions(&mixed).is_err());
        assert!(p.check_versions(&v("html")).is_err());
    }

    fn manifest(items: &str, files: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(
            format!(
                r#"{{"format":"gapferry-bundle/1","bundle_id":"b","channel":"default","sequence":1,
                "created":"2026-01-01T00:00:00Z","expires":"2026-02-01T00:00:00Z","producer":"t",
                "profile":"windows","items":[{items}],"files":[{files}]}}"#
            )
            .as_bytes(),
        )
    }

    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn item(arch: &str, v: &str) -> String {
        format!(
            r#"{{"platform":"windows","ring":"production","arch":"{arch}","engine_version":"{v}","definition_version":"{v}"}}"#
        )
    }

    fn file(path: &str, size: u64) -> String {
        format!(r#"{{"path":"{path}","size":{size},"sha256":"{SHA}"}}"#)
    }

    #[test]
    fn manifest_rules() {
        let p = Windows;
        let ok = manifest(
            &item("x64", "1.2.3.4"),
            &file("windows/x64/mpam-fe.exe", 10),
        )
        .unwrap();
        let units = p.units(&ok).unwrap();
        assert_eq!(units[0].key.as_str(), "windows/x64");
        assert_eq!(units[0].files[0].name, MPAM_FE);
        let refused = |items: String, files: String, needle: &str| {
            let e = p.units(&manifest(&items, &files).unwrap()).unwrap_err();
            assert!(e.0.contains(needle), "{e}");
        };
        // At the size bound: fine; one byte past it: refused.
        let at = manifest(
            &item("x86", "1.2.3.4"),
            &file("windows/x86/mpam-fe.exe", MAX_PACKAGE),
        )
        .unwrap();
        assert!(p.units(&at).is_ok());
        refused(
            item("x86", "1.2.3.4"),
            file("windows/x86/mpam-fe.exe", MAX_PACKAGE + 1),
            "more than the",
        );
        refused(
            format!("{},{}", item("x64", "1.2.3.4"), item("x64", "1.2.3.5")),
            file("windows/x64/mpam-fe.exe", 1),
            "listed twice",
        );
        refused(
            item("amd64", "1.2.3.4"),
            file("windows/x64/mpam-fe.exe", 1),
            "unknown Windows arch",
        );
        refused(
            item("x64", "1.2.3.4"),
            file("windows/x86/mpam-fe.exe", 1),
            "has no file",
        );
        refused(
            item("x64", "1.2.3.4"),
            format!(
                "{},{}",
                file("windows/x64/mpam-fe.exe", 1),
                file("windows/x64/nis_full.exe", 1)
            ),
            "belongs to no item",
        );
        let mixed = r#"{"platform":"windows","ring":"production","arch":"x64","engine_version":"1.1.1.1","definition_version":"1.2.3.4"}"#;
        refused(
            mixed.into(),
            file("windows/x64/mpam-fe.exe", 1),
            "one version",
        );
        let linux = r#"{"platform":"linux","ring":"production","arch":"x64","engine_version":"1","definition_version":"1"}"#;
        refused(
            linux.into(),
            file("windows/x64/mpam-fe.exe", 1),
            "not a Windows item",
        );
    }

    #[test]
    fn keys_and_placements() {
        for &a in WinArch::ALL {
            assert_eq!(WinArch::from_key(&a.key()), Some(a));
        }
        let root = Path::new("/m");
        let p = placement(WinArch::X64);
        assert_eq!(p.dir_in(root), Path::new("/m/windows/x64"));
        assert_eq!(p.back_dir_in(root), Path::new("/m/windows_back/x64"));
    }
}
