//! Import receipts: a line short enough to read over the phone, which the
//! disconnected side gives back to the online side to prove which bundle it
//! imported, e.g. `GF1-1795770956-3f0c-1a2b-4c5d-6e7f-OK`.
//!
//! `GF1` (receipt format 1), the bundle's sequence, the first 16 hex digits
//! of its manifest's SHA-256 in groups of four, and the outcome: `OK`
//! (imported) or `DUP` (was already imported). The manifest hash already
//! binds the bundle id, channel and everything else the manifest says, so
//! the bundle id itself is left out to keep the line short; it is kept in
//! the state directory's `receipts.jsonl` with the rest.
//!
//! Beside the receipt, `import` prints the ledger's head after the import
//! (`ledger head <first 16 hex>@<entries>`, in full in `receipts.jsonl`):
//! kept on the online side, it lets `gapferry ledger verify --expect-head`
//! show later that the ledger still holds every line up to this import
//! (see [`super::ledger`] for what that does and does not prove). The
//! `GF1-...` line itself is unchanged, so receipts stay readable by older
//! versions.
//!
//! This module never decides anything about a bundle; it formats, parses,
//! compares and records.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file in the state directory that keeps every receipt, one JSON line each.
pub const RECEIPTS_FILE: &str = "receipts.jsonl";

/// How many hex digits of the manifest SHA-256 a receipt carries.
pub const HEX_DIGITS: usize = 16;

/// What became of the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptOutcome {
    /// Imported by this run.
    #[serde(rename = "OK")]
    Imported,
    /// Already imported before; nothing changed.
    #[serde(rename = "DUP")]
    AlreadyImported,
}

impl ReceiptOutcome {
    pub fn code(self) -> &'static str {
        match self {
            ReceiptOutcome::Imported => "OK",
            ReceiptOutcome::AlreadyImported => "DUP",
        }
    }
}

/// A parsed or made receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub sequence: u64,
    /// The first [`HEX_DIGITS`] hex digits of the manifest SHA-256, lower case.
    pub manifest_prefix: String,
    pub outcome: ReceiptOutcome,
}

impl Receipt {
    pub fn new(sequence: u64, manifest_sha256: &str, outcome: ReceiptOutcome) -> Receipt {
        Receipt {
            sequence,
            manifest_prefix: manifest_sha256
                .chars()
                .take(HEX_DIGITS)
                .collect::<String>()
                .to_ascii_lowercase(),
            outcome,
        }
    }

    /// Parses a receipt as typed back: case does not matter, and the dashes
    /// between hex groups may be dashes or spaces, or absent.
    pub fn parse(text: &str) -> Result<Receipt, String> {
        let bad = |why: &str| {
            format!(
                "{text:?} is not a gapferry receipt ({why}); it looks like GF1-<sequence>-xxxx-xxxx-xxxx-xxxx-OK"
            )
        };
        let tokens: Vec<String> = text
            .split(|c: char| c == '-' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(|t| t.to_ascii_uppercase())
            .collect();
        if tokens.len() < 4 {
            return Err(bad("too short"));
        }
        if tokens[0] != "GF1" {
            return Err(bad("it must start with GF1"));
        }
        let sequence: u64 = tokens[1]
            .parse()
            .map_err(|_| bad("the sequence after GF1 must be a number"))?;
        let outcome = match tokens[tokens.len() - 1].as_str() {
            "OK" => ReceiptOutcome::Imported,
            "DUP" => ReceiptOutcome::AlreadyImported,
            _ => return Err(bad("it must end in OK or DUP")),
        };
        let hex: String = tokens[2..tokens.len() - 1].concat().to_ascii_lowercase();
        if hex.len() != HEX_DIGITS || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the middle must be 16 hex digits"));
        }
        Ok(Receipt {
            sequence,
            manifest_prefix: hex,
            outcome,
        })
    }

    /// Whether this receipt names the bundle with this sequence and manifest.
    pub fn matches(&self, sequence: u64, manifest_sha256: &str) -> bool {
        self.sequence == sequence
            && manifest_sha256
                .to_ascii_lowercase()
                .starts_with(&self.manifest_prefix)
    }
}

impl std::fmt::Display for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GF1-{}", self.sequence)?;
        for chunk in self.manifest_prefix.as_bytes().chunks(4) {
            write!(f, "-{}", String::from_utf8_lossy(chunk))?;
        }
        write!(f, "-{}", self.outcome.code())
    }
}

/// One line of `receipts.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceiptRecord {
    pub time: String,
    pub receipt: String,
    pub outcome: ReceiptOutcome,
    pub bundle: PathBuf,
    pub bundle_id: String,
    pub channel: String,
    pub sequence: u64,
    pub manifest_sha256: String,
    /// The ledger's head after this import, `<sha256>@<entries>`
    /// ([`super::ledger::Checkpoint`]); absent in records from before it
    /// existed, or when the ledger could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_head: Option<String>,
}

