//! Dotted version numbers as Defender writes them ("1.1.24090.4",
//! "1.419.123.0"), compared component by component as numbers.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A dotted version: one to eight unsigned numeric components.
///
/// Ordering is numeric per component; a missing trailing component counts as
/// zero, so "1.2" == "1.2.0" compare equal (and `Eq` agrees with `Ord`).
#[derive(Debug, Clone)]
pub struct Version {
    parts: Vec<u64>,
    text: String,
}

/// A version string that is not dotted numbers.
#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not a dotted version number like 1.1.24090.4")]
pub struct VersionError {
    pub text: String,
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VersionError {
            text: s.chars().take(64).collect(),
        };
        if s.is_empty() || s.len() > 64 {
            return Err(err());
        }
        let mut parts = Vec::new();
        for p in s.split('.') {
            if p.is_empty() || p.len() > 19 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            parts.push(p.parse::<u64>().map_err(|_| err())?);
        }
        if parts.len() > 8 {
            return Err(err());
        }
        Ok(Version {
            parts,
            text: s.to_string(),
        })
    }
}

impl Version {
    /// The text exactly as it was parsed.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.parts.len().max(other.parts.len());
        for i in 0..n {
            let a = self.parts.get(i).copied().unwrap_or(0);
            let b = other.parts.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => continue,
                o => return o,
            }
        }
        Ordering::Equal
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn numeric_not_lexical() {
        assert!(v("1.419.10.0") > v("1.419.9.0"));
        assert!(v("1.1.24090.4") < v("1.1.24100.1"));
        assert_eq!(v("1.2"), v("1.2.0"));
        assert!(v("2") > v("1.999.999"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "1..2",
            "1.a",
            ".1",
            "1.",
            "-1",
            "1.2.3.4.5.6.7.8.9",
            " 1",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }
}
