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
use gapferry::mirror::import::{self, ImportOptions, ImportReport, Target};
use gapferry::mirror::ledger::Outcome;
use gapferry::mirror::publish::PublishOptions;
use gapferry::mirror::rollback::{self, RollbackOptions};
use gapferry::mirror::status;
use gapferry::progress::NoProgress;
use gapferry::timestamp::Timestamp;
use gapferry::trustpolicy::{files, Roots, SignedPolicy, SignerKey, TrustPolicy};
use gapferry::verify::{verify_bundle, Policy, Purpose};

use super::UsageError;

/// Run the whole journey on fake data: download folder, key, export,
/// verify, import into a mirror with a receipt, a second release with n-1,
/// attacks being refused, status, a rollback and roll forward, and a key
/// rotation through a signed trust policy.
///
/// Everything is written under DIR (re-running replaces an earlier demo
/// there), the story on stdout. Nothing here is a real Defender update. It
/// ends with commands to try next, runnable as printed.
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

/// The demo's folders, key and trust, shared by its steps.
struct Demo {
    abs: PathBuf,
    download: PathBuf,
    older: PathBuf,
    bundles: PathBuf,
    mirror: PathBuf,
    state: PathBuf,
    export_state: PathBuf,
    key_path: PathBuf,
    pub_path: PathBuf,
    sk: SecretKey,
    trust: TrustSet,
}

/// One line of the story on stdout; a closed pipe (`gapferry demo | head`)
/// ends the demo quietly instead of a panic of `println!`.
macro_rules! say {
    ($($t:tt)*) => {
        writeln!(std::io::stdout().lock(), $($t)*)?
    };
}

/// The story goes to stdout (`gapferry demo | less`); errors to stderr.
fn step(n: u32, text: &str) -> std::io::Result<()> {
    say!("\n[{n}] {text}");
    Ok(())
}

/// How to run this very binary from the current folder: `gapferry` when
/// that is it on PATH, `cargo run --` in the checkout it was run from by
/// cargo, else its absolute path.
fn runnable() -> String {
    let Ok(exe) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "gapferry".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .filter_map(|d| d.join("gapferry").canonicalize().ok())
            .next()
            .is_some_and(|found| found == exe)
    });
    if on_path {
        return "gapferry".into();
    }
    let cwd = std::env::current_dir().and_then(|d| d.canonicalize()).ok();
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").and_then(|d| PathBuf::from(d).canonicalize().ok());
    if manifest_dir.is_some() && manifest_dir == cwd {
        return "cargo run --".into();
    }
    sh_quote(&exe)
}

/// A path as one shell word.
fn sh_quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Writes a fresh unencrypted key pair `<dir>/<name>.{key,pub}` (demo only).
fn demo_key(keys_dir: &Path, name: &str) -> anyhow::Result<SecretKey> {
    use std::os::unix::fs::OpenOptionsExt;
    let sk = SecretKey::generate();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(keys_dir.join(format!("{name}.key")))?;
    f.write_all(sk.to_file_text(None).as_bytes())?;
    std::fs::write(
        keys_dir.join(format!("{name}.pub")),
        sk.public().to_file_text(),
    )?;
    Ok(sk)
}

/// Writes `<dir>/<version>.json` and one root signature beside it per key.
fn write_signed(
    dir: &Path,
    policy: &TrustPolicy,
    roots: &[&SecretKey],
) -> anyhow::Result<SignedPolicy> {
    let path = dir.join(format!("{}.json", policy.version));
    files::write_policy(&path, &policy.to_bytes())?;
    let mut signed =
        SignedPolicy::parse(policy.to_bytes()).map_err(|r| anyhow::anyhow!("demo policy: {r}"))?;
    for r in roots {
        let sig = signed.sign(r);
        files::write_signature(&path, &sig)?;
        signed
            .add_signature(sig)
            .map_err(|r| anyhow::anyhow!("demo policy: {r}"))?;
    }
    Ok(signed)
}

impl DemoArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        let abs = self.prepare()?;
        say!(
            "gapferry demo: everything below happens in {} with FAKE updates.",
            abs.display()
        );
        let d = Demo::key(abs)?;
        d.download_folder()?;
        let b1 = d.export_first()?;
        d.verify(&b1)?;
        d.import_first(&b1)?;
        let b2 = d.newer_release()?;
        d.attacks(&b1)?;
        d.status()?;
        d.rollback_and_forward()?;
        d.rotation()?;
        d.windows()?;
        d.next_release()?;
        d.try_next(&b2)?;
        Ok(0)
    }

    /// Makes DIR (clearing an earlier demo there) and returns it absolute.
    fn prepare(&self) -> anyhow::Result<PathBuf> {
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
        Ok(std::path::absolute(dir)?)
    }
}

