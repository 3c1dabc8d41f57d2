//! `gapferry export`: pack a download folder into a signed bundle, and with
//! `--fetch` first bring that folder up to date (the whole online side in one
//! command). It owns the flags, the order of the steps (check everything,
//! load keys, fetch, export) and the human and `--json` output; it never
//! exports a folder that a failed fetch left behind upstream.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use gapferry::bundle::writer::WriteOptions;
use gapferry::export::{self, ExportRequest, Exported};
use gapferry::keys::SecretKey;
use gapferry::manifest::{self, Item};
use gapferry::mde::fetch::{FetchOptions, FetchPlan};
use gapferry::mde::{Platform, Ring};
use gapferry::sequence;
use gapferry::trustpolicy::{self, SignedPolicy};

use super::fetch::{self as fetch_cli, FetchSourceArgs};
use super::output::{print_json, Bar, ErrorJson};
use super::{password, UsageError};

/// Pack a download folder into a signed .tar.zst bundle.
///
/// Carries the current <platform>/<ring>/arch_<arch>/{updates.zip,manifest.json}
/// folders (never *_back), signs the manifest with every --secret-key, and
/// writes the bundle atomically (a temporary name in the same directory,
/// fsync, rename).
///
/// With --fetch it first runs `gapferry fetch` into the --from folder (same
/// flags as fetch, below); if any item fails it exits 1 without exporting,
/// so one cron line or systemd timer does the whole online side.
#[derive(Debug, Args)]
#[command(mut_group("FetchSourceArgs", |g| g.requires("fetch")))]
pub struct ExportArgs {
    /// The download folder (Microsoft's downloadFolder, or gapferry fetch's).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Secret key to sign with; repeat for several signers.
    #[arg(long = "secret-key", value_name = "FILE", required = true)]
    pub secret_keys: Vec<PathBuf>,
    /// Where to write the bundle (conventionally NAME.tar.zst).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Password of encrypted secret keys, first line of FILE (else prompted).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Channel: the air-gapped network or feed this bundle is for.
    #[arg(long, default_value = "default", value_name = "C")]
    pub channel: String,
    /// How long the bundle stays importable: 30d, 12h, 90m, 2w (at least 1m;
    /// 1y is 365.25 days).
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = gapferry::units::parse_lifetime)]
    pub expires_in: Duration,
    /// Only carry this platform (linux, mac); repeatable. `--platform
    /// windows` alone carries DIR/windows/<arch>/mpam-fe.exe instead, in a
    /// bundle of its own (profile "windows").
    #[arg(long = "platform", value_name = "P", value_parser = super::windows::platform_parser())]
    pub platforms: Vec<super::windows::PlatformSel>,
    /// Only carry this ring (production, preview); repeatable.
    #[arg(long = "ring", value_name = "R", value_parser = super::one_of(Ring::ALL, Ring::as_str))]
    pub rings: Vec<Ring>,
    /// Where the per-channel sequence counter lives [default: $GAPFERRY_STATE_DIR,
    /// /var/lib/gapferry as root, else ~/.local/state/gapferry].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Use this sequence number instead of the next one (must be above the last).
    #[arg(long, value_name = "N")]
    pub sequence: Option<u64>,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Split the bundle into volumes of at most SIZE bytes (650M, 4G, 2GiB;
    /// K/M/G are powers of 1000, Ki/Mi/Gi of 1024): writes OUT.001, OUT.002,
    /// ... and last a signed index OUT.volumes.json (with
    /// OUT.volumes.json.<KEYID>.minisig). `cat OUT.0* | zstd -d | tar -x`
    /// still reads it. For FAT32 sticks use at most 4G.
    #[arg(long, value_name = "SIZE", value_parser = gapferry::units::parse_size)]
    pub split: Option<u64>,
    /// With --split: also write K parity volumes OUT.p001 ... OUT.pK, listed
    /// in the signed index; verify, import and the inbox rebuild up to K
    /// missing or damaged volumes from them (`gapferry repair` writes them
    /// back). The data volumes stay exactly as without parity.
    #[arg(long, value_name = "K", requires = "split", value_parser = clap::value_parser!(u16).range(1..=999))]
    pub parity: Option<u16>,
    /// zstd compression level (low levels suit already-compressed zips).
    #[arg(long, default_value_t = 1, value_name = "LEVEL", allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-7..=19))]
    pub zstd_level: i32,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar, no summary on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// First fetch updates into --from as `gapferry fetch` does; export only
    /// if every item was fetched or already up to date (else exit 1).
    #[arg(long)]
    pub fetch: bool,
    /// Carry this signed trust policy in the bundle head: a policy file
    /// (one version, its root signatures beside it as FILE.<KEYID>.minisig)
    /// or a folder of 1.json, 2.json, ... (the newest 8 versions are
    /// carried, so a mirror that missed bundles can walk the chain).
    #[arg(long, value_name = "POLICY")]
    pub trust_policy: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Fetch options (with --fetch)")]
    pub fetch_source: FetchSourceArgs,
}

