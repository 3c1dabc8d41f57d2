//! One line per event for logs (stderr, so journald under systemd): the
//! form a log collector parses. This module owns the three forms and their
//! escaping:
//!
//! - `text`: the sentence people read, as the caller wrote it (already
//!   escaped with [`crate::text`]);
//! - `kv`: `time=... level=... event=... key=value ... msg="..."`, logfmt
//!   style: a value is bare when it is only letters, digits and `._:/@+-_`,
//!   else double-quoted with `\\`, `\"` and every character
//!   [`crate::text::is_dangerous`] names escaped (`\n`, `\u{1b}`, ...);
//! - `json`: one compact object with the same keys, where every dangerous
//!   character (C0, DEL, C1, bidi controls, line separators) is a `\uXXXX`
//!   escape, not only those JSON requires.
//!
//! Whatever the form, a line never holds a raw control character, so a file
//! name with a newline cannot forge a second event. Keys and the `event`
//! names are part of the documented log format (docs/OPERATIONS.md). The
//! module never prints (the CLI writes the lines) and never decides what is
//! logged.

use std::fmt::Write as _;
use std::str::FromStr;
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::text::{escape, is_dangerous};

/// Which form log lines take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Sentences for people.
    Text,
    /// `key=value` pairs (logfmt).
    Kv,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "kv" => Ok(LogFormat::Kv),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "{:?} is not a log format: use auto, text, kv or json",
                escape(other)
            )),
        }
    }
}

impl LogFormat {
    /// `kv` when stderr is connected to the systemd journal (`JOURNAL_STREAM`
    /// names stderr's device and inode, as systemd sets it for a service's
    /// output), else `text`.
    pub fn auto() -> LogFormat {
        match std::env::var("JOURNAL_STREAM") {
            Ok(v) if stderr_is(&v) => LogFormat::Kv,
            _ => LogFormat::Text,
        }
    }

    /// The values `--log-format` takes.
    pub const FLAG_VALUES: [&'static str; 4] = ["auto", "text", "kv", "json"];

    /// `auto` or a form's name.
    pub fn parse_flag(s: &str) -> Result<LogFormat, String> {
        if s == "auto" {
            Ok(LogFormat::auto())
        } else {
            s.parse()
        }
    }
}

/// Whether `journal_stream` (`<device>:<inode>`) is stderr.
fn stderr_is(journal_stream: &str) -> bool {
    let Some((dev, ino)) = journal_stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // st_dev and st_ino are not u64 on every target.
    #[allow(clippy::unnecessary_cast)]
    match rustix::fs::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev as u64 == dev && st.st_ino as u64 == ino,
        Err(_) => false,
    }
}