impl Demo {
    /// Step 2 comes first in code: every later step needs the key.
    fn key(abs: PathBuf) -> anyhow::Result<Demo> {
        let keys_dir = abs.join("keys");
        let bundles = abs.join("bundles");
        let mirror = abs.join("mirror");
        for d in [&keys_dir, &bundles, &mirror] {
            std::fs::create_dir_all(d)?;
        }
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
        let mut trust = TrustSet::default();
        trust.add(pk, pub_path.clone())?;
        Ok(Demo {
            download: abs.join("download"),
            older: abs.join("download-older"),
            state: abs.join("state"),
            export_state: abs.join("export-state"),
            abs,
            bundles,
            mirror,
            key_path,
            pub_path,
            sk,
            trust,
        })
    }

    fn download_folder(&self) -> anyhow::Result<()> {
        step(
            1,
            "Online side: a download folder as Microsoft's script leaves it",
        )?;
        write_download_folder(&self.download, "1.1.24090.4", "1.419.100.0", 1)?;
        say!(
            "    {}/<linux|mac>/production/arch_<x86_64|arm64>/{{updates.zip,manifest.json}}",
            self.download.display()
        );
        step(2, "A throwaway signing key (minisign format)")?;
        say!(
            "    key {} -> {} (secret, unencrypted: demo only) and {}",
            self.sk.key_id,
            self.key_path.display(),
            self.pub_path.display()
        );
        Ok(())
    }

    fn export_first(&self) -> anyhow::Result<PathBuf> {
        step(3, "Export: a signed .tar.zst bundle")?;
        let b1 = self.bundles.join("demo-1.tar.zst");
        let m1 = self.export(&self.download, &b1)?;
        say!(
            "    {} (sequence {}, {} files)",
            b1.display(),
            m1.sequence,
            m1.files.len()
        );
        Ok(b1)
    }

    fn verify(&self, b1: &Path) -> anyhow::Result<()> {
        step(
            4,
            "Verify: signature, structure and every hash, writing nothing",
        )?;
        let mut r = BundleReader::open(b1)?;
        let head = r.read_head()?;
        let policy = Policy {
            trust: &self.trust,
            threshold: 1,
            channel: Some("default"),
            allow_expired: false,
            purpose: Purpose::Verify,
            now: SystemTime::now(),
            roots: None,
        };
        verify_bundle(r, head, &policy, b1, &NoProgress)?;
        say!("    valid, signed by {}", self.sk.key_id);
        Ok(())
    }

    fn import_first(&self, b1: &Path) -> anyhow::Result<()> {
        step(
            5,
            "Disconnected side: import into the mirror endpoints read",
        )?;
        let report = self.import(b1)?;
        say!(
            "    {}/linux/production/arch_x86_64/updates.zip is now served",
            self.mirror.display()
        );
        if let Some(r) = &report.receipt {
            say!(
                "    receipt {r}: read it back to the online side, where `{} inspect {} --receipt {r}` says it matches",
                runnable(),
                sh_quote(b1)
            );
        }
        say!(
            "    every attempt is in the ledger in {}",
            self.state.display()
        );
        Ok(())
    }

    fn newer_release(&self) -> anyhow::Result<PathBuf> {
        step(
            6,
            "A newer release arrives; the previous one becomes n-1 (production_back)",
        )?;
        write_download_folder(&self.download, "1.1.24090.4", "1.419.200.0", 2)?;
        let b2 = self.bundles.join("demo-2.tar.zst");
        let m2 = self.export(&self.download, &b2)?;
        self.import(&b2)?;
        say!(
            "    definitions 1.419.100.0 -> 1.419.200.0 (sequence {})",
            m2.sequence
        );
        Ok(b2)
    }

