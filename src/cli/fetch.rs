//! `gapferry fetch`: the command-line face of [`gapferry::mde::fetch`]. It
//! owns the flags, the log lines (stderr, and `logFilePath` appended to), the
//! progress bars (terminal only), the per-item summary and the `--json`
//! document. It decides nothing about downloads itself.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use gapferry::mde::fetch::{
    self as lib, FetchObserver, FetchOptions, FetchPlan, FetchReport, Level, SlotOutcome,
};
use gapferry::mde::upstream::HttpConfig;
use gapferry::mde::Ring;
use gapferry::progress::Observer;

use super::output::{print_json, Bar};

/// Download Defender offline definition updates into a download folder, as
/// Microsoft's xplat_offline_updates_download.sh does, but safely.
///
/// For each platform/ring/arch it reads upstream's version info, skips the
/// folder when its manifest.json already has that release, and otherwise
/// downloads updates.zip beside the folder, checks that it is a complete zip
/// and that upstream did not move on meanwhile, then swaps the new set in
/// and keeps the replaced one in <ring>_back/. A failed item leaves its
/// folder as it was; the command then exits 1.
///
/// Without --settings or filters: linux and mac, production, x86_64 and
/// arm64. With --settings, the filters narrow what settings.json selects.
///
/// With --platform windows: Microsoft Defender Antivirus's full package
/// mpam-fe.exe for x64 and x86 (arm64 with --arch arm64) into
/// <DIR>/windows/<arch>/, n-1 in <DIR>/windows_back/. Each download must be
/// a complete PE for its arch with a version resource and an embedded
/// Authenticode signature matching the file; the same version as held is
/// "unchanged", an older one is refused.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Folder to fill (<DIR>/<platform>/<ring>/arch_<arch>/); overrides
    /// settings.json's downloadFolder.
    #[arg(long, value_name = "DIR")]
    pub download_folder: Option<PathBuf>,

    /// Only this platform: linux or mac (repeatable); or windows alone, for
    /// <DIR>/windows/<arch>/mpam-fe.exe (see "Windows endpoints" in the README).
    #[arg(long = "platform", value_name = "P")]
    pub platforms: Vec<super::windows::PlatformSel>,

    /// Only this ring: production or preview (repeatable).
    #[arg(long = "ring", value_name = "R")]
    pub rings: Vec<Ring>,

    /// Only this architecture: x86_64 or arm64; with --platform windows x64,
    /// x86 or arm64 (repeatable).
    #[arg(long = "arch", value_name = "A")]
    pub arches: Vec<super::windows::ArchName>,

    #[command(flatten)]
    pub source: FetchSourceArgs,

    /// Print one JSON document describing every item on stdout.
    #[arg(long)]
    pub json: bool,

    /// Only warnings and errors on stderr (the log file still gets everything).
    #[arg(long, short)]
    pub quiet: bool,
}

/// The fetch flags that do not choose a folder or filter items, so that
/// `export --fetch` can reuse them with `#[command(flatten)]`.
#[derive(Debug, Clone, Args)]
pub struct FetchSourceArgs {
    /// Microsoft's settings.json (downloadFolder, downloadLinuxUpdates,
    /// downloadMacUpdates, downloadPreviewUpdates, backupPreviousUpdates,
    /// logFilePath), read with the same meanings as its script.
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,

    /// Base URL the fwlink query string is appended to, for relays and
    /// tests: https, or plain http only to a loopback address.
    #[arg(long, value_name = "URL", default_value = gapferry::mde::upstream::DEFAULT_UPSTREAM)]
    pub upstream: String,

    /// Do not keep the replaced set in <ring>_back/ (overrides
    /// backupPreviousUpdates).
    #[arg(long)]
    pub no_backup: bool,

    /// Append log lines to this file (overrides logFilePath; a directory
    /// gets gapferry-fetch.log inside it).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Time allowed to connect to a server.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Time allowed for any one wait on a server (headers, or each read of
    /// a body); a slow but moving download never hits it.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Extra attempts on 5xx answers, timeouts, dropped connections and
    /// truncated downloads.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,

    /// Wait before the first retry; doubled for each further one.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_delay: Duration,

    /// Also trust the CA certificates in this PEM file (repeatable), e.g. a
    /// TLS-inspecting proxy's root. The built-in Mozilla roots and the
    /// system's store (SSL_CERT_FILE/SSL_CERT_DIR, as for OpenSSL) are
    /// always trusted.
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_certs: Vec<PathBuf>,

    /// Largest updates.zip accepted (bytes, or with K, M, G, KiB, MiB, GiB).
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub max_package_size: u64,
}

