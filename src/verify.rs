//! Acceptance of a bundle head: the one place that decides whether a signed
//! manifest may be used, for `verify`, `import`, the inbox and the demo.
//!
//! [`accept`] checks, in this order: with root-pinned trust, the carried
//! trust policy chain from the adopted policy or the pins (its newest valid
//! version gives the trust set and threshold, and must not have expired);
//! signatures against the trust set and threshold, the profile's rules,
//! the channel, the created time against the clock, the sequence bound,
//! and expiry. It is the only way to obtain
//! an [`Accepted`], so code holding one knows every check passed. It reads
//! nothing but the head it is given and never writes.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::bundle::reader::{BundleReader, Head};
use crate::bundle::{trust, BundleError};
use crate::keys::{KeyId, TrustSet};
use crate::profile::{self, Profile, Unit};
use crate::timestamp::Timestamp;
use crate::trustpolicy::{chain, Roots, SignedPolicy};

/// How far in the future `created` may lie before a bundle is refused.
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(24 * 3600);

/// Who asks, which only changes the advice in refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `gapferry verify`: an audit; the created time and sequence bound are
    /// the importer's concern and are not checked.
    Verify,
    /// An import into a mirror (the CLI, the inbox, the demo).
    Import,
}

/// What a caller accepts.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub trust: &'a TrustSet,
    /// Distinct trusted keys that must have signed.
    pub threshold: usize,
    /// The channel the bundle must be for, if any.
    pub channel: Option<&'a str>,
    pub allow_expired: bool,
    pub purpose: Purpose,
    pub now: SystemTime,
    /// Root-pinned trust (`--trust-root`): when set, the signer keys and
    /// threshold come from the trust policy (the adopted one, advanced by
    /// the versions the bundle carries) and `trust`/`threshold` are unused.
    pub roots: Option<&'a RootTrust>,
}

/// What a root-pinned caller brings: the pinned roots, the policy it has
/// adopted (none yet on a fresh mirror, or for `verify`), and whether an
/// expired policy may still be used.
#[derive(Debug, Clone)]
pub struct RootTrust {
    pub pins: Roots,
    pub adopted: Option<SignedPolicy>,
    pub allow_expired_policy: bool,
}

/// Under which trust policy a root-pinned head was accepted.
#[derive(Debug, Clone)]
pub struct TrustOutcome {
    /// The version adopted before this bundle (none on a fresh mirror).
    pub previous: Option<u64>,
    /// Carried versions newer than `previous` that hold, ascending: the
    /// last is the policy the signatures were counted under. Recording
    /// them is the caller's (the import adopts them when it commits).
    pub adopted: Vec<SignedPolicy>,
    /// Carried versions not newer than `previous`: ignored.
    pub ignored: Vec<u64>,
    /// The policy the signatures were counted under.
    pub authority: SignedPolicy,
    /// Whole days until that policy expires (0 once expired).
    pub days_left: u64,
    /// It had expired (accepted only with `allow_expired_policy`).
    pub expired: bool,
    /// Signer keys of that policy that did not count, with why.
    pub left_out: Vec<(KeyId, String)>,
}

impl TrustOutcome {
    /// Whether the caller should warn about the policy's expiry.
    pub fn expiry_warning(&self) -> Option<String> {
        let p = &self.authority.policy;
        if self.expired {
            Some(format!(
                "trust policy version {} expired at {}; have the root key holders sign a new version (`gapferry trust edit --expires-in`, `gapferry trust sign`) and carry it with `export --trust-policy`",
                p.version, p.expires
            ))
        } else if self.days_left < crate::trustpolicy::WARN_DAYS {
            Some(format!(
                "trust policy version {} expires in {} day(s), at {}; after that bundles are refused: have the root key holders sign a new version (`gapferry trust edit --expires-in`, `gapferry trust sign`) and carry it with `export --trust-policy`",
                p.version, self.days_left, p.expires
            ))
        } else {
            None
        }
    }
}

/// A bundle head that passed every check of a [`Policy`].
#[derive(Debug)]
pub struct Accepted {
    head: Head,
    signers: Vec<KeyId>,
    profile: &'static dyn Profile,
    units: Vec<Unit>,
    created: Timestamp,
    expires: Timestamp,
    expired: bool,
    trust: Option<TrustOutcome>,
}