/// The `--json` summary of an export.
#[derive(Debug, Serialize)]
pub struct ExportSummary {
    pub bundle_path: PathBuf,
    /// Deprecated name of `bundle_path` (docs/JSON.md).
    pub bundle: PathBuf,
    pub bundle_id: String,
    pub channel: String,
    pub sequence: u64,
    pub created: String,
    pub expires: String,
    pub manifest_sha256: String,
    pub bundle_size: u64,
    pub payload_size: u64,
    pub signer_key_ids: Vec<String>,
    /// Deprecated name of `signer_key_ids` (docs/JSON.md).
    pub signers: Vec<String>,
    pub items: Vec<Item>,
    /// With --split: the index and the volumes, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitSummary>,
    /// The trust policy versions carried (`--trust-policy`), ascending.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_policy_versions: Vec<u64>,
}

/// The volumes of a split export (`--json`).
#[derive(Debug, Serialize)]
pub struct SplitSummary {
    pub index: PathBuf,
    pub volume_size: u64,
    pub volumes: Vec<VolumeSummary>,
    /// With --parity: the parity volumes, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parity: Vec<VolumeSummary>,
}

/// One volume of a split export (`--json`).
#[derive(Debug, Serialize)]
pub struct VolumeSummary {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// The `--json` document of `export --fetch`: the fetch report (the shape of
/// `gapferry fetch --json`) and the export summary, null when a failed fetch
/// stopped the export.
#[derive(Debug, Serialize)]
pub struct FetchExportSummary {
    pub fetch: fetch_cli::json::Report,
    pub export: Option<ExportSummary>,
}

/// The `--json` document of `export --fetch --platform windows`.
#[derive(Debug, Serialize)]
pub struct WinFetchExportSummary {
    pub fetch: super::windows::WinFetchJson,
    pub export: Option<ExportSummary>,
}

/// Loads a secret key, asking for its password when it is encrypted.
pub fn load_secret_key(path: &Path, password_file: Option<&Path>) -> anyhow::Result<SecretKey> {
    let text = SecretKey::read_text(path)?;
    let pw = if SecretKey::is_encrypted(&text, path)? {
        Some(match password_file {
            Some(f) => password::from_file(f)?,
            None => password::prompt(&format!("secret key {}", path.display()), false)?,
        })
    } else {
        None
    };
    Ok(SecretKey::parse(
        &text,
        path,
        pw.as_deref().map(Vec::as_slice),
    )?)
}

/// "1 volume OUT.001" or "3 volumes OUT.001 to OUT.003".
fn volumes_phrase(n: usize, out: &Path) -> String {
    let out = out.display();
    match n {
        1 => format!("1 volume {out}.001"),
        n => format!("{n} volumes {out}.001 to {out}.{n:03}"),
    }
}

/// Refuses an `--out` whose folder does not exist, naming the folder and
/// the fix (the writer would otherwise fail on its temporary file's name).
fn out_folder_exists(out: &Path) -> Result<(), UsageError> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(UsageError(format!(
            "--out {}: {} is not a folder; choose another --out",
            out.display(),
            dir.display()
        ))),
        Err(_) => Err(UsageError(format!(
            "--out {}: the folder {} does not exist; create it (mkdir -p {}) or choose another --out",
            out.display(),
            dir.display(),
            dir.display()
        ))),
    }
}