/// How a ledger head is read out with a receipt: its first 16 hex digits
/// and the entry count, `3f0c1a2b4c5d6e7f@12` (what `ledger verify
/// --expect-head` accepts).
pub fn short_head(head: &super::ledger::Checkpoint) -> String {
    format!(
        "{}@{}",
        &head.head_sha256[..super::ledger::MIN_HEAD_DIGITS.min(head.head_sha256.len())],
        head.entries
    )
}

/// The receipt of a successful import (imported or already imported), with
/// its record; `None` for any other outcome.
pub fn for_report(
    report: &super::import::ImportReport,
    now: std::time::SystemTime,
) -> Option<(Receipt, ReceiptRecord)> {
    use super::ledger::Outcome;
    let outcome = match report.outcome {
        Outcome::Imported => ReceiptOutcome::Imported,
        Outcome::AlreadyImported => ReceiptOutcome::AlreadyImported,
        _ => return None,
    };
    let sha = report.manifest_sha256.as_ref()?.as_str();
    let sequence = report.sequence?;
    let receipt = Receipt::new(sequence, sha, outcome);
    let rec = ReceiptRecord {
        time: crate::manifest::format_time(now),
        receipt: receipt.to_string(),
        outcome,
        bundle: report.bundle.clone(),
        bundle_id: report.bundle_id.clone().unwrap_or_default(),
        channel: report.channel.clone().unwrap_or_default(),
        sequence,
        manifest_sha256: sha.to_string(),
        ledger_head: None,
    };
    Some((receipt, rec))
}

/// Appends a record to `<state_dir>/receipts.jsonl` (one `write` of one
/// line, then fsync), creating the file when needed.
pub fn record(state_dir: &Path, rec: &ReceiptRecord) -> std::io::Result<PathBuf> {
    let path = state_dir.join(RECEIPTS_FILE);
    let mut line = serde_json::to_vec(rec).map_err(std::io::Error::from)?;
    line.push(b'\n');
    let mut f = super::fsx::open_append(&path, super::fsx::PRIVATE_FILE_MODE)?;
    f.write_all(&line)?;
    f.sync_data()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "3f0c1a2b4c5d6e7f00112233445566778899aabbccddeeff0011223344556677";

    #[test]
    fn format_and_parse() {
        let r = Receipt::new(1795770956, SHA, ReceiptOutcome::Imported);
        assert_eq!(r.to_string(), "GF1-1795770956-3f0c-1a2b-4c5d-6e7f-OK");
        for typed in [
            "GF1-1795770956-3f0c-1a2b-4c5d-6e7f-OK",
            "gf1 1795770956 3F0C 1A2B 4C5D 6E7F ok",
            "GF1-1795770956-3f0c1a2b4c5d6e7f-OK\n",
        ] {
            assert_eq!(Receipt::parse(typed).unwrap(), r, "{typed}");
        }
        let dup = Receipt::new(5, SHA, ReceiptOutcome::AlreadyImported);
        assert_eq!(Receipt::parse(&dup.to_string()).unwrap(), dup);
    }

    #[test]
    fn matching() {
        let r = Receipt::new(7, SHA, ReceiptOutcome::Imported);
        assert!(r.matches(7, SHA));
        assert!(!r.matches(8, SHA));
        assert!(!r.matches(7, &SHA.replace("3f0c", "3f0d")));
    }

    #[test]
    fn records_without_a_ledger_head_still_read() {
        let old = r#"{"time":"2026-11-27T06:00:00Z","receipt":"GF1-5-3f0c-1a2b-4c5d-6e7f-OK","outcome":"OK","bundle":"b.tar.zst","bundle_id":"b","channel":"default","sequence":5,"manifest_sha256":"3f0c"}"#;
        let rec: ReceiptRecord = serde_json::from_str(old).unwrap();
        assert_eq!(rec.ledger_head, None);
        let again = serde_json::to_string(&rec).unwrap();
        assert_eq!(
            again, old,
            "written back unchanged: no new field when absent"
        );
        let head = crate::mirror::ledger::Checkpoint {
            entries: 12,
            head_sha256: SHA.to_string(),
        };
        assert_eq!(short_head(&head), "3f0c1a2b4c5d6e7f@12");
        assert_eq!(head.to_string(), format!("{SHA}@12"));
        let parsed: crate::mirror::ledger::ExpectedHead = short_head(&head).parse().unwrap();
        assert_eq!(parsed.entries, Some(12));
    }

    #[test]
    fn malformed() {
        for bad in [
            "",
            "GF2-1-3f0c-1a2b-4c5d-6e7f-OK",
            "GF1-x-3f0c-1a2b-4c5d-6e7f-OK",
            "GF1-1-3f0c-1a2b-4c5d-OK",
            "GF1-1-3f0c-1a2b-4c5d-6e7g-OK",
            "GF1-1-3f0c-1a2b-4c5d-6e7f-MAYBE",
        ] {
            assert!(Receipt::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
