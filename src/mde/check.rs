//! The `mde` profile's rules for a bundle manifest: every item is a known
//! platform/ring/arch, listed once, with dotted versions, and the files are
//! exactly each item's `updates.zip` and `manifest.json`.

use std::collections::BTreeSet;

use crate::manifest::{Manifest, ManifestError};

use super::layout::{Arch, Platform, Ring, Slot};
use super::{MANIFEST_JSON, PROFILE, UPDATES_ZIP};

/// Largest `updates.zip` accepted (Microsoft's are 200-250 MB today; fetch
/// caps downloads at 1 GiB by default).
pub const MAX_UPDATES_ZIP: u64 = 4 << 30;

/// One carried folder of an `mde` bundle, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedSlot {
    pub slot: Slot,
    pub engine_version: super::Version,
    pub definition_version: super::Version,
    /// Indexes into `manifest.files` of updates.zip and manifest.json.
    pub updates_zip: usize,
    pub manifest_json: usize,
}

/// Checks an `mde` manifest and returns its slots in manifest order.
pub fn slots(m: &Manifest) -> Result<Vec<CarriedSlot>, ManifestError> {
    let bad = |s: String| ManifestError(s);
    if m.profile != PROFILE {
        return Err(bad(format!(
            "profile {:?} is not supported (this gapferry knows \"mde\")",
            m.profile
        )));
    }
    if m.items.is_empty() {
        return Err(bad("lists no items".into()));
    }
    let mut seen = BTreeSet::new();
    let mut used = vec![false; m.files.len()];
    let mut out = Vec::new();
    for item in &m.items {
        let slot = Slot {
            platform: item.platform.parse::<Platform>().map_err(bad)?,
            ring: item.ring.parse::<Ring>().map_err(bad)?,
            arch: item.arch.parse::<Arch>().map_err(bad)?,
        };
        if !seen.insert(slot) {
            return Err(bad(format!("item {slot} is listed twice")));
        }
        let engine_version = item
            .engine_version
            .parse()
            .map_err(|e| bad(format!("item {slot}: engine_version: {e}")))?;
        let definition_version = item
            .definition_version
            .parse()
            .map_err(|e| bad(format!("item {slot}: definition_version: {e}")))?;
        let find = |name: &str| {
            let want = format!("{}/{}", slot.rel(), name);
            m.files
                .iter()
                .position(|f| f.path.as_str() == want)
                .ok_or_else(|| bad(format!("item {slot} has no file {want}")))
        };
        let updates_zip = find(UPDATES_ZIP)?;
        let manifest_json = find(MANIFEST_JSON)?;
        // Bounds on what one folder may claim, so that even a bundle signed
        // by a stolen key cannot ask an import to stage a terabyte.
        if m.files[updates_zip].size > MAX_UPDATES_ZIP {
            return Err(bad(format!(
                "{}/{UPDATES_ZIP} is listed as {} bytes, more than the {} gapferry accepts for a Defender package",
                slot.rel(),
                m.files[updates_zip].size,
                MAX_UPDATES_ZIP
            )));
        }
        if m.files[manifest_json].size > super::FolderManifest::MAX_SIZE {
            return Err(bad(format!(
                "{}/{MANIFEST_JSON} is listed as {} bytes, more than {}",
                slot.rel(),
                m.files[manifest_json].size,
                super::FolderManifest::MAX_SIZE
            )));
        }
        used[updates_zip] = true;
        used[manifest_json] = true;
        out.push(CarriedSlot {
            slot,
            engine_version,
            definition_version,
            updates_zip,
            manifest_json,
        });
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(bad(format!("file {} belongs to no item", m.files[i].path)));
    }
    Ok(out)
}