impl ExportArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        manifest::check_channel(&self.channel)
            .map_err(|e| UsageError(format!("--channel: {}", e.0)))?;
        // Before the password prompt: a typo in --out must not cost one.
        out_folder_exists(&self.out)?;
        let windows = super::windows::wants_windows(&self.platforms, "export")?;
        if windows && !self.rings.is_empty() {
            bail!(UsageError(
                "export --platform windows: Windows packages have no rings; leave out --ring"
                    .into()
            ));
        }
        let win_plan = if windows && self.fetch {
            Some(super::windows::plan(
                &self.fetch_source,
                self.from.clone(),
                gapferry::windows::WinArch::DEFAULT.to_vec(),
                "export --fetch",
            )?)
        } else {
            None
        };
        // The fetch plan (settings.json included) and the keys (passwords
        // included) are settled before the first download, so a typo or a
        // wrong password fails in a second, not after a gigabyte.
        let fetch_plan = if self.fetch {
            Some(self.fetch_plan()?)
        } else {
            None
        };
        let trust = self.load_trust_policy()?;
        let keys = self.load_keys()?;
        if windows {
            let Some(plan) = win_plan else {
                let summary = self.export_windows(&keys, &[], &trust)?;
                if self.json {
                    print_json(&summary, None)?;
                }
                return Ok(0);
            };
            let report = super::windows::execute(&plan, &self.fetch_source, self.quiet, self.json)?;
            let fetch = super::windows::WinFetchJson::new(&report);
            if report.failed() {
                eprintln!(
                    "gapferry: export --fetch: a Windows package failed to fetch, so nothing was exported and {} was not written; fix the cause above and run again",
                    self.out.display()
                );
                if self.json {
                    print_json(
                        &WinFetchExportSummary {
                            fetch,
                            export: None,
                        },
                        Some(ErrorJson::new(
                            "a Windows package failed to fetch, so nothing was exported".into(),
                            1,
                        )),
                    )?;
                }
                return Ok(1);
            }
            // Carry what this run fetched, not stale folders of other arches.
            let summary = self.export_windows(&keys, &plan.arches, &trust)?;
            if self.json {
                print_json(
                    &WinFetchExportSummary {
                        fetch,
                        export: Some(summary),
                    },
                    None,
                )?;
            }
            return Ok(0);
        }
        let Some(plan) = fetch_plan else {
            let summary = self.export(
                &keys,
                &super::windows::mde_platforms(&self.platforms),
                &self.rings,
                &trust,
            )?;
            if self.json {
                print_json(&summary, None)?;
            }
            return Ok(0);
        };

        let report =
            fetch_cli::execute(&plan, self.quiet, self.json, self.fetch_source.log_format)?;
        let fetch_json = fetch_cli::json::Report::new(&report);
        if report.failed() {
            // Said even with --quiet or --json: cron and systemd must see
            // why no bundle appeared.
            let msg = format!(
                "export --fetch: {} of {} fetch items failed, so nothing was exported and {} was not written; fix the cause above and run again",
                report.count_failed(),
                report.items.len(),
                self.out.display()
            );
            eprintln!("gapferry: {msg}");
            if self.json {
                print_json(
                    &FetchExportSummary {
                        fetch: fetch_json,
                        export: None,
                    },
                    Some(ErrorJson::new(msg, 1)),
                )?;
            }
            return Ok(1);
        }
        // Carry what this run fetched: the platforms and rings of the plan
        // (settings.json may have chosen them), not stale folders of others.
        let mut platforms: Vec<Platform> = Vec::new();
        let mut rings: Vec<Ring> = Vec::new();
        for slot in &plan.slots {
            if !platforms.contains(&slot.platform) {
                platforms.push(slot.platform);
            }
            if !rings.contains(&slot.ring) {
                rings.push(slot.ring);
            }
        }
        let summary = self.export(&keys, &platforms, &rings, &trust)?;
        if self.json {
            print_json(
                &FetchExportSummary {
                    fetch: fetch_json,
                    export: Some(summary),
                },
                None,
            )?;
        }
        Ok(0)
    }

    /// The fetch `--fetch` runs: into `--from`, narrowed by `--platform`
    /// and `--ring`, with the fetch flags.
    fn fetch_plan(&self) -> anyhow::Result<FetchPlan> {
        Ok(FetchPlan::from_options(&FetchOptions {
            download_folder: Some(self.from.clone()),
            platforms: super::windows::mde_platforms(&self.platforms),
            rings: self.rings.clone(),
            ..self.fetch_source.options()
        })?)
    }

    /// `--trust-policy`, read and checked: every version carries the root
    /// signatures the chain rule asks for.
    fn load_trust_policy(&self) -> anyhow::Result<Vec<SignedPolicy>> {
        let Some(path) = &self.trust_policy else {
            return Ok(Vec::new());
        };
        let chain = trustpolicy::files::read_chain(path)?;
        trustpolicy::chain::check_carried(&chain).map_err(|reason| {
            UsageError(format!(
                "--trust-policy {}: {reason}; have the root key holders sign it with `gapferry trust sign` first",
                path.display()
            ))
        })?;
        Ok(chain)
    }

    fn load_keys(&self) -> anyhow::Result<Vec<SecretKey>> {
        let mut keys = Vec::new();
        for p in &self.secret_keys {
            let k = load_secret_key(p, self.password_file.as_deref())?;
            if keys.iter().any(|x: &SecretKey| x.key_id == k.key_id) {
                bail!(UsageError(format!(
                    "{} is the same key ({}) as another --secret-key",
                    p.display(),
                    k.key_id
                )));
            }
            keys.push(k);
        }
        Ok(keys)
    }

    /// Collects `--from` (only `platforms` and `rings`, all when empty),
    /// writes and signs the bundle, and tells people about it on stderr.
    fn export(
        &self,
        keys: &[SecretKey],
        platforms: &[Platform],
        rings: &[Ring],
        trust: &[SignedPolicy],
    ) -> anyhow::Result<ExportSummary> {
        if let Some(newest) = trust.last() {
            let (set, _) = newest
                .policy
                .signer_trust(&self.channel, std::time::SystemTime::now());
            let listed = keys.iter().filter(|k| set.get(&k.key_id).is_some()).count();
            if listed < newest.policy.signers.threshold && !self.quiet {
                eprintln!(
                    "gapferry: warning: trust policy version {} counts {listed} of this export's --secret-key keys for channel {:?}, {} required: mirrors following it will refuse this bundle",
                    newest.version(),
                    gapferry::text::Esc(&self.channel),
                    newest.policy.signers.threshold
                );
            }
        }
        let collected = gapferry::mde::collect::collect(&self.from, platforms, rings)?;
        let lines = collected
            .iter()
            .map(|c| {
                format!(
                    "  {:<28} engine {:<14} definitions {}",
                    c.slot.rel(),
                    gapferry::text::Esc(&c.versions.engine_version.to_string()),
                    gapferry::text::Esc(&c.versions.definition_version.to_string())
                )
            })
            .collect();
        self.write_bundle(
            keys,
            gapferry::mde::collect::to_collection(&collected),
            lines,
            trust,
        )
    }

    /// `--platform windows`: collects and checks DIR/windows/<arch>/mpam-fe.exe.
    fn export_windows(
        &self,
        keys: &[SecretKey],
        arches: &[gapferry::windows::WinArch],
        trust: &[SignedPolicy],
    ) -> anyhow::Result<ExportSummary> {
        let collected = gapferry::windows::collect::collect(&self.from, arches)?;
        let lines = collected
            .iter()
            .map(|c| {
                format!(
                    "  {:<28} version {:<14} signed by {}",
                    c.arch.rel(),
                    gapferry::text::Esc(&c.version),
                    gapferry::text::Esc(c.signer.as_deref().unwrap_or("(signer not named)"))
                )
            })
            .collect();
        self.write_bundle(
            keys,
            gapferry::windows::collect::to_collection(&collected),
            lines,
            trust,
        )
    }

    /// Writes and signs the bundle of `collection`, and tells people about
    /// it on stderr (`lines`: one per carried unit).
    fn write_bundle(
        &self,
        keys: &[SecretKey],
        collection: gapferry::profile::Collection,
        lines: Vec<String>,
        trust: &[SignedPolicy],
    ) -> anyhow::Result<ExportSummary> {
        let req = ExportRequest {
            collection,
            out: self.out.clone(),
            channel: self.channel.clone(),
            expires_in: self.expires_in,
            sequence_dir: self
                .state_dir
                .clone()
                .unwrap_or_else(sequence::default_state_dir),
            sequence: self.sequence,
            producer: format!("gapferry {}", env!("CARGO_PKG_VERSION")),
            split: self.split,
            parity: self.parity.map_or(0, usize::from),
            write: WriteOptions {
                level: self.zstd_level,
                overwrite: self.force,
                ..WriteOptions::default()
            },
            trust: trust.to_vec(),
        };
        let bar = Bar::new(self.quiet || self.json);
        let Exported { written, split } = export::export(&req, keys, &bar)?;
        let split = split.zip(self.split).map(|(w, size)| SplitSummary {
            index: w.index_path.clone(),
            volume_size: size,
            volumes: w
                .volume_paths
                .iter()
                .zip(&w.index.volumes)
                .map(|(p, v)| VolumeSummary {
                    path: p.clone(),
                    size: v.size,
                    sha256: v.sha256.clone(),
                })
                .collect(),
            parity: w
                .parity_paths
                .iter()
                .zip(w.index.parity.iter().flat_map(|p| &p.volumes))
                .map(|(p, v)| VolumeSummary {
                    path: p.clone(),
                    size: v.size,
                    sha256: v.sha256.clone(),
                })
                .collect(),
        });
        let m = &written.manifest;
        if !self.quiet && !self.json {
            let what = match &split {
                None => self.out.display().to_string(),
                Some(sp) if sp.parity.is_empty() => format!(
                    "{} and index {}",
                    volumes_phrase(sp.volumes.len(), &self.out),
                    sp.index.display()
                ),
                Some(sp) => format!(
                    "{}, {} parity volume{} {}.p001{} and index {}",
                    volumes_phrase(sp.volumes.len(), &self.out),
                    sp.parity.len(),
                    if sp.parity.len() == 1 { "" } else { "s" },
                    self.out.display(),
                    if sp.parity.len() == 1 {
                        String::new()
                    } else {
                        format!(" to .p{:03}", sp.parity.len())
                    },
                    sp.index.display()
                ),
            };
            eprintln!(
                "gapferry: wrote {what} ({} bytes): bundle {} channel {} sequence {}, expires {}",
                written.bundle_size,
                gapferry::text::Esc(m.bundle_id.as_str()),
                gapferry::text::Esc(&m.channel),
                m.sequence,
                gapferry::text::Esc(m.expires.as_str())
            );
            for line in &lines {
                eprintln!("{line}");
            }
            eprintln!(
                "  signed by {}",
                keys.iter()
                    .map(|k| k.key_id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(ExportSummary {
            bundle_path: self.out.clone(),
            bundle: self.out.clone(),
            bundle_id: m.bundle_id.to_string(),
            channel: m.channel.clone(),
            sequence: m.sequence,
            created: m.created.to_string(),
            expires: m.expires.to_string(),
            manifest_sha256: written.manifest_sha256.to_string(),
            bundle_size: written.bundle_size,
            payload_size: m.total_size(),
            signer_key_ids: keys.iter().map(|k| k.key_id.to_string()).collect(),
            signers: keys.iter().map(|k| k.key_id.to_string()).collect(),
            items: m.items.clone(),
            split,
            trust_policy_versions: trust.iter().map(SignedPolicy::version).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_counted_in_words() {
        let out = Path::new("b.tar.zst");
        assert_eq!(volumes_phrase(1, out), "1 volume b.tar.zst.001");
        assert_eq!(
            volumes_phrase(3, out),
            "3 volumes b.tar.zst.001 to b.tar.zst.003"
        );
    }
}
