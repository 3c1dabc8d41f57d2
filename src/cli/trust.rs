//! `gapferry trust init|edit|sign|show`: the signed trust policy
//! (docs/FORMAT.md section 11) on the offline side, and the root pins
//! (`--trust-root`, `--root-threshold`) that `import`, `verify` take.
//! It owns the flags and the output; what a policy means and whether it
//! holds is `gapferry::trustpolicy`'s.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::bail;
use clap::{Args, Subcommand};
use serde::Serialize;

use gapferry::keys::{KeyId, PublicKey, TrustSet};
use gapferry::mirror::state::{self, StateDir};
use gapferry::text::Esc;
use gapferry::timestamp::Timestamp;
use gapferry::trustpolicy::{
    self, files, join, PolicySummary, Roots, SignedPolicy, SignerKey, TrustPolicy,
};

use super::output::print_json;
use super::UsageError;

/// Keep, change and sign the trust policy that mirrors follow.
///
/// A trust policy (format gapferry-trust/1) lists the root keys (kept
/// offline) that may change it, the signer keys that may sign bundles, the
/// revoked keys and an expiry. Each version is signed by root keys with
/// `trust sign`, carried to the mirrors in a bundle with `export
/// --trust-policy`, and adopted there by `import --trust-root`: rotation and
/// revocation need no visit to the mirrors (keys/README.md).
#[derive(Debug, Args)]
pub struct TrustArgs {
    #[command(subcommand)]
    command: TrustCommand,
}

#[derive(Debug, Subcommand)]
enum TrustCommand {
    Init(InitArgs),
    Edit(EditArgs),
    Sign(SignArgs),
    Show(ShowArgs),
}

impl TrustArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        match self.command {
            TrustCommand::Init(a) => a.run(),
            TrustCommand::Edit(a) => a.run(),
            TrustCommand::Sign(a) => a.run(),
            TrustCommand::Show(a) => a.run(),
        }
    }
}

/// The root pins of a root-pinned mirror, shared by `import` and `verify`.
#[derive(Debug, Args, Clone)]
pub struct RootArgs {
    /// Pin this root public key (file, or a folder of *.pub); repeatable.
    /// Signer keys then come from the trust policy the bundles carry and
    /// the mirror adopts, instead of from --trust.
    #[arg(long = "trust-root", value_name = "R.pub", conflicts_with = "trust")]
    pub trust_roots: Vec<PathBuf>,
    /// How many of the --trust-root keys must have signed the first policy
    /// version adopted.
    #[arg(long, value_name = "N", requires = "trust_roots")]
    pub root_threshold: Option<usize>,
    /// Use a trust policy past its expiry anyway.
    #[arg(long, requires = "trust_roots")]
    pub allow_expired_policy: bool,
}

impl RootArgs {
    /// The pins, when `--trust-root` was given.
    pub fn load(&self) -> anyhow::Result<Option<Roots>> {
        if self.trust_roots.is_empty() {
            return Ok(None);
        }
        let set = TrustSet::load(&self.trust_roots)?;
        let keys: Vec<PublicKey> = set.ids().filter_map(|id| set.get(&id).cloned()).collect();
        let Some(threshold) = self.root_threshold else {
            bail!(UsageError(
                "--trust-root needs --root-threshold N (how many pinned roots must have signed the policy)".into()
            ));
        };
        if threshold == 0 || threshold > keys.len() {
            bail!(UsageError(format!(
                "--root-threshold {threshold} is not between 1 and the {} --trust-root key(s)",
                keys.len()
            )));
        }
        Ok(Some(Roots { keys, threshold }))
    }
}

fn load_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    let mut out: Vec<PublicKey> = Vec::new();
    for p in paths {
        let k = PublicKey::from_file(p)?;
        if out.iter().any(|o| o.key_id == k.key_id) {
            bail!(UsageError(format!(
                "{} is key {} again",
                p.display(),
                k.key_id
            )));
        }
        out.push(k);
    }
    Ok(out)
}

