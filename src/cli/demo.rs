//! `gapferry demo`: the whole journey on clearly fake data, in one folder.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::Args;

use gapferry::bundle::reader::BundleReader;
use gapferry::bundle::writer::WriteOptions;
use gapferry::export::{self, ExportRequest};
use gapferry::keys::{SecretKey, TrustSet};
use gapferry::mde::{self, Arch, FolderManifest, Platform, Ring, Slot};
use gapferry::mirror::import::{self, ImportOptions, Target};
use gapferry::mirror::ledger::Outcome;
use gapferry::mirror::publish::PublishOptions;
use gapferry::progress::NoProgress;
use gapferry::verify::{verify_bundle, Policy, Purpose};

use super::UsageError;

/// Run the whole journey on fake data: download folder, key, export,
/// verify, import into a mirror, a second release with n-1, and a tampered
/// bundle being refused.
///
/// Everything is written under DIR (re-running replaces an earlier demo
/// there). Nothing here is a real Defender update.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the demo's files.
    #[arg(long, default_value = "gapferry-demo", value_name = "DIR")]
    dir: PathBuf,
}

const MARKER: &str = ".gapferry-demo";
const FAKE_SIZE: usize = 1536 * 1024;

/// Deterministic filler that is clearly not a Defender package.
fn fake_payload(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let banner = b"GAPFERRY DEMO - NOT A REAL DEFENDER UPDATE - ";
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < len {
        out.extend_from_slice(banner);
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push(b'a' + (x % 26) as u8);
        }
    }
    out.truncate(len);
    out
}

fn write_download_folder(
    root: &Path,
    engine: &str,
    definitions: &str,
    seed: u64,
) -> anyhow::Result<()> {
    for platform in Platform::ALL {
        for arch in Arch::ALL {
            let slot = Slot {
                platform: *platform,
                ring: Ring::Production,
                arch: *arch,
            };
            let dir = slot.dir_in(root);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let data = fake_payload(
                seed ^ (slot.rel().len() as u64) ^ (*arch as u64) << 8 ^ (*platform as u64) << 16,
                FAKE_SIZE,
            );
            std::fs::write(
                dir.join(mde::UPDATES_ZIP),
                mde::zipcheck::tiny_zip("README-FAKE.txt", &data),
            )?;
            let fm = FolderManifest {
                engine_version: engine.into(),
                definition_version: definitions.into(),
            };
            std::fs::write(dir.join(mde::MANIFEST_JSON), fm.to_bytes())?;
        }
    }
    Ok(())
}

fn step(n: u32, text: &str) {
    eprintln!("\n[{n}] {text}");
}

