//! [`Timestamp`]: an RFC 3339 UTC time as gapferry writes it in its state
//! and reports, parsed once when read. It keeps the exact text it was read
//! from, so JSON written back is byte for byte what was read; a text that is
//! not a time is an error where it is read, never a silent 1970.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// An RFC 3339 UTC time with the text it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    text: String,
    time: SystemTime,
}

impl Timestamp {
    /// `t` written as RFC 3339 UTC to the second (and read back, so that
    /// the time is the one the text says).
    pub fn from_time(t: SystemTime) -> Self {
        let text = crate::manifest::format_time(t);
        let time = crate::manifest::parse_time(&text).unwrap_or(t);
        Timestamp { text, time }
    }

    /// The time.
    pub fn time(&self) -> SystemTime {
        self.time
    }

    /// The text, as read or written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Timestamp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let time = crate::manifest::parse_time(s)
            .ok_or_else(|| format!("{:?} is not an RFC 3339 time", crate::text::escape(s)))?;
        Ok(Timestamp {
            text: s.to_string(),
            time,
        })
    }
}

impl PartialEq<&str> for Timestamp {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_the_text_it_was_read_from() {
        for t in ["\"2026-01-01T00:00:00Z\"", "\"2026-01-01T00:00:00.999Z\""] {
            let ts: Timestamp = serde_json::from_str(t).unwrap();
            assert_eq!(serde_json::to_string(&ts).unwrap(), t);
        }
        let e = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
        assert!(
            serde_json::from_str::<Timestamp>("\"\"").is_err(),
            "no 1970"
        );
    }

    #[test]
    fn from_time_is_whole_seconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_767_225_600_500);
        let ts = Timestamp::from_time(t);
        assert_eq!(ts.as_str(), "2026-01-01T00:00:00Z");
        assert_eq!(ts, ts.as_str().parse::<Timestamp>().unwrap());
    }
}
