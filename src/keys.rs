//! minisign key files: public keys (`Ed` ‖ key id ‖ Ed25519 public key),
//! secret keys (minisign's layout, scrypt-encrypted `Sc` or unencrypted),
//! key ids, and trust sets built from `--trust` files and directories.
//!
//! This module never prompts: callers pass the password bytes in. It never
//! writes files either; the CLI owns file creation (mode 0600, `--force`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Classify, ExitKind};

/// minisign's scrypt parameters (libsodium's "sensitive" limits).
const DEFAULT_OPSLIMIT: u64 = 1 << 25;
const DEFAULT_MEMLIMIT: u64 = 1 << 30;
/// Refuse key files asking for more scrypt memory than this (a hostile key
/// file must not make us allocate gigabytes).
pub const MAX_MEMLIMIT: u64 = 2 << 30;
/// Largest key file read.
pub const MAX_KEY_FILE: u64 = 64 * 1024;

/// An 8-byte minisign key id, shown as 16 upper-case hex digits the way
/// minisign prints it (the bytes as a little-endian u64).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl std::str::FromStr for KeyId {
    type Err = ();
    /// Parses exactly 16 upper-case hex digits.
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.len() != 16
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        {
            return Err(());
        }
        let v = u64::from_str_radix(s, 16).map_err(|_| ())?;
        Ok(KeyId(v.to_le_bytes()))
    }
}

/// In JSON (state, ledger, reports): the 16 hex digits of [`KeyId`]'s
/// `Display`, read back strictly.
impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|()| {
            serde::de::Error::custom(format!(
                "{:?} is not a key id (16 upper-case hex digits)",
                crate::text::escape(&text)
            ))
        })
    }
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}; check the path and its permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a minisign {what}: {reason}")]
    Malformed {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("wrong password for secret key {path} (checksum mismatch)")]
    WrongPassword { path: PathBuf },
    #[error(
        "secret key {path} is encrypted: give --password-file or run on a terminal to be prompted"
    )]
    PasswordNeeded { path: PathBuf },
    #[error("{path} holds no *.pub public keys; --trust takes a minisign public key file or a directory of *.pub files")]
    EmptyTrustDir { path: PathBuf },
    #[error(
        "key id {key_id} appears twice in the trust set with different keys ({first} and {second})"
    )]
    ConflictingTrust {
        key_id: KeyId,
        first: PathBuf,
        second: PathBuf,
    },
}

impl Classify for KeyError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            // An unreadable key file is a usage error like a malformed one
            // (docs/FORMAT.md section 6): the command line names a file
            // that cannot serve as a key.
            KeyError::Read { .. }
            | KeyError::Malformed { .. }
            | KeyError::WrongPassword { .. }
            | KeyError::PasswordNeeded { .. }
            | KeyError::EmptyTrustDir { .. }
            | KeyError::ConflictingTrust { .. } => ExitKind::Usage,
        }
    }
}

/// A minisign public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub key_id: KeyId,
    pub key: VerifyingKey,
}

fn read_small(path: &Path) -> Result<String, KeyError> {
    use std::io::Read;
    let read = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read)?;
    // Read one byte past the limit so an oversized file is refused rather
    // than silently cut (a cut file could parse as something else).
    let mut bytes = Vec::new();
    f.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    let malformed = |reason: String| KeyError::Malformed {
        path: path.to_path_buf(),
        what: "key file",
        reason,
    };
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(malformed(format!(
            "larger than {MAX_KEY_FILE} bytes (a minisign key file is a few hundred)"
        )));
    }
    String::from_utf8(bytes).map_err(|_| malformed("not UTF-8 text".into()))
}

/// Splits a two-line minisign key file into (comment, base64 payload).
/// Decodes the key line of a minisign key file of `len` bytes whose
/// algorithm is Ed; returns it with an error maker naming the file.
fn decode_key<'p>(
    text: &str,
    path: &'p Path,
    what: &'static str,
    len: usize,
) -> Result<(Vec<u8>, impl Fn(String) -> KeyError + 'p), KeyError> {
    let bad = move |reason: String| KeyError::Malformed {
        path: path.to_path_buf(),
        what,
        reason,
    };
    let (_, data) = key_lines(text, what, path)?;
    let raw = B64
        .decode(data)
        .map_err(|e| bad(format!("bad base64: {e}")))?;
    if raw.len() != len {
        let hint = match (what, raw.len()) {
            ("public key", 158) => {
                ": this is a secret key; give its public key (the .pub file) instead"
            }
            ("secret key", 42) => ": this is a public key; give the secret key (.key) instead",
            _ => "",
        };
        return Err(bad(format!(
            "decoded to {} bytes, expected {len}{hint}",
            raw.len()
        )));
    }
    if &raw[..2] != b"Ed" {
        return Err(bad("unknown signature algorithm (expected Ed)".into()));
    }
    Ok((raw, bad))
}

