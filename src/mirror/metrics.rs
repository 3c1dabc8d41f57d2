//! Prometheus metrics of a mirror, in the text exposition format for
//! node_exporter's textfile collector: per unit what [`super::status`]
//! found (versions as labels of an info metric, age, bundle expiry, whether
//! the served files and n-1 still match their record), per mirror what the
//! ledger says (last import attempt and its outcome, entries, attempts in
//! the last 24 hours by outcome). This module owns the metric names and the
//! rendering; it reads the ledger but never writes to the mirror or the
//! state directory, and the only file it writes is the metrics file, whole
//! (temp file + rename in the same folder, through [`crate::durable`]), so
//! the collector never reads half of it.
//!
//! Names follow Prometheus conventions: the `gapferry_` prefix, base units
//! (`_seconds`, `_timestamp_seconds`), `_total` for counters, versions only
//! as labels of `gapferry_unit_info`. Label values from outside (versions
//! read from a served folder) are first made visible with
//! [`crate::text::escape`] (one line, no control characters), then escaped
//! as the exposition format requires.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::ledger::{LedgerError, Outcome};
use super::state::StateDir;
use super::status::{MirrorStatus, Severity};
use crate::durable::{self, Clobber};
use crate::error::{Classify, ExitKind};

/// Mode of the metrics file: node_exporter runs as another user, and the
/// file holds nothing secret (versions, times, counts).
pub const METRICS_FILE_MODE: u32 = durable::FILE_MODE;

/// The window of `gapferry_import_attempts_last_24h`.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Outcomes of an import attempt, in the order they are listed.
const ATTEMPTS: &[Outcome] = &[
    Outcome::Imported,
    Outcome::AlreadyImported,
    Outcome::Rejected,
    Outcome::Refused,
    Outcome::Failed,
];

/// The metrics file is misnamed or cannot be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    #[error("cannot write the metrics file {path}: {source}; check that its folder exists and is writable by this user (node_exporter's textfile directory, e.g. /var/lib/prometheus/node-exporter)")]
    Write { path: PathBuf, source: io::Error },
    #[error("--prometheus {path}: name a file ending in .prom (node_exporter's textfile collector reads only *.prom)")]
    NotProm { path: PathBuf },
}

impl Classify for MetricsError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            MetricsError::Write { .. } => ExitKind::Operational,
            MetricsError::NotProm { .. } => ExitKind::Usage,
        }
    }
}