fn expires_in(d: Duration) -> anyhow::Result<Timestamp> {
    if d < Duration::from_secs(86_400) {
        bail!(UsageError("--expires-in must be at least 1d".into()));
    }
    Ok(Timestamp::from_time(SystemTime::now() + d))
}

fn policy_usage(path: &Path, reason: String) -> anyhow::Error {
    UsageError(format!("{}: {reason}", path.display())).into()
}

/// The per-signer rules `trust init` and `trust edit` set (FORMAT.md
/// section 11: a signer's `channels` and `not_after`).
#[derive(Debug, Args)]
struct RuleArgs {
    /// Limit a signer to these channels: KEYID=C1,C2 (KEYID= clears the
    /// limit: every channel); repeatable.
    #[arg(long = "signer-channels", value_name = "KEYID=C1,C2")]
    signer_channels: Vec<String>,
    /// End a signer's signatures at an RFC 3339 time or after a duration
    /// from now: KEYID=2027-06-30T00:00:00Z or KEYID=90d (KEYID= clears
    /// it); repeatable.
    #[arg(long = "signer-not-after", value_name = "KEYID=TIME|DURATION")]
    signer_not_after: Vec<String>,
}

/// `KEYID=VALUE` of `flag`, with the key id checked.
fn keyed<'a>(s: &'a str, flag: &str) -> anyhow::Result<(KeyId, &'a str)> {
    let Some((id, value)) = s.split_once('=') else {
        bail!(UsageError(format!(
            "{flag} {:?}: expected KEYID=VALUE (KEYID= clears it)",
            Esc(s)
        )));
    };
    Ok((key_id(id, flag)?, value))
}

/// A `--signer-not-after` value: an RFC 3339 time, or a duration from now.
fn not_after(value: &str, id: KeyId) -> anyhow::Result<Timestamp> {
    if let Ok(d) = humantime::parse_duration(value) {
        return Ok(Timestamp::from_time(SystemTime::now() + d));
    }
    value.parse::<Timestamp>().map_err(|_| {
        UsageError(format!(
            "--signer-not-after {id}={:?}: neither an RFC 3339 time (2027-06-30T00:00:00Z) nor a duration (90d)",
            Esc(value)
        ))
        .into()
    })
}

impl RuleArgs {
    /// Sets the rules on `p`'s signers; a key id that is not one of them,
    /// or one given twice to a flag, is refused.
    fn apply(&self, p: &mut TrustPolicy) -> anyhow::Result<()> {
        let version = p.version;
        let find = |id: KeyId, flag: &str, seen: &mut Vec<KeyId>| {
            if seen.contains(&id) {
                bail!(UsageError(format!("{flag} {id}: given twice")));
            }
            seen.push(id);
            let signers: Vec<KeyId> = p.signers.keys.iter().map(|k| id_of(&k.key)).collect();
            match signers.iter().position(|k| *k == id) {
                Some(i) => Ok(i),
                None => bail!(UsageError(format!(
                    "{flag} {id}: not a signer of version {version} (signers: {}); add it with --add-signer or --signer first",
                    join(&signers)
                ))),
            }
        };
        let mut seen = Vec::new();
        let mut channels = Vec::new();
        for s in &self.signer_channels {
            let (id, value) = keyed(s, "--signer-channels")?;
            let i = find(id, "--signer-channels", &mut seen)?;
            let list = if value.is_empty() {
                None
            } else {
                let list: Vec<String> = value.split(',').map(str::to_string).collect();
                for c in &list {
                    gapferry::manifest::check_channel(c).map_err(|e| {
                        UsageError(format!("--signer-channels {id}={}: {e}", Esc(value)))
                    })?;
                }
                Some(list)
            };
            channels.push((i, list));
        }
        let mut seen = Vec::new();
        let mut ends = Vec::new();
        for s in &self.signer_not_after {
            let (id, value) = keyed(s, "--signer-not-after")?;
            let i = find(id, "--signer-not-after", &mut seen)?;
            let t = (!value.is_empty())
                .then(|| not_after(value, id))
                .transpose()?;
            ends.push((i, t));
        }
        for (i, c) in channels {
            p.signers.keys[i].channels = c;
        }
        for (i, t) in ends {
            p.signers.keys[i].not_after = t;
        }
        Ok(())
    }
}