fn key_lines<'a>(
    text: &'a str,
    what: &'static str,
    path: &Path,
) -> Result<(&'a str, &'a str), KeyError> {
    let bad = |reason: &str| KeyError::Malformed {
        path: path.to_path_buf(),
        what,
        reason: reason.to_string(),
    };
    if text
        .lines()
        .any(|l| l.trim_end_matches('\r').starts_with("trusted comment: "))
    {
        return Err(bad(
            "this is a signature file (.minisig), not a key; give the signer's public key (.pub) for --trust, or its secret key (.key) for --secret-key",
        ));
    }
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let first = lines.next().ok_or_else(|| bad("the file is empty"))?;
    let (comment, data) = match first.strip_prefix("untrusted comment: ") {
        Some(c) => (
            c,
            lines
                .next()
                .ok_or_else(|| bad("no key line after the comment"))?,
        ),
        // A bare base64 line (as `minisign -P` takes) is accepted too.
        None => ("", first),
    };
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(bad("unexpected extra lines"));
    }
    Ok((comment, data.trim()))
}

impl PublicKey {
    /// Parses the text of a `.pub` file (or a bare base64 key line).
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyError> {
        let (raw, bad) = decode_key(text, path, "public key", 42)?;
        let key_id = KeyId(raw[2..10].try_into().expect("8 bytes"));
        let key = VerifyingKey::from_bytes(raw[10..42].try_into().expect("32 bytes"))
            .map_err(|_| bad("not a valid Ed25519 point".into()))?;
        if key.is_weak() {
            return Err(bad("weak Ed25519 key".into()));
        }
        Ok(PublicKey { key_id, key })
    }

    /// Reads a `.pub` file.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        Self::parse(&read_small(path)?, path)
    }

    /// The base64 key line.
    pub fn to_base64(&self) -> String {
        let mut raw = Vec::with_capacity(42);
        raw.extend_from_slice(b"Ed");
        raw.extend_from_slice(&self.key_id.0);
        raw.extend_from_slice(self.key.as_bytes());
        B64.encode(raw)
    }

    /// The text of a `.pub` file as minisign writes it.
    pub fn to_file_text(&self) -> String {
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.key_id,
            self.to_base64()
        )
    }
}

/// A minisign secret key, decrypted.
pub struct SecretKey {
    pub key_id: KeyId,
    pub signing_key: SigningKey,
}

// The secret half is the `SigningKey`, which wipes itself on drop (the
// `zeroize` feature of ed25519-dalek); the key id is public.
impl ZeroizeOnDrop for SecretKey {}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.key_id)
    }
}

/// The scrypt cost fields of a secret key file.
#[derive(Debug, Clone, Copy)]
struct Kdf {
    salt: [u8; 32],
    opslimit: u64,
    memlimit: u64,
}

/// libsodium's mapping of (opslimit, memlimit) to scrypt (log2 N, r, p).
fn scrypt_params(opslimit: u64, memlimit: u64) -> (u8, u32, u32) {
    let opslimit = opslimit.max(32768);
    let r: u64 = 8;
    let (log_n, p);
    if opslimit < memlimit / 32 {
        p = 1;
        let max_n = opslimit / (r * 4);
        log_n = (1..63).find(|&i| (1u64 << i) > max_n / 2).unwrap_or(63);
    } else {
        let max_n = memlimit / (r * 128);
        log_n = (1..63).find(|&i| (1u64 << i) > max_n / 2).unwrap_or(63);
        let max_rp = ((opslimit / 4) / (1u64 << log_n)).min(0x3fff_ffff);
        p = max_rp / r;
    }
    (log_n as u8, r as u32, p.max(1) as u32)
}

