//! `gapferry inspect`: what a bundle claims and who signed it, reading only
//! its head (manifest and signatures), so it is as fast on 2 GB as on 10 MB.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::Args;
use serde::Serialize;

use gapferry::bundle::reader::Head;
use gapferry::bundle::trust::{check_signatures, SignatureCheck, SignatureStatus};
use gapferry::bundle::volumes;
use gapferry::keys::TrustSet;
use gapferry::manifest::{FileEntry, Item};

use gapferry::mirror::receipt;

use gapferry::text::{escape_path, Esc};
use gapferry::trustpolicy::PolicySummary;

use super::output::{print_json, ErrorJson};
use super::UsageError;

/// Show a bundle's manifest and signers without reading its payload.
///
/// With --trust, also says which signers are trusted and whether each of
/// their signatures verifies. Use `gapferry verify` for the full check.
///
/// With --packages (Windows bundles), also reads each carried mpam-fe.exe
/// and shows its version and the subject of its Authenticode signer (the
/// whole payload is read).
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle file; for a split bundle its first volume, its index
    /// (NAME.volumes.json) or its directory.
    bundle: PathBuf,
    /// Public key file or directory of *.pub files to check signatures against; repeatable.
    #[arg(long = "trust", value_name = "K")]
    trust: Vec<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Check an import receipt (GF1-<sequence>-xxxx-xxxx-xxxx-xxxx-OK, as
    /// `gapferry import` printed it on the disconnected side) against this
    /// bundle: exit 0 when it names this bundle, 1 when it does not, 2 when
    /// TEXT is not a receipt.
    #[arg(long, value_name = "TEXT")]
    receipt: Option<String>,
    /// Read the payload of a `windows` bundle and show each package's
    /// version and Authenticode signer (not a chain check: see SECURITY.md).
    #[arg(long, conflicts_with = "receipt")]
    packages: bool,
}

/// One carried Windows package, as `inspect --packages` read it.
#[derive(Debug, Serialize)]
pub struct PackageReport {
    pub path: String,
    /// The version in its version resource.
    pub version: Option<String>,
    /// The subject of the certificate its Authenticode signer names.
    pub signer_subject: Option<String>,
    /// `digest matches` (the signed Authenticode digest equals the file's),
    /// `unsigned`, or why the package is not usable.
    pub authenticode: String,
}

/// The `--json` output of `inspect --receipt`.
#[derive(Debug, Serialize)]
pub struct ReceiptCheck {
    pub bundle_path: PathBuf,
    /// Deprecated name of `bundle_path` (docs/JSON.md).
    pub bundle: PathBuf,
    pub receipt: String,
    pub matches: bool,
    /// `imported` or `already_imported`, as the receipt says.
    pub outcome: &'static str,
    pub bundle_id: String,
    pub sequence: u64,
    pub manifest_sha256: String,
    /// The receipt this bundle would get when imported.
    pub expected: String,
}

/// The `--json` output of inspect.
#[derive(Debug, Serialize)]
pub struct InspectOutput {
    pub bundle_path: PathBuf,
    /// Deprecated name of `bundle_path` (docs/JSON.md).
    pub bundle: PathBuf,
    pub format: String,
    pub bundle_id: String,
    pub channel: String,
    pub sequence: u64,
    pub created: String,
    pub expires: String,
    pub expired: bool,
    pub producer: String,
    pub profile: String,
    pub manifest_sha256: String,
    pub payload_size: u64,
    pub signatures: Vec<SignatureCheck>,
    pub items: Vec<Item>,
    pub files: Vec<FileEntry>,
    /// The trust policy versions the bundle carries, ascending (absent:
    /// none). Their root signatures are listed, not checked: `verify
    /// --trust-root` checks them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_policy: Vec<PolicySummary>,
    /// With --packages: each carried Windows package.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packages: Option<Vec<PackageReport>>,
}

