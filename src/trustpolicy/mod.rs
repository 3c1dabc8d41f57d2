//! The signed trust policy, format `gapferry-trust/1` (docs/FORMAT.md
//! section 11): which root keys may change the policy and with what
//! threshold, which signer keys may sign bundles (with their channels and
//! end dates), which keys are revoked, and when the policy expires.
//!
//! A policy file is the exact bytes its root signatures cover; each root
//! signature is a stock minisign `ED` signature file beside it
//! (`<file>.<KEYID>.minisig`) whose trusted comment names the version, the
//! expiry and the SHA-256 of the bytes ([`SignedPolicy::trusted_comment`]).
//! [`chain`] holds the rule by which one version succeeds another; [`files`]
//! reads and writes policies and their sidecars on disk.
//!
//! This module decides what a policy says and whether its signatures hold.
//! It never writes a mirror's state and never decides whether a bundle is
//! accepted: that is [`crate::verify::accept`]'s, which asks it.

pub mod chain;
pub mod files;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Classify, ExitKind};
use crate::keys::{KeyId, PublicKey, TrustSet};
use crate::sha256hex::Sha256Hex;
use crate::sign::Signature;
use crate::timestamp::Timestamp;

/// The `format` field of every policy.
pub const FORMAT: &str = "gapferry-trust/1";
/// Largest policy document (bytes).
pub const MAX_POLICY_SIZE: usize = 64 * 1024;
/// Most root keys one policy lists.
pub const MAX_ROOT_KEYS: usize = 16;
/// Most signer keys one policy lists.
pub const MAX_SIGNER_KEYS: usize = 64;
/// Most revoked key ids one policy lists.
pub const MAX_REVOKED: usize = 256;
/// Most root signatures kept beside one version.
pub const MAX_POLICY_SIGNATURES: usize = 16;
/// Import warns when the adopted policy expires within this many days.
pub const WARN_DAYS: u64 = 30;

/// A policy that cannot be read, is not well formed, or does not hold.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// A policy, sidecar or key file cannot be read or written (exit 1).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A policy given on the command line is malformed or unusable (exit 2).
    #[error("{path}: {reason}")]
    Usage { path: PathBuf, reason: String },
    /// A carried or stored policy is forged, rolled back, malformed, or does
    /// not follow the adopted one (exit 3).
    #[error("{source_name}: trust policy rejected: {reason}")]
    Rejected { source_name: String, reason: String },
}

impl Classify for TrustError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            TrustError::Io { .. } => ExitKind::Operational,
            TrustError::Usage { .. } => ExitKind::Usage,
            TrustError::Rejected { .. } => ExitKind::Rejected,
        }
    }
}

/// One signer key and the rules it signs under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerKey {
    /// The minisign public key line (base64 of `Ed` ‖ key id ‖ key).
    pub key: String,
    /// The channels whose bundles this key may sign (absent: every channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// After this time the key's signatures no longer count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
}

/// The root keys and how many of them must sign the next version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSection {
    /// minisign public key lines.
    pub keys: Vec<String>,
    pub threshold: usize,
}

/// The bundle signers and how many must sign a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerSection {
    pub keys: Vec<SignerKey>,
    pub threshold: usize,
}

/// The policy document as written (field order is the writing order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustPolicy {
    pub format: String,
    pub version: u64,
    pub expires: Timestamp,
    pub root: RootSection,
    pub signers: SignerSection,
    #[serde(default)]
    pub revoked: Vec<KeyId>,
}

fn parse_key(line: &str, what: &str) -> Result<PublicKey, String> {
    PublicKey::parse(line, std::path::Path::new(what)).map_err(|e| e.to_string())
}

