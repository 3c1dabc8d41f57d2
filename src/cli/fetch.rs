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

use gapferry::eventlog::{Event, Level as EvLevel, LogFormat};
use gapferry::mde::fetch::{
    self as lib, FetchObserver, FetchOptions, FetchPlan, FetchReport, Level, SlotOutcome,
};
use gapferry::mde::upstream::HttpConfig;
use gapferry::mde::Ring;
use gapferry::progress::Observer;

use super::output::{log_format_parser, print_json, Bar, ErrorJson};

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
    #[arg(long = "platform", value_name = "P", value_parser = super::windows::platform_parser())]
    pub platforms: Vec<super::windows::PlatformSel>,

    /// Only this ring: production or preview (repeatable).
    #[arg(long = "ring", value_name = "R", value_parser = super::one_of(Ring::ALL, Ring::as_str))]
    pub rings: Vec<Ring>,

    /// Only this architecture: x86_64 or arm64; with --platform windows x64,
    /// x86 or arm64 (repeatable).
    #[arg(long = "arch", value_name = "A", value_parser = super::windows::arch_parser())]
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

    /// Largest updates.zip accepted: bytes with an optional unit (K, M, G
    /// are powers of 1000, KiB, MiB, GiB of 1024; e.g. 500M, 2GiB).
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = gapferry::units::parse_size)]
    pub max_package_size: u64,

    /// Form of the log lines on stderr, one per event: text (sentences),
    /// kv (key=value), json (one object per line); auto is kv when stderr
    /// is the systemd journal, else text. The log file keeps the text form.
    #[arg(long, value_name = "FORMAT", default_value = "auto", value_parser = log_format_parser())]
    pub log_format: LogFormat,
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
        let report = execute(&plan, self.quiet, self.json, self.source.log_format)?;
        if self.json {
            let error = report.failed().then(|| {
                ErrorJson::new(
                    format!(
                        "fetch: {} of {} items failed; each failed item's error names the URL or file and the fix",
                        report.count_failed(),
                        report.items.len()
                    ),
                    1,
                )
            });
            print_json(&json::Report::new(&report), error)?;
        }
        Ok(if report.failed() { 1 } else { 0 })
    }
}

/// Runs `plan` the way `gapferry fetch` does: log lines on stderr and in the
/// plan's log file, progress bars on a terminal (not with `quiet` or
/// `json`), and the per-item summary on stderr. The caller decides the exit
/// code from [`FetchReport::failed`].
pub fn execute(
    plan: &FetchPlan,
    quiet: bool,
    json: bool,
    format: LogFormat,
) -> anyhow::Result<FetchReport> {
    let mut ui = Ui::new(plan.log_file.as_deref(), quiet, json)?;
    ui.format = format;
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
    format: LogFormat,
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
            format: LogFormat::Text,
        })
    }

    fn summary(&self, report: &FetchReport) {
        let counts = format!(
            "{} updated, {} unchanged, {} failed",
            report.count_updated(),
            report.count_unchanged(),
            report.count_failed()
        );
        if self.format != LogFormat::Text {
            // The counts as fields of one event instead of a sentence.
            self.to_log_file(Level::Info, &format!("done: {counts}"));
            if !self.quiet || report.failed() {
                self.summary_events(report, &counts);
            }
            return;
        }
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

impl Ui {
    /// The summary as events (kv, json): one `fetch.item` per folder.
    fn summary_events(&self, report: &FetchReport, counts: &str) {
        let now = std::time::SystemTime::now();
        for item in &report.items {
            let (outcome, current, error) = match &item.outcome {
                SlotOutcome::Updated { current, .. } => ("updated", Some(current), None),
                SlotOutcome::Unchanged { current } => ("unchanged", Some(current), None),
                SlotOutcome::Failed { error } => ("failed", None, Some(error.to_string())),
                _ => ("unknown", None, None),
            };
            let level = if error.is_some() {
                EvLevel::Error
            } else {
                EvLevel::Info
            };
            let e = Event::new(
                level,
                "fetch.item",
                format!("{}: {outcome}", item.slot.rel()),
            )
            .text("path", Some(&item.slot.rel()))
            .text("platform", Some(&item.slot.platform.to_string()))
            .text("ring", Some(&item.slot.ring.to_string()))
            .text("arch", Some(&item.slot.arch.to_string()))
            .text("outcome", Some(outcome))
            .text("engine_version", current.map(|c| c.engine_version.as_str()))
            .text(
                "definition_version",
                current.map(|c| c.definition_version.as_str()),
            )
            .text("error", error.as_deref());
            eprintln!("{}", e.line(self.format, now));
        }
        let level = if report.failed() {
            EvLevel::Error
        } else {
            EvLevel::Info
        };
        let done = Event::new(level, "fetch.done", format!("done: {counts}"))
            .text(
                "download_folder",
                Some(&report.download_folder.to_string_lossy()),
            )
            .field("updated", Some(report.count_updated().into()))
            .field("unchanged", Some(report.count_unchanged().into()))
            .field("failed", Some(report.count_failed().into()));
        eprintln!("{}", done.line(self.format, now));
    }

    /// Appends a line to the log file only (the text form, as always).
    fn to_log_file(&self, level: Level, raw: &str) {
        if let Some((_, f)) = &self.log_file {
            let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            if let Ok(mut f) = f.lock() {
                let _ = writeln!(
                    f,
                    "{stamp} {}: {}",
                    level.as_str(),
                    gapferry::text::escape(raw)
                );
            }
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
    fn log(&self, level: Level, raw: &str) {
        // Lines quote what the network sent (versions, URLs): escaped, one line each.
        let line = gapferry::text::escape(raw);
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        self.to_log_file(level, raw);
        if self.quiet && level == Level::Info {
            return;
        }
        if self.format != LogFormat::Text {
            let level = match level {
                Level::Info => EvLevel::Info,
                Level::Warn => EvLevel::Warning,
                _ => EvLevel::Error,
            };
            let e = Event::new(level, "fetch.log", raw);
            eprintln!("{}", e.line(self.format, std::time::SystemTime::now()));
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

    /// `--max-package-size` reads sizes as `--split` does (units::parse_size).
    #[test]
    fn max_package_size_uses_the_one_size_rule() {
        let size = |v: &str| {
            Wrap::try_parse_from(["fetch", "--download-folder", "d", "--max-package-size", v])
                .map(|w| w.args.source.max_package_size)
        };
        assert_eq!(size("10K").unwrap(), 10_000);
        assert_eq!(size("10KiB").unwrap(), 10_240);
        assert_eq!(size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(size("1gib").unwrap(), 1 << 30);
        assert!(size("0").is_err());
    }
}