/// One carried policy version on one line.
pub fn policy_line(p: &PolicySummary) -> String {
    format!(
        "trust policy version {}: expires {}, roots {} of {}, signers {} of {}{}, signed by {}",
        p.version,
        Esc(&p.expires),
        p.root_threshold,
        p.root_keys.join(" "),
        p.signer_threshold,
        p.signer_keys
            .iter()
            .map(|k| k.key_id.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        if p.revoked.is_empty() {
            String::new()
        } else {
            format!(", revoked {}", p.revoked.join(" "))
        },
        if p.signed_by.is_empty() {
            "nobody".to_string()
        } else {
            p.signed_by.join(" ")
        }
    )
}

pub fn describe(bundle: PathBuf, head: &Head, trust: Option<&TrustSet>) -> InspectOutput {
    let m = &head.manifest;
    InspectOutput {
        bundle_path: bundle.clone(),
        bundle,
        format: m.format.clone(),
        bundle_id: m.bundle_id.to_string(),
        channel: m.channel.clone(),
        sequence: m.sequence,
        created: m.created.to_string(),
        expires: m.expires.to_string(),
        expired: m.is_expired(SystemTime::now()),
        producer: m.producer.clone(),
        profile: m.profile.clone(),
        manifest_sha256: head.manifest_sha256.to_string(),
        payload_size: m.total_size(),
        signatures: check_signatures(head, trust),
        items: m.items.clone(),
        files: m.files.clone(),
        trust_policy: head.trust.iter().map(|p| p.summary()).collect(),
        packages: None,
    }
}

/// Reads every payload file in manifest order (checking each one's SHA-256)
/// and looks into the Windows packages.
fn read_packages(
    mut reader: gapferry::bundle::reader::BundleReader<volumes::BundleInput>,
    head: &Head,
) -> anyhow::Result<Vec<PackageReport>> {
    let mut out = Vec::new();
    for f in &head.manifest.files {
        let path = f.path.to_string();
        let package = path.ends_with(&format!("/{}", gapferry::windows::MPAM_FE));
        if !package || f.size > gapferry::windows::MAX_PACKAGE {
            reader.copy_file(
                &mut std::io::sink(),
                Path::new("-"),
                &gapferry::progress::NoProgress,
            )?;
            if package {
                out.push(PackageReport {
                    path,
                    version: None,
                    signer_subject: None,
                    authenticode: "too large to read".into(),
                });
            }
            continue;
        }
        let mut bytes = Vec::with_capacity(f.size as usize);
        reader.copy_file(&mut bytes, Path::new("-"), &gapferry::progress::NoProgress)?;
        out.push(match gapferry::windows::pe::analyze(&bytes) {
            Ok(info) => PackageReport {
                path,
                version: Some(info.version),
                authenticode: if info.signature.is_some() {
                    "digest matches".into()
                } else {
                    "unsigned".into()
                },
                signer_subject: info.signature.and_then(|s| s.signer_subject),
            },
            Err(why) => PackageReport {
                path,
                version: None,
                signer_subject: None,
                authenticode: why,
            },
        });
    }
    Ok(out)
}

impl InspectArgs {
    fn check_receipt(&self, r: &receipt::Receipt, head: &Head) -> anyhow::Result<i32> {
        let m = &head.manifest;
        let matches = r.matches(m.sequence, head.manifest_sha256.as_str());
        let expected = receipt::Receipt::new(m.sequence, head.manifest_sha256.as_str(), r.outcome);
        let out = ReceiptCheck {
            bundle_path: self.bundle.clone(),
            bundle: self.bundle.clone(),
            receipt: r.to_string(),
            matches,
            outcome: match r.outcome {
                receipt::ReceiptOutcome::Imported => "imported",
                receipt::ReceiptOutcome::AlreadyImported => "already_imported",
            },
            bundle_id: m.bundle_id.to_string(),
            sequence: m.sequence,
            manifest_sha256: head.manifest_sha256.to_string(),
            expected: expected.to_string(),
        };
        if self.json {
            let error = (!matches).then(|| {
                ErrorJson::new(
                    format!(
                        "receipt {} does not match {}: this bundle's receipt would be {}",
                        out.receipt,
                        self.bundle.display(),
                        out.expected
                    ),
                    1,
                )
            });
            print_json(&out, error)?;
        } else if matches {
            eprintln!(
                "gapferry: receipt {} matches {}: bundle {} sequence {} was {} on the disconnected side",
                out.receipt,
                escape_path(&self.bundle),
                Esc(m.bundle_id.as_str()),
                m.sequence,
                if out.outcome == "imported" { "imported" } else { "already imported (imported earlier)" }
            );
        } else {
            eprintln!(
                "gapferry: receipt {} does NOT match {}: this bundle's receipt would be {} (sequence {}, manifest {}); the other side imported another bundle, or the receipt was misread: read it again",
                out.receipt,
                escape_path(&self.bundle),
                out.expected,
                m.sequence,
                head.manifest_sha256
            );
        }
        Ok(if matches { 0 } else { 1 })
    }

    pub fn run(self) -> anyhow::Result<i32> {
        let wanted = match &self.receipt {
            Some(t) => Some(receipt::Receipt::parse(t).map_err(|e| {
                UsageError(format!(
                    "--receipt: {e}; copy it exactly as gapferry import printed it"
                ))
            })?),
            None => None,
        };
        let trust = if self.trust.is_empty() {
            None
        } else {
            Some(TrustSet::load(&self.trust)?)
        };
        // Only sizes of a split bundle's volumes: inspect reads kilobytes.
        let opened = volumes::open(
            &self.bundle,
            volumes::OpenChecks {
                trust: trust.as_ref(),
                hash_volumes: false,
            },
            &gapferry::progress::NoProgress,
        )?;
        let head = opened.head;
        if let Some(r) = wanted {
            return self.check_receipt(&r, &head);
        }
        let mut out = describe(self.bundle.clone(), &head, trust.as_ref());
        if self.packages {
            if head.manifest.profile != gapferry::windows::PROFILE {
                return Err(UsageError(format!(
                    "--packages reads Windows packages; {} is a {:?} bundle",
                    self.bundle.display(),
                    head.manifest.profile
                ))
                .into());
            }
            out.packages = Some(read_packages(opened.reader, &head)?);
        }
        if self.json {
            print_json(&out, None)?;
            return Ok(0);
        }
        let mut s = String::new();
        use std::fmt::Write as _;
        // Everything below but the numbers comes from the bundle, signed or
        // not: escaped, so no field can start a line or drive the terminal.
        let _ = writeln!(s, "bundle       {}", escape_path(&out.bundle));
        let _ = writeln!(s, "bundle id    {}", Esc(&out.bundle_id));
        let _ = writeln!(s, "channel      {}", Esc(&out.channel));
        let _ = writeln!(s, "sequence     {}", out.sequence);
        let _ = writeln!(s, "created      {}", Esc(&out.created));
        let _ = writeln!(
            s,
            "expires      {}{}",
            Esc(&out.expires),
            if out.expired { "  (EXPIRED)" } else { "" }
        );
        let _ = writeln!(s, "producer     {}", Esc(&out.producer));
        let _ = writeln!(s, "manifest     sha256 {}", out.manifest_sha256);
        let _ = writeln!(s, "signatures");
        for sig in &out.signatures {
            let status = match sig.status {
                SignatureStatus::Valid => "trusted, valid".to_string(),
                SignatureStatus::Untrusted => "not in the trust set".to_string(),
                SignatureStatus::Unchecked => "not checked (give --trust)".to_string(),
                SignatureStatus::Invalid => {
                    format!("INVALID: {}", Esc(sig.problem.as_deref().unwrap_or("")))
                }
            };
            let _ = writeln!(s, "  key {}  {status}", Esc(&sig.key_id));
        }
        for p in &out.trust_policy {
            let _ = writeln!(s, "{}", policy_line(p));
        }
        let _ = writeln!(s, "items");
        for i in &out.items {
            if out.profile == gapferry::windows::PROFILE {
                let folder = format!("{}/{}", i.platform, i.arch);
                let _ = writeln!(
                    s,
                    "  {:<30} version {}",
                    Esc(&folder),
                    Esc(&i.definition_version)
                );
                continue;
            }
            let folder = format!("{}/{}/arch_{}", i.platform, i.ring, i.arch);
            let _ = writeln!(
                s,
                "  {:<30} engine {:<14} definitions {}",
                Esc(&folder),
                Esc(&i.engine_version),
                Esc(&i.definition_version)
            );
        }
        if let Some(packages) = &out.packages {
            let _ = writeln!(s, "packages");
            for p in packages {
                let _ = writeln!(
                    s,
                    "  {:<30} version {:<14} {}; signer {}",
                    Esc(&p.path),
                    Esc(p.version.as_deref().unwrap_or("?")),
                    Esc(&p.authenticode),
                    Esc(p.signer_subject.as_deref().unwrap_or("(not named)"))
                );
            }
        }
        let _ = writeln!(s, "files ({} bytes)", out.payload_size);
        for f in &out.files {
            let _ = writeln!(
                s,
                "  {:>12}  {}  {}",
                f.size,
                f.sha256,
                Esc(&f.path.to_string())
            );
        }
        super::output::print_text(&s)?;
        Ok(0)
    }
}