impl TrustPolicy {
    /// Parses and checks a policy's bytes (strict: no duplicate keys, no
    /// unknown fields, every rule of FORMAT.md section 11).
    pub fn parse(bytes: &[u8]) -> Result<TrustPolicy, String> {
        if bytes.len() > MAX_POLICY_SIZE {
            return Err(format!(
                "{} bytes, more than the {MAX_POLICY_SIZE} a policy may have",
                bytes.len()
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        crate::manifest::check_structure(text).map_err(|e| e.to_string())?;
        let p: TrustPolicy = serde_json::from_str(text).map_err(|e| e.to_string())?;
        p.check()?;
        Ok(p)
    }

    /// The rules a well-formed policy follows.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format is {:?}, not {FORMAT:?}: this gapferry cannot read it",
                crate::text::escape(&self.format)
            ));
        }
        if self.version == 0 {
            return Err("version is 0; versions start at 1".into());
        }
        let roots = self.root_keys()?;
        if roots.is_empty() || roots.len() > MAX_ROOT_KEYS {
            return Err(format!(
                "root lists {} keys (1 to {MAX_ROOT_KEYS} allowed)",
                roots.len()
            ));
        }
        if self.root.threshold == 0 || self.root.threshold > roots.len() {
            return Err(format!(
                "root threshold {} is not between 1 and the {} root keys",
                self.root.threshold,
                roots.len()
            ));
        }
        let signers = self.signer_keys()?;
        if signers.is_empty() || signers.len() > MAX_SIGNER_KEYS {
            return Err(format!(
                "signers lists {} keys (1 to {MAX_SIGNER_KEYS} allowed)",
                signers.len()
            ));
        }
        if self.signers.threshold == 0 || self.signers.threshold > signers.len() {
            return Err(format!(
                "signers threshold {} is not between 1 and the {} signer keys",
                self.signers.threshold,
                signers.len()
            ));
        }
        for s in &self.signers.keys {
            if let Some(channels) = &s.channels {
                if channels.is_empty() {
                    return Err(
                        "a signer's channels list is empty (leave it out for every channel)".into(),
                    );
                }
                for c in channels {
                    crate::manifest::check_channel(c).map_err(|e| e.to_string())?;
                }
            }
        }
        if self.revoked.len() > MAX_REVOKED {
            return Err(format!("more than {MAX_REVOKED} revoked key ids"));
        }
        let revoked: BTreeSet<KeyId> = self.revoked.iter().copied().collect();
        if revoked.len() != self.revoked.len() {
            return Err("a key id is revoked twice".into());
        }
        // Revoked keys never count: a threshold only they could meet would
        // lock the policy (roots) or every bundle (signers) out.
        let live_roots = roots
            .iter()
            .filter(|k| !revoked.contains(&k.key_id))
            .count();
        if self.root.threshold > live_roots {
            return Err(format!(
                "root threshold {} is more than the {live_roots} root keys that are not revoked",
                self.root.threshold
            ));
        }
        let live_signers = signers
            .iter()
            .filter(|(k, _)| !revoked.contains(&k.key_id))
            .count();
        if self.signers.threshold > live_signers {
            return Err(format!(
                "signers threshold {} is more than the {live_signers} signer keys that are not revoked",
                self.signers.threshold
            ));
        }
        Ok(())
    }

    /// The root keys, parsed; two keys with one id are refused.
    pub fn root_keys(&self) -> Result<Vec<PublicKey>, String> {
        distinct(
            self.root.keys.iter().map(|k| parse_key(k, "root key")),
            "root",
        )
    }

    /// The signer keys, parsed, with their rules.
    pub fn signer_keys(&self) -> Result<Vec<(PublicKey, &SignerKey)>, String> {
        let keys = distinct(
            self.signers
                .keys
                .iter()
                .map(|s| parse_key(&s.key, "signer key")),
            "signers",
        )?;
        Ok(keys.into_iter().zip(&self.signers.keys).collect())
    }

    /// Whether `id` is revoked.
    pub fn is_revoked(&self, id: &KeyId) -> bool {
        self.revoked.contains(id)
    }

    /// The pretty JSON (two-space indent, one trailing newline) gapferry
    /// writes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("policy serializes");
        v.push(b'\n');
        v
    }

    /// The root keys that count for the next version: listed, not revoked.
    pub fn roots(&self) -> Roots {
        let keys = self
            .root_keys()
            .expect("checked when parsed")
            .into_iter()
            .filter(|k| !self.is_revoked(&k.key_id))
            .collect();
        Roots {
            keys,
            threshold: self.root.threshold,
        }
    }

    /// The trust set a bundle of `channel` is checked against at `now`:
    /// listed signers, not revoked, for that channel, before their
    /// `not_after`; and the keys left out, with why.
    pub fn signer_trust(&self, channel: &str, now: SystemTime) -> (TrustSet, Vec<(KeyId, String)>) {
        let mut set = TrustSet::default();
        let mut left_out = Vec::new();
        let origin = PathBuf::from(format!("trust policy version {}", self.version));
        for (key, rules) in self.signer_keys().expect("checked when parsed") {
            let why = if self.is_revoked(&key.key_id) {
                Some(format!("revoked by trust policy version {}", self.version))
            } else if rules
                .channels
                .as_ref()
                .is_some_and(|c| !c.iter().any(|c| c == channel))
            {
                Some(format!(
                    "not allowed to sign channel {channel:?} by trust policy version {}",
                    self.version
                ))
            } else if rules.not_after.as_ref().is_some_and(|t| t.time() <= now) {
                Some(format!(
                    "past its not_after {} in trust policy version {}",
                    rules.not_after.as_ref().expect("some"),
                    self.version
                ))
            } else {
                None
            };
            match why {
                Some(why) => left_out.push((key.key_id, why)),
                None => set
                    .add(key, origin.clone())
                    .expect("ids are distinct in a checked policy"),
            }
        }
        for id in &self.revoked {
            if !left_out.iter().any(|(k, _)| k == id) {
                left_out.push((
                    *id,
                    format!("revoked by trust policy version {}", self.version),
                ));
            }
        }
        (set, left_out)
    }

    /// Whole days until `expires` (0 when expired).
    pub fn days_left(&self, now: SystemTime) -> u64 {
        self.expires
            .time()
            .duration_since(now)
            .map(|d| d.as_secs() / 86_400)
            .unwrap_or(0)
    }

    /// Whether the policy has expired at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires.time() <= now
    }
}