/// Checks a `--prometheus FILE` argument before any work: the collector
/// only reads `*.prom`. (Whether its folder is writable shows when the file
/// is written.)
pub fn check_path(path: &Path) -> Result<(), MetricsError> {
    if path.extension().and_then(|e| e.to_str()) != Some("prom") {
        return Err(MetricsError::NotProm {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// What the ledger says, for the per-mirror metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerSummary {
    /// Lines in the ledger (every kind).
    pub entries: u64,
    /// Time and outcome of the newest import attempt (not a rollback, not a
    /// `suppressed` line).
    pub last_attempt: Option<(SystemTime, Outcome)>,
    /// Time of the newest attempt that ended `imported` or `already_imported`.
    pub last_success: Option<SystemTime>,
    /// Attempts in the window before `now`, by outcome; attempts the flood
    /// limit left out are counted under `suppressed`.
    pub last_24h: BTreeMap<&'static str, u64>,
}

/// The ledger as the metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerView {
    /// No ledger yet (nothing was ever imported with this state directory).
    Missing,
    /// The chain verifies.
    Read(LedgerSummary),
    /// It cannot be read or its chain is broken: `gapferry ledger verify`
    /// says where.
    Unreadable,
}

/// Reads and summarises the ledger of `state_dir` as of `now`.
pub fn ledger_view(state_dir: &Path, now: SystemTime) -> LedgerView {
    let Ok(dir) = StateDir::existing(state_dir) else {
        return LedgerView::Missing;
    };
    let since = now.checked_sub(WINDOW).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut s = LedgerSummary::default();
    let read = dir.ledger().visit(|e| {
        s.entries += 1;
        let Some(t) = crate::manifest::parse_time(&e.time) else {
            return;
        };
        if e.outcome == Outcome::Suppressed {
            if t >= since {
                let n = e
                    .suppressed
                    .as_ref()
                    .map_or(0, |x| x.repeats + x.over_limit);
                *s.last_24h.entry("suppressed").or_default() += n;
            }
            return;
        }
        if !ATTEMPTS.contains(&e.outcome) {
            return;
        }
        s.last_attempt = Some((t, e.outcome));
        if matches!(e.outcome, Outcome::Imported | Outcome::AlreadyImported) {
            s.last_success = Some(t);
        }
        if t >= since {
            *s.last_24h.entry(e.outcome.as_str()).or_default() += 1;
        }
    });
    match read {
        Ok(()) => LedgerView::Read(s),
        Err(LedgerError::Missing { .. }) => LedgerView::Missing,
        Err(_) => LedgerView::Unreadable,
    }
}

/// Everything the metrics are made of.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub status: &'a MirrorStatus,
    pub ledger: LedgerView,
    /// Whether served files were checked by SHA-256 (else by size only).
    pub hashed: bool,
    /// Expiry times of trusted keys or of the trust policy, by key id, where
    /// the caller knows them (`gapferry_key_expiry_timestamp_seconds`).
    /// Minisign keys carry no expiry, so today this is always empty.
    pub key_expiry: Vec<(String, SystemTime)>,
    /// When the metrics were made.
    pub now: SystemTime,
}

/// Seconds since the Unix epoch (0 before it).
fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A label value as the exposition format wants it inside quotes.
pub fn label_value(v: &str) -> String {
    let visible = crate::text::escape(v);
    let mut out = String::with_capacity(visible.len());
    for c in visible.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One metric family being built.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, u64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: &[(&str, &str)], value: u64) {
        let mut l = String::new();
        if !labels.is_empty() {
            l.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    l.push(',');
                }
                let _ = write!(l, "{k}=\"{}\"", label_value(v));
            }
            l.push('}');
        }
        self.samples.push((l, value));
    }

    fn render(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, v) in &self.samples {
            let _ = writeln!(out, "{}{labels} {v}", self.name);
        }
    }
}