/// Write version 1 of a trust policy (unsigned; sign it with `trust sign`).
#[derive(Debug, Args)]
struct InitArgs {
    /// A root public key (keep its secret half offline); repeatable.
    #[arg(long = "root", value_name = "R.pub", required = true)]
    roots: Vec<PathBuf>,
    /// How many root keys must sign each next version.
    #[arg(long, value_name = "N")]
    root_threshold: usize,
    /// A signer public key: its signatures count on bundles; repeatable.
    #[arg(long = "signer", value_name = "S.pub", required = true)]
    signers: Vec<PathBuf>,
    /// How many signer keys must sign each bundle.
    #[arg(long, value_name = "M", default_value_t = 1)]
    threshold: usize,
    /// How long the policy is valid (mirrors warn 30 days before).
    #[arg(long, default_value = "1y", value_parser = humantime::parse_duration)]
    expires_in: Duration,
    /// Where to write the policy (for a chain folder: DIR/1.json).
    #[arg(long, value_name = "POLICY")]
    out: PathBuf,
    #[command(flatten)]
    rules: RuleArgs,
}

impl InitArgs {
    fn run(self) -> anyhow::Result<i32> {
        let roots = load_keys(&self.roots)?;
        let signers = load_keys(&self.signers)?;
        let mut policy = TrustPolicy::initial(
            &roots,
            self.root_threshold,
            &signers,
            self.threshold,
            expires_in(self.expires_in)?,
        );
        self.rules.apply(&mut policy)?;
        policy.check().map_err(|r| policy_usage(&self.out, r))?;
        files::write_policy(&self.out, &policy.to_bytes())?;
        eprintln!(
            "gapferry: wrote trust policy version 1 to {} (unsigned): have {} of the root keys {} sign it with `gapferry trust sign {} --secret-key ROOT.key`",
            self.out.display(),
            policy.root.threshold,
            join(&roots.iter().map(|k| k.key_id).collect::<Vec<_>>()),
            self.out.display()
        );
        Ok(0)
    }
}

/// Write the next version of a policy (version + 1, unsigned).
#[derive(Debug, Args)]
struct EditArgs {
    /// The current version's policy file.
    policy: PathBuf,
    /// Where to write the new version (for a chain folder: DIR/<N+1>.json).
    #[arg(long, value_name = "NEW")]
    out: PathBuf,
    /// Add a signer public key; repeatable.
    #[arg(long = "add-signer", value_name = "F")]
    add_signers: Vec<PathBuf>,
    /// Remove a signer by key id; repeatable.
    #[arg(long = "remove-signer", value_name = "KEYID")]
    remove_signers: Vec<String>,
    /// Revoke a key id for good (also removes it from the signers and
    /// roots); repeatable.
    #[arg(long = "revoke", value_name = "KEYID")]
    revoke: Vec<String>,
    /// New signer threshold.
    #[arg(long, value_name = "M")]
    threshold: Option<usize>,
    /// Add a root public key; repeatable.
    #[arg(long = "add-root", value_name = "F")]
    add_roots: Vec<PathBuf>,
    /// Remove a root by key id; repeatable.
    #[arg(long = "remove-root", value_name = "KEYID")]
    remove_roots: Vec<String>,
    /// New root threshold.
    #[arg(long, value_name = "N")]
    root_threshold: Option<usize>,
    /// New expiry, from now (else the current one is kept).
    #[arg(long, value_parser = humantime::parse_duration)]
    expires_in: Option<Duration>,
    #[command(flatten)]
    rules: RuleArgs,
}