impl Accepted {
    /// With root-pinned trust: the policy the signatures counted under and
    /// the versions to adopt.
    pub fn trust(&self) -> Option<&TrustOutcome> {
        self.trust.as_ref()
    }
    /// The head, manifest included.
    pub fn head(&self) -> &Head {
        &self.head
    }
    /// The distinct trusted keys that signed, at least the threshold.
    pub fn signers(&self) -> &[KeyId] {
        &self.signers
    }
    /// The profile the manifest names.
    pub fn profile(&self) -> &'static dyn Profile {
        self.profile
    }
    /// The units the manifest carries, checked by its profile.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }
    /// The manifest's `created`, parsed.
    pub fn created(&self) -> &Timestamp {
        &self.created
    }
    /// The manifest's `expires`, parsed.
    pub fn expires(&self) -> &Timestamp {
        &self.expires
    }
    /// Whether it had expired at the policy's `now` (accepted only with
    /// `allow_expired`).
    pub fn expired(&self) -> bool {
        self.expired
    }
}

/// Why a head was not accepted, with the signers counted before the
/// refusal (a ledger line records who signed a refused bundle).
#[derive(Debug)]
pub struct NotAccepted {
    pub signers: Vec<KeyId>,
    pub error: BundleError,
}

/// Checks `head` (read from `bundle`) against `policy`.
pub fn accept(head: Head, policy: &Policy<'_>, bundle: &Path) -> Result<Accepted, NotAccepted> {
    let outcome = match policy.roots {
        Some(roots) => Some(
            apply_policy(&head, roots, policy.now, bundle).map_err(|error| NotAccepted {
                signers: Vec::new(),
                error,
            })?,
        ),
        None => None,
    };
    let under_policy;
    let (trust_set, threshold) = match &outcome {
        Some(o) => {
            under_policy = o
                .authority
                .policy
                .signer_trust(&head.manifest.channel, policy.now)
                .0;
            (&under_policy, o.authority.policy.signers.threshold)
        }
        None => (policy.trust, policy.threshold),
    };
    let signers =
        trust::require(&head, trust_set, threshold, bundle).map_err(|error| NotAccepted {
            signers: Vec::new(),
            error: match &outcome {
                Some(o) => explain_left_out(error, &head, o),
                None => error,
            },
        })?;
    let refuse = |error: BundleError| NotAccepted {
        signers: signers.clone(),
        error,
    };
    let rejected = |reason: String| {
        refuse(BundleError::Rejected {
            path: bundle.to_path_buf(),
            reason,
        })
    };
    let refused = |reason: String| {
        refuse(BundleError::Policy {
            path: bundle.to_path_buf(),
            reason,
        })
    };
    let m = &head.manifest;
    // Parsed once, when the manifest was read: a time that does not parse
    // never got this far.
    let created = m.created.clone();
    let expires = m.expires.clone();
    let (profile, units) = profile::find(&m.profile)
        .and_then(|p| Ok((p, p.units(m)?)))
        .map_err(|e| rejected(e.to_string()))?;
    if let Some(c) = policy.channel {
        if c != m.channel {
            return Err(refused(match policy.purpose {
                Purpose::Verify => format!("bundle is for channel {:?}, not {c:?}", m.channel),
                Purpose::Import => format!(
                    "the bundle is for channel {:?}, this import accepts {:?} (use --channel {:?} if this mirror belongs to that channel)",
                    m.channel, c, m.channel
                ),
            }));
        }
    }
    if policy.purpose == Purpose::Import {
        if created.time() > policy.now + MAX_FUTURE_SKEW {
            return Err(refused(format!(
                "created {} is more than 24 hours in the future (check this machine's clock, or the exporter's)",
                m.created
            )));
        }
        // Sequences are Unix seconds: one far ahead of its own signed
        // `created` would fast-forward the channel and lock every honest
        // bundle out.
        let max_sequence = crate::manifest::max_sequence_for(created.time());
        if m.sequence > max_sequence {
            return Err(refused(format!(
                "sequence {} is more than {} seconds (one day) ahead of the bundle's created time {} \
                 (at most {} allowed; gapferry's sequences are Unix seconds, docs/FORMAT.md section 3): \
                 accepting it would lock every honest bundle out of channel {:?}. Nothing was changed; \
                 have the producer export again without a hand-picked --sequence, and if nobody made \
                 this bundle, treat its signing key as stolen and remove it from the trust set",
                m.sequence,
                crate::manifest::MAX_SEQUENCE_AHEAD,
                m.created,
                max_sequence,
                m.channel
            )));
        }
    }
    let expired = expires.time() <= policy.now;
    if expired && !policy.allow_expired {
        return Err(refused(match policy.purpose {
            Purpose::Verify => format!(
                "expired at {}; add --allow-expired to check it anyway",
                m.expires
            ),
            Purpose::Import => format!(
                "expired at {}; ask for a fresh bundle, or add --allow-expired to import it anyway",
                m.expires
            ),
        }));
    }
    Ok(Accepted {
        head,
        signers,
        profile,
        units,
        created,
        expires,
        expired,
        trust: outcome,
    })
}