    fn attacks(&self, b1: &Path) -> anyhow::Result<()> {
        step(7, "Attacks are refused and change nothing")?;
        let b3 = self.bundles.join("demo-3.tar.zst");
        self.export(&self.download, &b3)?;
        let tampered = self.bundles.join("demo-3-tampered.tar.zst");
        let mut bytes = std::fs::read(&b3)?;
        std::fs::remove_file(&b3)?;
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(&tampered, bytes)?;
        self.refused(&tampered, "a newer bundle with one flipped byte")?;
        // The older release is built in a folder of its own, so download/
        // never holds a set the next import would refuse.
        write_download_folder(&self.older, "1.1.24090.4", "1.419.50.0", 3)?;
        let old = self.bundles.join("demo-older-definitions.tar.zst");
        self.export(&self.older, &old)?;
        self.refused(
            &old,
            "a validly signed bundle with older definitions (a rollback)",
        )?;
        let (report, err) = import::import(&self.import_opts(b1), &NoProgress);
        if err.is_some() || report.outcome != Outcome::AlreadyImported {
            bail!("the demo expected a re-delivered demo-1 to be 'already imported'");
        }
        say!("    demo-1 delivered again: already imported, nothing changes (exit 0)");
        Ok(())
    }

    fn refused(&self, b: &Path, what: &str) -> anyhow::Result<()> {
        let (report, err) = import::import(&self.import_opts(b), &NoProgress);
        match (report.outcome, err) {
            (Outcome::Imported, _) | (_, None) => {
                bail!("the demo expected {} to be refused", b.display())
            }
            (_, Some(e)) => {
                say!("    {what}: exit {}: {}", report.exit_code, e);
                Ok(())
            }
        }
    }

    fn status(&self) -> anyhow::Result<()> {
        step(
            8,
            "Status: what each folder serves, checked against the import",
        )?;
        let st = status::status(&self.mirror, &self.state, true)?;
        for s in &st.slots {
            say!(
                "    {:<30} definitions {}, files {}, n-1 {}",
                s.slot,
                s.definition_version.as_deref().unwrap_or("-"),
                match s.files_match {
                    Some(true) => "match the import",
                    Some(false) => "DIFFER from the import",
                    None => "unchecked",
                },
                s.back_definition_version.as_deref().unwrap_or("none"),
            );
        }
        say!(
            "    {}",
            if st.problems {
                "problems found (gapferry status exits 1)"
            } else {
                "healthy (gapferry status exits 0)"
            }
        );
        Ok(())
    }

    fn rollback_and_forward(&self) -> anyhow::Result<()> {
        step(
            9,
            "Rollback: serve n-1 again in one step, then roll forward",
        )?;
        let slots: Vec<_> = Arch::ALL
            .iter()
            .map(|&arch| {
                let slot = Slot {
                    platform: Platform::Linux,
                    ring: Ring::Production,
                    arch,
                };
                (slot.key(), slot.placement())
            })
            .collect();
        for what in ["rolled back", "rolled forward"] {
            let report = rollback::rollback(&RollbackOptions {
                mirror: self.mirror.clone(),
                target: false,
                state_dir: self.state.clone(),
                slots: slots.clone(),
                profile: &mde::profile::Mde,
                lock_wait: Duration::from_secs(5),
                publish: PublishOptions::default(),
                force: false,
                s3: None,
            })?;
            for s in &report.slots {
                let v = |x: &Option<gapferry::mirror::ledger::Versions>| {
                    x.as_ref()
                        .map(|v| v.definition_version.clone())
                        .unwrap_or_else(|| "?".into())
                };
                say!(
                    "    {:<30} {what}: definitions {} -> {}",
                    s.slot,
                    v(&s.before),
                    v(&s.after)
                );
            }
        }
        Ok(())
    }

    /// Step 11: fake signed packages in `download/windows/<arch>/`, exported
    /// as a `windows` bundle and imported into the mirror and a share folder.
    fn windows(&self) -> anyhow::Result<()> {
        use gapferry::windows::{collect, pe_fake::FakePackage, WinArch};
        step(
            11,
            "Windows endpoints: mpam-fe.exe packages in their own bundle, for a file share",
        )?;
        for &arch in WinArch::DEFAULT {
            let dir = self.download.join(arch.rel());
            std::fs::create_dir_all(&dir)?;
            let mut p = FakePackage::signed(arch, [1, 419, 200, 0]);
            p.signer = Some("GAPFERRY DEMO - NOT MICROSOFT".into());
            p.filler = 256 * 1024;
            std::fs::write(dir.join(gapferry::windows::MPAM_FE), p.build())?;
        }
        let collected = collect::collect(&self.download, &[])?;
        let out = self.bundles.join("demo-windows-1.tar.zst");
        self.export_collection(
            collect::to_collection(&collected),
            &self.sk,
            &out,
            Vec::new(),
        )?;
        say!("    {} (profile windows, x64 and x86)", out.display());
        self.import(&out)?;
        let share = self.abs.join("share");
        std::fs::create_dir_all(&share)?;
        let opts = ImportOptions {
            target: Target::Ring(share.clone()),
            state_dir: self.abs.join("share-state"),
            ..self.import_opts(&out)
        };
        let (_, err) = import::import(&opts, &NoProgress);
        if let Some(e) = err {
            return Err(e.into());
        }
        say!(
            "    {}/x64/mpam-fe.exe is what \\\\server\\share\\x64\\mpam-fe.exe serves; \
             `{} endpoint-config --platform windows --share '\\\\server\\share'` prints the client settings",
            share.display(),
            runnable()
        );
        Ok(())
    }