fn key_id(s: &str, flag: &str) -> anyhow::Result<KeyId> {
    s.parse().map_err(|()| {
        UsageError(format!(
            "{flag} {:?}: not a key id (16 upper-case hex digits, as `gapferry trust show` prints)",
            Esc(s)
        ))
        .into()
    })
}

fn id_of(line: &str) -> KeyId {
    PublicKey::parse(line, Path::new("policy"))
        .map(|k| k.key_id)
        .expect("a checked policy's keys parse")
}

impl EditArgs {
    fn run(self) -> anyhow::Result<i32> {
        let current = files::read_version(&self.policy)?;
        let mut p = current.policy.clone();
        p.version += 1;
        for s in &self.remove_signers {
            let id = key_id(s, "--remove-signer")?;
            let before = p.signers.keys.len();
            p.signers.keys.retain(|k| id_of(&k.key) != id);
            if p.signers.keys.len() == before {
                bail!(UsageError(format!(
                    "--remove-signer {id}: not a signer of version {}",
                    current.version()
                )));
            }
        }
        for s in &self.revoke {
            let id = key_id(s, "--revoke")?;
            if p.revoked.contains(&id) {
                bail!(UsageError(format!("--revoke {id}: already revoked")));
            }
            p.signers.keys.retain(|k| id_of(&k.key) != id);
            p.root.keys.retain(|k| id_of(k) != id);
            p.revoked.push(id);
        }
        for k in load_keys(&self.add_signers)? {
            if p.is_revoked(&k.key_id) {
                bail!(UsageError(format!(
                    "--add-signer: key {} is revoked",
                    k.key_id
                )));
            }
            p.signers.keys.push(SignerKey {
                key: k.to_base64(),
                channels: None,
                not_after: None,
            });
        }
        for s in &self.remove_roots {
            let id = key_id(s, "--remove-root")?;
            let before = p.root.keys.len();
            p.root.keys.retain(|k| id_of(k) != id);
            if p.root.keys.len() == before {
                bail!(UsageError(format!(
                    "--remove-root {id}: not a root of version {}",
                    current.version()
                )));
            }
        }
        for k in load_keys(&self.add_roots)? {
            p.root.keys.push(k.to_base64());
        }
        self.rules.apply(&mut p)?;
        if let Some(t) = self.threshold {
            p.signers.threshold = t;
        }
        if let Some(t) = self.root_threshold {
            p.root.threshold = t;
        }
        if let Some(d) = self.expires_in {
            p.expires = expires_in(d)?;
        }
        p.check().map_err(|r| policy_usage(&self.out, r))?;
        files::write_policy(&self.out, &p.to_bytes())?;
        let changes = trustpolicy::changes(Some(&current.policy), &p);
        eprintln!(
            "gapferry: wrote trust policy version {} to {} (unsigned): {}",
            p.version,
            self.out.display(),
            if changes.is_empty() {
                "no change but the version".to_string()
            } else {
                changes.join(", ")
            }
        );
        eprintln!(
            "  it needs {} signature(s) of version {}'s roots ({}) and {} of its own ({}): `gapferry trust sign {} --secret-key ROOT.key`",
            current.policy.root.threshold,
            current.version(),
            join(&current.policy.roots().ids()),
            p.root.threshold,
            join(&p.roots().ids()),
            self.out.display()
        );
        Ok(0)
    }
}

/// Add one root signature to a policy file (on the offline machine).
///
/// Writes POLICY.<KEYID>.minisig beside it: a stock minisign signature of
/// the policy's bytes (`minisign -Vm POLICY -x POLICY.<KEYID>.minisig -p
/// R.pub` checks it). The key must be a root of this version or of the
/// previous one (--previous, or <N-1>.json beside a chain's <N>.json).
#[derive(Debug, Args)]
struct SignArgs {
    /// The policy file to sign.
    policy: PathBuf,
    /// The root secret key.
    #[arg(long, value_name = "ROOT.key")]
    secret_key: PathBuf,
    /// Password of an encrypted secret key, first line of FILE (else prompted).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// The previous version's policy file, whose roots must also sign this
    /// one [default: <N-1>.json beside POLICY, when it exists].
    #[arg(long, value_name = "POLICY")]
    previous: Option<PathBuf>,
}

