//! Applies a trust set and a threshold to a bundle's signatures.
//!
//! A signature whose key id is not trusted counts for nothing; each distinct
//! trusted key counts once; a signature naming a trusted key id that does
//! not verify (or whose trusted comment does not match the manifest) rejects
//! the bundle outright.

use std::path::Path;

use serde::Serialize;

use super::reader::Head;
use super::BundleError;
use crate::keys::{KeyId, TrustSet};

/// What became of one signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureStatus {
    /// By a trusted key, verified.
    Valid,
    /// By a key outside the trust set: ignored.
    Untrusted,
    /// Not checked (no trust set given).
    Unchecked,
    /// By a trusted key id but does not verify.
    Invalid,
}

/// One signature's key id and status.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureCheck {
    pub key_id: String,
    pub status: SignatureStatus,
    /// Why it is invalid, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Checks every signature against `trust` without deciding anything.
pub fn check_signatures(head: &Head, trust: Option<&TrustSet>) -> Vec<SignatureCheck> {
    let expected_comment = head.manifest.trusted_comment();
    head.signatures
        .iter()
        .map(|sig| {
            let key_id = sig.key_id.to_string();
            let Some(trust) = trust else {
                return SignatureCheck {
                    key_id,
                    status: SignatureStatus::Unchecked,
                    problem: None,
                };
            };
            let Some(key) = trust.get(&sig.key_id) else {
                return SignatureCheck {
                    key_id,
                    status: SignatureStatus::Untrusted,
                    problem: None,
                };
            };
            let problem = match sig.verify(key, &head.manifest_bytes) {
                Err(e) => Some(e.to_string()),
                Ok(()) if sig.trusted_comment != expected_comment => Some(format!(
                    "trusted comment {:?} does not describe this manifest (expected {:?})",
                    sig.trusted_comment, expected_comment
                )),
                Ok(()) => None,
            };
            SignatureCheck {
                key_id,
                status: if problem.is_some() {
                    SignatureStatus::Invalid
                } else {
                    SignatureStatus::Valid
                },
                problem,
            }
        })
        .collect()
}

/// Requires at least `threshold` distinct trusted keys with valid signatures
/// and no invalid signature by a trusted key id. Returns the signer ids.
pub fn require(
    head: &Head,
    trust: &TrustSet,
    threshold: usize,
    path: &Path,
) -> Result<Vec<KeyId>, BundleError> {
    let checks = check_signatures(head, Some(trust));
    if let Some(bad) = checks.iter().find(|c| c.status == SignatureStatus::Invalid) {
        return Err(BundleError::Rejected {
            path: path.to_path_buf(),
            reason: format!(
                "signature by trusted key {} is invalid: {}",
                bad.key_id,
                bad.problem.as_deref().unwrap_or("does not verify")
            ),
        });
    }
    // Distinct keys, not distinct ids: a key id is an unsigned label, so one
    // key trusted under two ids (a re-labelled copy of its .pub) would
    // otherwise count twice with one signature re-labelled.
    let mut counted = std::collections::HashSet::new();
    let signers: Vec<KeyId> = head
        .signatures
        .iter()
        .zip(&checks)
        .filter(|(_, c)| c.status == SignatureStatus::Valid)
        .map(|(s, _)| s.key_id)
        .filter(|id| counted.insert(trust.get(id).map(|k| k.key.to_bytes())))
        .collect();
    if signers.is_empty() {
        let ids: Vec<String> = checks.iter().map(|c| c.key_id.clone()).collect();
        return Err(BundleError::Rejected {
            path: path.to_path_buf(),
            reason: format!(
                "no signature by a trusted key (signed by {}; trusted: {}); add the signer's public key with --trust if you trust it",
                ids.join(", "),
                trust.ids().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    if signers.len() < threshold {
        return Err(BundleError::Policy {
            path: path.to_path_buf(),
            reason: format!(
                "threshold not met: {} distinct trusted signature(s), {threshold} required",
                signers.len()
            ),
        });
    }
    Ok(signers)
}
