//! The bundle manifest (`gapferry/manifest.json`): types, strict parsing and
//! limits, and the trusted comment that binds a signature to it.
//!
//! Parsing refuses oversized documents, duplicate keys at any depth, nesting
//! deeper than [`MAX_DEPTH`], unknown formats and unsafe paths before any
//! field is trusted. Unknown fields are tolerated so that later versions can
//! add fields; a known field is never repurposed.

use std::time::{Duration, SystemTime};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::bundleid::BundleId;
use crate::safepath::{self, SafePath};
use crate::sha256hex::Sha256Hex;
use crate::timestamp::Timestamp;

/// The `format` value of this version of the bundle format.
pub const FORMAT: &str = "gapferry-bundle/1";
/// Largest manifest accepted.
pub const MAX_MANIFEST_SIZE: u64 = 16 * 1024 * 1024;
/// Deepest JSON nesting accepted.
pub const MAX_DEPTH: usize = 16;
/// Most files one bundle may list.
pub const MAX_FILES: usize = 10_000;
/// Most items one bundle may list.
pub const MAX_ITEMS: usize = 1_000;
/// Largest total payload one bundle may declare (1 TiB).
pub const MAX_TOTAL_SIZE: u64 = 1 << 40;
/// Longest string field (ids, channel, producer, versions).
pub const MAX_FIELD_LEN: usize = 256;
/// How far (in seconds) `sequence` may run ahead of `created` read as Unix
/// seconds: one day. gapferry's sequences are Unix seconds (see
/// `crate::sequence`), so an honest exporter stays far below the bound,
/// while a holder of one stolen key cannot jump a channel to `u64::MAX`
/// and lock every honest bundle out.
pub const MAX_SEQUENCE_AHEAD: u64 = 24 * 3600;

/// The highest sequence a bundle created at `created` may carry:
/// `created` in whole Unix seconds plus [`MAX_SEQUENCE_AHEAD`].
pub fn max_sequence_for(created: SystemTime) -> u64 {
    created
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .saturating_add(MAX_SEQUENCE_AHEAD)
}

/// One carried Defender folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub platform: String,
    pub ring: String,
    pub arch: String,
    pub engine_version: String,
    pub definition_version: String,
}

/// One payload file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to `payload/`.
    pub path: SafePath,
    pub size: u64,
    /// Lower-case hex SHA-256, checked when read.
    pub sha256: Sha256Hex,
}

/// The manifest. Field names are a public contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub bundle_id: BundleId,
    pub channel: String,
    pub sequence: u64,
    /// RFC 3339 UTC, parsed when read; keeps its exact text.
    pub created: Timestamp,
    /// RFC 3339 UTC, parsed when read; keeps its exact text.
    pub expires: Timestamp,
    pub producer: String,
    pub profile: String,
    pub items: Vec<Item>,
    pub files: Vec<FileEntry>,
}

/// Why a manifest is refused. Always a rejection of the bundle (exit 3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid manifest: {0}")]
pub struct ManifestError(pub String);

/// The advice for bytes that cannot be what any exporter wrote.
pub const DAMAGED_IN_TRANSIT: &str =
    "the bundle was damaged in transit (or altered): copy it again from the export, and run gapferry verify on it before carrying";

/// Longest error message kept: messages can quote manifest values (serde's
/// "invalid type: string ..." quotes all of it), and a 16 MiB manifest must
/// not become a 16 MiB message in the terminal, the JSON report or a
/// ledger line.
const MAX_MESSAGE: usize = 1024;

fn bad(s: impl Into<String>) -> ManifestError {
    let mut s = s.into();
    if s.len() > MAX_MESSAGE {
        let mut keep = MAX_MESSAGE;
        while !s.is_char_boundary(keep) {
            keep -= 1;
        }
        s.truncate(keep);
        s.push_str("... [truncated]");
    }
    ManifestError(s)
}

/// Parses an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

/// Formats a time as RFC 3339 UTC to the second.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn plain_field(name: &str, v: &str) -> Result<(), ManifestError> {
    if v.is_empty() || v.len() > MAX_FIELD_LEN {
        return Err(bad(format!("{name} must be 1 to {MAX_FIELD_LEN} bytes")));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(bad(format!("{name} contains a control character")));
    }
    Ok(())
}

