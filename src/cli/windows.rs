//! The Windows side of the shared subcommands: `--platform windows` as a
//! value beside linux and mac, the architecture names of both profiles,
//! and `fetch --platform windows` (plan, run, summary, `--json`). The
//! subcommands call in here as soon as they see `--platform windows`.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;

use gapferry::mde::upstream::HttpConfig;
use gapferry::mde::{Arch, Platform};
use gapferry::windows::fetch::{self as wfetch, WinFetchPlan, WinFetchReport, WinOutcome};
use gapferry::windows::WinArch;

use super::fetch::{FetchArgs, FetchSourceArgs, Ui};
use super::output::{print_json, ErrorJson};
use super::UsageError;

/// A `--platform` value: an `mde` platform, or `windows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformSel {
    Mde(Platform),
    Windows,
}

impl FromStr for PlatformSel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "windows" {
            return Ok(PlatformSel::Windows);
        }
        s.parse::<Platform>()
            .map(PlatformSel::Mde)
            .map_err(|_| format!("unknown platform {s:?}: expected one of linux, mac, windows"))
    }
}

impl fmt::Display for PlatformSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlatformSel::Mde(p) => p.fmt(f),
            PlatformSel::Windows => f.write_str("windows"),
        }
    }
}

/// An `--arch` value of either profile (x86_64, arm64; x64, x86, arm64),
/// checked against the platform once it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchName(pub String);

impl FromStr for ArchName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.parse::<Arch>().is_ok() || s.parse::<WinArch>().is_ok() {
            Ok(ArchName(s.to_string()))
        } else {
            Err(format!(
                "unknown arch {s:?}: expected x86_64 or arm64 (linux, mac), or x64, x86 or arm64 (windows)"
            ))
        }
    }
}

/// Whether `--platform windows` was given; an error when it is mixed with
/// linux or mac (one profile per bundle and per run).
pub fn wants_windows(platforms: &[PlatformSel], command: &str) -> Result<bool, UsageError> {
    let windows = platforms.contains(&PlatformSel::Windows);
    if windows
        && platforms.len()
            > platforms
                .iter()
                .filter(|p| **p == PlatformSel::Windows)
                .count()
    {
        return Err(UsageError(format!(
            "{command}: --platform windows cannot be combined with linux or mac: Windows packages \
             travel in their own bundle (profile \"windows\"); run {command} once for linux/mac \
             and once with --platform windows"
        )));
    }
    Ok(windows)
}

/// The `mde` platforms among `platforms`.
pub fn mde_platforms(platforms: &[PlatformSel]) -> Vec<Platform> {
    platforms
        .iter()
        .filter_map(|p| match p {
            PlatformSel::Mde(p) => Some(*p),
            PlatformSel::Windows => None,
        })
        .collect()
}

/// The `mde` arches among `arches`; an error naming a Windows-only one.
pub fn mde_arches(arches: &[ArchName]) -> Result<Vec<Arch>, UsageError> {
    arches
        .iter()
        .map(|a| {
            a.0.parse::<Arch>().map_err(|_| {
                UsageError(format!(
                    "--arch {}: not a linux/mac arch (x86_64, arm64); x64 and x86 are for --platform windows",
                    a.0
                ))
            })
        })
        .collect()
}

/// The Windows arches among `arches` (none: `default`); an error naming
/// an `mde`-only one.
pub fn win_arches(arches: &[ArchName], default: &[WinArch]) -> Result<Vec<WinArch>, UsageError> {
    let mut out: Vec<WinArch> = Vec::new();
    for a in arches {
        let w = a.0.parse::<WinArch>().map_err(|_| {
            UsageError(format!(
                "--arch {}: not a Windows arch; use x64, x86 or arm64 with --platform windows",
                a.0
            ))
        })?;
        if !out.contains(&w) {
            out.push(w);
        }
    }
    if out.is_empty() {
        out = default.to_vec();
    }
    out.sort();
    Ok(out)
}

/// `gapferry fetch --platform windows`.
pub fn fetch(args: &FetchArgs) -> anyhow::Result<i32> {
    let usage = |m: &str| UsageError(format!("fetch --platform windows: {m}"));
    if !args.rings.is_empty() {
        return Err(usage("Windows packages have no rings; leave out --ring").into());
    }
    let download_folder = args
        .download_folder
        .clone()
        .ok_or_else(|| usage("--download-folder DIR is required"))?;
    let plan = plan(
        &args.source,
        download_folder,
        win_arches(&args.arches, WinArch::DEFAULT)?,
        "fetch",
    )?;
    let report = execute(&plan, &args.source, args.quiet, args.json)?;
    if args.json {
        let error = report.failed().then(|| {
            ErrorJson::new(
                "a Windows package failed to fetch; each failed item says why".into(),
                1,
            )
        });
        print_json(&WinFetchJson::new(&report), error)?;
    }
    Ok(if report.failed() { 1 } else { 0 })
}