impl FetchSourceArgs {
    /// The library options these flags stand for; the caller adds the
    /// download folder and filters.
    pub fn options(&self) -> FetchOptions {
        FetchOptions {
            settings: self.settings.clone(),
            upstream: Some(self.upstream.clone()),
            no_backup: self.no_backup,
            log_file: self.log_file.clone(),
            http: HttpConfig {
                connect_timeout: self.connect_timeout,
                read_timeout: self.timeout,
                retries: self.retries,
                retry_delay: self.retry_delay,
                ..HttpConfig::default()
            },
            ca_certs: self.ca_certs.clone(),
            max_package_size: Some(self.max_package_size),
            ..FetchOptions::default()
        }
    }
}

impl FetchArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        if super::windows::wants_windows(&self.platforms, "fetch")? {
            return super::windows::fetch(&self);
        }
        let plan = FetchPlan::from_options(&FetchOptions {
            download_folder: self.download_folder.clone(),
            platforms: super::windows::mde_platforms(&self.platforms),
            rings: self.rings.clone(),
            arches: super::windows::mde_arches(&self.arches)?,
            ..self.source.options()
        })?;
        let report = execute(&plan, self.quiet, self.json)?;
        if self.json {
            print_json(&json::Report::new(&report))?;
        }
        Ok(if report.failed() { 1 } else { 0 })
    }
}

/// Runs `plan` the way `gapferry fetch` does: log lines on stderr and in the
/// plan's log file, progress bars on a terminal (not with `quiet` or
/// `json`), and the per-item summary on stderr. The caller decides the exit
/// code from [`FetchReport::failed`].
pub fn execute(plan: &FetchPlan, quiet: bool, json: bool) -> anyhow::Result<FetchReport> {
    let ui = Ui::new(plan.log_file.as_deref(), quiet, json)?;
    let report = lib::fetch(plan, &ui)?;
    ui.summary(&report);
    Ok(report)
}

/// Progress bars and log lines for one fetch run.
#[derive(Debug)]
pub(super) struct Ui {
    bar: Bar,
    quiet: bool,
    terminal: bool,
    log_file: Option<(PathBuf, Mutex<File>)>,
}

impl Ui {
    pub(super) fn new(log_file: Option<&Path>, quiet: bool, json: bool) -> anyhow::Result<Self> {
        let log_file = match log_file {
            Some(p) => {
                let path = if p.is_dir() {
                    p.join("gapferry-fetch.log")
                } else {
                    p.to_path_buf()
                };
                if let Some(parent) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).with_context(|| {
                        format!(
                            "cannot create the folder of log file {}; fix logFilePath or --log-file",
                            path.display()
                        )
                    })?;
                }
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| {
                        format!(
                            "cannot open log file {} for appending; fix logFilePath or --log-file",
                            path.display()
                        )
                    })?;
                Some((path, Mutex::new(f)))
            }
            None => None,
        };
        Ok(Ui {
            bar: Bar::new(quiet || json),
            quiet,
            terminal: std::io::stderr().is_terminal(),
            log_file,
        })
    }

    fn summary(&self, report: &FetchReport) {
        let counts = format!(
            "{} updated, {} up to date, {} failed",
            report.count_updated(),
            report.count_unchanged(),
            report.count_failed()
        );
        self.log(Level::Info, &format!("done: {counts}"));
        if self.quiet && !report.failed() {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "fetch summary ({counts}):");
        for item in &report.items {
            let (word, detail) = match &item.outcome {
                SlotOutcome::Updated { current, .. } => (
                    "updated",
                    format!(
                        "engine {}, definitions {}",
                        current.engine_version, current.definition_version
                    ),
                ),
                SlotOutcome::Unchanged { current } => (
                    "unchanged",
                    format!(
                        "engine {}, definitions {}",
                        current.engine_version, current.definition_version
                    ),
                ),
                SlotOutcome::Failed { error } => ("FAILED", error.to_string()),
                _ => ("?", String::new()),
            };
            let _ = writeln!(
                err,
                "  {word:<9}  {:<28}  {}",
                item.slot.rel(),
                gapferry::text::Esc(&detail)
            );
        }
        if report.failed() {
            let _ = writeln!(
                err,
                "gapferry: fetch: {} of {} items failed; their folders in {} are unchanged",
                report.count_failed(),
                report.items.len(),
                report.download_folder.display()
            );
        }
    }
}

impl Observer for Ui {
    fn start(&self, label: &str, total: u64) {
        self.bar.start(label, total);
    }
    fn advance(&self, n: u64) {
        self.bar.advance(n);
    }
    fn finish(&self) {
        self.bar.finish();
    }
}

