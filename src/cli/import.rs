//! `gapferry import`: verify a bundle, then publish it into the mirror.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use gapferry::eventlog::{Event, Level, LogFormat};
use gapferry::keys::TrustSet;
use gapferry::manifest;
use gapferry::mde::Ring;
use gapferry::mirror::import::{self, ImportOptions, ImportReport, Target, UnitFilter};
use gapferry::mirror::inbox::{self, BundleResult, InboxOptions, Tracker};
use gapferry::mirror::ledger::Outcome;
use gapferry::mirror::metrics;
use gapferry::mirror::publish::{Destination, PublishOptions};
use gapferry::mirror::receipt;
use gapferry::mirror::state;

use gapferry::text::{escape_path, Esc};

use super::output::{log_format_parser, print_json, print_json_line, Bar, ErrorJson};
use super::UsageError;

/// Verify a bundle and publish it into the mirror endpoints read.
///
/// Checks the signatures, channel, expiry and rollback policy before a byte
/// of payload is written; streams the files into staging on the mirror's
/// filesystem, checking every size and SHA-256; then swaps each
/// arch_<arch> folder into place atomically, keeping the previous set as
/// <ring>_back. Every attempt is recorded in the hash-chained ledger in the
/// state directory. The same bundle again exits 0 and changes nothing.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The bundle file; for a split bundle its first volume, its index
    /// (NAME.volumes.json) or its directory.
    #[arg(required_unless_present = "inbox", conflicts_with = "inbox")]
    bundle: Option<PathBuf>,
    /// Import every complete bundle in DIR instead (in sequence order), then
    /// move each to DIR/processed/ (imported or already imported) or
    /// DIR/rejected/ (with NAME.reason.json). Exit 0 when nothing was
    /// rejected, 3 when something was, 1 when a bundle failed operationally
    /// (it stays in DIR for the next pass).
    #[arg(long, value_name = "DIR")]
    inbox: Option<PathBuf>,
    /// With --inbox: keep going, scanning DIR every --interval, until
    /// SIGTERM or SIGINT (then exit 0 after the current bundle).
    #[arg(long, requires = "inbox")]
    watch: bool,
    /// With --watch: time between scans.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = humantime::parse_duration, requires = "watch")]
    interval: Duration,
    /// With --inbox: a file must be unmodified this long (and, with --watch,
    /// unchanged since the previous scan) before it is looked at.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = humantime::parse_duration, requires = "inbox")]
    settle: Duration,
    /// With --inbox: a file or split set still incomplete this long after
    /// its last change (a truncated copy that stopped growing, a volume that
    /// never came) is moved to DIR/rejected/ with a reason naming what is
    /// missing. Until then each pass lists it as waiting, with its age.
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = humantime::parse_duration, requires = "inbox")]
    give_up_after: Duration,
    /// Public key file or directory of *.pub files; repeatable.
    #[arg(
        long = "trust",
        value_name = "K",
        required_unless_present = "trust_roots"
    )]
    trust: Vec<PathBuf>,
    #[command(flatten)]
    roots: super::trust::RootArgs,
    /// Mirror root: publishes DIR/<platform>/<ring>/arch_<arch>/. Or
    /// s3://BUCKET/PREFIX: the same layout as objects (needs --state-dir;
    /// see --s3-endpoint).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present_any = ["target", "share"],
        conflicts_with_all = ["target", "share"]
    )]
    mirror: Option<PathBuf>,
    /// The folder an endpoint's offlineDefinitionUpdateUrl names (one
    /// platform and ring): publishes DIR/arch_<arch>/, n-1 in DIR_back/.
    #[arg(long, value_name = "DIR", conflicts_with = "share")]
    target: Option<PathBuf>,
    #[command(flatten)]
    s3: super::s3::S3Args,
    /// Create the --mirror (or --target) folder if it does not exist yet;
    /// without it a missing folder is refused, so a typo cannot publish
    /// where no endpoint looks.
    #[arg(long)]
    create: bool,
    /// The folder behind a Windows file share (\\server\share): publishes
    /// a `windows` bundle's DIR/<arch>/mpam-fe.exe (x64, x86, arm64), n-1
    /// in DIR_back/ (outside the share).
    #[arg(long, value_name = "DIR")]
    share: Option<PathBuf>,
    /// State and ledger directory [default: <base>/<mirror>-<hash>, where
    /// <base> is $GAPFERRY_STATE_DIR if set, else /var/lib/gapferry as root,
    /// else $XDG_STATE_HOME/gapferry or ~/.local/state/gapferry; never inside
    /// the served tree].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Distinct trusted keys that must have signed (with --trust-root the
    /// trust policy's threshold applies instead).
    #[arg(
        long,
        default_value_t = 1,
        value_name = "N",
        conflicts_with = "trust_roots"
    )]
    threshold: usize,
    /// The channel this mirror accepts.
    #[arg(long, default_value = "default", value_name = "C")]
    channel: String,
    /// Only publish this platform (linux, mac, windows); repeatable.
    #[arg(long = "platform", value_name = "P", value_parser = super::windows::platform_parser())]
    platforms: Vec<super::windows::PlatformSel>,
    /// Only publish this ring (production, preview); repeatable.
    #[arg(long = "ring", value_name = "R", value_parser = super::one_of(Ring::ALL, Ring::as_str))]
    rings: Vec<Ring>,
    /// Accept older definitions or a lower sequence than what is served (a
    /// deliberate rollback; recorded in the ledger).
    #[arg(long)]
    allow_downgrade: bool,
    /// Accept a bundle past its expiry time.
    #[arg(long)]
    allow_expired: bool,
    /// How long to wait for another import of this mirror to finish.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    lock_wait: Duration,
    /// Print one JSON document on stdout (also on failure).
    #[arg(long)]
    json: bool,
    /// No progress bar, no summary on stderr.
    #[arg(long)]
    quiet: bool,
    /// After each attempt (with --inbox: after each bundle and each pass),
    /// write the mirror's Prometheus metrics to FILE, as `gapferry status
    /// --quick --prometheus FILE` does (served files checked by size; run
    /// status on a timer for the SHA-256 check). The name must end in .prom.
    #[arg(long, value_name = "FILE", conflicts_with = "target")]
    prometheus: Option<PathBuf>,
    /// With --inbox: the form of the log lines on stderr, one per event:
    /// text (sentences), kv (key=value), json (one object per line); auto
    /// is kv when stderr is the systemd journal, else text.
    #[arg(long, value_name = "FORMAT", default_value = "auto", value_parser = log_format_parser(), requires = "inbox")]
    log_format: LogFormat,
}

