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

use gapferry::bundle::volumes;
use gapferry::bundle::writer::WriteOptions;
use gapferry::export::{self, ExportRequest, Exported};
use gapferry::keys::SecretKey;
use gapferry::manifest::{self, Item};
use gapferry::mde::fetch::{FetchOptions, FetchPlan};
use gapferry::mde::{Platform, Ring};
use gapferry::sequence;

use super::fetch::{self as fetch_cli, FetchSourceArgs};
use super::output::{print_json, Bar};
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
    #[arg(long, default_value = "default")]
    pub channel: String,
    /// How long the bundle stays importable (e.g. 30d, 12h).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub expires_in: Duration,
    /// Only carry this platform (linux, mac); repeatable.
    #[arg(long = "platform", value_name = "P", value_parser = clap::value_parser!(Platform))]
    pub platforms: Vec<Platform>,
    /// Only carry this ring (production, preview); repeatable.
    #[arg(long = "ring", value_name = "R", value_parser = clap::value_parser!(Ring))]
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
    #[arg(long, value_name = "SIZE", value_parser = volumes::parse_size)]
    pub split: Option<u64>,
    /// With --split: also write K parity volumes OUT.p001 ... OUT.pK, listed
    /// in the signed index; verify, import and the inbox rebuild up to K
    /// missing or damaged volumes from them (`gapferry repair` writes them
    /// back). The data volumes stay exactly as without parity.
    #[arg(long, value_name = "K", requires = "split", value_parser = clap::value_parser!(u16).range(1..=999))]
    pub parity: Option<u16>,
    /// zstd compression level (low levels suit already-compressed zips).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-7..=19))]
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
    #[command(flatten, next_help_heading = "Fetch options (with --fetch)")]
    pub fetch_source: FetchSourceArgs,
}

/// The `--json` summary of an export.
#[derive(Debug, Serialize)]
pub struct ExportSummary {
    pub bundle: PathBuf,
    pub bundle_id: String,
    pub channel: String,
    pub sequence: u64,
    pub created: String,
    pub expires: String,
    pub manifest_sha256: String,
    pub bundle_size: u64,
    pub payload_size: u64,
    pub signers: Vec<String>,
    pub items: Vec<Item>,
    /// With --split: the index and the volumes, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitSummary>,
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

impl ExportArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        manifest::check_channel(&self.channel)
            .map_err(|e| UsageError(format!("--channel: {}", e.0)))?;
        if self.expires_in < Duration::from_secs(60) {
            bail!(UsageError("--expires-in must be at least 1m".into()));
        }
        // The fetch plan (settings.json included) and the keys (passwords
        // included) are settled before the first download, so a typo or a
        // wrong password fails in a second, not after a gigabyte.
        let fetch_plan = if self.fetch {
            Some(self.fetch_plan()?)
        } else {
            None
        };
        let keys = self.load_keys()?;
        let Some(plan) = fetch_plan else {
            let summary = self.export(&keys, &self.platforms, &self.rings)?;
            if self.json {
                print_json(&summary)?;
            }
            return Ok(0);
        };

        let report = fetch_cli::execute(&plan, self.quiet, self.json)?;
        let fetch_json = fetch_cli::json::Report::new(&report);
        if report.failed() {
            // Said even with --quiet or --json: cron and systemd must see
            // why no bundle appeared.
            eprintln!(
                "gapferry: export --fetch: {} of {} fetch items failed, so nothing was exported and {} was not written; fix the cause above and run again",
                report.count_failed(),
                report.items.len(),
                self.out.display()
            );
            if self.json {
                print_json(&FetchExportSummary {
                    fetch: fetch_json,
                    export: None,
                })?;
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
        let summary = self.export(&keys, &platforms, &rings)?;
        if self.json {
            print_json(&FetchExportSummary {
                fetch: fetch_json,
                export: Some(summary),
            })?;
        }
        Ok(0)
    }

    /// The fetch `--fetch` runs: into `--from`, narrowed by `--platform`
    /// and `--ring`, with the fetch flags.
    fn fetch_plan(&self) -> anyhow::Result<FetchPlan> {
        Ok(FetchPlan::from_options(&FetchOptions {
            download_folder: Some(self.from.clone()),
            platforms: self.platforms.clone(),
            rings: self.rings.clone(),
            ..self.fetch_source.options()
        })?)
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
    ) -> anyhow::Result<ExportSummary> {
        let collected = gapferry::mde::collect::collect(&self.from, platforms, rings)?;
        let req = ExportRequest {
            collection: gapferry::mde::collect::to_collection(&collected),
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
                    "{} volumes {}.001..{:03} and index {}",
                    sp.volumes.len(),
                    self.out.display(),
                    sp.volumes.len(),
                    sp.index.display()
                ),
                Some(sp) => format!(
                    "{} volumes {}.001..{:03}, {} parity volumes .p001..p{:03} and index {}",
                    sp.volumes.len(),
                    self.out.display(),
                    sp.volumes.len(),
                    sp.parity.len(),
                    sp.parity.len(),
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
            for c in &collected {
                eprintln!(
                    "  {:<28} engine {:<14} definitions {}",
                    c.slot.rel(),
                    gapferry::text::Esc(&c.versions.engine_version.to_string()),
                    gapferry::text::Esc(&c.versions.definition_version.to_string())
                );
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
            bundle: self.out.clone(),
            bundle_id: m.bundle_id.to_string(),
            channel: m.channel.clone(),
            sequence: m.sequence,
            created: m.created.to_string(),
            expires: m.expires.to_string(),
            manifest_sha256: written.manifest_sha256.to_string(),
            bundle_size: written.bundle_size,
            payload_size: m.total_size(),
            signers: keys.iter().map(|k| k.key_id.to_string()).collect(),
            items: m.items.clone(),
            split,
        })
    }
}