/// The metrics as exposition text (ends with a newline).
pub fn render(i: &Inputs<'_>) -> String {
    let mut info = Family::new(
        "gapferry_unit_info",
        "gauge",
        "Versions a unit serves, read from its folder (always 1).",
    );
    let mut imported = Family::new(
        "gapferry_unit_imported_timestamp_seconds",
        "gauge",
        "When the served set was imported.",
    );
    let mut age = Family::new(
        "gapferry_unit_age_seconds",
        "gauge",
        "Age of the served set: seconds since it was imported.",
    );
    let mut expiry = Family::new(
        "gapferry_unit_bundle_expiry_timestamp_seconds",
        "gauge",
        "When the bundle the served set came from expires.",
    );
    let mut sequence = Family::new(
        "gapferry_unit_bundle_sequence",
        "gauge",
        "Sequence number of the bundle the served set came from.",
    );
    let mut files_match = Family::new(
        "gapferry_unit_files_match",
        "gauge",
        "1 when every served file matches what was imported, 0 when one differs or is missing.",
    );
    let mut back = Family::new(
        "gapferry_unit_previous_present",
        "gauge",
        "1 when the n-1 set exists (something to roll back to).",
    );
    let mut back_match = Family::new(
        "gapferry_unit_previous_files_match",
        "gauge",
        "1 when every n-1 file matches what was imported.",
    );
    let mut problems = Family::new(
        "gapferry_unit_problems",
        "gauge",
        "Problems status found in the unit (what status lists as problem:).",
    );
    for s in &i.status.slots {
        let unit = s.slot.as_str();
        let u: &[(&str, &str)] = &[("unit", unit)];
        if let (Some(d), Some(e)) = (&s.definition_version, &s.engine_version) {
            info.add(
                &[
                    ("unit", unit),
                    ("definition_version", d),
                    ("engine_version", e),
                ],
                1,
            );
        }
        let imported_at = s
            .imported_at
            .as_deref()
            .and_then(crate::manifest::parse_time);
        if let Some(t) = imported_at {
            imported.add(u, unix(t));
            // An import time in the future (a clock set back) has no age.
            if let Ok(d) = i.now.duration_since(t) {
                age.add(u, d.as_secs());
            }
        }
        if let Some(t) = s.expires.as_deref().and_then(crate::manifest::parse_time) {
            expiry.add(u, unix(t));
        }
        if let Some(n) = s.sequence {
            sequence.add(u, n);
        }
        if let Some(m) = s.files_match {
            files_match.add(u, u64::from(m));
        }
        back.add(u, u64::from(s.back_exists));
        if let Some(m) = s.back_files_match {
            back_match.add(u, u64::from(m));
        }
        problems.add(
            u,
            s.findings
                .iter()
                .filter(|f| f.severity == Severity::Problem)
                .count() as u64,
        );
    }

    let mut units = Family::new(
        "gapferry_mirror_units",
        "gauge",
        "Units (arch folders) served or recorded.",
    );
    units.add(&[], i.status.slots.len() as u64);
    let mut mirror_problems = Family::new(
        "gapferry_mirror_problem",
        "gauge",
        "1 when status finds a problem (the exit code of status would be 1), including nothing served.",
    );
    mirror_problems.add(&[], u64::from(i.status.problems));
    let mut hashed = Family::new(
        "gapferry_files_checked_sha256",
        "gauge",
        "1 when files_match compared SHA-256 digests, 0 when sizes only.",
    );
    hashed.add(&[], u64::from(i.hashed));

    let mut ledger_ok = Family::new(
        "gapferry_ledger_ok",
        "gauge",
        "1 when the ledger reads and its chain verifies (or there is none yet), 0 when not: run gapferry ledger verify.",
    );
    let mut entries = Family::new(
        "gapferry_ledger_entries_total",
        "counter",
        "Lines in the import ledger.",
    );
    let mut last = Family::new(
        "gapferry_last_import_timestamp_seconds",
        "gauge",
        "When the newest import attempt was recorded.",
    );
    let mut last_success = Family::new(
        "gapferry_last_import_success",
        "gauge",
        "1 when the newest import attempt ended imported or already_imported.",
    );
    let mut last_outcome = Family::new(
        "gapferry_last_import_outcome",
        "gauge",
        "Outcome of the newest import attempt: 1 for it, 0 for the others.",
    );
    let mut last_ok_time = Family::new(
        "gapferry_last_successful_import_timestamp_seconds",
        "gauge",
        "When the newest import attempt that ended imported or already_imported was recorded.",
    );
    let mut window = Family::new(
        "gapferry_import_attempts_last_24h",
        "gauge",
        "Import attempts in the ledger in the last 24 hours, by outcome (suppressed: left out by the flood limit).",
    );
    match &i.ledger {
        LedgerView::Missing => {
            ledger_ok.add(&[], 1);
            entries.add(&[], 0);
        }
        LedgerView::Unreadable => ledger_ok.add(&[], 0),
        LedgerView::Read(l) => {
            ledger_ok.add(&[], 1);
            entries.add(&[], l.entries);
            if let Some((t, o)) = l.last_attempt {
                last.add(&[], unix(t));
                last_success.add(
                    &[],
                    u64::from(matches!(o, Outcome::Imported | Outcome::AlreadyImported)),
                );
                for a in ATTEMPTS {
                    last_outcome.add(&[("outcome", a.as_str())], u64::from(*a == o));
                }
            }
            if let Some(t) = l.last_success {
                last_ok_time.add(&[], unix(t));
            }
            for a in ATTEMPTS.iter().map(|a| a.as_str()).chain(["suppressed"]) {
                window.add(&[("outcome", a)], l.last_24h.get(a).copied().unwrap_or(0));
            }
        }
    }
    let mut keys = Family::new(
        "gapferry_key_expiry_timestamp_seconds",
        "gauge",
        "When a trusted key or the trust policy stops being valid.",
    );
    for (id, t) in &i.key_expiry {
        keys.add(&[("key_id", id)], unix(*t));
    }
    let mut policy_version = Family::new(
        "gapferry_trust_policy_version",
        "gauge",
        "The trust policy version the mirror adopted (root-pinned mirrors only).",
    );
    let mut policy_expiry = Family::new(
        "gapferry_trust_policy_expiry_timestamp_seconds",
        "gauge",
        "When the adopted trust policy expires; imports refuse new bundles after it.",
    );
    if let Some(t) = &i.status.trust_policy {
        policy_version.add(&[], t.version);
        if let Ok(ts) = t.expires.parse::<crate::timestamp::Timestamp>() {
            policy_expiry.add(&[], unix(ts.time()));
        }
    }
    let mut waiting = Family::new(
        "gapferry_inbox_waiting",
        "gauge",
        "Files or split sets the last import --inbox pass left waiting (incomplete or still changing).",
    );
    let mut inbox_checked = Family::new(
        "gapferry_inbox_pass_timestamp_seconds",
        "gauge",
        "When the last import --inbox pass with this state directory looked.",
    );
    if let Some(w) = &i.status.inbox {
        waiting.add(&[], w.waiting.len() as u64);
        if let Ok(ts) = w.checked.parse::<crate::timestamp::Timestamp>() {
            inbox_checked.add(&[], unix(ts.time()));
        }
    }
    let mut generated = Family::new(
        "gapferry_metrics_timestamp_seconds",
        "gauge",
        "When gapferry wrote these metrics.",
    );
    generated.add(&[], unix(i.now));

    let mut out = String::new();
    for f in [
        &info,
        &imported,
        &age,
        &expiry,
        &sequence,
        &files_match,
        &back,
        &back_match,
        &problems,
        &units,
        &mirror_problems,
        &hashed,
        &ledger_ok,
        &entries,
        &last,
        &last_success,
        &last_outcome,
        &last_ok_time,
        &window,
        &keys,
        &policy_version,
        &policy_expiry,
        &waiting,
        &inbox_checked,
        &generated,
    ] {
        f.render(&mut out);
    }
    out
}