impl ImportArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        let opts = match self.plan() {
            Ok(opts) => opts,
            // --json promises one report on stdout, even when the command
            // line or a key file is wrong (the inbox's stream gets the
            // failure line instead, from main).
            Err(e) if self.json && self.inbox.is_none() => {
                let code = super::exit_code(&e);
                let msg = super::describe(&e);
                print_import(&ImportReport {
                    outcome: Outcome::Failed,
                    bundle: self
                        .bundle
                        .clone()
                        .or(self.inbox.clone())
                        .unwrap_or_default(),
                    bundle_id: None,
                    channel: None,
                    sequence: None,
                    manifest_sha256: None,
                    signers: Vec::new(),
                    slots: Vec::new(),
                    bytes_written: 0,
                    downgrades: Vec::new(),
                    recovered: Vec::new(),
                    discarded: Vec::new(),
                    rebuilt_volumes: Vec::new(),
                    error: Some(msg.clone()),
                    exit_code: code,
                    receipt: None,
                    ledger_head: Ok(None),
                    trust_policy: None,
                })?;
                eprintln!("gapferry: {msg}");
                return Ok(code);
            }
            Err(e) => return Err(e),
        };
        if let Some(dir) = &self.inbox {
            return self.run_inbox(dir.clone(), opts);
        }
        let bar = Bar::new(self.quiet || self.json);
        let (report, err) = import::import(&opts, &bar);
        self.refresh_metrics(&opts);
        if !self.json && !self.quiet {
            summary(&report);
            where_recorded(&report, &opts.state_dir);
        }
        show_receipt(&report, self.quiet || self.json);
        if self.json {
            print_import(&report)?;
        }
        match err {
            None => Ok(0),
            Some(e) if self.json => {
                let e = anyhow::Error::from(gapferry::Error::from(e));
                eprintln!("gapferry: {}", super::describe(&e));
                Ok(super::exit_code(&e))
            }
            Some(e) => Err(e.into()),
        }
    }

    /// Checks the arguments and loads the trust set: everything before I/O
    /// on the mirror.
    fn plan(&self) -> anyhow::Result<ImportOptions> {
        if self.threshold == 0 {
            return Err(UsageError("--threshold must be at least 1".into()).into());
        }
        manifest::check_channel(&self.channel)
            .map_err(|e| UsageError(format!("--channel: {}", e.0)))?;
        let s3 = self
            .s3
            .mirror(self.mirror.as_deref(), self.state_dir.as_deref())?;
        let target = match (&self.mirror, self.target.as_ref().or(self.share.as_ref())) {
            (Some(_), None) if s3.is_some() => Target::S3(s3.clone().expect("just checked")),
            (Some(m), None) => Target::Mirror(m.clone()),
            (None, Some(t)) => {
                // A path naming no folder (`..`, `/`) fails here, before
                // the lock or the ledger.
                Destination::in_target(t, "arch_x86_64")?;
                Target::Ring(t.clone())
            }
            _ => {
                return Err(UsageError(
                    "give exactly one of --mirror DIR, --target DIR or --share DIR".into(),
                )
                .into())
            }
        };
        if self.share.is_some()
            && self
                .platforms
                .iter()
                .any(|p| *p != super::windows::PlatformSel::Windows)
        {
            return Err(UsageError(
                "--share publishes Windows packages only; leave out --platform linux/mac".into(),
            )
            .into());
        }
        if let Some(file) = &self.prometheus {
            metrics::check_path(file)?;
        }
        if let Some(m) = &s3 {
            // The bucket must exist and the credentials work before the
            // lock, the ledger or any staging.
            m.client().check_bucket()?;
        } else if !self.create {
            let flag = if self.mirror.is_some() {
                "--mirror"
            } else if self.share.is_some() {
                "--share"
            } else {
                "--target"
            };
            super::existing_folder(
                flag,
                target.served_root(),
                "check the path (endpoints only read the folder they are configured with), \
                 or add --create to start a new mirror there",
            )?;
        }
        let roots = self.roots.load()?;
        let trust = TrustSet::load(&self.trust)?;
        if roots.is_none() && self.threshold > trust.len() {
            return Err(UsageError(format!(
                "--threshold {} is more than the {} trusted key(s) given",
                self.threshold,
                trust.len()
            ))
            .into());
        }
        let state_dir = match &self.state_dir {
            Some(d) => d.clone(),
            None => state::default_state_dir(target.served_root())?,
        };
        Ok(ImportOptions {
            bundle: self
                .bundle
                .clone()
                .or(self.inbox.clone())
                .unwrap_or_default(),
            trust,
            threshold: self.threshold,
            target,
            state_dir,
            channel: self.channel.clone(),
            only: UnitFilter::default()
                .with(
                    "platform",
                    if self.share.is_some() {
                        // A share holds Windows packages only.
                        vec!["windows".to_string()]
                    } else {
                        self.platforms.iter().map(|p| p.to_string()).collect()
                    },
                )
                .with("ring", &self.rings),
            allow_downgrade: self.allow_downgrade,
            allow_expired: self.allow_expired,
            lock_wait: self.lock_wait,
            publish: PublishOptions::from_env(),
            roots,
            allow_expired_policy: self.roots.allow_expired_policy,
        })
    }
}