/// The trust policy a root-pinned head is checked under: the adopted one
/// advanced by the carried versions ([`chain::advance`]); a carried chain
/// that does not hold rejects the bundle (exit 3), and an expired policy
/// refuses it (exit 4) unless allowed.
fn apply_policy(
    head: &Head,
    roots: &RootTrust,
    now: SystemTime,
    bundle: &Path,
) -> Result<TrustOutcome, BundleError> {
    let previous = roots.adopted.as_ref().map(SignedPolicy::version);
    let kept = || match previous {
        Some(v) => format!("the adopted trust policy stays version {v}"),
        None => "no trust policy was adopted".to_string(),
    };
    let advance =
        chain::advance(&roots.pins, roots.adopted.as_ref(), &head.trust).map_err(|reason| {
            BundleError::Rejected {
                path: bundle.to_path_buf(),
                reason: format!("carried trust policy: {reason}; {}", kept()),
            }
        })?;
    let authority = advance
        .adopted
        .last()
        .or(roots.adopted.as_ref())
        .cloned()
        .ok_or_else(|| BundleError::Rejected {
            path: bundle.to_path_buf(),
            reason: "the bundle carries no trust policy and none has been adopted: the first \
                     bundle a root-pinned mirror imports, and any bundle checked with \
                     `verify --trust-root`, must carry one (export with --trust-policy)"
                .into(),
        })?;
    let expired = authority.policy.expired(now);
    if expired && !roots.allow_expired_policy {
        return Err(BundleError::Policy {
            path: bundle.to_path_buf(),
            reason: format!(
                "trust policy version {} expired at {}: have the root key holders sign a new version \
                 (`gapferry trust edit --expires-in`, `gapferry trust sign`) and carry it with \
                 `export --trust-policy`, or add --allow-expired-policy to use it anyway",
                authority.version(),
                authority.policy.expires
            ),
        });
    }
    let left_out = authority.policy.signer_trust(&head.manifest.channel, now).1;
    Ok(TrustOutcome {
        previous,
        days_left: authority.policy.days_left(now),
        expired,
        adopted: advance.adopted,
        ignored: advance.ignored,
        authority,
        left_out,
    })
}

/// Adds to a signature refusal under a policy why the bundle's signers
/// that the policy names did not count (revoked, channel, not_after).
fn explain_left_out(error: BundleError, head: &Head, o: &TrustOutcome) -> BundleError {
    let notes: Vec<String> = head
        .signatures
        .iter()
        .filter_map(|s| {
            o.left_out
                .iter()
                .find(|(id, _)| *id == s.key_id)
                .map(|(id, why)| format!("key {id} is {why}"))
        })
        .collect();
    let under = format!(
        "counted under trust policy version {}",
        o.authority.version()
    );
    let extra = if notes.is_empty() {
        under
    } else {
        format!("{under}: {}", notes.join("; "))
    };
    match error {
        BundleError::Rejected { path, reason } => BundleError::Rejected {
            path,
            // Under a policy, keys are not added with --trust.
            reason: match reason
                .strip_suffix("; add the signer's public key with --trust if you trust it")
            {
                Some(r) => format!(
                    "{r} ({extra}); a signer is added by a new policy version \
                     (`gapferry trust edit --add-signer`, keys/README.md)"
                ),
                None => format!("{reason} ({extra})"),
            },
        },
        BundleError::Policy { path, reason } => BundleError::Policy {
            path,
            reason: format!("{reason} ({extra})"),
        },
        other => other,
    }
}

/// What [`verify_bundle`] checked.
#[derive(Debug)]
pub struct Verified {
    pub accepted: Accepted,
    pub files_checked: usize,
    pub bytes_checked: u64,
}

/// The whole check of a bundle whose head `reader` has read: [`accept`],
/// then every payload byte against the manifest. Writes nothing.
pub fn verify_bundle<R: std::io::Read>(
    reader: BundleReader<R>,
    head: Head,
    policy: &Policy<'_>,
    bundle: &Path,
    observer: &dyn crate::progress::Observer,
) -> Result<Verified, BundleError> {
    let accepted = accept(head, policy, bundle).map_err(|n| n.error)?;
    let m = &accepted.head.manifest;
    let (files_checked, bytes_checked) = (m.files.len(), m.total_size());
    observer.start("verifying", bytes_checked);
    reader.verify_payload(observer)?;
    observer.finish();
    Ok(Verified {
        accepted,
        files_checked,
        bytes_checked,
    })
}