/// Writes `text` to `path` whole: temp file in the same folder, fsync,
/// rename, mode [`METRICS_FILE_MODE`].
pub fn write(path: &Path, text: &str) -> Result<(), MetricsError> {
    durable::write_atomic(path, text.as_bytes(), METRICS_FILE_MODE, Clobber::Replace).map_err(
        |source| MetricsError::Write {
            path: path.to_path_buf(),
            source,
        },
    )
}

/// Looks at the mirror ([`super::status::status`], by SHA-256 when
/// `hashed`, else sizes) and its ledger now, and writes the metrics to
/// `path`. When status itself fails (an unreadable `state.json`), the file
/// still gets written, with no unit and `gapferry_mirror_problem 1`, so an
/// alert fires instead of the metrics going stale; the error is returned
/// after. Returns the status it looked at.
pub fn refresh(
    path: &Path,
    served: super::status::Served<'_>,
    state_dir: &Path,
    hashed: bool,
) -> Result<MirrorStatus, crate::Error> {
    match super::status::status_at(served, state_dir, hashed) {
        Ok(status) => {
            write_status(path, &status, state_dir, hashed)?;
            Ok(status)
        }
        Err(e) => {
            write_unknown(path, served, state_dir, hashed)?;
            Err(e.into())
        }
    }
}

/// Writes the metrics of a mirror whose status cannot be taken (an
/// unreadable `state.json`, a store that cannot be reached): no unit and
/// `gapferry_mirror_problem 1`, so an alert fires instead of the metrics
/// going stale.
pub fn write_unknown(
    path: &Path,
    served: super::status::Served<'_>,
    state_dir: &Path,
    hashed: bool,
) -> Result<(), crate::Error> {
    let status = MirrorStatus {
        mirror: served.name(),
        state_dir: state_dir.to_path_buf(),
        slots: Vec::new(),
        problems: true,
        problem_count: 1,
        warning_count: 0,
        trust_policy: None,
        inbox: None,
    };
    write_status(path, &status, state_dir, hashed)
}