/// How bad an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// One event: a stable name, fields, and the sentence for people.
#[derive(Debug, Clone)]
pub struct Event {
    pub level: Level,
    /// Stable dotted name, e.g. `inbox.bundle`.
    pub name: &'static str,
    /// The sentence of the `text` form (also `msg` in the others), escaped
    /// by the caller for `text`; the other forms escape it again from raw.
    pub message: String,
    fields: Vec<(&'static str, Value)>,
}

impl Event {
    pub fn new(level: Level, name: &'static str, message: impl Into<String>) -> Event {
        Event {
            level,
            name,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    /// Adds a field; `None` adds nothing (a field is absent, never empty).
    pub fn field(mut self, key: &'static str, value: impl Into<Option<Value>>) -> Event {
        if let Some(v) = value.into() {
            if !v.is_null() {
                self.fields.push((key, v));
            }
        }
        self
    }

    /// A string field, when present.
    pub fn text(self, key: &'static str, value: Option<&str>) -> Event {
        self.field(key, value.map(Value::from))
    }

    /// The line (without its newline) in `format`, stamped `now`.
    pub fn line(&self, format: LogFormat, now: SystemTime) -> String {
        let time = crate::manifest::format_time(now);
        match format {
            LogFormat::Text => escape(&self.message).into_owned(),
            LogFormat::Kv => {
                let mut out = format!(
                    "time={time} level={} event={}",
                    self.level.as_str(),
                    self.name
                );
                for (k, v) in &self.fields {
                    let s = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let _ = write!(out, " {k}={}", kv_value(&s));
                }
                let _ = write!(out, " msg={}", kv_value(&self.message));
                out
            }
            LogFormat::Json => {
                let mut m = Map::new();
                m.insert("time".into(), time.into());
                m.insert("level".into(), self.level.as_str().into());
                m.insert("event".into(), self.name.into());
                for (k, v) in &self.fields {
                    m.insert((*k).into(), v.clone());
                }
                m.insert("msg".into(), self.message.clone().into());
                json_line(&Value::Object(m))
            }
        }
    }
}

/// A `kv` value: bare when safe, else quoted and escaped.
pub fn kv_value(s: &str) -> String {
    let bare = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/@+-_".contains(c));
    if bare {
        return s.to_string();
    }
    let mut quoted = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            c => quoted.push(c),
        }
    }
    format!("\"{}\"", escape(&quoted))
}

/// `v` as compact JSON with every dangerous character escaped as `\uXXXX`
/// (inside strings, the only place they can be).
pub fn json_line(v: &Value) -> String {
    let s = v.to_string();
    if !s.chars().any(is_dangerous) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_dangerous(c) {
            let mut buf = [0u16; 2];
            for u in c.encode_utf16(&mut buf) {
                let _ = write!(out, "\\u{u:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "evil\nlevel=error event=forged\r\u{1b}[2K\u{9b}\u{202e}\"q\\.tar.zst";

    fn event() -> Event {
        Event::new(
            Level::Warning,
            "inbox.bundle",
            format!("{HOSTILE}: rejected"),
        )
        .text("bundle", Some(HOSTILE))
        .field("exit_code", Some(Value::from(3)))
        .text("receipt", None)
        .field("sequence", None::<Value>)
    }

    fn at() -> SystemTime {
        crate::manifest::parse_time("2026-12-02T10:00:00Z").unwrap()
    }

    #[test]
    fn kv_is_one_line_and_parses_back() {
        let l = event().line(LogFormat::Kv, at());
        assert!(!l.chars().any(is_dangerous), "{l}");
        assert!(
            l.starts_with("time=2026-12-02T10:00:00Z level=warning event=inbox.bundle bundle=\"evil\\nlevel=error"),
            "{l}"
        );
        assert!(l.contains(" exit_code=3 "), "{l}");
        assert!(!l.contains("receipt="), "absent fields are left out: {l}");
        // The forged pair stays inside the quoted value: splitting on
        // unquoted spaces finds each key once.
        let mut keys = Vec::new();
        let (mut quoted, mut esc, mut start) = (false, false, true);
        let mut key = String::new();
        for c in l.chars() {
            match (quoted, esc, c) {
                (true, true, _) => esc = false,
                (true, false, '\\') => esc = true,
                (_, false, '"') => quoted = !quoted,
                (false, _, ' ') => start = true,
                (false, _, '=') if start => {
                    keys.push(std::mem::take(&mut key));
                    start = false;
                }
                (false, _, c) if start => key.push(c),
                _ => {}
            }
        }
        assert_eq!(
            keys,
            ["time", "level", "event", "bundle", "exit_code", "msg"],
            "{l}"
        );
        assert_eq!(kv_value("a b"), "\"a b\"");
        assert_eq!(kv_value(""), "\"\"");
        assert_eq!(
            kv_value("linux/production/arch_x86_64"),
            "linux/production/arch_x86_64"
        );
        assert_eq!(kv_value("1.400.2.0"), "1.400.2.0");
    }

    #[test]
    fn json_escapes_every_dangerous_character_and_round_trips() {
        let l = event().line(LogFormat::Json, at());
        assert!(!l.chars().any(is_dangerous), "{l}");
        assert!(l.contains("\\u009b") && l.contains("\\u202e"), "{l}");
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["bundle"], HOSTILE);
        assert_eq!(v["event"], "inbox.bundle");
        assert_eq!(v["level"], "warning");
        assert_eq!(v["exit_code"], 3);
        assert!(v.get("receipt").is_none());
    }

    #[test]
    fn text_is_the_sentence_escaped() {
        let l = event().line(LogFormat::Text, at());
        assert!(!l.chars().any(is_dangerous));
        assert!(l.starts_with("evil\\nlevel=error"), "{l}");
    }

    #[test]
    fn formats_parse() {
        assert_eq!("kv".parse::<LogFormat>().unwrap(), LogFormat::Kv);
        assert!("xml".parse::<LogFormat>().is_err());
        assert!(!stderr_is("nonsense"));
        assert!(!stderr_is("0:0"));
    }
}
