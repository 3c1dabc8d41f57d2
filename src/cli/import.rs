//! `gapferry import`: verify a bundle, then publish it into the mirror.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use gapferry::keys::TrustSet;
use gapferry::manifest;
use gapferry::mde::{Platform, Ring};
use gapferry::mirror::import::{self, ImportOptions, ImportReport, Target, UnitFilter};
use gapferry::mirror::inbox::{self, BundleResult, InboxOptions, Tracker};
use gapferry::mirror::ledger::Outcome;
use gapferry::mirror::publish::{Destination, PublishOptions};
use gapferry::mirror::receipt;
use gapferry::mirror::state;

use gapferry::text::{escape_path, Esc};

use super::output::{print_json, Bar};
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
    #[arg(long = "trust", value_name = "K", required = true)]
    trust: Vec<PathBuf>,
    /// Mirror root: publishes DIR/<platform>/<ring>/arch_<arch>/.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "target",
        conflicts_with = "target"
    )]
    mirror: Option<PathBuf>,
    /// The folder an endpoint's offlineDefinitionUpdateUrl names (one
    /// platform and ring): publishes DIR/arch_<arch>/, n-1 in DIR_back/.
    #[arg(long, value_name = "DIR")]
    target: Option<PathBuf>,
    /// State and ledger directory [default: <base>/<mirror>-<hash>, where
    /// <base> is $GAPFERRY_STATE_DIR if set, else /var/lib/gapferry as root,
    /// else $XDG_STATE_HOME/gapferry or ~/.local/state/gapferry; never inside
    /// the served tree].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Distinct trusted keys that must have signed.
    #[arg(long, default_value_t = 1, value_name = "N")]
    threshold: usize,
    /// The channel this mirror accepts.
    #[arg(long, default_value = "default", value_name = "C")]
    channel: String,
    /// Only publish this platform (linux, mac); repeatable.
    #[arg(long = "platform", value_name = "P", value_parser = clap::value_parser!(Platform))]
    platforms: Vec<Platform>,
    /// Only publish this ring (production, preview); repeatable.
    #[arg(long = "ring", value_name = "R", value_parser = clap::value_parser!(Ring))]
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
}

impl ImportArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        let opts = match self.plan() {
            Ok(opts) => opts,
            // --json promises one report on stdout, even when the command
            // line or a key file is wrong.
            Err(e) if self.json => {
                let code = super::exit_code(&e);
                let msg = super::describe(&e);
                print_json(&ImportReport {
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
        if !self.json && !self.quiet {
            summary(&report);
        }
        show_receipt(&report, self.quiet || self.json);
        if self.json {
            print_json(&report)?;
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
        let target = match (&self.mirror, &self.target) {
            (Some(m), None) => Target::Mirror(m.clone()),
            (None, Some(t)) => {
                // A path naming no folder (`..`, `/`) fails here, before
                // the lock or the ledger.
                Destination::in_target(t, "arch_x86_64")?;
                Target::Ring(t.clone())
            }
            _ => {
                return Err(
                    UsageError("give exactly one of --mirror DIR or --target DIR".into()).into(),
                )
            }
        };
        let trust = TrustSet::load(&self.trust)?;
        if self.threshold > trust.len() {
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
                .with("platform", &self.platforms)
                .with("ring", &self.rings),
            allow_downgrade: self.allow_downgrade,
            allow_expired: self.allow_expired,
            lock_wait: self.lock_wait,
            publish: PublishOptions::from_env(),
        })
    }
}

impl ImportArgs {
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
        let mut on_result = |r: &BundleResult| {
            if json {
                let mut out = std::io::stdout().lock();
                let _ = serde_json::to_writer(&mut out, r);
                let _ = writeln!(out);
                let _ = out.flush();
            }
            if json || quiet {
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
            inbox_line(r, head.borrow_mut().take());
        };
        loop {
            match inbox::pass(&opts, &mut tracker, &stop, &bar, &mut after, &mut on_result) {
                Ok(summary) if !self.watch => {
                    if !quiet && !json {
                        for w in &summary.waiting {
                            eprintln!("gapferry: inbox: {}", Esc(w));
                        }
                    }
                    return Ok(summary.exit_code());
                }
                Ok(_) => {}
                Err(e) if !self.watch => return Err(e.into()),
                // A watcher keeps watching: the folder may come back (a
                // remounted share); the next pass tries again.
                Err(e) => eprintln!(
                    "gapferry: inbox: {}; trying again in {:?}",
                    Esc(&e.to_string()),
                    self.interval
                ),
            }
            let until = std::time::Instant::now() + self.interval;
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50).min(self.interval));
            }
            if stop.load(Ordering::Relaxed) {
                if !quiet && !json {
                    eprintln!("gapferry: inbox: stopping (signal received)");
                }
                return Ok(0);
            }
        }
    }
}

/// The inbox's log line for one bundle (stderr, so journald under systemd).
/// The file name and the error come from whoever wrote the inbox: escaped,
/// so a name with a newline cannot forge a second line.
fn inbox_line(r: &BundleResult, head: Option<String>) {
    let moved = match (&r.moved_to, &r.not_moved) {
        (Some(p), _) => format!("moved to {}", escape_path(p)),
        (None, Some(why)) => format!("left in the inbox: {}", Esc(why)),
        (None, None) => String::new(),
    };
    let bundle = Esc(&r.bundle);
    let error = Esc(r.error.as_deref().unwrap_or(""));
    match r.outcome {
        Outcome::Imported | Outcome::AlreadyImported => eprintln!(
            "gapferry: inbox: {}: {} (sequence {}), receipt {}{}; {moved}",
            bundle,
            if r.outcome == Outcome::Imported {
                "imported"
            } else {
                "already imported"
            },
            r.sequence.map(|s| s.to_string()).unwrap_or_default(),
            Esc(r.receipt.as_deref().unwrap_or("(not kept)")),
            head.map(|h| format!(", ledger head {h}"))
                .unwrap_or_default()
        ),
        _ if r.moved_to.is_some() => eprintln!(
            "gapferry: inbox: {}: {} (exit {}): {}; {moved} (see {}.reason.json)",
            bundle,
            r.outcome.as_str(),
            r.exit_code,
            error,
            escape_path(r.moved_to.as_deref().unwrap_or(Path::new("")))
        ),
        _ if r.not_moved.is_some() => eprintln!(
            "gapferry: inbox: {}: {} (exit {}): {}; {moved}",
            bundle,
            r.outcome.as_str(),
            r.exit_code,
            error
        ),
        _ => eprintln!(
            "gapferry: inbox: {}: failed (exit {}): {}; left in place, tried again next pass",
            bundle, r.exit_code, error
        ),
    }
}

/// Prints the receipt the import kept (unless quiet) and the ledger head
/// it carries; warns when there is no head to carry.
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
}