/// Checks a channel name: 1-64 of `[A-Za-z0-9._-]`.
pub fn check_channel(c: &str) -> Result<(), ManifestError> {
    if c.is_empty()
        || c.len() > 64
        || !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad(format!(
            "channel {c:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

impl Manifest {
    /// Parses and validates manifest bytes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(bad(format!("{} bytes is larger than 16 MiB", bytes.len())));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| bad(format!("not UTF-8; {DAMAGED_IN_TRANSIT}")))?;
        check_structure(text)?;
        let m: Manifest = serde_json::from_str(text).map_err(json_error)?;
        m.validate()?;
        Ok(m)
    }

    /// The manifest's own rules, independent of any profile.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(bad(format!(
                "format {:?} is not {FORMAT:?}; this gapferry cannot read it",
                self.format
            )));
        }
        check_channel(&self.channel)?;
        plain_field("producer", &self.producer)?;
        plain_field("profile", &self.profile)?;
        if self.expires_time() <= self.created_time() {
            return Err(bad("expires is not after created"));
        }
        if self.files.is_empty() {
            return Err(bad("lists no files"));
        }
        if self.files.len() > MAX_FILES {
            return Err(bad(format!("lists more than {MAX_FILES} files")));
        }
        if self.items.len() > MAX_ITEMS {
            return Err(bad(format!("lists more than {MAX_ITEMS} items")));
        }
        let mut total: u64 = 0;
        for f in &self.files {
            total = total
                .checked_add(f.size)
                .filter(|t| *t <= MAX_TOTAL_SIZE)
                .ok_or_else(|| bad("total payload size is larger than 1 TiB"))?;
        }
        safepath::check_set(self.files.iter().map(|f| &f.path)).map_err(|e| bad(e.to_string()))?;
        for i in &self.items {
            for (name, v) in [
                ("platform", &i.platform),
                ("ring", &i.ring),
                ("arch", &i.arch),
                ("engine_version", &i.engine_version),
                ("definition_version", &i.definition_version),
            ] {
                plain_field(name, v)?;
            }
        }
        Ok(())
    }

    /// Sum of the payload sizes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// `created` as a time (parsed once, when the manifest was read).
    pub fn created_time(&self) -> SystemTime {
        self.created.time()
    }

    /// `expires` as a time (see [`Manifest::created_time`]).
    pub fn expires_time(&self) -> SystemTime {
        self.expires.time()
    }

    /// Whether the bundle has expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_time() <= now
    }

    /// The highest sequence this manifest's signed `created` allows (see
    /// [`MAX_SEQUENCE_AHEAD`]).
    pub fn max_sequence(&self) -> u64 {
        max_sequence_for(self.created_time())
    }

    /// Whether `created` lies more than `skew` after `now`.
    pub fn is_from_future(&self, now: SystemTime, skew: Duration) -> bool {
        self.created_time() > now + skew
    }

    /// The trusted comment every signature of this manifest carries, so that
    /// `minisign -V` shows what was signed.
    pub fn trusted_comment(&self) -> String {
        format!(
            "gapferry bundle_id:{} channel:{} sequence:{} created:{} expires:{}",
            self.bundle_id, self.channel, self.sequence, self.created, self.expires
        )
    }

    /// The bytes written into bundles: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest always serializes");
        v.push(b'\n');
        v
    }
}

/// Walks the JSON once, refusing duplicate keys and deep nesting, before the
/// typed parse (serde would silently keep the last of two equal keys in
/// fields it ignores).
pub(crate) fn check_structure(text: &str) -> Result<(), ManifestError> {
    let mut de = serde_json::Deserializer::from_str(text);
    Walk { depth: 0 }.deserialize(&mut de).map_err(json_error)?;
    de.end().map_err(json_error)
}

/// A JSON error as a manifest error. gapferry writes valid JSON: broken
/// syntax is damage, not a manifest with a wrong value, and says so.
fn json_error(e: serde_json::Error) -> ManifestError {
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            bad(format!("{e}: not valid JSON; {DAMAGED_IN_TRANSIT}"))
        }
        _ => bad(e.to_string()),
    }
}

struct Walk {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Walk {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(de::Error::custom(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Walk {
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !seen.insert(key.to_string()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value_seed(Walk {
                depth: self.depth + 1,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            bundle_id: "b-1".parse().unwrap(),
            channel: "default".into(),
            sequence: 7,
            created: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires: "2026-01-31T00:00:00Z".parse().unwrap(),
            producer: "gapferry 0.1.0".into(),
            profile: "mde".into(),
            items: vec![],
            files: vec![FileEntry {
                path: SafePath::new("a/b").unwrap(),
                size: 3,
                sha256: "0".repeat(64).parse().unwrap(),
            }],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn duplicate_keys_rejected_at_any_depth() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        let dup_top = text.replacen("\"channel\"", "\"channel\": \"x\",\n  \"channel\"", 1);
        assert!(Manifest::parse(dup_top.as_bytes())
            .unwrap_err()
            .0
            .contains("duplicate key"));
        let dup_inner = text.replacen("\"size\"", "\"size\": 1,\n \"size\"", 1);
        assert!(Manifest::parse(dup_inner.as_bytes()).is_err());
    }

    #[test]
    fn deep_nesting_rejected() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        let deep = format!(
            "{}\"x\": {}1{},",
            "[".repeat(0),
            "[".repeat(100),
            "]".repeat(100)
        );
        let t = text.replacen('{', &format!("{{{deep}"), 1);
        assert!(Manifest::parse(t.as_bytes())
            .unwrap_err()
            .0
            .contains("nested"));
    }

    #[test]
    fn unknown_fields_tolerated_and_bad_paths_refused() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        let extra = text.replacen('{', "{\"future\": {\"a\": 1},", 1);
        Manifest::parse(extra.as_bytes()).unwrap();
        let evil = text.replace("\"a/b\"", "\"../x\"");
        assert!(Manifest::parse(evil.as_bytes()).is_err());
    }

    #[test]
    fn sequence_bound_is_created_plus_one_day() {
        let mut m = sample();
        // 2026-01-01T00:00:00Z
        assert_eq!(m.max_sequence(), 1_767_225_600 + MAX_SEQUENCE_AHEAD);
        m.created = "2026-01-01T00:00:00.999Z".parse().unwrap();
        assert_eq!(m.max_sequence(), 1_767_225_600 + 86_400, "whole seconds");
        // A time that does not parse cannot be held at all: the manifest
        // that carries it is refused where it is read, never read as 1970.
        let text = String::from_utf8(m.to_bytes())
            .unwrap()
            .replace("\"2026-01-01T00:00:00.999Z\"", "\"yesterday\"");
        assert!(
            Manifest::parse(text.as_bytes())
                .unwrap_err()
                .0
                .contains("RFC 3339"),
            "no silent 1970"
        );
        assert_eq!(
            max_sequence_for(SystemTime::UNIX_EPOCH - Duration::from_secs(5)),
            MAX_SEQUENCE_AHEAD
        );
    }
}