impl ImportArgs {
    /// `--prometheus FILE`: rewrites the metrics after an attempt. A
    /// failure is a warning: the import's own outcome stands.
    fn refresh_metrics(&self, opts: &ImportOptions) {
        let Some(file) = &self.prometheus else {
            return;
        };
        let served = match &opts.target {
            Target::Mirror(mirror) => gapferry::mirror::status::Served::Mirror(mirror),
            Target::S3(m) => gapferry::mirror::status::Served::S3(m),
            Target::Ring(_) => return,
        };
        if let Err(e) = metrics::refresh(file, served, &opts.state_dir, false) {
            eprintln!(
                "gapferry: warning: metrics {}: {}",
                escape_path(file),
                Esc(&format!("{:#}", anyhow::Error::from(e)))
            );
        }
    }

    /// `--inbox`: one pass, or with `--watch` passes until SIGTERM/SIGINT.
    fn run_inbox(&self, dir: PathBuf, import: ImportOptions) -> anyhow::Result<i32> {
        if !dir.is_dir() {
            return Err(UsageError(format!(
                "--inbox {}: not a directory; give the folder bundles arrive in",
                dir.display()
            ))
            .into());
        }
        let stop = Arc::new(AtomicBool::new(false));
        if self.watch {
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, Arc::clone(&stop))
                    .context("cannot install the SIGTERM/SIGINT handler")?;
            }
        }
        let opts = InboxOptions {
            dir,
            settle: self.settle,
            give_up_after: self.give_up_after,
            import,
        };
        let mut tracker = Tracker::new(self.watch);
        let bar = Bar::new(true);
        let (json, quiet) = (self.json, self.quiet);
        // The ledger head of the last receipt, for the inbox's log line.
        let head = std::cell::RefCell::new(None::<String>);
        let mut after = |r: &ImportReport| {
            show_receipt(r, true);
            *head.borrow_mut() = r
                .ledger_head
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
                .map(receipt::short_head);
        };
        let log = self.log_format;
        let mut on_result = |r: &BundleResult| {
            self.refresh_metrics(&opts.import);
            if json {
                let _ = print_json_line(r, failure(r.exit_code, r.error.as_deref(), r.outcome));
            }
            if json || quiet {
                if log != LogFormat::Text {
                    if (r.exit_code > 0 && r.error.is_some()) || r.not_moved.is_some() {
                        emit(log, &bundle_event(r, head.borrow_mut().take()));
                    }
                    return;
                }
                if let (1.., Some(e)) = (r.exit_code, &r.error) {
                    eprintln!("gapferry: inbox: {}: {}", Esc(&r.bundle), Esc(e));
                }
                if let Some(why) = &r.not_moved {
                    eprintln!(
                        "gapferry: inbox: {}: left in the inbox: {}",
                        Esc(&r.bundle),
                        Esc(why)
                    );
                }
                return;
            }
            emit(log, &bundle_event(r, head.borrow_mut().take()));
        };
        loop {
            let passed = inbox::pass(&opts, &mut tracker, &stop, &bar, &mut after, &mut on_result);
            // Also when nothing arrived: the ages in the file keep moving.
            self.refresh_metrics(&opts.import);
            match passed {
                Ok(summary) if !self.watch => {
                    if !quiet && !json {
                        for w in &summary.waiting {
                            emit(log, &Event::new(Level::Info, "inbox.waiting", w.clone()));
                        }
                    }
                    return Ok(summary.exit_code());
                }
                Ok(_) => {}
                Err(e) if !self.watch => return Err(e.into()),
                // A watcher keeps watching: the folder may come back (a
                // remounted share); the next pass tries again.
                Err(e) => emit(
                    log,
                    &Event::new(
                        Level::Error,
                        "inbox.pass_failed",
                        format!("{e}; trying again in {:?}", self.interval),
                    )
                    .text("error", Some(&e.to_string()))
                    .field("retry_in_seconds", Some(self.interval.as_secs().into())),
                ),
            }
            let until = std::time::Instant::now() + self.interval;
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50).min(self.interval));
            }
            if stop.load(Ordering::Relaxed) {
                if !quiet && !json {
                    emit(
                        log,
                        &Event::new(Level::Info, "inbox.stopping", "stopping (signal received)"),
                    );
                }
                return Ok(0);
            }
        }
    }
}

