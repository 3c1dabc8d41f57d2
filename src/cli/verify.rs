//! `gapferry verify`: the full check of a bundle, writing nothing.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::Args;
use serde::Serialize;

use gapferry::bundle::volumes;
use gapferry::keys::TrustSet;
use gapferry::verify::{verify_bundle, Policy, Purpose, RootTrust};

use super::output::{print_json, Bar};
use super::UsageError;

/// Check a bundle completely without writing anything.
///
/// Checks the signatures (distinct trusted keys, --threshold), the archive
/// structure (order, listed regular files only, no trailing data, path rules,
/// size caps) and every file's size and SHA-256. An expired bundle is refused
/// (exit 4) unless --allow-expired.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle file; for a split bundle its first volume, its index
    /// (NAME.volumes.json) or its directory.
    bundle: PathBuf,
    /// Public key file or directory of *.pub files; repeatable.
    #[arg(
        long = "trust",
        value_name = "K",
        required_unless_present = "trust_roots"
    )]
    trust: Vec<PathBuf>,
    /// With --trust-root: the carried trust policy chain is checked from
    /// these pins and the signatures are counted under its newest version.
    #[command(flatten)]
    roots: super::trust::RootArgs,
    /// Distinct trusted keys that must have signed.
    #[arg(
        long,
        default_value_t = 1,
        value_name = "N",
        conflicts_with = "trust_roots"
    )]
    threshold: usize,
    /// Also require this channel.
    #[arg(long, value_name = "C")]
    channel: Option<String>,
    /// Accept a bundle past its expiry time (auditing old bundles).
    #[arg(long)]
    allow_expired: bool,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar, no summary on stderr.
    #[arg(long)]
    quiet: bool,
}

/// The `--json` output of verify.
#[derive(Debug, Serialize)]
pub struct VerifyOutput {
    pub bundle_path: PathBuf,
    /// Deprecated name of `bundle_path` (docs/JSON.md).
    pub bundle: PathBuf,
    pub bundle_id: String,
    pub channel: String,
    pub sequence: u64,
    pub expires: String,
    pub expired: bool,
    pub manifest_sha256: String,
    pub signer_key_ids: Vec<String>,
    /// Deprecated name of `signer_key_ids` (docs/JSON.md).
    pub signers: Vec<String>,
    pub files_checked: usize,
    pub bytes_checked: u64,
    /// The trust policy versions the bundle carries (absent: none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_policy: Vec<gapferry::trustpolicy::PolicySummary>,
    /// With --trust-root: the policy version the signatures counted under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted_under_policy: Option<u64>,
    /// Data volumes of a split bundle rebuilt from its parity volumes (why
    /// each was), absent when none was.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rebuilt_volumes: Vec<String>,
    /// Parity volumes missing or damaged (never used), absent when none is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged_parity: Vec<String>,
}

impl VerifyArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        if self.threshold == 0 {
            return Err(UsageError("--threshold must be at least 1".into()).into());
        }
        let roots = self.roots.load()?;
        let root_trust = roots.map(|pins| RootTrust {
            pins,
            adopted: None,
            allow_expired_policy: self.roots.allow_expired_policy,
        });
        let trust_set = TrustSet::load(&self.trust)?;
        if root_trust.is_none() && self.threshold > trust_set.len() {
            return Err(UsageError(format!(
                "--threshold {} is more than the {} trusted key(s) given",
                self.threshold,
                trust_set.len()
            ))
            .into());
        }
        let bar = Bar::new(self.quiet || self.json);
        let opened = volumes::open(
            &self.bundle,
            volumes::OpenChecks {
                trust: root_trust.is_none().then_some(&trust_set),
                hash_volumes: true,
            },
            &bar,
        )?;
        let recovery = opened
            .split
            .as_ref()
            .map(|s| s.recovery.clone())
            .unwrap_or_default();
        let policy = Policy {
            trust: &trust_set,
            threshold: self.threshold,
            channel: self.channel.as_deref(),
            allow_expired: self.allow_expired,
            purpose: Purpose::Verify,
            now: SystemTime::now(),
            roots: root_trust.as_ref(),
        };
        let verified = verify_bundle(opened.reader, opened.head, &policy, &self.bundle, &bar)?;
        let (head, signers) = (verified.accepted.head(), verified.accepted.signers());
        let m = &head.manifest;
        let expired = verified.accepted.expired();
        let out = VerifyOutput {
            bundle_path: self.bundle.clone(),
            bundle: self.bundle.clone(),
            bundle_id: m.bundle_id.to_string(),
            channel: m.channel.clone(),
            sequence: m.sequence,
            expires: m.expires.to_string(),
            expired,
            manifest_sha256: head.manifest_sha256.to_string(),
            signer_key_ids: signers.iter().map(|k| k.to_string()).collect(),
            signers: signers.iter().map(|k| k.to_string()).collect(),
            files_checked: verified.files_checked,
            bytes_checked: verified.bytes_checked,
            trust_policy: head.trust.iter().map(|p| p.summary()).collect(),
            counted_under_policy: verified.accepted.trust().map(|t| t.authority.version()),
            rebuilt_volumes: recovery.rebuilt.into_iter().map(|(_, w)| w).collect(),
            damaged_parity: recovery.bad_parity.into_iter().map(|(_, w)| w).collect(),
        };
        if self.json {
            print_json(&out, None)?;
        } else if !self.quiet {
            for why in &out.rebuilt_volumes {
                eprintln!(
                    "gapferry: rebuilt from the parity volumes: {}",
                    gapferry::text::Esc(why)
                );
            }
            for why in &out.damaged_parity {
                eprintln!(
                    "gapferry: warning: not used: {}; `gapferry repair` rewrites it",
                    gapferry::text::Esc(why)
                );
            }
            eprintln!(
                "gapferry: {} is valid: bundle {} channel {} sequence {}, {} files ({} bytes) match, signed by {}{}",
                gapferry::text::escape_path(&self.bundle),
                gapferry::text::Esc(&out.bundle_id),
                gapferry::text::Esc(&out.channel),
                out.sequence,
                out.files_checked,
                out.bytes_checked,
                out.signers.join(", "),
                if expired { " (EXPIRED)" } else { "" }
            );
            for p in &out.trust_policy {
                eprintln!("  {}", super::inspect::policy_line(p));
            }
            if let Some(t) = verified.accepted.trust() {
                eprintln!(
                    "  signatures counted under trust policy version {}, checked from the pinned roots",
                    t.authority.version()
                );
                if let Some(w) = t.expiry_warning() {
                    eprintln!("gapferry: warning: {w}");
                }
            }
        }
        Ok(0)
    }
}