impl FetchObserver for Ui {
    fn log(&self, level: Level, line: &str) {
        // Lines quote what the network sent (versions, URLs): escaped, one line each.
        let line = gapferry::text::escape(line);
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        if let Some((_, f)) = &self.log_file {
            if let Ok(mut f) = f.lock() {
                let _ = writeln!(f, "{stamp} {}: {line}", level.as_str());
            }
        }
        if self.quiet && level == Level::Info {
            return;
        }
        // On a terminal people read along; elsewhere (cron, systemd) each
        // line stands alone in a log, so it carries its time and level.
        if self.terminal {
            match level {
                Level::Info => eprintln!("{line}"),
                _ => eprintln!("{}: {line}", level.as_str()),
            }
        } else {
            eprintln!("{stamp} {}: {line}", level.as_str());
        }
    }
}

/// Parses "1073741824", "512M", "1GiB", "100KiB" (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 1073741824, 512MiB or 1GiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?}: use K, M, G, KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The `--json` document of `gapferry fetch`: these types are its only
/// definition (tests read it back with `deny_unknown_fields`).
pub mod json {
    use serde::Serialize;

    use gapferry::mde::fetch::{FetchReport, SlotOutcome};

    /// The whole run.
    #[derive(Debug, Serialize)]
    pub struct Report {
        pub download_folder: String,
        pub upstream: String,
        /// False when any item failed (the exit code is then 1).
        pub ok: bool,
        pub updated: usize,
        pub unchanged: usize,
        pub failed: usize,
        pub items: Vec<Item>,
    }

    /// One platform/ring/arch folder.
    #[derive(Debug, Serialize)]
    pub struct Item {
        pub platform: String,
        pub ring: String,
        pub arch: String,
        /// `<platform>/<ring>/arch_<arch>`, relative to the download folder.
        pub path: String,
        /// "updated", "unchanged" or "failed".
        pub outcome: &'static str,
        /// What the folder now holds (null when failed).
        pub engine_version: Option<String>,
        pub definition_version: Option<String>,
        /// The set an update replaced, when there was a complete one.
        pub previous: Option<Versions>,
        /// The replaced set was kept in `<ring>_back/arch_<arch>`.
        pub backed_up: bool,
        /// Size of the new updates.zip (0 unless updated).
        pub bytes: u64,
        /// SHA-256 of the new updates.zip, lower-case hex (null unless updated).
        pub sha256: Option<String>,
        /// The failure, naming the URL or file and the fix.
        pub error: Option<String>,
    }

    #[derive(Debug, Serialize)]
    pub struct Versions {
        pub engine_version: String,
        pub definition_version: String,
    }

    impl Report {
        pub fn new(r: &FetchReport) -> Self {
            Report {
                download_folder: r.download_folder.display().to_string(),
                upstream: r.upstream.clone(),
                ok: !r.failed(),
                updated: r.count_updated(),
                unchanged: r.count_unchanged(),
                failed: r.count_failed(),
                items: r
                    .items
                    .iter()
                    .map(|i| {
                        let mut item = Item {
                            platform: i.slot.platform.to_string(),
                            ring: i.slot.ring.to_string(),
                            arch: i.slot.arch.to_string(),
                            path: i.slot.rel(),
                            outcome: "failed",
                            engine_version: None,
                            definition_version: None,
                            previous: None,
                            backed_up: false,
                            bytes: 0,
                            sha256: None,
                            error: None,
                        };
                        match &i.outcome {
                            SlotOutcome::Updated {
                                current,
                                previous,
                                backed_up,
                                bytes,
                                sha256,
                                ..
                            } => {
                                item.outcome = "updated";
                                item.engine_version = Some(current.engine_version.clone());
                                item.definition_version = Some(current.definition_version.clone());
                                item.previous = previous.as_ref().map(|p| Versions {
                                    engine_version: p.engine_version.clone(),
                                    definition_version: p.definition_version.clone(),
                                });
                                item.backed_up = *backed_up;
                                item.bytes = *bytes;
                                item.sha256 = Some(sha256.clone());
                            }
                            SlotOutcome::Unchanged { current } => {
                                item.outcome = "unchanged";
                                item.engine_version = Some(current.engine_version.clone());
                                item.definition_version = Some(current.definition_version.clone());
                            }
                            SlotOutcome::Failed { error } => {
                                item.error = Some(error.to_string());
                            }
                            _ => item.error = Some("unknown outcome".into()),
                        }
                        item
                    })
                    .collect(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        args: FetchArgs,
    }

    #[test]
    fn args_debug_assert() {
        Wrap::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