/// Writes one inbox event on stderr (so journald under systemd): in the
/// text form as the sentence after `gapferry: inbox: `.
fn emit(format: LogFormat, e: &Event) {
    let line = e.line(format, std::time::SystemTime::now());
    match format {
        LogFormat::Text => eprintln!("gapferry: inbox: {line}"),
        _ => eprintln!("{line}"),
    }
}

/// The inbox's event for one bundle. The file name and the error come from
/// whoever wrote the inbox: the sentence holds them raw and every form
/// escapes it once when it is written (see [`gapferry::eventlog`]), so a
/// name with a newline cannot forge a second line.
fn bundle_event(r: &BundleResult, head: Option<String>) -> Event {
    let moved = match (&r.moved_to, &r.not_moved) {
        (Some(p), _) => format!("moved to {}", p.to_string_lossy()),
        (None, Some(why)) => format!("left in the inbox: {why}"),
        (None, None) => String::new(),
    };
    let bundle = &r.bundle;
    let error = r.error.as_deref().unwrap_or("");
    let (level, message) = match r.outcome {
        Outcome::Imported | Outcome::AlreadyImported => (
            Level::Info,
            format!(
                "{}: {} (sequence {}), receipt {}{}; {moved}",
                bundle,
                if r.outcome == Outcome::Imported {
                    "imported"
                } else {
                    "already imported"
                },
                r.sequence.map(|s| s.to_string()).unwrap_or_default(),
                r.receipt.as_deref().unwrap_or("(not kept)"),
                head.as_ref()
                    .map(|h| format!(", ledger head {h}"))
                    .unwrap_or_default()
            ),
        ),
        _ if r.moved_to.is_some() => (
            Level::Warning,
            format!(
                "{}: {} (exit {}): {}; {moved} (see {}.reason.json)",
                bundle,
                r.outcome.as_str(),
                r.exit_code,
                error,
                r.moved_to
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .to_string_lossy()
            ),
        ),
        _ if r.not_moved.is_some() => (
            Level::Error,
            format!(
                "{}: {} (exit {}): {}; {moved}",
                bundle,
                r.outcome.as_str(),
                r.exit_code,
                error
            ),
        ),
        _ => (
            Level::Error,
            format!(
                "{}: failed (exit {}): {}; left in place, tried again next pass",
                bundle, r.exit_code, error
            ),
        ),
    };
    Event::new(level, "inbox.bundle", message)
        .text("bundle", Some(&r.bundle))
        .text("outcome", Some(r.outcome.as_str()))
        .field("exit_code", Some(r.exit_code.into()))
        .field("sequence", r.sequence.map(Into::into))
        .text("bundle_id", r.bundle_id.as_deref())
        .text(
            "manifest_sha256",
            r.manifest_sha256.as_ref().map(|h| h.to_string()).as_deref(),
        )
        .text(
            "moved_to",
            r.moved_to
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .as_deref(),
        )
        .text("receipt", r.receipt.as_deref())
        .text("ledger_head", head.as_deref())
        .text("error", r.error.as_deref())
        .text("not_moved", r.not_moved.as_deref())
}