fn distinct(
    keys: impl Iterator<Item = Result<PublicKey, String>>,
    what: &str,
) -> Result<Vec<PublicKey>, String> {
    let mut out: Vec<PublicKey> = Vec::new();
    for k in keys {
        let k = k?;
        if out.iter().any(|o| o.key_id == k.key_id) {
            return Err(format!("{what} lists key id {} twice", k.key_id));
        }
        out.push(k);
    }
    Ok(out)
}

/// A set of root keys and how many of them must sign.
#[derive(Debug, Clone)]
pub struct Roots {
    pub keys: Vec<PublicKey>,
    pub threshold: usize,
}

impl Roots {
    /// The key ids, sorted.
    pub fn ids(&self) -> Vec<KeyId> {
        let mut v: Vec<KeyId> = self.keys.iter().map(|k| k.key_id).collect();
        v.sort();
        v
    }
}

/// One version of a policy with its root signatures.
#[derive(Debug, Clone)]
pub struct SignedPolicy {
    /// The exact signed bytes.
    pub bytes: Vec<u8>,
    pub policy: TrustPolicy,
    pub sha256: Sha256Hex,
    pub signatures: Vec<Signature>,
}

impl SignedPolicy {
    /// Parses a policy's bytes; signatures are added by the caller.
    pub fn parse(bytes: Vec<u8>) -> Result<SignedPolicy, String> {
        let policy = TrustPolicy::parse(&bytes)?;
        Ok(SignedPolicy {
            sha256: Sha256Hex::of(&bytes),
            bytes,
            policy,
            signatures: Vec::new(),
        })
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.policy.version
    }

    /// The trusted comment every root signature of this version carries.
    pub fn trusted_comment(&self) -> String {
        format!(
            "gapferry trust version:{} expires:{} sha256:{}",
            self.policy.version, self.policy.expires, self.sha256
        )
    }

    /// Adds a signature, refusing a second one by the same key id or more
    /// than [`MAX_POLICY_SIGNATURES`].
    pub fn add_signature(&mut self, sig: Signature) -> Result<(), String> {
        if self.signatures.iter().any(|s| s.key_id == sig.key_id) {
            return Err(format!(
                "version {} is already signed by key {}",
                self.version(),
                sig.key_id
            ));
        }
        if self.signatures.len() >= MAX_POLICY_SIGNATURES {
            return Err(format!("more than {MAX_POLICY_SIGNATURES} signatures"));
        }
        self.signatures.push(sig);
        Ok(())
    }

