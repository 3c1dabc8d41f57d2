//! `s3://BUCKET/PREFIX`: a mirror in a bucket.

use std::fmt;
use std::str::FromStr;

/// A mirror in object storage: a bucket and a key prefix (no leading or
/// trailing slash; empty for the bucket's root).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub bucket: String,
    pub prefix: String,
}

impl Location {
    /// Whether a `--mirror` value names object storage rather than a folder.
    pub fn is_s3(s: &str) -> bool {
        s.starts_with("s3://")
    }

    /// The full key of `rel` (a `/`-separated path inside the mirror).
    pub fn key(&self, rel: &str) -> String {
        let rel = rel.trim_start_matches('/');
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{}", self.prefix, rel)
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl FromStr for Location {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        todo!("parse {s}")
    }
}