/// Prints the receipt the import kept (unless quiet) and the ledger head
/// it carries; warns when there is no head to carry.
/// The `error` object of an import or inbox result that did not exit 0.
fn failure(exit_code: i32, error: Option<&str>, outcome: Outcome) -> Option<ErrorJson> {
    (exit_code != 0).then(|| {
        ErrorJson::new(
            error.map_or_else(|| format!("import {}", outcome.as_str()), str::to_string),
            exit_code,
        )
    })
}

/// `import --json`: the report with the vocabulary's names
/// (`bundle_path`, `signer_key_ids`) before its own fields, and the error
/// in the envelope.
fn print_import(report: &ImportReport) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct ImportJson<'a> {
        bundle_path: &'a Path,
        signer_key_ids: &'a [gapferry::keys::KeyId],
        #[serde(flatten)]
        report: &'a ImportReport,
    }
    print_json(
        &ImportJson {
            bundle_path: &report.bundle,
            signer_key_ids: &report.signers,
            report,
        },
        failure(report.exit_code, report.error.as_deref(), report.outcome),
    )
}

fn show_receipt(report: &ImportReport, quiet: bool) {
    let Some(receipt) = &report.receipt else {
        return;
    };
    let short = match &report.ledger_head {
        Ok(h) => h.as_ref().map(receipt::short_head),
        Err(e) => {
            eprintln!("gapferry: warning: no ledger head for this receipt: {e}");
            None
        }
    };
    if !quiet {
        eprintln!(
            "gapferry: receipt {receipt}  (give it to the online side: gapferry inspect BUNDLE --receipt {receipt})"
        );
        if let Some(h) = &short {
            eprintln!(
                "gapferry: ledger head {h}  (keep it with the receipt: gapferry ledger verify --expect-head {h} shows the ledger still holds every line up to this import)"
            );
        }
    }
}