    /// The distinct keys of `roots` whose signatures of this version hold.
    /// A signature by a key id of `roots` that does not verify, or whose
    /// trusted comment does not describe this version, is an error: it is
    /// a forgery attempt, never merely "not counted".
    pub fn root_signers(&self, roots: &Roots) -> Result<Vec<KeyId>, String> {
        let comment = self.trusted_comment();
        let mut counted: Vec<KeyId> = Vec::new();
        let mut seen_keys = BTreeSet::new();
        for sig in &self.signatures {
            let Some(key) = roots.keys.iter().find(|k| k.key_id == sig.key_id) else {
                continue;
            };
            sig.verify(key, &self.bytes)
                .map_err(|e| format!("version {}: {e}", self.version()))?;
            if sig.trusted_comment != comment {
                return Err(format!(
                    "version {}: the signature by key {} has trusted comment {:?}, expected {:?}",
                    self.version(),
                    sig.key_id,
                    sig.trusted_comment,
                    comment
                ));
            }
            if seen_keys.insert(key.key.to_bytes()) {
                counted.push(sig.key_id);
            }
        }
        Ok(counted)
    }

    /// Whether a threshold of `roots` signed this version; `Err` names who
    /// signed and who was needed.
    pub fn require_roots(&self, roots: &Roots, whose: &str) -> Result<Vec<KeyId>, String> {
        let signers = self.root_signers(roots)?;
        if signers.len() < roots.threshold {
            return Err(format!(
                "version {} is signed by {} of {whose} root keys ({}), {} required (roots: {})",
                self.version(),
                signers.len(),
                if signers.is_empty() {
                    "none".to_string()
                } else {
                    join(&signers)
                },
                roots.threshold,
                join(&roots.ids())
            ));
        }
        Ok(signers)
    }
}

