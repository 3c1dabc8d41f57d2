//! `gapferry repair`: writes the rebuilt volumes of a split bundle back.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use gapferry::bundle::repair;
use gapferry::keys::TrustSet;
use gapferry::text::{escape_path, Esc};

use super::output::{print_json, Bar};

/// Make a split bundle's media whole again from its parity volumes.
///
/// Checks the index signatures and every volume (data and parity) against
/// the signed index, rebuilds the lost or damaged data volumes from the
/// parity volumes and computes lost or damaged parity volumes again, then
/// writes each back under its own name (a hidden temporary file, synced,
/// renamed over the bad one). With more volumes lost than there are parity
/// volumes, nothing is written (exit 3, naming every bad volume).
#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The split bundle: its index (NAME.volumes.json), any of its volumes
    /// (even a missing one) or its directory.
    bundle: PathBuf,
    /// Public key file or directory of *.pub files; repeatable.
    #[arg(long = "trust", value_name = "K", required = true)]
    trust: Vec<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar, no summary on stderr.
    #[arg(long)]
    quiet: bool,
}

/// The `--json` output of repair (`ok` is the envelope's).
#[derive(Debug, Serialize)]
pub struct RepairOutput {
    pub index: PathBuf,
    /// Data volumes written back.
    pub rebuilt_volumes: Vec<Written>,
    /// Parity volumes written back.
    pub rebuilt_parity: Vec<Written>,
}

/// One file written back.
#[derive(Debug, Serialize)]
pub struct Written {
    pub path: PathBuf,
    /// What was wrong with it.
    pub was: String,
}

impl RepairArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        let trust = TrustSet::load(&self.trust)?;
        let bar = Bar::new(self.quiet || self.json);
        let done = repair::repair(&self.bundle, &trust, &bar)?;
        let conv = |v: Vec<(PathBuf, String)>| {
            v.into_iter()
                .map(|(path, was)| Written { path, was })
                .collect::<Vec<_>>()
        };
        let out = RepairOutput {
            index: done.index_path,
            rebuilt_volumes: conv(done.data),
            rebuilt_parity: conv(done.parity),
        };
        if self.json {
            print_json(&out, None)?;
        } else if !self.quiet {
            for w in out.rebuilt_volumes.iter().chain(&out.rebuilt_parity) {
                eprintln!("gapferry: wrote {} ({})", escape_path(&w.path), Esc(&w.was));
            }
            if out.rebuilt_volumes.is_empty() && out.rebuilt_parity.is_empty() {
                eprintln!(
                    "gapferry: {}: every volume matches the signed index; nothing to repair",
                    escape_path(&out.index)
                );
            } else {
                eprintln!(
                    "gapferry: {}: every volume matches the signed index again",
                    escape_path(&out.index)
                );
            }
        }
        Ok(0)
    }
}