impl DemoArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        let dir = &self.dir;
        if dir.exists() {
            let is_demo = dir.join(MARKER).exists();
            let empty = std::fs::read_dir(dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !is_demo && !empty {
                bail!(UsageError(format!(
                    "{} exists and is not a gapferry demo folder; choose another --dir",
                    dir.display()
                )));
            }
            if is_demo {
                std::fs::remove_dir_all(dir).with_context(|| {
                    format!("cannot clear the earlier demo in {}", dir.display())
                })?;
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(dir.join(MARKER), b"made by gapferry demo; safe to delete\n")?;
        let abs = std::path::absolute(dir)?;
        let download = abs.join("download");
        let keys_dir = abs.join("keys");
        let bundles = abs.join("bundles");
        let mirror = abs.join("mirror");
        let state = abs.join("state");
        let export_state = abs.join("export-state");
        for d in [&keys_dir, &bundles] {
            std::fs::create_dir_all(d)?;
        }

        eprintln!(
            "gapferry demo: everything below happens in {} with FAKE updates.",
            abs.display()
        );
        step(
            1,
            "Online side: a download folder as Microsoft's script leaves it",
        );
        write_download_folder(&download, "1.1.24090.4", "1.419.100.0", 1)?;
        eprintln!(
            "    {}/<linux|mac>/production/arch_<x86_64|arm64>/{{updates.zip,manifest.json}}",
            download.display()
        );

        step(2, "A throwaway signing key (minisign format)");
        let sk = SecretKey::generate();
        let pk = sk.public();
        let key_path = keys_dir.join("demo.key");
        let pub_path = keys_dir.join("demo.pub");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)?;
            f.write_all(sk.to_file_text(None).as_bytes())?;
        }
        std::fs::write(&pub_path, pk.to_file_text())?;
        eprintln!(
            "    key {} -> {} (secret, unencrypted: demo only) and {}",
            pk.key_id,
            key_path.display(),
            pub_path.display()
        );

        step(3, "Export: a signed .tar.zst bundle");
        let b1 = bundles.join("demo-1.tar.zst");
        let m1 = self.export(&download, &sk, &export_state, &b1)?;
        eprintln!(
            "    {} (sequence {}, {} files)",
            b1.display(),
            m1.sequence,
            m1.files.len()
        );

        step(
            4,
            "Verify: signature, structure and every hash, writing nothing",
        );
        let mut trust_set = TrustSet::default();
        trust_set.add(pk.clone(), pub_path.clone())?;
        let mut r = BundleReader::open(&b1)?;
        let head = r.read_head()?;
        let policy = Policy {
            trust: &trust_set,
            threshold: 1,
            channel: Some("default"),
            allow_expired: false,
            purpose: Purpose::Verify,
            now: SystemTime::now(),
        };
        verify_bundle(r, head, &policy, &b1, &NoProgress)?;
        eprintln!("    valid, signed by {}", pk.key_id);

        step(
            5,
            "Disconnected side: import into the mirror endpoints read",
        );
        self.import(&b1, &trust_set, &mirror, &state)?;
        eprintln!(
            "    {}/linux/production/arch_x86_64/updates.zip is now served",
            mirror.display()
        );

        step(
            6,
            "A newer release arrives; the previous one becomes n-1 (production_back)",
        );
        write_download_folder(&download, "1.1.24090.4", "1.419.200.0", 2)?;
        let b2 = bundles.join("demo-2.tar.zst");
        let m2 = self.export(&download, &sk, &export_state, &b2)?;
        self.import(&b2, &trust_set, &mirror, &state)?;
        eprintln!(
            "    definitions 1.419.100.0 -> 1.419.200.0 (sequence {})",
            m2.sequence
        );

        step(7, "Attacks are refused and change nothing");
        let b3 = bundles.join("demo-3.tar.zst");
        self.export(&download, &sk, &export_state, &b3)?;
        let tampered = bundles.join("demo-3-tampered.tar.zst");
        let mut bytes = std::fs::read(&b3)?;
        std::fs::remove_file(&b3)?;
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(&tampered, bytes)?;
        let refused = |b: &Path, what: &str| -> anyhow::Result<()> {
            let (report, err) = import::import(
                &self.import_opts(b, &trust_set, &mirror, &state),
                &NoProgress,
            );
            match (report.outcome, err) {
                (Outcome::Imported, _) | (_, None) => {
                    bail!("the demo expected {} to be refused", b.display())
                }
                (_, Some(e)) => {
                    eprintln!("    {what}: exit {}: {}", report.exit_code, e);
                    Ok(())
                }
            }
        };
        refused(&tampered, "a newer bundle with one flipped byte")?;
        write_download_folder(&download, "1.1.24090.4", "1.419.50.0", 3)?;
        let old = bundles.join("demo-older-definitions.tar.zst");
        self.export(&download, &sk, &export_state, &old)?;
        refused(
            &old,
            "a validly signed bundle with older definitions (a rollback)",
        )?;
        let (report, err) = import::import(
            &self.import_opts(&b1, &trust_set, &mirror, &state),
            &NoProgress,
        );
        if err.is_some() || report.outcome != Outcome::AlreadyImported {
            bail!("the demo expected a re-delivered demo-1 to be 'already imported'");
        }
        eprintln!("    demo-1 delivered again: already imported, nothing changes (exit 0)");

        let exe = std::env::current_exe()
            .ok()
            .filter(|p| !p.starts_with(std::env::current_dir().unwrap_or_default().join("target")))
            .map(|_| "gapferry".to_string())
            .unwrap_or_else(|| "cargo run --".to_string());
        eprintln!("\nDone. Try next:");
        eprintln!(
            "  {exe} inspect {} --trust {}",
            b2.display(),
            pub_path.display()
        );
        eprintln!(
            "  {exe} verify {} --trust {}",
            b2.display(),
            pub_path.display()
        );
        eprintln!("  {exe} ledger show --state-dir {}", state.display());
        eprintln!("  {exe} ledger verify --state-dir {}", state.display());
        eprintln!("  python3 -m http.server --directory {} 8080   # then offlineDefinitionUpdateUrl = http://HOST:8080/linux/production/", mirror.display());
        eprintln!("  by hand: zstd -dc {} | tar -t", b2.display());
        Ok(0)
    }

    fn export(
        &self,
        download: &Path,
        sk: &SecretKey,
        export_state: &Path,
        out: &Path,
    ) -> anyhow::Result<gapferry::manifest::Manifest> {
        let collected = gapferry::mde::collect::collect(download, &[], &[Ring::Production])?;
        let req = ExportRequest {
            collection: gapferry::mde::collect::to_collection(&collected),
            out: out.to_path_buf(),
            channel: "default".into(),
            expires_in: Duration::from_secs(30 * 86400),
            sequence_dir: export_state.to_path_buf(),
            sequence: None,
            producer: format!("gapferry {} (demo)", env!("CARGO_PKG_VERSION")),
            split: None,
            parity: 0,
            write: WriteOptions::default(),
        };
        let written = export::export(&req, std::slice::from_ref(sk), &NoProgress)?.written;
        Ok(written.manifest)
    }

    fn import_opts(
        &self,
        bundle: &Path,
        trust_set: &TrustSet,
        mirror: &Path,
        state: &Path,
    ) -> ImportOptions {
        ImportOptions {
            bundle: bundle.to_path_buf(),
            trust: trust_set.clone(),
            threshold: 1,
            target: Target::Mirror(mirror.to_path_buf()),
            state_dir: state.to_path_buf(),
            channel: "default".into(),
            only: Default::default(),
            allow_downgrade: false,
            allow_expired: false,
            lock_wait: Duration::from_secs(5),
            publish: PublishOptions::default(),
        }
    }

    fn import(
        &self,
        bundle: &Path,
        trust_set: &TrustSet,
        mirror: &Path,
        state: &Path,
    ) -> anyhow::Result<()> {
        let (report, err) = import::import(
            &self.import_opts(bundle, trust_set, mirror, state),
            &NoProgress,
        );
        if let Some(e) = err {
            return Err(e.into());
        }
        for s in &report.slots {
            let before = s
                .before
                .as_ref()
                .map(|v| v.definition_version.as_str())
                .unwrap_or("(none)");
            let after = s
                .after
                .as_ref()
                .map(|v| v.definition_version.as_str())
                .unwrap_or("");
            eprintln!("    {:<30} {before} -> {after}", s.slot);
        }
        Ok(())
    }
}