/// The previous version beside `path` in a chain folder, if any.
fn sibling_previous(path: &Path, version: u64) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    if name != format!("{version}.json") || version < 2 {
        return None;
    }
    let prev = path.with_file_name(format!("{}.json", version - 1));
    prev.is_file().then_some(prev)
}

impl SignArgs {
    fn run(self) -> anyhow::Result<i32> {
        let policy = files::read_version(&self.policy)?;
        let previous = match self
            .previous
            .clone()
            .or_else(|| sibling_previous(&self.policy, policy.version()))
        {
            Some(p) => {
                let prev = files::read_version(&p)?;
                if prev.version() + 1 != policy.version() {
                    bail!(UsageError(format!(
                        "--previous {} is version {}, not {}",
                        p.display(),
                        prev.version(),
                        policy.version() - 1
                    )));
                }
                Some(prev)
            }
            None => None,
        };
        let key = super::export::load_secret_key(&self.secret_key, self.password_file.as_deref())?;
        let own = policy.policy.roots().ids().contains(&key.key_id);
        let old = previous
            .as_ref()
            .is_some_and(|p| p.policy.roots().ids().contains(&key.key_id));
        if !own && !old {
            bail!(UsageError(format!(
                "{}: key {} is not a root of version {}{} (roots: {}); sign with a root key{}",
                self.secret_key.display(),
                key.key_id,
                policy.version(),
                previous
                    .as_ref()
                    .map(|p| format!(" nor of version {}", p.version()))
                    .unwrap_or_default(),
                join(&policy.policy.roots().ids()),
                if previous.is_none() && policy.version() > 1 {
                    ", or give --previous with the version before it (its roots sign the next one too)"
                } else {
                    ""
                }
            )));
        }
        if policy.signatures.iter().any(|s| s.key_id == key.key_id) {
            bail!(UsageError(format!(
                "{}: key {} has already signed version {}",
                self.policy.display(),
                key.key_id,
                policy.version()
            )));
        }
        let sig = policy.sign(&key);
        let written = files::write_signature(&self.policy, &sig)?;
        let mut signed = policy.clone();
        signed
            .add_signature(sig)
            .map_err(|r| policy_usage(&self.policy, r))?;
        eprintln!("gapferry: wrote {}", written.display());
        for line in thresholds(&signed, previous.as_ref()) {
            eprintln!("  {line}");
        }
        Ok(0)
    }
}

/// Where the signatures of `p` stand: its own roots' threshold and the
/// previous version's.
fn thresholds(p: &SignedPolicy, previous: Option<&SignedPolicy>) -> Vec<String> {
    let line = |roots: &Roots, whose: String| match p.root_signers(roots) {
        Ok(s) => format!(
            "{whose} roots: {} of {} required signatures{}",
            s.len(),
            roots.threshold,
            if s.len() >= roots.threshold {
                " (met)"
            } else {
                ""
            }
        ),
        Err(e) => format!("{whose} roots: a signature does not verify: {e}"),
    };
    let mut out = vec![line(
        &p.policy.roots(),
        format!("version {}'s own", p.version()),
    )];
    if let Some(prev) = previous {
        out.push(line(
            &prev.policy.roots(),
            format!("version {}'s", prev.version()),
        ));
    }
    out
}