    /// Leaves the next release in download/, newer than what is served, so
    /// the commands printed next carry it through as an operator would.
    fn next_release(&self) -> anyhow::Result<()> {
        write_download_folder(&self.download, "1.1.24090.4", "1.419.300.0", 4)?;
        Ok(())
    }

    fn try_next(&self, b2: &Path) -> anyhow::Result<()> {
        let exe = runnable();
        let q = |p: &Path| sh_quote(p);
        let next = self.bundles.join("demo-next.tar.zst");
        say!(
            "\nDone. {} holds the next release (definitions 1.419.300.0). Try next:",
            self.download.display()
        );
        say!(
            "  {exe} export --from {} --secret-key {} --state-dir {} --out {}",
            q(&self.download),
            q(&self.key_path),
            q(&self.export_state),
            q(&next)
        );
        say!(
            "  {exe} import {} --trust {} --mirror {} --state-dir {}",
            q(&next),
            q(&self.pub_path),
            q(&self.mirror),
            q(&self.state)
        );
        say!(
            "  {exe} status --mirror {} --state-dir {}",
            q(&self.mirror),
            q(&self.state)
        );
        say!(
            "  {exe} rollback --mirror {} --state-dir {} --platform linux --ring production",
            q(&self.mirror),
            q(&self.state)
        );
        say!("  {exe} ledger show --state-dir {}", q(&self.state));
        say!("  {exe} inspect {} --trust {}", q(b2), q(&self.pub_path));
        say!(
            "  python3 -m http.server --directory {} 8080   # then offlineDefinitionUpdateUrl = http://HOST:8080/linux/production/",
            q(&self.mirror)
        );
        say!("  by hand: zstd -dc {} | tar -t", q(b2));
        say!(
            "  (everything is in {}; delete it when done)",
            self.abs.display()
        );
        Ok(())
    }

    fn export(&self, download: &Path, out: &Path) -> anyhow::Result<gapferry::manifest::Manifest> {
        self.export_with(download, &self.sk, out, Vec::new())
    }

    fn export_with(
        &self,
        download: &Path,
        sk: &SecretKey,
        out: &Path,
        trust: Vec<SignedPolicy>,
    ) -> anyhow::Result<gapferry::manifest::Manifest> {
        let collected = gapferry::mde::collect::collect(download, &[], &[Ring::Production])?;
        self.export_collection(
            gapferry::mde::collect::to_collection(&collected),
            sk,
            out,
            trust,
        )
    }

    fn export_collection(
        &self,
        collection: gapferry::profile::Collection,
        sk: &SecretKey,
        out: &Path,
        trust: Vec<SignedPolicy>,
    ) -> anyhow::Result<gapferry::manifest::Manifest> {
        let req = ExportRequest {
            collection,
            out: out.to_path_buf(),
            channel: "default".into(),
            expires_in: Duration::from_secs(30 * 86400),
            sequence_dir: self.export_state.clone(),
            sequence: None,
            producer: format!("gapferry {} (demo)", env!("CARGO_PKG_VERSION")),
            split: None,
            write: WriteOptions::default(),
            trust,
            parity: 0,
        };
        let written = export::export(&req, std::slice::from_ref(sk), &NoProgress)?.written;
        Ok(written.manifest)
    }