/// The scrypt output that encrypts a secret key's 104-byte block; wiped on
/// drop.
fn kdf_stream(password: &[u8], kdf: &Kdf, path: &Path) -> Result<Zeroizing<[u8; 104]>, KeyError> {
    let bad = |reason: String| KeyError::Malformed {
        path: path.to_path_buf(),
        what: "secret key",
        reason,
    };
    if kdf.memlimit > MAX_MEMLIMIT {
        return Err(bad(format!(
            "scrypt memory limit {} is larger than the {} gapferry allows",
            kdf.memlimit, MAX_MEMLIMIT
        )));
    }
    let (log_n, r, p) = scrypt_params(kdf.opslimit, kdf.memlimit);
    if log_n > 24 || p > 64 {
        return Err(bad("scrypt parameters are out of range".into()));
    }
    let params = scrypt::Params::new(log_n, r, p, scrypt::Params::RECOMMENDED_LEN)
        .map_err(|e| bad(format!("scrypt parameters: {e}")))?;
    let mut out = Zeroizing::new([0u8; 104]);
    scrypt::scrypt(password, &kdf.salt, &params, &mut out[..])
        .map_err(|e| bad(format!("scrypt: {e}")))?;
    Ok(out)
}

/// XORs the scrypt stream into a secret key block (encrypting or
/// decrypting it) and wipes the stream at once.
fn apply_stream(block: &mut [u8; 104], stream: &mut [u8; 104]) {
    block
        .iter_mut()
        .zip(stream.iter())
        .for_each(|(b, s)| *b ^= s);
    stream.zeroize();
}

fn checksum(key_id: &KeyId, sk: &[u8; 64]) -> [u8; 32] {
    let mut h = Blake2b::<U32>::new();
    h.update(b"Ed");
    h.update(key_id.0);
    h.update(sk);
    h.finalize().into()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the operating system's random source failed");
    b
}

