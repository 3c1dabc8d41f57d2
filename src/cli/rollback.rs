//! `gapferry rollback`: serve the previous set again (or roll forward).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use gapferry::mde::{Arch, Ring, Slot};
use gapferry::mirror::publish::PublishOptions;
use gapferry::mirror::rollback::{self, RollbackError, RollbackOptions};
use gapferry::mirror::state;
use gapferry::profile::Profile;
use gapferry::windows::profile::placement;
use gapferry::windows::WinArch;

use super::output::print_json;
use super::windows::PlatformSel;
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
    /// Mirror root, or s3://BUCKET/PREFIX (with --state-dir).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "share",
        conflicts_with = "share"
    )]
    mirror: Option<PathBuf>,
    /// With --platform windows: the folder behind a Windows share that
    /// import --share published into (DIR/<arch>, n-1 in DIR_back/).
    #[arg(long, value_name = "DIR")]
    share: Option<PathBuf>,
    #[command(flatten)]
    s3: super::s3::S3Args,
    /// State directory given to import [default: as import's].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Platform (linux, mac, windows).
    #[arg(long, value_name = "P", value_parser = super::windows::platform_parser())]
    platform: super::windows::PlatformSel,
    /// Ring (production, preview); required for linux and mac.
    #[arg(long, value_name = "R", value_parser = super::one_of(Ring::ALL, Ring::as_str))]
    ring: Option<Ring>,
    /// Only this arch (x86_64, arm64; windows: x64, x86, arm64); repeatable
    /// [default: all].
    #[arg(long = "arch", value_name = "A", value_parser = super::windows::arch_parser())]
    arches: Vec<super::windows::ArchName>,
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
    /// `tried`: each arch rolled back, as (its folder's name, its `--arch`
    /// value).
    fn with_arch_hint(&self, e: RollbackError, tried: &[(String, String)]) -> anyhow::Error {
        let dir = match &e {
            RollbackError::NoBack { dir, .. } | RollbackError::NotServed { dir } => dir.clone(),
            _ => return gapferry::Error::from(e).into(),
        };
        let failed = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Only arches that are served: a hint must name something that can
        // be rolled back.
        let others: Vec<String> = tried
            .iter()
            .filter(|(name, _)| name != failed && dir.with_file_name(name).is_dir())
            .map(|(_, arch)| format!("--arch {arch}"))
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
        let (root, target) = match (&self.mirror, &self.share) {
            (Some(m), None) => (m.clone(), false),
            (None, Some(s)) if self.platform == PlatformSel::Windows => (s.clone(), true),
            (None, Some(_)) => {
                return Err(UsageError("rollback --share is for --platform windows".into()).into())
            }
            _ => return Err(UsageError("give one of --mirror DIR or --share DIR".into()).into()),
        };
        let s3 = self
            .s3
            .mirror(self.mirror.as_deref(), self.state_dir.as_deref())?;
        let root = match &s3 {
            Some(m) => {
                m.client().check_bucket()?;
                m.shadow_root().to_path_buf()
            }
            None => {
                super::existing_folder(
                    if target { "--share" } else { "--mirror" },
                    &root,
                    "check the path",
                )?;
                root
            }
        };
        let (slots, profile, tried): (Vec<_>, &'static dyn Profile, Vec<(String, String)>) =
            match self.platform {
                PlatformSel::Windows => {
                    if self.ring.is_some() {
                        return Err(UsageError(
                        "rollback --platform windows: Windows packages have no rings; leave out --ring".into(),
                    )
                    .into());
                    }
                    // Without --arch: the arch folders the mirror serves.
                    let served: Vec<WinArch> = WinArch::ALL
                        .iter()
                        .copied()
                        .filter(|&a| {
                            if target {
                                root.join(a.as_str()).exists()
                            } else {
                                placement(a).dir_in(&root).exists()
                            }
                        })
                        .collect();
                    let default = if served.is_empty() {
                        WinArch::ALL
                    } else {
                        &served
                    };
                    let arches = super::windows::win_arches(&self.arches, default)?;
                    let tried = arches
                        .iter()
                        .map(|a| (a.as_str().to_string(), a.as_str().to_string()))
                        .collect();
                    let slots = arches
                        .into_iter()
                        .map(|a| (a.key(), placement(a)))
                        .collect();
                    (slots, &gapferry::windows::profile::Windows, tried)
                }
                PlatformSel::Mde(platform) => {
                    let ring = self.ring.ok_or_else(|| {
                        UsageError(format!(
                            "rollback --platform {platform}: --ring is required"
                        ))
                    })?;
                    let mut arches: Vec<Arch> = super::windows::mde_arches(&self.arches)?;
                    if arches.is_empty() {
                        arches = Arch::ALL.to_vec();
                    }
                    let slots = arches
                        .iter()
                        .map(|&arch| {
                            let slot = Slot {
                                platform,
                                ring,
                                arch,
                            };
                            (slot.key(), slot.placement())
                        })
                        .collect();
                    let tried = arches
                        .iter()
                        .map(|a| (format!("arch_{a}"), a.to_string()))
                        .collect();
                    (slots, &gapferry::mde::profile::Mde, tried)
                }
            };
        let state_dir = match &self.state_dir {
            Some(d) => d.clone(),
            None => state::default_state_dir(&root)?,
        };
        let report = match rollback::rollback(&RollbackOptions {
            mirror: root.clone(),
            target,
            state_dir,
            slots,
            profile,
            lock_wait: self.lock_wait,
            publish: PublishOptions::from_env(),
            force: self.force,
            s3,
        }) {
            Ok(r) => r,
            Err(e) => return Err(self.with_arch_hint(e, &tried)),
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