/// Show a trust policy: a file, or the one a mirror has adopted.
#[derive(Debug, Args)]
struct ShowArgs {
    /// A policy file (its signatures beside it are checked too).
    #[arg(required_unless_present_any = ["state_dir", "mirror"], conflicts_with_all = ["state_dir", "mirror"])]
    policy: Option<PathBuf>,
    /// The state directory of a root-pinned mirror.
    #[arg(long, value_name = "DIR", conflicts_with = "mirror")]
    state_dir: Option<PathBuf>,
    /// A mirror root (its default state directory, as import's).
    #[arg(long, value_name = "DIR")]
    mirror: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// `trust show --json`.
#[derive(Debug, Serialize)]
struct ShowOutput {
    #[serde(flatten)]
    policy: PolicySummary,
    /// Whole days until it expires (0 once expired).
    days_left: u64,
    expired: bool,
    /// Whether a threshold of its own roots signed it.
    own_roots_met: bool,
    /// With a previous version known: whether a threshold of its roots did.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_roots_met: Option<bool>,
    /// For an adopted policy: the root pins recorded, and when it was adopted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pinned_roots: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pinned_threshold: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    adopted_at: Option<String>,
}

impl ShowArgs {
    fn run(self) -> anyhow::Result<i32> {
        let (policy, previous, adopted) = match &self.policy {
            Some(path) => {
                let p = files::read_version(path)?;
                let prev = sibling_previous(path, p.version())
                    .map(|s| files::read_version(&s))
                    .transpose()?;
                (p, prev, None)
            }
            None => {
                let dir = match (&self.state_dir, &self.mirror) {
                    (Some(d), _) => d.clone(),
                    (None, Some(m)) => state::default_state_dir(m)?,
                    (None, None) => unreachable!("clap requires one"),
                };
                let st = StateDir::existing(&dir)?.load()?;
                let Some(a) = st.trust else {
                    bail!(UsageError(format!(
                        "{}: this mirror has adopted no trust policy (it imports with --trust keys, or no root-pinned import has run yet)",
                        dir.display()
                    )));
                };
                let p = a.load().map_err(|r| policy_usage(&dir, r))?;
                (p, None, Some(a))
            }
        };
        let now = SystemTime::now();
        let met = |roots: &Roots| {
            policy
                .root_signers(roots)
                .is_ok_and(|s| s.len() >= roots.threshold)
        };
        let out = ShowOutput {
            policy: policy.summary(),
            days_left: policy.policy.days_left(now),
            expired: policy.policy.expired(now),
            own_roots_met: met(&policy.policy.roots()),
            previous_roots_met: previous.as_ref().map(|p| met(&p.policy.roots())),
            pinned_roots: adopted
                .as_ref()
                .map(|a| a.pinned_roots.iter().map(|k| k.to_string()).collect()),
            pinned_threshold: adopted.as_ref().map(|a| a.pinned_threshold),
            adopted_at: adopted.as_ref().map(|a| a.adopted_at.to_string()),
        };
        if self.json {
            print_json(&out, None)?;
            return Ok(0);
        }
        let s = &out.policy;
        println!("trust policy version {}", s.version);
        println!(
            "  expires    {} ({})",
            s.expires,
            if out.expired {
                "EXPIRED".to_string()
            } else {
                format!("{} days left", out.days_left)
            }
        );
        println!("  sha256     {}", s.sha256);
        println!(
            "  roots      {} of {}",
            s.root_threshold,
            s.root_keys.join(", ")
        );
        println!("  signers    {} of:", s.signer_threshold);
        for k in &s.signer_keys {
            println!(
                "    {}{}{}",
                k.key_id,
                k.channels
                    .as_ref()
                    .map(|c| format!(" channels {}", Esc(&c.join(","))))
                    .unwrap_or_default(),
                k.not_after
                    .as_ref()
                    .map(|t| format!(" not after {t}"))
                    .unwrap_or_default()
            );
        }
        if !s.revoked.is_empty() {
            println!("  revoked    {}", s.revoked.join(", "));
        }
        println!(
            "  signed by  {}",
            if s.signed_by.is_empty() {
                "(nobody yet)".to_string()
            } else {
                s.signed_by.join(", ")
            }
        );
        for line in thresholds(&policy, previous.as_ref()) {
            println!("  {line}");
        }
        if let Some(a) = &adopted {
            println!(
                "  adopted    {} (pinned roots {}, threshold {})",
                a.adopted_at,
                join(&a.pinned_roots),
                a.pinned_threshold
            );
        }
        Ok(0)
    }
}
