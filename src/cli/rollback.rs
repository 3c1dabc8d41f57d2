//! `gapferry rollback`: serve the previous set again (or roll forward).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use gapferry::mde::{Arch, Platform, Ring, Slot};
use gapferry::mirror::publish::PublishOptions;
use gapferry::mirror::rollback::{self, RollbackError, RollbackOptions};
use gapferry::mirror::state;

use super::output::print_json;
use super::UsageError;

/// Swap the served set with its n-1 (<ring>_back), atomically.
///
/// For when the newest definitions misbehave. Running it again swaps back
/// (roll forward). The set rolled away from is marked withdrawn: importing
/// that same bundle again is refused (exit 4) unless --allow-downgrade, so a
/// re-delivered copy does not undo the rollback; newer bundles import as
/// usual. Recorded in the ledger.
///
/// n-1 is first checked against what was imported (size and SHA-256 of each
/// file): a damaged n-1 is refused (exit 3, naming the file) unless --force.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Mirror root.
    #[arg(long, value_name = "DIR")]
    mirror: PathBuf,
    /// State directory given to import [default: as import's].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Platform (linux, mac).
    #[arg(long, value_name = "P", value_parser = super::one_of(Platform::ALL, Platform::as_str))]
    platform: Platform,
    /// Ring (production, preview).
    #[arg(long, value_name = "R", value_parser = super::one_of(Ring::ALL, Ring::as_str))]
    ring: Ring,
    /// Only this arch (x86_64, arm64); repeatable [default: both].
    #[arg(long = "arch", value_name = "A", value_parser = super::one_of(Arch::ALL, Arch::as_str))]
    arches: Vec<Arch>,
    /// How long to wait for a running import to finish.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    lock_wait: Duration,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Roll back even to an n-1 whose files no longer match what was imported.
    #[arg(long)]
    force: bool,
}

/// An error followed by advice; its exit code is the inner error's.
#[derive(Debug, thiserror::Error)]
#[error("{inner}; {hint}")]
struct Hinted {
    #[source]
    inner: gapferry::Error,
    hint: String,
}

impl RollbackArgs {
    /// Without --arch every arch is rolled back or none: when one of them
    /// cannot be (no n-1, not served), says how to roll back the others.
    fn with_arch_hint(&self, e: RollbackError, tried: &[Arch]) -> anyhow::Error {
        let dir = match &e {
            RollbackError::NoBack { dir, .. } | RollbackError::NotServed { dir } => dir.clone(),
            _ => return gapferry::Error::from(e).into(),
        };
        let failed = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Only arches that are served: a hint must name something that can
        // be rolled back.
        let others: Vec<String> = tried
            .iter()
            .map(|a| format!("arch_{a}"))
            .filter(|name| name != failed && dir.with_file_name(name).is_dir())
            .map(|name| format!("--arch {}", &name["arch_".len()..]))
            .collect();
        let inner = gapferry::Error::from(e);
        if !self.arches.is_empty() || others.is_empty() {
            return inner.into();
        }
        Hinted {
            inner,
            hint: format!(
                "nothing was rolled back: without --arch every arch is rolled back together; \
                 to roll back only the others, add {}",
                others.join(" ")
            ),
        }
        .into()
    }

    pub fn run(self) -> anyhow::Result<i32> {
        if !self.mirror.is_dir() {
            return Err(UsageError(format!(
                "--mirror {}: {}; check the path",
                self.mirror.display(),
                if self.mirror.exists() {
                    "not a folder"
                } else {
                    "does not exist"
                }
            ))
            .into());
        }
        let arches: Vec<Arch> = if self.arches.is_empty() {
            Arch::ALL.to_vec()
        } else {
            self.arches.clone()
        };
        let slots = arches
            .iter()
            .map(|&arch| {
                let slot = Slot {
                    platform: self.platform,
                    ring: self.ring,
                    arch,
                };
                (slot.key(), slot.placement())
            })
            .collect();
        let state_dir = match &self.state_dir {
            Some(d) => d.clone(),
            None => state::default_state_dir(&self.mirror)?,
        };
        let report = match rollback::rollback(&RollbackOptions {
            mirror: self.mirror.clone(),
            state_dir,
            slots,
            profile: &gapferry::mde::profile::Mde,
            lock_wait: self.lock_wait,
            publish: PublishOptions::from_env(),
            force: self.force,
        }) {
            Ok(r) => r,
            Err(e) => return Err(self.with_arch_hint(e, &arches)),
        };
        if self.json {
            print_json(&report, None)?;
        } else {
            for s in &report.slots {
                let v = |x: &Option<gapferry::mirror::ledger::Versions>| {
                    x.as_ref()
                        .map(|v| gapferry::text::escape(&v.definition_version).into_owned())
                        .unwrap_or_else(|| "?".into())
                };
                eprintln!(
                    "gapferry: {} now serves definitions {} (was {}); the previous set is n-1",
                    gapferry::text::Esc(s.slot.as_str()),
                    v(&s.after),
                    v(&s.before)
                );
                if let Some(m) = &s.forced_past {
                    eprintln!(
                        "gapferry: warning: {} now serves a set that does not match what was imported ({m}); --force was given",
                        s.slot
                    );
                }
            }
        }
        Ok(0)
    }
}
