//! `gapferry inspect`: what a bundle claims and who signed it, reading only
//! its head (manifest and signatures), so it is as fast on 2 GB as on 10 MB.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::Args;
use serde::Serialize;

use gapferry::bundle::reader::{BundleReader, Head};
use gapferry::bundle::trust::{check_signatures, SignatureCheck, SignatureStatus};
use gapferry::keys::TrustSet;
use gapferry::manifest::{FileEntry, Item};

use super::output::print_json;

/// Show a bundle's manifest and signers without reading its payload.
///
/// With --trust, also says which signers are trusted and whether each of
/// their signatures verifies. Use `gapferry verify` for the full check.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle file.
    bundle: PathBuf,
    /// Public key file or directory of *.pub files to check signatures against; repeatable.
    #[arg(long = "trust", value_name = "K")]
    trust: Vec<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// The `--json` output of inspect.
#[derive(Debug, Serialize)]
pub struct InspectOutput {
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
}

pub fn describe(bundle: PathBuf, head: &Head, trust: Option<&TrustSet>) -> InspectOutput {
    let m = &head.manifest;
    InspectOutput {
        bundle,
        format: m.format.clone(),
        bundle_id: m.bundle_id.clone(),
        channel: m.channel.clone(),
        sequence: m.sequence,
        created: m.created.clone(),
        expires: m.expires.clone(),
        expired: m.is_expired(SystemTime::now()),
        producer: m.producer.clone(),
        profile: m.profile.clone(),
        manifest_sha256: head.manifest_sha256.clone(),
        payload_size: m.total_size(),
        signatures: check_signatures(head, trust),
        items: m.items.clone(),
        files: m.files.clone(),
    }
}

impl InspectArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        let trust = if self.trust.is_empty() {
            None
        } else {
            Some(TrustSet::load(&self.trust)?)
        };
        let mut reader = BundleReader::open(&self.bundle)?;
        let head = reader.read_head()?;
        let out = describe(self.bundle.clone(), &head, trust.as_ref());
        if self.json {
            print_json(&out)?;
            return Ok(0);
        }
        let mut s = String::new();
        use std::fmt::Write as _;
        let _ = writeln!(s, "bundle       {}", out.bundle.display());
        let _ = writeln!(s, "bundle id    {}", out.bundle_id);
        let _ = writeln!(s, "channel      {}", out.channel);
        let _ = writeln!(s, "sequence     {}", out.sequence);
        let _ = writeln!(s, "created      {}", out.created);
        let _ = writeln!(
            s,
            "expires      {}{}",
            out.expires,
            if out.expired { "  (EXPIRED)" } else { "" }
        );
        let _ = writeln!(s, "producer     {}", out.producer);
        let _ = writeln!(s, "manifest     sha256 {}", out.manifest_sha256);
        let _ = writeln!(s, "signatures");
        for sig in &out.signatures {
            let status = match sig.status {
                SignatureStatus::Valid => "trusted, valid".to_string(),
                SignatureStatus::Untrusted => "not in the trust set".to_string(),
                SignatureStatus::Unchecked => "not checked (give --trust)".to_string(),
                SignatureStatus::Invalid => {
                    format!("INVALID: {}", sig.problem.as_deref().unwrap_or(""))
                }
            };
            let _ = writeln!(s, "  key {}  {status}", sig.key_id);
        }
        let _ = writeln!(s, "items");
        for i in &out.items {
            let _ = writeln!(
                s,
                "  {}/{}/arch_{:<8} engine {:<14} definitions {}",
                i.platform, i.ring, i.arch, i.engine_version, i.definition_version
            );
        }
        let _ = writeln!(s, "files ({} bytes)", out.payload_size);
        for f in &out.files {
            let _ = writeln!(s, "  {:>12}  {}  {}", f.size, f.sha256, f.path);
        }
        super::output::print_text(&s)?;
        Ok(0)
    }
}