impl SecretKey {
    /// A fresh key pair with a random key id.
    pub fn generate() -> Self {
        let signing_key = SigningKey::from_bytes(&random::<32>());
        SecretKey {
            key_id: KeyId(random::<8>()),
            signing_key,
        }
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            key_id: self.key_id,
            key: self.signing_key.verifying_key(),
        }
    }

    /// Whether the secret key file text is scrypt-encrypted (needs a password).
    pub fn is_encrypted(text: &str, path: &Path) -> Result<bool, KeyError> {
        let raw = Self::decode_raw(text, path)?;
        Ok(&raw[2..4] == b"Sc")
    }

    fn decode_raw(text: &str, path: &Path) -> Result<Vec<u8>, KeyError> {
        let (raw, bad) = decode_key(text, path, "secret key", 158)?;
        if &raw[2..4] != b"Sc" && raw[2..4] != [0, 0] {
            return Err(bad("unknown key derivation (expected Sc or none)".into()));
        }
        if &raw[4..6] != b"B2" {
            return Err(bad("unknown checksum algorithm (expected B2)".into()));
        }
        Ok(raw)
    }

    /// Parses a secret key file's text, decrypting with `password` when it is
    /// encrypted.
    pub fn parse(text: &str, path: &Path, password: Option<&[u8]>) -> Result<Self, KeyError> {
        // The raw key and the block hold the secret key in the clear (once
        // decrypted): both are wiped when they go out of scope.
        let raw = Zeroizing::new(Self::decode_raw(text, path)?);
        let mut block = Zeroizing::new([0u8; 104]);
        block.copy_from_slice(&raw[54..158]);
        if &raw[2..4] == b"Sc" {
            let password = password.ok_or_else(|| KeyError::PasswordNeeded {
                path: path.to_path_buf(),
            })?;
            let kdf = Kdf {
                salt: raw[6..38].try_into().expect("32 bytes"),
                opslimit: u64::from_le_bytes(raw[38..46].try_into().expect("8 bytes")),
                memlimit: u64::from_le_bytes(raw[46..54].try_into().expect("8 bytes")),
            };
            let mut stream = kdf_stream(password, &kdf, path)?;
            apply_stream(&mut block, &mut stream);
        }
        let key_id = KeyId(block[..8].try_into().expect("8 bytes"));
        let mut sk = Zeroizing::new([0u8; 64]);
        sk.copy_from_slice(&block[8..72]);
        let chk: [u8; 32] = block[72..104].try_into().expect("32 bytes");
        // `minisign -G -W` leaves the checksum of unencrypted keys zeroed; the
        // embedded public key check below still catches damage.
        let unchecked = raw[2..4] == [0, 0] && chk == [0u8; 32];
        if !unchecked && checksum(&key_id, &sk) != chk {
            return Err(if &raw[2..4] == b"Sc" {
                KeyError::WrongPassword {
                    path: path.to_path_buf(),
                }
            } else {
                KeyError::Malformed {
                    path: path.to_path_buf(),
                    what: "secret key",
                    reason: "checksum mismatch (the file is damaged)".into(),
                }
            });
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&sk[..32]);
        let signing_key = SigningKey::from_bytes(&seed);
        if signing_key.verifying_key().as_bytes() != &sk[32..] {
            return Err(KeyError::Malformed {
                path: path.to_path_buf(),
                what: "secret key",
                reason: "the embedded public key does not match the secret key".into(),
            });
        }
        Ok(SecretKey {
            key_id,
            signing_key,
        })
    }

    /// The text of a secret key file as minisign writes it: encrypted with
    /// scrypt when `password` is given, else unencrypted (as `minisign -G -W`).
    /// The text holds the key in the clear when `password` is `None`, so it
    /// is wiped on drop like the intermediate buffers.
    pub fn to_file_text(&self, password: Option<&[u8]>) -> Zeroizing<String> {
        let mut sk = Zeroizing::new([0u8; 64]);
        sk[..32].copy_from_slice(self.signing_key.as_bytes());
        sk[32..].copy_from_slice(self.signing_key.verifying_key().as_bytes());
        let mut block = Zeroizing::new([0u8; 104]);
        block[..8].copy_from_slice(&self.key_id.0);
        block[8..72].copy_from_slice(&sk[..]);
        block[72..].copy_from_slice(&checksum(&self.key_id, &sk));
        let mut raw = Zeroizing::new(Vec::with_capacity(158));
        raw.extend_from_slice(b"Ed");
        let comment = match password {
            Some(password) => {
                let kdf = Kdf {
                    salt: random::<32>(),
                    opslimit: DEFAULT_OPSLIMIT,
                    memlimit: DEFAULT_MEMLIMIT,
                };
                let mut stream = kdf_stream(password, &kdf, Path::new("<new key>"))
                    .expect("default scrypt parameters are valid");
                apply_stream(&mut block, &mut stream);
                raw.extend_from_slice(b"Sc");
                raw.extend_from_slice(b"B2");
                raw.extend_from_slice(&kdf.salt);
                raw.extend_from_slice(&kdf.opslimit.to_le_bytes());
                raw.extend_from_slice(&kdf.memlimit.to_le_bytes());
                "minisign encrypted secret key"
            }
            None => {
                raw.extend_from_slice(&[0, 0]);
                raw.extend_from_slice(b"B2");
                raw.extend_from_slice(&[0u8; 48]);
                "minisign secret key"
            }
        };
        raw.extend_from_slice(&block[..]);
        let b64 = Zeroizing::new(B64.encode(&raw[..]));
        Zeroizing::new(format!("untrusted comment: {comment}\n{}\n", b64.as_str()))
    }

    /// Reads the text of a secret key file (for [`SecretKey::parse`]); wiped
    /// on drop (an unencrypted key is in it in the clear).
    pub fn read_text(path: &Path) -> Result<Zeroizing<String>, KeyError> {
        read_small(path).map(Zeroizing::new)
    }
}

/// The public keys a bundle may be signed with, by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustSet {
    keys: BTreeMap<KeyId, (PublicKey, PathBuf)>,
}