    /// Step 10: a second mirror, pinned to two offline root keys, follows a
    /// signed trust policy; a rotation to a new signing key travels in a
    /// bundle, and the old key's bundles are refused from then on. It has
    /// folders of its own so the first mirror keeps taking `--trust`.
    fn rotation(&self) -> anyhow::Result<()> {
        step(
            10,
            "Rotation without visiting the mirror: offline roots and a signed trust policy",
        )?;
        let dir = self.abs.join("rotation");
        let (keys_dir, policy_dir, download) =
            (dir.join("keys"), dir.join("policy"), dir.join("download"));
        let (mirror, state) = (dir.join("mirror"), dir.join("state"));
        for d in [&keys_dir, &policy_dir, &mirror] {
            std::fs::create_dir_all(d)?;
        }
        let r1 = demo_key(&keys_dir, "root-1")?;
        let r2 = demo_key(&keys_dir, "root-2")?;
        let expires = Timestamp::from_time(SystemTime::now() + Duration::from_secs(365 * 86400));
        let v1 = TrustPolicy::initial(
            &[r1.public(), r2.public()],
            2,
            &[self.sk.public()],
            1,
            expires,
        );
        let signed_v1 = write_signed(&policy_dir, &v1, &[&r1, &r2])?;
        say!(
            "    {}/1.json: roots {} and {} (2 of 2, kept offline), signer {}",
            policy_dir.display(),
            r1.key_id,
            r2.key_id,
            self.sk.key_id
        );
        let pins = Roots {
            keys: vec![r1.public(), r2.public()],
            threshold: 2,
        };
        let opts = |b: &Path| ImportOptions {
            trust: TrustSet::default(),
            roots: Some(pins.clone()),
            target: Target::Mirror(mirror.clone()),
            state_dir: state.clone(),
            ..self.import_opts(b)
        };
        write_download_folder(&download, "1.1.24090.4", "1.419.300.0", 4)?;
        let b4 = dir.join("demo-4.tar.zst");
        self.export_with(&download, &self.sk, &b4, vec![signed_v1.clone()])?;
        let (report, err) = import::import(&opts(&b4), &NoProgress);
        if let Some(e) = err {
            return Err(e.into());
        }
        say!(
            "    demo-4 carries it; a mirror pinned to the two roots adopts version {}",
            report.trust_policy.map(|t| t.version).unwrap_or(0)
        );

        let new_key = demo_key(&keys_dir, "demo-2027")?;
        let mut v2 = v1.clone();
        v2.version = 2;
        v2.signers.keys = vec![SignerKey {
            key: new_key.public().to_base64(),
            channels: None,
            not_after: None,
        }];
        v2.revoked = vec![self.sk.key_id];
        let signed_v2 = write_signed(&policy_dir, &v2, &[&r1, &r2])?;
        say!(
            "    policy/2.json: signer {} replaces {} (revoked), signed offline by both roots",
            new_key.key_id,
            self.sk.key_id
        );
        write_download_folder(&download, "1.1.24090.4", "1.419.400.0", 5)?;
        let b5 = dir.join("demo-5.tar.zst");
        self.export_with(&download, &new_key, &b5, vec![signed_v1, signed_v2])?;
        let (report, err) = import::import(&opts(&b5), &NoProgress);
        if let Some(e) = err {
            return Err(e.into());
        }
        say!(
            "    demo-5, signed by the new key, carries the chain: version {} adopted, definitions 1.419.400.0 served",
            report.trust_policy.map(|t| t.version).unwrap_or(0)
        );
        write_download_folder(&download, "1.1.24090.4", "1.419.500.0", 6)?;
        let b6 = dir.join("demo-6-old-key.tar.zst");
        self.export_with(&download, &self.sk, &b6, Vec::new())?;
        let (report, err) = import::import(&opts(&b6), &NoProgress);
        match err {
            None => bail!("the demo expected the revoked key's bundle to be refused"),
            Some(e) => say!(
                "    a bundle signed by the revoked key: exit {}: {e}",
                report.exit_code
            ),
        }
        say!(
            "    `{} trust show --state-dir {}` shows the adopted policy",
            runnable(),
            sh_quote(&state)
        );
        Ok(())
    }

    fn import_opts(&self, bundle: &Path) -> ImportOptions {
        ImportOptions {
            bundle: bundle.to_path_buf(),
            trust: self.trust.clone(),
            threshold: 1,
            target: Target::Mirror(self.mirror.clone()),
            state_dir: self.state.clone(),
            channel: "default".into(),
            only: Default::default(),
            allow_downgrade: false,
            allow_expired: false,
            lock_wait: Duration::from_secs(5),
            publish: PublishOptions::default(),
            roots: None,
            allow_expired_policy: false,
        }
    }

    fn import(&self, bundle: &Path) -> anyhow::Result<ImportReport> {
        let (report, err) = import::import(&self.import_opts(bundle), &NoProgress);
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
            say!("    {:<30} {before} -> {after}", s.slot);
        }
        Ok(report)
    }
}
