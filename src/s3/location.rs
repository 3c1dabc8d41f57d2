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

    /// Parses `s3://bucket[/prefix]`. The error says what is wrong with the
    /// value and what a valid one looks like (the caller names the flag).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("s3://").ok_or_else(|| {
            "an object storage mirror is written s3://BUCKET or s3://BUCKET/PREFIX".to_string()
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket)?;
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        check_prefix(prefix)?;
        Ok(Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

/// S3's bucket naming rules: 3 to 63 characters, lower-case letters,
/// digits, dots and hyphens, starting and ending with a letter or digit,
/// no two dots in a row, not an IPv4 address.
fn check_bucket(bucket: &str) -> Result<(), String> {
    let fix = "bucket names have 3 to 63 characters: lower-case letters, digits, dots and \
               hyphens, starting and ending with a letter or digit";
    if bucket.is_empty() {
        return Err(format!(
            "the bucket name is missing; write s3://BUCKET or s3://BUCKET/PREFIX ({fix})"
        ));
    }
    let len_ok = (3..=63).contains(&bucket.len());
    let chars_ok = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ends_ok = [bucket.as_bytes()[0], bucket.as_bytes()[bucket.len() - 1]]
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let is_ip = bucket.parse::<std::net::Ipv4Addr>().is_ok();
    if !len_ok || !chars_ok || !ends_ok || bucket.contains("..") || is_ip {
        return Err(format!("{bucket:?} is not a valid bucket name: {fix}"));
    }
    Ok(())
}

/// A prefix is `/`-separated segments, none empty, `.` or `..` (a trailing
/// `/` was already dropped), and no control characters.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    if prefix.starts_with('/') {
        return Err(format!(
            "the prefix {prefix:?} starts with '/'; write s3://BUCKET/PREFIX with one slash"
        ));
    }
    for segment in prefix.split('/') {
        match segment {
            "" => {
                return Err(format!(
                    "the prefix {prefix:?} has an empty segment ('//'); remove the extra slash"
                ))
            }
            "." | ".." => {
                return Err(format!(
                    "the prefix {prefix:?} has a {segment:?} segment; name the folder directly"
                ))
            }
            _ => {}
        }
    }
    if prefix.chars().any(|c| c.is_control()) {
        return Err(format!(
            "the prefix {prefix:?} has a control character; use printable characters"
        ));
    }
    if prefix.len() > 512 {
        return Err(format!(
            "the prefix is {} bytes long; keep it under 512 (S3 keys are at most 1024)",
            prefix.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Location, String> {
        s.parse()
    }

    #[test]
    fn bucket_and_prefix() {
        let l = parse("s3://mirror/mde/site-a").unwrap();
        assert_eq!(l.bucket, "mirror");
        assert_eq!(l.prefix, "mde/site-a");
        assert_eq!(l.to_string(), "s3://mirror/mde/site-a");
        assert_eq!(l.key("/linux/updates.zip"), "mde/site-a/linux/updates.zip");
    }

    #[test]
    fn bucket_only_and_trailing_slash() {
        for s in ["s3://mirror", "s3://mirror/"] {
            let l = parse(s).unwrap();
            assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("mirror", ""));
            assert_eq!(l.key("a/b"), "a/b");
            assert_eq!(l.to_string(), "s3://mirror");
        }
        assert_eq!(parse("s3://mirror/p/").unwrap().prefix, "p");
    }

    #[test]
    fn bad_buckets_are_refused_with_the_rule() {
        for b in [
            "ab",
            "Mirror",
            "mir_ror",
            "-mirror",
            "mirror-",
            "mi..rror",
            "192.168.1.10",
            &"a".repeat(64),
        ] {
            let e = parse(&format!("s3://{b}/p")).unwrap_err();
            assert!(e.contains("not a valid bucket name"), "{b}: {e}");
            assert!(e.contains("3 to 63 characters"), "{b}: {e}");
        }
        assert!(parse("s3:///p")
            .unwrap_err()
            .contains("bucket name is missing"));
        assert!(parse("s3://")
            .unwrap_err()
            .contains("bucket name is missing"));
        assert!(parse("mirror/p").unwrap_err().contains("s3://BUCKET"));
        assert!(parse("S3://mirror").unwrap_err().contains("s3://BUCKET"));
        assert!(parse("s3://my.mirror-01").is_ok());
    }

    #[test]
    fn bad_prefixes_are_refused() {
        assert!(parse("s3://mirror//p")
            .unwrap_err()
            .contains("starts with '/'"));
        assert!(parse("s3://mirror/a//b")
            .unwrap_err()
            .contains("empty segment"));
        assert!(parse("s3://mirror/a/../b")
            .unwrap_err()
            .contains("\"..\" segment"));
        assert!(parse("s3://mirror/..")
            .unwrap_err()
            .contains("\"..\" segment"));
        assert!(parse("s3://mirror/./a")
            .unwrap_err()
            .contains("\".\" segment"));
        assert!(parse("s3://mirror/a\nb")
            .unwrap_err()
            .contains("control character"));
        assert!(
            parse("s3://mirror/a..b").is_ok(),
            "dots inside a name are fine"
        );
    }
}
