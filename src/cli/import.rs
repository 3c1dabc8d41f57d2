//! `gapferry import`: verify a bundle, then publish it into the mirror.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use gapferry::error::Classify;
use gapferry::keys::TrustSet;
use gapferry::manifest;
use gapferry::mde::{Arch, Platform, Ring};
use gapferry::mirror::import::{self, ImportOptions, ImportReport, Target};
use gapferry::mirror::ledger::Outcome;
use gapferry::mirror::publish::{Destination, PublishOptions};
use gapferry::mirror::state;

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
    /// The bundle file.
    bundle: PathBuf,
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
                let code = super::exit_kind(&e).code();
                let msg = super::describe(&e);
                print_json(&ImportReport {
                    outcome: Outcome::Failed,
                    bundle: self.bundle.clone(),
                    bundle_id: None,
                    channel: None,
                    sequence: None,
                    manifest_sha256: None,
                    signers: Vec::new(),
                    slots: Vec::new(),
                    bytes_written: 0,
                    downgrades: Vec::new(),
                    recovered: Vec::new(),
                    error: Some(msg.clone()),
                    exit_code: code,
                })?;
                eprintln!("gapferry: {msg}");
                return Ok(code);
            }
            Err(e) => return Err(e),
        };
        let bar = Bar::new(self.quiet || self.json);
        let (report, err) = import::import(&opts, &bar);
        if self.json {
            print_json(&report)?;
        } else if !self.quiet {
            summary(&report);
        }
        match err {
            None => Ok(0),
            Some(e) if self.json => {
                let code = e.exit_kind().code();
                eprintln!("gapferry: {}", super::describe(&anyhow::Error::from(e)));
                Ok(code)
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
                Destination::in_target(t, Arch::X86_64)?;
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
            bundle: self.bundle.clone(),
            trust,
            threshold: self.threshold,
            target,
            state_dir,
            channel: self.channel.clone(),
            platforms: self.platforms.clone(),
            rings: self.rings.clone(),
            allow_downgrade: self.allow_downgrade,
            allow_expired: self.allow_expired,
            lock_wait: self.lock_wait,
            publish: PublishOptions::from_env(),
        })
    }
}

fn summary(r: &ImportReport) {
    for p in &r.recovered {
        eprintln!(
            "gapferry: completed an interrupted publish of {}",
            p.display()
        );
    }
    let id = r.bundle_id.as_deref().unwrap_or("?");
    match r.outcome {
        Outcome::Imported => {
            eprintln!(
                "gapferry: imported bundle {id} (channel {}, sequence {}), signed by {}",
                r.channel.as_deref().unwrap_or("?"),
                r.sequence.unwrap_or(0),
                r.signers.join(", ")
            );
            for s in &r.slots {
                let before = s
                    .before
                    .as_ref()
                    .map(|v| format!("{} / {}", v.engine_version, v.definition_version))
                    .unwrap_or_else(|| "(none)".into());
                let after = s
                    .after
                    .as_ref()
                    .map(|v| format!("{} / {}", v.engine_version, v.definition_version))
                    .unwrap_or_default();
                let note = if s.published {
                    ""
                } else {
                    "  (already served)"
                };
                eprintln!("  {:<30} {before} -> {after}{note}", s.slot);
            }
            for d in &r.downgrades {
                eprintln!("  downgrade allowed: {d}");
            }
        }
        Outcome::AlreadyImported => {
            eprintln!("gapferry: bundle {id} is already imported; nothing to do");
        }
        _ => {}
    }
}
