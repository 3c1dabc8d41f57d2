//! `gapferry endpoint-config`: the command-line face of
//! [`gapferry::mde::endpoint`]. It owns the flags, where generated settings
//! go (stdout, or `--out` written atomically), and how check findings are
//! shown (stderr for people, `--json` on stdout) and turned into the exit
//! code. It decides nothing about the settings themselves.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Serialize;

use gapferry::mde::endpoint::{
    self, CheckReport, ConfigFormat, EndpointSettings, Expect, Finding, Location, DEFAULT_INTERVAL,
    DEFAULT_PROFILE_IDENTIFIER,
};
use gapferry::mde::{Platform, Ring};

use super::output::{print_json, write_atomically, ErrorJson};
use super::UsageError;

const AFTER_HELP: &str = "\
Examples:
  gapferry endpoint-config --url http://mirror.example/mde --platform linux \\
      > /etc/opt/microsoft/mdatp/managed/mdatp_managed.json
  gapferry endpoint-config --url https://mirror.example/mde --platform mac \\
      --format plist --out defender-offline.mobileconfig
  gapferry endpoint-config --check /etc/opt/microsoft/mdatp/managed/mdatp_managed.json
  gapferry endpoint-config --platform windows --share '\\\\fs01\\defender'
  gapferry endpoint-config --platform windows --check mppreference.txt

Exit codes with --check:
  0  no problems (notes may be printed)
  1  problems found: offline updates would not work as intended
  2  usage error, or FILE cannot be read or is neither JSON nor an XML plist
Without --check: 0 settings written, 1 --out cannot be written, 2 usage error.";

/// Print the managed settings that point Defender endpoints at the mirror,
/// or check a settings file for mistakes.
///
/// Generates mdatp_managed.json (Linux, and macOS tools that take JSON) or,
/// with --format plist, a macOS configuration profile with a
/// com.microsoft.wdav payload: offline updates enabled, the URL ending at
/// <platform>/<ring>/, signature checks on (read by Defender for Mac and by
/// Defender for Linux before 101.26062.0005, which deprecated the setting),
/// automatic updates every --interval seconds, fallback to the cloud off
/// unless asked for; for Linux also real-time enforcement, without which
/// Defender for Linux never updates on its own.
///
/// --url or --path may name the mirror root (gapferry appends
/// <platform>/<ring>/) or already end at <platform>/<ring>/.
///
/// --check FILE reads a managed JSON file, a plist or a .mobileconfig and
/// reports misspelled or misplaced keys (such as the
/// offlineDefintionUpdateFallbackToCloud of Microsoft's own sample), a
/// missing or wrong URL, offline updates left disabled, settings the agent
/// version ignores or defaults differently, and for each finding which
/// agents (platform and versions) it applies to.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct EndpointConfigArgs {
    /// The mirror's http(s) URL: its root, or its <platform>/<ring>/ folder.
    #[arg(long, value_name = "URL", conflicts_with_all = ["path", "check"])]
    pub url: Option<String>,
    /// The mirror as an absolute directory on the endpoints (an NFS or SMB
    /// mount): its root, or its <platform>/<ring>/ folder.
    #[arg(long, value_name = "DIR", conflicts_with = "check")]
    pub path: Option<PathBuf>,
    /// The endpoints' platform: linux or mac. Required to generate; with
    /// --check, the platform the URL must be for (a plist implies mac).
    /// windows: PowerShell and Group Policy settings for --share, or with
    /// --check a saved `Get-MpPreference` output (text or JSON).
    #[arg(long, value_name = "P", value_parser = super::windows::platform_parser())]
    pub platform: Option<super::windows::PlatformSel>,
    /// With --platform windows: the UNC share clients read
    /// (\\server\share, without the x64/x86 folder); with --check, the
    /// share the client must list.
    #[arg(long, value_name = "UNC", conflicts_with_all = ["url", "path"])]
    pub share: Option<String>,
    /// The ring: production or preview [default: production]. With
    /// --check, the ring the URL must be for (any when not given).
    #[arg(long, value_name = "R", value_parser = super::one_of(Ring::ALL, Ring::as_str))]
    pub ring: Option<Ring>,
    /// Let endpoints fall back to Microsoft's cloud when the mirror fails
    /// (useless on a true air gap).
    #[arg(long, conflicts_with = "check")]
    pub fallback_to_cloud: bool,
    /// Seconds between definition update checks.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_INTERVAL, conflicts_with = "check")]
    pub interval: u64,
    /// Output format: json (mdatp_managed.json) or plist (macOS configuration profile).
    #[arg(long, value_enum, default_value_t = OutputFormat::Json, conflicts_with = "check")]
    pub format: OutputFormat,
    /// PayloadIdentifier of the generated configuration profile (plist only).
    #[arg(long, value_name = "ID", default_value = DEFAULT_PROFILE_IDENTIFIER, conflicts_with = "check")]
    pub profile_identifier: String,
    /// Write the settings to FILE (atomically) instead of stdout.
    #[arg(long, value_name = "FILE", conflicts_with = "check")]
    pub out: Option<PathBuf>,
    /// Check this managed settings file (JSON, plist or .mobileconfig)
    /// instead of generating one.
    #[arg(long, value_name = "FILE")]
    pub check: Option<PathBuf>,
    /// With --check: print the findings as one JSON document on stdout.
    #[arg(long, requires = "check")]
    pub json: bool,
}