impl TrustSet {
    /// Loads `--trust` arguments: each a public key file or a directory whose
    /// `*.pub` files are all loaded.
    pub fn load(paths: &[PathBuf]) -> Result<Self, KeyError> {
        let mut set = TrustSet::default();
        for path in paths {
            let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
                path: path.clone(),
                source,
            })?;
            if meta.is_dir() {
                let mut found = Vec::new();
                let entries = std::fs::read_dir(path).map_err(|source| KeyError::Read {
                    path: path.clone(),
                    source,
                })?;
                for entry in entries {
                    let entry = entry.map_err(|source| KeyError::Read {
                        path: path.clone(),
                        source,
                    })?;
                    let p = entry.path();
                    if p.extension().is_some_and(|e| e == "pub") && p.is_file() {
                        found.push(p);
                    }
                }
                if found.is_empty() {
                    return Err(KeyError::EmptyTrustDir { path: path.clone() });
                }
                found.sort();
                for p in found {
                    set.add(PublicKey::from_file(&p)?, p)?;
                }
            } else {
                set.add(PublicKey::from_file(path)?, path.clone())?;
            }
        }
        Ok(set)
    }

    /// Adds one key; the same key twice is fine, two keys with one id are not.
    pub fn add(&mut self, key: PublicKey, path: PathBuf) -> Result<(), KeyError> {
        if let Some((existing, first)) = self.keys.get(&key.key_id) {
            if existing.key != key.key {
                return Err(KeyError::ConflictingTrust {
                    key_id: key.key_id,
                    first: first.clone(),
                    second: path,
                });
            }
            return Ok(());
        }
        self.keys.insert(key.key_id, (key, path));
        Ok(())
    }

    /// The trusted key with this id.
    pub fn get(&self, id: &KeyId) -> Option<&PublicKey> {
        self.keys.get(id).map(|(k, _)| k)
    }

    /// Number of distinct trusted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Trusted key ids.
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_display_round_trip() {
        let id = KeyId([1, 2, 3, 4, 5, 6, 7, 0xab]);
        assert_eq!(id.to_string(), "AB07060504030201");
        assert_eq!(id.to_string().parse::<KeyId>().unwrap(), id);
        assert!("ab07060504030201".parse::<KeyId>().is_err());
    }

    #[test]
    fn a_key_of_the_other_kind_says_which_file_to_give() {
        let sk = SecretKey::generate();
        let e = PublicKey::parse(&sk.to_file_text(None), Path::new("demo.key")).unwrap_err();
        assert!(
            e.to_string().contains("demo.key")
                && e.to_string()
                    .contains("this is a secret key; give its public key"),
            "{e}"
        );
        let e =
            SecretKey::parse(&sk.public().to_file_text(), Path::new("demo.pub"), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("this is a public key; give the secret key"),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_wiped() {
        fn wiped_on_drop<T: ZeroizeOnDrop>() {}
        wiped_on_drop::<SecretKey>();
        wiped_on_drop::<SigningKey>();
        wiped_on_drop::<Zeroizing<[u8; 104]>>();
        type Stream = Result<Zeroizing<[u8; 104]>, KeyError>;
        let _: fn(&[u8], &Kdf, &Path) -> Stream = kdf_stream;
        let _: fn(&SecretKey, Option<&[u8]>) -> Zeroizing<String> = SecretKey::to_file_text;
        let _: fn(&Path) -> Result<Zeroizing<String>, KeyError> = SecretKey::read_text;

        // The stream is wiped as soon as it has been applied.
        let mut block = [7u8; 104];
        let mut stream = [0x5au8; 104];
        apply_stream(&mut block, &mut stream);
        assert_eq!(stream, [0u8; 104]);
        assert_eq!(block, [7 ^ 0x5a; 104]);
    }

    #[test]
    fn unencrypted_round_trip() {
        let sk = SecretKey::generate();
        let text = sk.to_file_text(None);
        let p = Path::new("k");
        assert!(!SecretKey::is_encrypted(&text, p).unwrap());
        let back = SecretKey::parse(&text, p, None).unwrap();
        assert_eq!(back.key_id, sk.key_id);
        let pk = PublicKey::parse(&sk.public().to_file_text(), p).unwrap();
        assert_eq!(pk, sk.public());
    }

    #[test]
    fn scrypt_params_match_libsodium_sensitive() {
        assert_eq!(
            scrypt_params(DEFAULT_OPSLIMIT, DEFAULT_MEMLIMIT),
            (20, 8, 1)
        );
    }

    #[test]
    fn public_key_rejects_bad_lengths_and_base64() {
        let p = Path::new("k.pub");
        assert!(PublicKey::parse("untrusted comment: x\nRWQ!!!\n", p).is_err());
        assert!(PublicKey::parse("untrusted comment: x\nRWQ=\n", p).is_err());
        let sk = SecretKey::generate();
        let mut line = sk.public().to_base64();
        line.push_str("AAAA");
        assert!(PublicKey::parse(&line, p).is_err());
    }
}