fn write_status(
    path: &Path,
    status: &MirrorStatus,
    state_dir: &Path,
    hashed: bool,
) -> Result<(), crate::Error> {
    let now = SystemTime::now();
    let text = render(&Inputs {
        status,
        ledger: ledger_view(state_dir, now),
        hashed,
        key_expiry: Vec::new(),
        now,
    });
    write(path, &text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::status::{Finding, SlotStatus};

    fn slot(unit: &str) -> SlotStatus {
        SlotStatus {
            slot: unit.parse().unwrap(),
            dir: PathBuf::from("/m").join(unit),
            engine_version: Some("1.1.24080.9".into()),
            definition_version: Some("1.417.30.0".into()),
            bundle_id: Some("b".into()),
            channel: Some("default".into()),
            sequence: Some(7),
            imported_at: Some("2026-01-01T00:00:00Z".into()),
            age_seconds: Some(3600),
            expires: Some("2026-01-08T00:00:00Z".into()),
            expired: false,
            files_match: Some(true),
            back_exists: false,
            back_definition_version: None,
            back_files_match: None,
            findings: Vec::new(),
        }
    }

    fn status(slots: Vec<SlotStatus>) -> MirrorStatus {
        MirrorStatus {
            mirror: "/m".into(),
            state_dir: "/s".into(),
            problems: slots.is_empty(),
            problem_count: usize::from(slots.is_empty()),
            warning_count: 0,
            slots,
            trust_policy: None,
            inbox: None,
        }
    }

    fn at(s: &str) -> SystemTime {
        crate::manifest::parse_time(s).unwrap()
    }

    fn lines(text: &str, name: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn label_values_are_escaped_and_stay_on_one_line() {
        assert_eq!(label_value("1.2.3"), "1.2.3");
        assert_eq!(label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        // A newline becomes the two characters \n (text::escape), whose
        // backslash is then escaped for the format.
        assert_eq!(label_value("a\nb\u{1b}"), r"a\\nb\\u{1b}");
    }

    #[test]
    fn units_and_mirror_from_status_and_ledger() {
        let mut s1 = slot("linux/production/arch_x86_64");
        s1.files_match = Some(false);
        s1.findings.push(Finding {
            severity: Severity::Problem,
            message: "differs".into(),
        });
        let mut s2 = slot("linux/production/arch_arm64");
        s2.back_exists = true;
        s2.back_files_match = Some(true);
        s2.definition_version = Some("1.2\"x".into());
        let st = status(vec![s1, s2]);
        let now = at("2026-01-01T02:00:00Z");
        let text = render(&Inputs {
            status: &st,
            ledger: LedgerView::Read(LedgerSummary {
                entries: 5,
                last_attempt: Some((at("2026-01-01T01:00:00Z"), Outcome::Rejected)),
                last_success: Some(at("2026-01-01T00:00:00Z")),
                last_24h: [("rejected", 2), ("imported", 1)].into_iter().collect(),
            }),
            hashed: true,
            key_expiry: vec![("ABCD".into(), at("2027-01-01T00:00:00Z"))],
            now,
        });
        assert_eq!(
            lines(&text, "gapferry_unit_info"),
            [
                r#"gapferry_unit_info{unit="linux/production/arch_x86_64",definition_version="1.417.30.0",engine_version="1.1.24080.9"} 1"#,
                r#"gapferry_unit_info{unit="linux/production/arch_arm64",definition_version="1.2\"x",engine_version="1.1.24080.9"} 1"#,
            ]
        );
        assert_eq!(
            lines(&text, "gapferry_unit_age_seconds"),
            [
                r#"gapferry_unit_age_seconds{unit="linux/production/arch_x86_64"} 7200"#,
                r#"gapferry_unit_age_seconds{unit="linux/production/arch_arm64"} 7200"#,
            ],
            "age from the import time and now, not status's own clock"
        );
        assert!(text.contains(
            "gapferry_unit_bundle_expiry_timestamp_seconds{unit=\"linux/production/arch_x86_64\"} 1767830400\n"
        ));
        assert!(
            text.contains("gapferry_unit_files_match{unit=\"linux/production/arch_x86_64\"} 0\n")
        );
        assert!(
            text.contains("gapferry_unit_files_match{unit=\"linux/production/arch_arm64\"} 1\n")
        );
        assert!(text.contains("gapferry_unit_problems{unit=\"linux/production/arch_x86_64\"} 1\n"));
        assert!(text
            .contains("gapferry_unit_previous_present{unit=\"linux/production/arch_x86_64\"} 0\n"));
        assert_eq!(
            lines(&text, "gapferry_unit_previous_files_match"),
            [r#"gapferry_unit_previous_files_match{unit="linux/production/arch_arm64"} 1"#]
        );
        assert!(text.contains("gapferry_ledger_entries_total 5\n"));
        assert!(text.contains("gapferry_last_import_timestamp_seconds 1767229200\n"));
        assert!(text.contains("gapferry_last_import_success 0\n"));
        assert!(text.contains("gapferry_last_import_outcome{outcome=\"rejected\"} 1\n"));
        assert!(text.contains("gapferry_last_import_outcome{outcome=\"imported\"} 0\n"));
        assert!(text.contains("gapferry_import_attempts_last_24h{outcome=\"rejected\"} 2\n"));
        assert!(text.contains("gapferry_import_attempts_last_24h{outcome=\"failed\"} 0\n"));
        assert!(
            text.contains("gapferry_key_expiry_timestamp_seconds{key_id=\"ABCD\"} 1798761600\n")
        );
        assert!(text.contains("gapferry_metrics_timestamp_seconds 1767232800\n"));
        // Every family's samples follow its one HELP and TYPE.
        let mut seen = std::collections::HashSet::new();
        let mut current = "";
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap();
                assert!(seen.insert(current.to_string()), "{current} twice");
            } else if !l.starts_with('#') {
                assert!(l.starts_with(current), "{l} outside its family");
            }
        }
    }

    #[test]
    fn no_ledger_and_broken_ledger() {
        let st = status(Vec::new());
        let now = at("2026-01-01T00:00:00Z");
        let mk = |ledger| {
            render(&Inputs {
                status: &st,
                ledger,
                hashed: false,
                key_expiry: Vec::new(),
                now,
            })
        };
        let missing = mk(LedgerView::Missing);
        assert!(missing.contains("gapferry_ledger_ok 1\n"));
        assert!(missing.contains("gapferry_ledger_entries_total 0\n"));
        assert!(
            missing.contains("gapferry_mirror_problem 1\n"),
            "nothing served"
        );
        assert!(missing.contains("gapferry_files_checked_sha256 0\n"));
        assert!(!missing.contains("gapferry_last_import"));
        assert!(!missing.contains("gapferry_key_expiry"), "no empty family");
        assert!(
            !missing.contains("gapferry_trust_policy"),
            "no policy, no family"
        );
        let broken = mk(LedgerView::Unreadable);
        assert!(broken.contains("gapferry_ledger_ok 0\n"));
        assert!(!broken.contains("gapferry_ledger_entries_total"));
    }

    #[test]
    fn an_adopted_trust_policy_shows_its_version_and_expiry() {
        let mut st = status(Vec::new());
        st.trust_policy = Some(crate::mirror::status::TrustStatus {
            version: 3,
            expires: "2027-01-01T00:00:00Z".into(),
            days_left: 365,
            expired: false,
            warning: None,
            adopted_at: "2026-01-01T00:00:00Z".into(),
        });
        let text = render(&Inputs {
            status: &st,
            ledger: LedgerView::Missing,
            hashed: false,
            key_expiry: Vec::new(),
            now: at("2026-01-01T00:00:00Z"),
        });
        assert!(text.contains("gapferry_trust_policy_version 3\n"), "{text}");
        assert!(
            text.contains("gapferry_trust_policy_expiry_timestamp_seconds 1798761600\n"),
            "{text}"
        );
    }

    #[test]
    fn what_the_inbox_left_waiting_is_counted() {
        let mut st = status(Vec::new());
        let none = render(&Inputs {
            status: &st,
            ledger: LedgerView::Missing,
            hashed: false,
            key_expiry: Vec::new(),
            now: at("2026-01-01T00:00:00Z"),
        });
        assert!(!none.contains("gapferry_inbox_waiting "), "{none}");
        st.inbox = Some(crate::mirror::inbox::waiting::Waiting {
            inbox: "/srv/inbox".into(),
            checked: "2026-01-01T00:00:00Z".into(),
            waiting: vec!["a".into(), "b".into()],
        });
        let text = render(&Inputs {
            status: &st,
            ledger: LedgerView::Missing,
            hashed: false,
            key_expiry: Vec::new(),
            now: at("2026-01-01T00:00:00Z"),
        });
        assert!(text.contains("gapferry_inbox_waiting 2\n"), "{text}");
        assert!(
            text.contains("gapferry_inbox_pass_timestamp_seconds 1767225600\n"),
            "{text}"
        );
    }

    #[test]
    fn ledger_summary_counts_the_window_and_skips_rollbacks() {
        use crate::mirror::ledger::{LedgerEntry, Suppressed};
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&t.path().join("s")).unwrap();
        let ledger = dir.ledger();
        assert_eq!(
            ledger_view(dir.path(), SystemTime::now()),
            LedgerView::Missing,
            "a state directory with no ledger yet"
        );
        let line = |time: &str, outcome| LedgerEntry {
            time: time.into(),
            ..LedgerEntry::new(outcome)
        };
        ledger
            .append(&line("2026-01-01T00:00:00Z", Outcome::Imported))
            .unwrap();
        ledger
            .append(&line("2026-01-02T10:00:00Z", Outcome::Rejected))
            .unwrap();
        ledger
            .append(&line("2026-01-02T11:00:00Z", Outcome::Imported))
            .unwrap();
        ledger
            .append(&LedgerEntry {
                suppressed: Some(Suppressed {
                    repeats: 3,
                    over_limit: 1,
                    first: "2026-01-02T11:10:00Z".into(),
                    last: "2026-01-02T11:20:00Z".into(),
                }),
                ..line("2026-01-02T11:30:00Z", Outcome::Suppressed)
            })
            .unwrap();
        ledger
            .append(&line("2026-01-02T12:00:00Z", Outcome::RolledBack))
            .unwrap();
        let LedgerView::Read(s) = ledger_view(dir.path(), at("2026-01-02T20:00:00Z")) else {
            panic!("ledger not read");
        };
        assert_eq!(s.entries, 5);
        assert_eq!(
            s.last_attempt,
            Some((at("2026-01-02T11:00:00Z"), Outcome::Imported)),
            "a rollback is not an import attempt"
        );
        assert_eq!(s.last_success, Some(at("2026-01-02T11:00:00Z")));
        assert_eq!(
            s.last_24h,
            [("rejected", 1), ("imported", 1), ("suppressed", 4)]
                .into_iter()
                .collect(),
            "the import of 2026-01-01 is outside the window"
        );
        assert_eq!(
            ledger_view(&t.path().join("none"), SystemTime::now()),
            LedgerView::Missing
        );
        std::fs::write(dir.ledger_path(), "not json\n").unwrap();
        assert_eq!(
            ledger_view(dir.path(), SystemTime::now()),
            LedgerView::Unreadable
        );
    }

    #[test]
    fn written_whole_with_its_mode() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("gapferry.prom");
        write(&f, "a 1\n").unwrap();
        write(&f, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "a 2\n");
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
        let e = write(&t.path().join("missing/gapferry.prom"), "").unwrap_err();
        assert!(e.to_string().contains("missing/gapferry.prom"), "{e}");
        assert!(check_path(Path::new("x.txt")).is_err());
        assert!(check_path(Path::new("/var/lib/x/gapferry.prom")).is_ok());
    }
}