/// The formats `endpoint-config` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Json,
    Plist,
}

/// The `--check --json` document.
#[derive(Debug, Serialize)]
pub struct CheckOutput {
    pub file: PathBuf,
    /// "json" or "plist".
    pub format: ConfigFormat,
    pub problem_count: usize,
    pub note_count: usize,
    /// Deprecated name of `problem_count` (docs/JSON.md).
    pub problems: usize,
    /// Deprecated name of `note_count` (docs/JSON.md).
    pub notes: usize,
    /// antivirusEngine.offlineDefinitionUpdateUrl, when it is a string.
    pub update_url: Option<String>,
    /// Problems first, then notes.
    pub findings: Vec<Finding>,
}

impl CheckOutput {
    pub fn new(r: &CheckReport) -> Self {
        CheckOutput {
            file: r.path.clone(),
            format: r.format,
            problem_count: r.problems(),
            note_count: r.findings.len() - r.problems(),
            problems: r.problems(),
            notes: r.findings.len() - r.problems(),
            update_url: r.update_url.clone(),
            findings: r.findings.clone(),
        }
    }
}

impl EndpointConfigArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        if self.platform == Some(super::windows::PlatformSel::Windows) {
            return self.run_windows();
        }
        if self.share.is_some() {
            return Err(UsageError("--share is for --platform windows".into()).into());
        }
        if let Some(file) = &self.check {
            return self.check(file);
        }
        let location = match (&self.url, &self.path) {
            (Some(u), None) => Location::Url(u.clone()),
            (None, Some(p)) => Location::Path(p.clone()),
            _ => return Err(UsageError(
                "give --url URL or --path DIR to generate settings, or --check FILE to check them"
                    .into(),
            )
            .into()),
        };
        let platform = self.mde_platform().ok_or_else(|| {
            UsageError("--platform linux, mac or windows is required to generate settings".into())
        })?;
        let settings = EndpointSettings::new(
            &location,
            platform,
            self.ring.unwrap_or(Ring::Production),
            self.fallback_to_cloud,
            self.interval,
        )?;
        let text = match self.format {
            OutputFormat::Json => settings.to_json(),
            OutputFormat::Plist => settings.to_plist(&self.profile_identifier)?,
        };
        match &self.out {
            Some(path) => {
                write_atomically(path, text.as_bytes())?;
                eprintln!(
                    "gapferry: wrote {} ({} settings for {}: {})",
                    path.display(),
                    match self.format {
                        OutputFormat::Json => "JSON",
                        OutputFormat::Plist => "configuration profile",
                    },
                    platform,
                    settings.update_url
                );
            }
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
        }
        Ok(0)
    }

    fn mde_platform(&self) -> Option<Platform> {
        match self.platform {
            Some(super::windows::PlatformSel::Mde(p)) => Some(p),
            _ => None,
        }
    }

    /// `--platform windows`: print the settings for `--share`, or check a
    /// saved `Get-MpPreference` output.
    fn run_windows(&self) -> anyhow::Result<i32> {
        use gapferry::windows::endpoint as win;
        if self.url.is_some() || self.path.is_some() || self.ring.is_some() {
            return Err(UsageError(
                "--platform windows takes --share \\\\server\\share (no --url, --path or --ring)"
                    .into(),
            )
            .into());
        }
        if let Some(share) = &self.share {
            win::check_share(share).map_err(UsageError)?;
        }
        if let Some(file) = &self.check {
            let report = win::check_file(file, self.share.as_deref())
                .map_err(|e| UsageError(e.to_string()))?;
            if self.json {
                let error = (!report.ok).then(|| {
                    ErrorJson::new(
                        format!(
                            "{}: {} problem(s); `gapferry endpoint-config --platform windows --share \\\\server\\share` prints correct settings",
                            file.display(),
                            report.problem_count
                        ),
                        1,
                    )
                });
                print_json(&report, error)?;
            } else {
                let mut err = std::io::stderr().lock();
                for f in &report.findings {
                    writeln!(
                        err,
                        "{}: {}: {}: {}",
                        gapferry::text::escape_path(file),
                        match f.severity {
                            win::Severity::Problem => "problem",
                            win::Severity::Note => "note",
                        },
                        f.key,
                        gapferry::text::Esc(&f.message)
                    )?;
                    if let Some(fix) = &f.fix {
                        writeln!(err, "    fix: {}", gapferry::text::Esc(fix))?;
                    }
                }
                writeln!(
                    err,
                    "{}: {} problem(s), {} note(s){}",
                    gapferry::text::escape_path(file),
                    report.problems,
                    report.notes,
                    if report.ok {
                        format!(
                            ": security intelligence from {}",
                            gapferry::text::Esc(&report.share_sources.join(" | "))
                        )
                    } else {
                        String::new()
                    }
                )?;
            }
            return Ok(if report.ok { 0 } else { 1 });
        }
        if self.format != OutputFormat::Json {
            return Err(UsageError(
                "--format is for linux/mac settings; --platform windows prints PowerShell and Group Policy settings".into(),
            )
            .into());
        }
        let share = self.share.as_deref().ok_or_else(|| {
            UsageError(
                "--platform windows needs --share \\\\server\\share (or --check FILE)".into(),
            )
        })?;
        let text = win::settings_text(share);
        match &self.out {
            Some(path) => {
                write_atomically(path, text.as_bytes())?;
                eprintln!(
                    "gapferry: wrote {} (Windows settings for {share})",
                    path.display()
                );
            }
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
        }
        Ok(0)
    }

    fn check(&self, file: &Path) -> anyhow::Result<i32> {
        let expect = Expect {
            platform: self.mde_platform(),
            ring: self.ring,
        };
        let report = endpoint::check_file(file, &expect)?;
        if self.json {
            let error = (!report.is_ok()).then(|| {
                ErrorJson::new(
                    format!(
                        "{}: {} problem(s); `gapferry endpoint-config --url URL --platform P` prints correct settings",
                        file.display(),
                        report.problems()
                    ),
                    1,
                )
            });
            print_json(&CheckOutput::new(&report), error)?;
        } else {
            let mut err = std::io::stderr().lock();
            for f in &report.findings {
                writeln!(
                    err,
                    "{}: {}: {}: {}",
                    gapferry::text::escape_path(file),
                    f.severity,
                    gapferry::text::Esc(&f.key),
                    gapferry::text::Esc(&f.message)
                )?;
                if let Some(fix) = &f.fix {
                    writeln!(err, "    fix: {}", gapferry::text::Esc(fix))?;
                }
                if let Some(a) = &f.applies_to {
                    writeln!(err, "    applies to: {a}")?;
                }
            }
            let problems = report.problems();
            let notes = report.findings.len() - problems;
            if problems == 0 {
                writeln!(
                    err,
                    "{}: ok ({}{}): offline updates from {}",
                    file.display(),
                    report.format,
                    if notes > 0 {
                        format!(", {notes} note(s)")
                    } else {
                        String::new()
                    },
                    report.update_url.as_deref().unwrap_or("?")
                )?;
            } else {
                writeln!(
                    err,
                    "{}: {problems} problem(s), {notes} note(s); `gapferry endpoint-config --url URL --platform P` prints correct settings",
                    file.display()
                )?;
            }
        }
        Ok(if report.is_ok() { 0 } else { 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(Debug, clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        args: EndpointConfigArgs,
    }

    #[test]
    fn debug_assert() {
        Wrap::command().debug_assert();
    }
}