/// What changed from `old` (none: nothing adopted before) to `new`, one line
/// per change, for the ledger's `trust_updated` event.
pub fn changes(old: Option<&TrustPolicy>, new: &TrustPolicy) -> Vec<String> {
    let ids = |keys: Vec<PublicKey>| keys.into_iter().map(|k| k.key_id).collect::<BTreeSet<_>>();
    let roots = |p: &TrustPolicy| ids(p.root_keys().expect("checked"));
    let signers = |p: &TrustPolicy| {
        ids(p
            .signer_keys()
            .expect("checked")
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    };
    let empty = BTreeSet::new();
    let (old_roots, old_signers, old_revoked) = match old {
        Some(o) => (roots(o), signers(o), o.revoked.iter().copied().collect()),
        None => (empty.clone(), empty.clone(), empty),
    };
    let mut out = Vec::new();
    let diff = |out: &mut Vec<String>, what: &str, a: &BTreeSet<KeyId>, b: &BTreeSet<KeyId>| {
        for k in b.difference(a) {
            out.push(format!("{what} added {k}"));
        }
        for k in a.difference(b) {
            out.push(format!("{what} removed {k}"));
        }
    };
    diff(&mut out, "root", &old_roots, &roots(new));
    diff(&mut out, "signer", &old_signers, &signers(new));
    let new_revoked: BTreeSet<KeyId> = new.revoked.iter().copied().collect();
    for k in new_revoked.difference(&old_revoked) {
        out.push(format!("revoked {k}"));
    }
    for k in old_revoked.difference(&new_revoked) {
        out.push(format!("no longer revoked {k}"));
    }
    let (ort, ost, oexp) = match old {
        Some(o) => (
            Some(o.root.threshold),
            Some(o.signers.threshold),
            Some(o.expires.to_string()),
        ),
        None => (None, None, None),
    };
    if ort != Some(new.root.threshold) {
        out.push(match ort {
            Some(o) => format!("root threshold {o} -> {}", new.root.threshold),
            None => format!("root threshold {}", new.root.threshold),
        });
    }
    if ost != Some(new.signers.threshold) {
        out.push(match ost {
            Some(o) => format!("signer threshold {o} -> {}", new.signers.threshold),
            None => format!("signer threshold {}", new.signers.threshold),
        });
    }
    if oexp.as_deref() != Some(new.expires.as_str()) {
        out.push(format!("expires {}", new.expires));
    }
    out.extend(rule_changes(old, new));
    out
}

/// The per-key rule changes from `old` to `new`: `signer <KEYID> channels
/// a,b` (or `channels any` once cleared), `signer <KEYID> not_after <TIME>`
/// (or `not_after none`). A key added with rules names them too; a removed
/// key's rules go with it.
fn rule_changes(old: Option<&TrustPolicy>, new: &TrustPolicy) -> Vec<String> {
    let old_rules = |id: &KeyId| {
        old.and_then(|o| {
            o.signer_keys()
                .expect("checked")
                .into_iter()
                .find(|(k, _)| k.key_id == *id)
                .map(|(_, r)| (r.channels.clone(), r.not_after.clone()))
        })
        .unwrap_or((None, None))
    };
    let mut keys = new.signer_keys().expect("checked");
    keys.sort_by_key(|(k, _)| k.key_id);
    let mut out = Vec::new();
    for (k, rules) in keys {
        let (channels, not_after) = old_rules(&k.key_id);
        if channels != rules.channels {
            out.push(match &rules.channels {
                Some(c) => format!("signer {} channels {}", k.key_id, c.join(",")),
                None => format!("signer {} channels any", k.key_id),
            });
        }
        if not_after.as_ref().map(Timestamp::as_str)
            != rules.not_after.as_ref().map(Timestamp::as_str)
        {
            out.push(match &rules.not_after {
                Some(t) => format!("signer {} not_after {t}", k.key_id),
                None => format!("signer {} not_after none", k.key_id),
            });
        }
    }
    out
}

/// Key ids joined with `, `.
pub fn join(ids: &[KeyId]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a human or a `--json` reader is shown of one policy version.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    pub version: u64,
    pub expires: String,
    pub sha256: String,
    pub root_keys: Vec<String>,
    pub root_threshold: usize,
    pub signer_keys: Vec<SignerSummary>,
    pub signer_threshold: usize,
    pub revoked: Vec<String>,
    /// Key ids of the root signatures beside it (not checked here).
    pub signed_by: Vec<String>,
}

/// One signer key in a [`PolicySummary`].
#[derive(Debug, Clone, Serialize)]
pub struct SignerSummary {
    pub key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

impl SignedPolicy {
    /// The summary shown by `trust show`, `verify` and `inspect`.
    pub fn summary(&self) -> PolicySummary {
        let p = &self.policy;
        PolicySummary {
            version: p.version,
            expires: p.expires.to_string(),
            sha256: self.sha256.to_string(),
            root_keys: p
                .root_keys()
                .expect("checked")
                .iter()
                .map(|k| k.key_id.to_string())
                .collect(),
            root_threshold: p.root.threshold,
            signer_keys: p
                .signer_keys()
                .expect("checked")
                .iter()
                .map(|(k, s)| SignerSummary {
                    key_id: k.key_id.to_string(),
                    channels: s.channels.clone(),
                    not_after: s.not_after.as_ref().map(|t| t.to_string()),
                })
                .collect(),
            signer_threshold: p.signers.threshold,
            revoked: p.revoked.iter().map(|k| k.to_string()).collect(),
            signed_by: self
                .signatures
                .iter()
                .map(|s| s.key_id.to_string())
                .collect(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;

impl TrustPolicy {
    /// Version 1 with these keys.
    pub fn initial(
        roots: &[PublicKey],
        root_threshold: usize,
        signers: &[PublicKey],
        threshold: usize,
        expires: Timestamp,
    ) -> TrustPolicy {
        TrustPolicy {
            format: FORMAT.to_string(),
            version: 1,
            expires,
            root: RootSection {
                keys: roots.iter().map(PublicKey::to_base64).collect(),
                threshold: root_threshold,
            },
            signers: SignerSection {
                keys: signers
                    .iter()
                    .map(|k| SignerKey {
                        key: k.to_base64(),
                        channels: None,
                        not_after: None,
                    })
                    .collect(),
                threshold,
            },
            revoked: Vec::new(),
        }
    }
}

impl SignedPolicy {
    /// A root signature of this version by `key`, with the trusted comment
    /// readers require.
    pub fn sign(&self, key: &crate::keys::SecretKey) -> Signature {
        Signature::sign(key, &self.bytes, &self.trusted_comment())
    }
}
