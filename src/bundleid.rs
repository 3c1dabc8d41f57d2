//! [`BundleId`]: the id an exporter gives a bundle, checked once where it is
//! read (a manifest, a state file) against the manifest's rule for plain
//! fields: 1 to [`MAX_FIELD_LEN`] bytes, no control characters. It is a
//! label for people and ledgers, never a path or a key: nothing may build a
//! file name from it. JSON holds the same text it always did.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::manifest::MAX_FIELD_LEN;

/// A bundle id: 1 to [`MAX_FIELD_LEN`] bytes without control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BundleId(String);

impl BundleId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BundleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BundleId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_FIELD_LEN {
            return Err(format!("bundle_id must be 1 to {MAX_FIELD_LEN} bytes"));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err("bundle_id contains a control character".into());
        }
        Ok(BundleId(s.to_string()))
    }
}

impl PartialEq<str> for BundleId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for BundleId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Serialize for BundleId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BundleId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_and_byte_compatible() {
        let id: BundleId = serde_json::from_str("\"b-1 x\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"b-1 x\"");
        let long = "x".repeat(MAX_FIELD_LEN + 1);
        for bad in ["", "a\nb", long.as_str()] {
            let e = bad.parse::<BundleId>().unwrap_err();
            assert!(e.starts_with("bundle_id "), "{e}");
        }
    }
}