/// The Windows fetch the flags `s` describe, into `download_folder`.
pub fn plan(
    s: &FetchSourceArgs,
    download_folder: PathBuf,
    arches: Vec<WinArch>,
    command: &str,
) -> anyhow::Result<WinFetchPlan> {
    if s.settings.is_some() {
        return Err(UsageError(format!(
            "{command} --platform windows: --settings is Microsoft's linux/mac settings.json; leave it out"
        ))
        .into());
    }
    Ok(WinFetchPlan {
        download_folder,
        arches,
        upstream: s.upstream.clone(),
        backup: !s.no_backup,
        http: HttpConfig {
            connect_timeout: s.connect_timeout,
            read_timeout: s.timeout,
            retries: s.retries,
            retry_delay: s.retry_delay,
            extra_roots: gapferry::mde::upstream::ExtraRoots::read(&s.ca_certs)
                .map_err(gapferry::mde::fetch::FetchError::CaCert)?,
        },
        max_package_size: s.max_package_size,
    })
}

/// Runs `plan` with log lines (stderr and `--log-file`), progress bars on
/// a terminal, and the summary on stderr.
pub fn execute(
    plan: &WinFetchPlan,
    s: &FetchSourceArgs,
    quiet: bool,
    json: bool,
) -> anyhow::Result<WinFetchReport> {
    let ui = Ui::new(s.log_file.as_deref(), quiet, json)?;
    let report = wfetch::fetch(plan, &ui)?;
    summary(&report, quiet);
    Ok(report)
}

fn summary(report: &WinFetchReport, quiet: bool) {
    if quiet && !report.failed() {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "fetch summary:");
    for item in &report.items {
        let (word, detail) = match &item.outcome {
            WinOutcome::Updated { version, .. } => ("updated", format!("version {version}")),
            WinOutcome::Unchanged { version } => ("unchanged", format!("version {version}")),
            WinOutcome::Failed { error } => ("FAILED", error.to_string()),
            _ => ("?", String::new()),
        };
        let _ = writeln!(
            err,
            "  {word:<9}  {:<28}  {}",
            item.arch.rel(),
            gapferry::text::Esc(&detail)
        );
    }
    if report.failed() {
        let _ = writeln!(
            err,
            "gapferry: fetch: some Windows packages failed; their folders in {} are unchanged",
            report.download_folder.display()
        );
    }
}

/// The `--json` document of `fetch --platform windows`.
#[derive(Debug, Serialize)]
pub struct WinFetchJson {
    pub download_folder: PathBuf,
    pub upstream: String,
    pub items: Vec<WinFetchItem>,
}

/// One arch of a Windows fetch.
#[derive(Debug, Serialize)]
pub struct WinFetchItem {
    pub platform: &'static str,
    pub arch: String,
    /// `windows/<arch>`, relative to the download folder.
    pub path: String,
    /// "updated", "unchanged" or "failed".
    pub outcome: &'static str,
    pub version: Option<String>,
    pub previous: Option<String>,
    pub signer: Option<String>,
    pub backed_up: bool,
    pub bytes: u64,
    pub sha256: Option<String>,
    pub error: Option<String>,
}

impl WinFetchJson {
    pub fn new(r: &WinFetchReport) -> Self {
        let items = r
            .items
            .iter()
            .map(|i| {
                let mut item = WinFetchItem {
                    platform: "windows",
                    arch: i.arch.to_string(),
                    path: i.arch.rel(),
                    outcome: "failed",
                    version: None,
                    previous: None,
                    signer: None,
                    backed_up: false,
                    bytes: 0,
                    sha256: None,
                    error: None,
                };
                match &i.outcome {
                    WinOutcome::Updated {
                        version,
                        previous,
                        signer,
                        bytes,
                        sha256,
                        backed_up,
                    } => {
                        item.outcome = "updated";
                        item.version = Some(version.clone());
                        item.previous = previous.clone();
                        item.signer = signer.clone();
                        item.bytes = *bytes;
                        item.sha256 = Some(sha256.clone());
                        item.backed_up = *backed_up;
                    }
                    WinOutcome::Unchanged { version } => {
                        item.outcome = "unchanged";
                        item.version = Some(version.clone());
                    }
                    WinOutcome::Failed { error } => item.error = Some(error.to_string()),
                    _ => item.error = Some("unknown outcome".into()),
                }
                item
            })
            .collect();
        WinFetchJson {
            download_folder: r.download_folder.clone(),
            upstream: r.upstream.clone(),
            items,
        }
    }
}

/// `--platform` values, listed for help and shell completion.
pub fn platform_parser() -> impl clap::builder::TypedValueParser<Value = PlatformSel> {
    use clap::builder::{PossibleValuesParser, TypedValueParser as _};
    let names = Platform::ALL.iter().map(|p| p.as_str()).chain(["windows"]);
    PossibleValuesParser::new(names).map(|s: String| {
        s.parse::<PlatformSel>()
            .expect("clap accepts listed values only")
    })
}

/// `--arch` values of both profiles, listed for help and shell completion.
pub fn arch_parser() -> impl clap::builder::TypedValueParser<Value = ArchName> {
    use clap::builder::{PossibleValuesParser, TypedValueParser as _};
    let mut names: Vec<&'static str> = Arch::ALL.iter().map(|a| a.as_str()).collect();
    for w in WinArch::ALL {
        if !names.contains(&w.as_str()) {
            names.push(w.as_str());
        }
    }
    PossibleValuesParser::new(names).map(ArchName)
}
