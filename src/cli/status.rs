//! `gapferry status`: what the mirror serves, for people and monitoring.

use std::path::PathBuf;

use clap::Args;

use gapferry::mirror::status::{self, Severity};
use gapferry::mirror::{metrics, state};
use gapferry::text::{escape_path, Esc};

use super::output::{print_json, ErrorJson};
use super::UsageError;

/// Show what each arch folder of a mirror serves and whether it is healthy.
///
/// For every platform/ring/arch: engine and definition versions, bundle id,
/// sequence, import time and age, whether the served files still match what
/// was imported (size and SHA-256; catches tampering and bit rot), whether
/// n-1 exists, and the bundle's expiry. Exits 1 when a problem is found (a
/// file differs or is missing, versions disagree with the record, nothing is
/// served), so monitoring can call it; warnings (no n-1, expired bundle, not
/// imported by gapferry) do not change the exit code unless --strict.
#[derive(Debug, Args)]
#[command(after_help = STATUS_EXIT_CODES)]
pub struct StatusArgs {
    /// Mirror root, or s3://BUCKET/PREFIX (with --state-dir).
    #[arg(long, value_name = "DIR", required_unless_present_any = ["target", "share"], conflicts_with_all = ["target", "share"])]
    mirror: Option<PathBuf>,
    /// The folder an import --target published into (the units its state
    /// recorded, at DIR/<leaf>, n-1 in DIR_back/).
    #[arg(long, value_name = "DIR", conflicts_with = "share")]
    target: Option<PathBuf>,
    /// The folder behind a Windows share that import --share published into.
    #[arg(long, value_name = "DIR")]
    share: Option<PathBuf>,
    #[command(flatten)]
    s3: super::s3::S3Args,
    /// State directory given to import [default: as import's].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Compare sizes only, not SHA-256 (fast on large mirrors).
    #[arg(long)]
    quick: bool,
    /// Exit 1 on warnings too.
    #[arg(long)]
    strict: bool,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Write Prometheus metrics to FILE (atomically, mode 0644, for
    /// node_exporter's textfile collector; the name must end in .prom)
    /// instead of printing the report (with --json: as well). The exit code
    /// is the same.
    #[arg(long, value_name = "FILE")]
    prometheus: Option<PathBuf>,
}

const STATUS_EXIT_CODES: &str = "\
Exit codes:
  0  every served folder is healthy (warnings allowed unless --strict)
  1  a problem was found (a file differs or is missing, versions disagree
     with the record, nothing is served), or a warning with --strict
  2  usage error (including a --mirror folder that does not exist)";

fn age(secs: u64) -> String {
    match secs {
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

impl StatusArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        let s3 = self
            .s3
            .mirror(self.mirror.as_deref(), self.state_dir.as_deref())?;
        let (served, root) = match (&self.mirror, self.target.as_ref().or(self.share.as_ref())) {
            (Some(_), _) if s3.is_some() => {
                let m = s3.as_deref().expect("just checked");
                (status::Served::S3(m), m.shadow_root())
            }
            (Some(m), _) => (status::Served::Mirror(m), m.as_path()),
            (None, Some(t)) => (status::Served::Target(t), t.as_path()),
            (None, None) => {
                return Err(super::UsageError(
                    "give one of --mirror DIR, --target DIR or --share DIR".into(),
                )
                .into())
            }
        };
        let flag = if self.mirror.is_some() {
            "--mirror"
        } else if self.target.is_some() {
            "--target"
        } else {
            "--share"
        };
        match &s3 {
            Some(_) => {}
            None => super::existing_folder(
                flag,
                root,
                "check the path (import creates a new mirror only with --create)",
            )?,
        }
        let state_dir = match &self.state_dir {
            Some(d) => d.clone(),
            None => state::default_state_dir(root)?,
        };
        // A store that cannot be reached still gets its metrics written
        // (no unit, `gapferry_mirror_problem 1`, so alerts fire), then the
        // error, naming the store and the fix.
        if let Some(e) = s3.as_ref().and_then(|m| m.client().check_bucket().err()) {
            if let Some(file) = &self.prometheus {
                metrics::check_path(file)?;
                metrics::write_unknown(file, served, &state_dir, !self.quick)?;
            }
            return Err(e.into());
        }
        let st = match (&self.prometheus, &self.mirror) {
            (Some(file), Some(_)) => {
                metrics::check_path(file)?;
                metrics::refresh(file, served, &state_dir, !self.quick)?
            }
            (Some(_), None) => {
                return Err(UsageError(
                    "--prometheus needs --mirror DIR (metrics describe a mirror)".into(),
                )
                .into())
            }
            (None, _) => status::status_at(served, &state_dir, !self.quick)?,
        };
        let warnings = st
            .slots
            .iter()
            .any(|s| s.findings.iter().any(|f| f.severity == Severity::Warning));
        let mut out = String::new();
        macro_rules! line {
            ($o:ident, $($t:tt)*) => {{
                use std::fmt::Write as _;
                let _ = writeln!($o, $($t)*);
            }};
        }
        let strict_warnings = self.strict
            && (warnings
                || st
                    .trust_policy
                    .as_ref()
                    .is_some_and(|t| t.warning.is_some()));
        if self.json {
            let error = if st.problems {
                Some(format!(
                    "{}: {} problem(s) found; each slot's findings say what and how to fix it",
                    root.display(),
                    st.problem_count
                ))
            } else if strict_warnings {
                Some(format!(
                    "{}: warnings found and --strict was given; each slot's findings say what",
                    root.display()
                ))
            } else {
                None
            };
            print_json(&st, error.map(|m| ErrorJson::new(m, 1)))?;
        } else if self.prometheus.is_some() {
            // The metrics file is the report.
        } else {
            if st.slots.is_empty() {
                line!(
                    out,
                    "{}: nothing is served (no arch folder and no import recorded)",
                    escape_path(&st.mirror)
                );
            }
            for s in &st.slots {
                let has = |sev: Severity| s.findings.iter().any(|f| f.severity == sev);
                // [ok] only when nothing below needs a look.
                let tag = if has(Severity::Problem) {
                    "PROBLEM"
                } else if has(Severity::Warning) {
                    "warning"
                } else {
                    "ok"
                };
                line!(out, "{}  [{tag}]", Esc(s.slot.as_str()));
                line!(
                    out,
                    "  engine_version          : {}",
                    Esc(s.engine_version.as_deref().unwrap_or("-"))
                );
                line!(
                    out,
                    "  definition_version      : {}",
                    Esc(s.definition_version.as_deref().unwrap_or("-"))
                );
                line!(
                    out,
                    "  imported                : {}{}",
                    Esc(s.imported_at.as_deref().unwrap_or("-")),
                    s.age_seconds
                        .map(|a| format!(" ({} ago)", age(a)))
                        .unwrap_or_default()
                );
                line!(
                    out,
                    "  bundle                  : {} (channel {}, sequence {})",
                    Esc(s.bundle_id.as_deref().unwrap_or("-")),
                    Esc(s.channel.as_deref().unwrap_or("-")),
                    s.sequence
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "-".into())
                );
                line!(
                    out,
                    "  bundle_expires          : {}{}",
                    Esc(s.expires.as_deref().unwrap_or("-")),
                    if s.expired { " (EXPIRED)" } else { "" }
                );
                line!(
                    out,
                    "  files_match_import      : {}",
                    match s.files_match {
                        Some(true) => "yes",
                        Some(false) => "NO",
                        None => "unknown",
                    }
                );
                line!(
                    out,
                    "  previous_set (n-1)      : {}",
                    if s.back_exists {
                        format!(
                            "yes, definitions {}",
                            Esc(s.back_definition_version.as_deref().unwrap_or("?"))
                        )
                    } else {
                        "no".into()
                    }
                );
                for f in &s.findings {
                    let tag = match f.severity {
                        Severity::Problem => "problem",
                        Severity::Warning => "warning",
                    };
                    line!(out, "  {tag}: {}", Esc(&f.message));
                }
            }
        }
        if !self.json && self.prometheus.is_none() {
            let dir = escape_path(&state_dir);
            line!(
                out,
                "state directory: {dir}  (gapferry ledger show --state-dir {dir})"
            );
        }
        if let (false, Some(t)) = (self.json, &st.trust_policy) {
            line!(
                out,
                "trust policy version {}: expires {} ({}), adopted {}",
                t.version,
                Esc(&t.expires),
                if t.expired {
                    "EXPIRED".to_string()
                } else {
                    format!("{} days left", t.days_left)
                },
                Esc(&t.adopted_at)
            );
            if let Some(w) = &t.warning {
                line!(out, "  warning: {w}");
            }
        }
        let warnings = warnings
            || st
                .trust_policy
                .as_ref()
                .is_some_and(|t| t.warning.is_some());
        if let (false, None, Some(w)) = (self.json, &self.prometheus, &st.inbox) {
            line!(
                out,
                "inbox {} (last pass {}): {} waiting",
                escape_path(&w.inbox),
                Esc(&w.checked),
                w.waiting.len()
            );
            for l in &w.waiting {
                line!(out, "  {}", Esc(l));
            }
        }
        super::output::print_text(&out)?;
        Ok(if st.problems || (self.strict && warnings) {
            1
        } else {
            0
        })
    }
}
