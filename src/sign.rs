//! minisign signatures (algorithm `ED`: Ed25519 over the BLAKE2b-512 digest
//! of the data) with their trusted comments and global signatures.
//!
//! Verification is strict (`verify_strict`) and checks the global signature
//! over signature ‖ trusted comment, so a tampered trusted comment fails just
//! as stock `minisign -V` would. Nothing here decides trust: callers check
//! the key id against a [`crate::keys::TrustSet`].

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use blake2::{Blake2b512, Digest};
use ed25519_dalek::Signer;

use crate::keys::{KeyId, PublicKey, SecretKey};

/// Largest signature file accepted (minisign's are a few hundred bytes; the
/// trusted comment is the only variable part).
pub const MAX_SIGNATURE_FILE: usize = 8 * 1024;

/// A parsed minisign signature file.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    pub key_id: KeyId,
    pub signature: [u8; 64],
    pub trusted_comment: String,
    pub global_signature: [u8; 64],
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("key_id", &self.key_id)
            .field("trusted_comment", &self.trusted_comment)
            .finish_non_exhaustive()
    }
}

/// Why a signature file cannot be parsed or does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("malformed signature: {0}")]
    Malformed(String),
    #[error("signature by key {signature} checked against a different key {key}")]
    WrongKey { signature: KeyId, key: KeyId },
    #[error("signature by key {0} does not match the data")]
    BadSignature(KeyId),
    #[error("trusted comment of the signature by key {0} was altered (global signature does not verify)")]
    BadTrustedComment(KeyId),
}

fn digest(data: &[u8]) -> [u8; 64] {
    Blake2b512::digest(data).into()
}

impl Signature {
    /// Signs `data` with `key`; `trusted_comment` must be one line.
    pub fn sign(key: &SecretKey, data: &[u8], trusted_comment: &str) -> Signature {
        assert!(
            !trusted_comment.contains(['\n', '\r']),
            "trusted comments are one line"
        );
        let signature = key.signing_key.sign(&digest(data)).to_bytes();
        let mut global = Vec::with_capacity(64 + trusted_comment.len());
        global.extend_from_slice(&signature);
        global.extend_from_slice(trusted_comment.as_bytes());
        let global_signature = key.signing_key.sign(&global).to_bytes();
        Signature {
            key_id: key.key_id,
            signature,
            trusted_comment: trusted_comment.to_string(),
            global_signature,
        }
    }

    /// Parses the four lines of a `.minisig` file.
    pub fn parse(bytes: &[u8]) -> Result<Signature, SignatureError> {
        let bad = |s: &str| SignatureError::Malformed(s.to_string());
        if bytes.len() > MAX_SIGNATURE_FILE {
            return Err(bad("larger than 8 KiB"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let untrusted = lines.next().unwrap_or("");
        if !untrusted.starts_with("untrusted comment:") {
            return Err(bad("first line is not an untrusted comment"));
        }
        let sig_line = lines.next().ok_or_else(|| bad("missing signature line"))?;
        let raw = B64
            .decode(sig_line.trim())
            .map_err(|e| SignatureError::Malformed(format!("bad base64 in signature line: {e}")))?;
        if raw.len() != 74 {
            return Err(SignatureError::Malformed(format!(
                "signature line decoded to {} bytes, expected 74",
                raw.len()
            )));
        }
        match &raw[..2] {
            b"ED" => {}
            b"Ed" => return Err(bad(
                "legacy algorithm Ed (unhashed); re-sign with a current minisign (algorithm ED)",
            )),
            _ => return Err(bad("unknown signature algorithm (expected ED)")),
        }
        let tc_line = lines.next().ok_or_else(|| bad("missing trusted comment"))?;
        let trusted_comment = tc_line
            .strip_prefix("trusted comment: ")
            .ok_or_else(|| bad("third line is not a trusted comment"))?;
        // A stray CR (or any control character but the tabs minisign puts
        // in its default comment) would not survive being written out
        // again, and no honest comment has one.
        if trusted_comment.chars().any(|c| c.is_control() && c != '\t') {
            return Err(bad("trusted comment contains control characters"));
        }
        let global_line = lines
            .next()
            .ok_or_else(|| bad("missing global signature"))?;
        let global = B64.decode(global_line.trim()).map_err(|e| {
            SignatureError::Malformed(format!("bad base64 in global signature: {e}"))
        })?;
        if global.len() != 64 {
            return Err(SignatureError::Malformed(format!(
                "global signature decoded to {} bytes, expected 64",
                global.len()
            )));
        }
        if lines.any(|l| !l.is_empty()) {
            return Err(bad("unexpected extra lines"));
        }
        Ok(Signature {
            key_id: KeyId(raw[2..10].try_into().expect("8 bytes")),
            signature: raw[10..74].try_into().expect("64 bytes"),
            trusted_comment: trusted_comment.to_string(),
            global_signature: global.try_into().expect("64 bytes"),
        })
    }

    /// The `.minisig` file text.
    pub fn to_text(&self, untrusted_comment: &str) -> String {
        let mut raw = Vec::with_capacity(74);
        raw.extend_from_slice(b"ED");
        raw.extend_from_slice(&self.key_id.0);
        raw.extend_from_slice(&self.signature);
        format!(
            "untrusted comment: {untrusted_comment}\n{}\ntrusted comment: {}\n{}\n",
            B64.encode(raw),
            self.trusted_comment,
            B64.encode(self.global_signature)
        )
    }

    /// Checks the signature over `data` and the global signature over the
    /// trusted comment, with `key` (whose id must match).
    pub fn verify(&self, key: &PublicKey, data: &[u8]) -> Result<(), SignatureError> {
        if key.key_id != self.key_id {
            return Err(SignatureError::WrongKey {
                signature: self.key_id,
                key: key.key_id,
            });
        }
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        key.key
            .verify_strict(&digest(data), &sig)
            .map_err(|_| SignatureError::BadSignature(self.key_id))?;
        let mut global = Vec::with_capacity(64 + self.trusted_comment.len());
        global.extend_from_slice(&self.signature);
        global.extend_from_slice(self.trusted_comment.as_bytes());
        let gsig = ed25519_dalek::Signature::from_bytes(&self.global_signature);
        key.key
            .verify_strict(&global, &gsig)
            .map_err(|_| SignatureError::BadTrustedComment(self.key_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_parse_verify() {
        let sk = SecretKey::generate();
        let sig = Signature::sign(&sk, b"hello", "bundle x");
        let parsed = Signature::parse(sig.to_text("sig").as_bytes()).unwrap();
        assert_eq!(parsed, sig);
        parsed.verify(&sk.public(), b"hello").unwrap();
        assert_eq!(
            parsed.verify(&sk.public(), b"hellO"),
            Err(SignatureError::BadSignature(sk.key_id))
        );
        let mut tampered = parsed.clone();
        tampered.trusted_comment.push('!');
        assert_eq!(
            tampered.verify(&sk.public(), b"hello"),
            Err(SignatureError::BadTrustedComment(sk.key_id))
        );
    }

    #[test]
    fn other_key_with_same_id_fails() {
        let sk = SecretKey::generate();
        let mut other = SecretKey::generate();
        other.key_id = sk.key_id;
        let sig = Signature::sign(&other, b"data", "c");
        assert_eq!(
            sig.verify(&sk.public(), b"data"),
            Err(SignatureError::BadSignature(sk.key_id))
        );
    }
}