/// Names the state directory the attempt was recorded in, with the command
/// that reads its ledger (auditors are told to pass it).
fn where_recorded(r: &ImportReport, state_dir: &Path) {
    if !matches!(r.outcome, Outcome::Imported | Outcome::AlreadyImported) {
        return;
    }
    let dir = escape_path(state_dir);
    eprintln!("gapferry: state and ledger in {dir}  (gapferry ledger show --state-dir {dir})");
}

fn summary(r: &ImportReport) {
    for why in &r.rebuilt_volumes {
        eprintln!("gapferry: rebuilt from the parity volumes: {}", Esc(why));
    }
    for p in &r.recovered {
        eprintln!(
            "gapferry: completed an interrupted publish of {}",
            escape_path(p)
        );
    }
    let id = Esc(r.bundle_id.as_deref().unwrap_or("?"));
    match r.outcome {
        Outcome::Imported => {
            eprintln!(
                "gapferry: imported bundle {id} (channel {}, sequence {}), signed by {}",
                Esc(r.channel.as_deref().unwrap_or("?")),
                r.sequence.unwrap_or(0),
                Esc(&r
                    .signers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "))
            );
            for s in &r.slots {
                let before = s
                    .before
                    .as_ref()
                    .map(|v| {
                        format!(
                            "{} / {}",
                            Esc(&v.engine_version),
                            Esc(&v.definition_version)
                        )
                    })
                    .unwrap_or_else(|| "(none)".into());
                let after = s
                    .after
                    .as_ref()
                    .map(|v| {
                        format!(
                            "{} / {}",
                            Esc(&v.engine_version),
                            Esc(&v.definition_version)
                        )
                    })
                    .unwrap_or_default();
                let note = if s.published {
                    ""
                } else {
                    "  (already served)"
                };
                eprintln!("  {:<30} {before} -> {after}{note}", Esc(s.slot.as_str()));
            }
            for d in &r.downgrades {
                eprintln!("  downgrade allowed: {}", Esc(d));
            }
            for d in &r.discarded {
                eprintln!(
                    "  discarded the replaced set, which no longer matched what was imported ({d}); n-1 kept as it was"
                );
            }
        }
        Outcome::AlreadyImported => {
            eprintln!("gapferry: bundle {id} is already imported; nothing to do");
        }
        _ => {}
    }
    if let Some(t) = &r.trust_policy {
        match (t.adopted, t.previous_version) {
            (true, Some(p)) => eprintln!(
                "  adopted trust policy version {} (was {p}); signatures counted under it",
                t.version
            ),
            (true, None) => eprintln!(
                "  adopted trust policy version {}; signatures counted under it",
                t.version
            ),
            (false, _) => eprintln!(
                "  signatures counted under trust policy version {} (expires {}, {} days left)",
                t.version,
                Esc(&t.expires),
                t.days_left
            ),
        }
        if let Some(w) = &t.warning {
            eprintln!("gapferry: warning: {w}");
        }
    }
}
