//! `gapferry status`: what the mirror serves, for people and monitoring.

use std::path::PathBuf;

use clap::Args;

use gapferry::mirror::state;
use gapferry::mirror::status::{self, Severity};
use gapferry::text::{escape_path, Esc};

use super::output::print_json;

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
pub struct StatusArgs {
    /// Mirror root.
    #[arg(long, value_name = "DIR")]
    mirror: PathBuf,
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
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

impl StatusArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        let state_dir = match &self.state_dir {
            Some(d) => d.clone(),
            None => state::default_state_dir(&self.mirror)?,
        };
        let st = status::status(&self.mirror, &state_dir, !self.quick)?;
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
        if self.json {
            print_json(&st)?;
        } else {
            if st.slots.is_empty() {
                line!(
                    out,
                    "{}: nothing is served (no arch folder and no import recorded)",
                    escape_path(&self.mirror)
                );
            }
            for s in &st.slots {
                let healthy = !s.findings.iter().any(|f| f.severity == Severity::Problem);
                line!(
                    out,
                    "{}  [{}]",
                    Esc(s.slot.as_str()),
                    if healthy { "ok" } else { "PROBLEM" }
                );
                line!(
                    out,
                    "  engine_version          : {}",
                    Esc(s.engine_version.as_deref().unwrap_or("-"))
                );
                line!(
                    out,
                    "  definitions_version     : {}",
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
        if let (false, Some(w)) = (self.json, &st.inbox) {
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
