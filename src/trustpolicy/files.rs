//! Policies on disk: a policy file (the exact signed bytes) with its root
//! signatures beside it as `<file>.<KEYID>.minisig`, or a folder holding a
//! chain `1.json`, `2.json`, ... with theirs. Writes go through
//! [`crate::durable`] and never replace an existing file.

use std::path::{Path, PathBuf};

use super::{SignedPolicy, TrustError, MAX_POLICY_SIZE};
use crate::durable::{self, Clobber};
use crate::keys::KeyId;
use crate::sign::{Signature, MAX_SIGNATURE_FILE};

/// Most versions a chain folder (and so a bundle) carries.
pub const MAX_CHAIN: usize = 8;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrustError + '_ {
    move |source| TrustError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn usage(path: &Path, reason: impl Into<String>) -> TrustError {
    TrustError::Usage {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_capped(path: &Path, cap: usize) -> Result<Vec<u8>, TrustError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(io(path))?;
    let mut bytes = Vec::new();
    f.take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() > cap {
        return Err(usage(path, format!("larger than {cap} bytes")));
    }
    Ok(bytes)
}

/// The sidecar name of `key_id`'s signature of the policy file `policy`.
pub fn signature_path(policy: &Path, key_id: KeyId) -> PathBuf {
    let mut name = policy.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{key_id}.minisig"));
    policy.with_file_name(name)
}

/// Reads one policy file and the signatures beside it.
pub fn read_version(path: &Path) -> Result<SignedPolicy, TrustError> {
    let bytes = read_capped(path, MAX_POLICY_SIZE)?;
    let mut policy = SignedPolicy::parse(bytes)
        .map_err(|r| usage(path, format!("not a {} trust policy: {r}", super::FORMAT)))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = durable::parent_of(path);
    let mut sidecars = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = file
            .strip_prefix(&format!("{name}."))
            .and_then(|r| r.strip_suffix(".minisig"))
        else {
            continue;
        };
        sidecars.push((id.to_string(), entry.path()));
    }
    sidecars.sort();
    for (id, sp) in sidecars {
        let id: KeyId = id
            .parse()
            .map_err(|()| usage(&sp, "not named <policy>.<16 upper-case hex digits>.minisig"))?;
        let sig = Signature::parse(&read_capped(&sp, MAX_SIGNATURE_FILE)?)
            .map_err(|e| usage(&sp, e.to_string()))?;
        if sig.key_id != id {
            return Err(usage(
                &sp,
                format!("holds a signature by key {}, not {id}", sig.key_id),
            ));
        }
        policy.add_signature(sig).map_err(|r| usage(&sp, r))?;
    }
    Ok(policy)
}

/// Reads `--trust-policy`: one policy file (one version), or a folder
/// holding `1.json`, `2.json`, ... (consecutive versions, each file's
/// number its version), of which the newest [`MAX_CHAIN`] are returned.
pub fn read_chain(path: &Path) -> Result<Vec<SignedPolicy>, TrustError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if !meta.is_dir() {
        return Ok(vec![read_version(path)?]);
    }
    let mut numbered = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io(path))? {
        let entry = entry.map_err(io(path))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = file
            .strip_suffix(".json")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            let n: u64 = n
                .parse()
                .map_err(|_| usage(&entry.path(), "version number out of range"))?;
            numbered.push((n, entry.path()));
        }
    }
    if numbered.is_empty() {
        return Err(usage(
            path,
            "holds no <N>.json policy files; give a policy file or a folder of 1.json, 2.json, ...",
        ));
    }
    numbered.sort();
    let mut chain = Vec::new();
    for (n, p) in &numbered {
        let v = read_version(p)?;
        if v.version() != *n {
            return Err(usage(
                p,
                format!("holds version {}, but its name says {n}", v.version()),
            ));
        }
        if let Some(prev) = chain.last().map(SignedPolicy::version) {
            if *n != prev + 1 {
                return Err(usage(
                    p,
                    format!("version {prev} is followed by {n}: the chain has a gap"),
                ));
            }
        }
        chain.push(v);
    }
    let skip = chain.len().saturating_sub(MAX_CHAIN);
    Ok(chain.split_off(skip))
}

/// Writes a new policy file; never replaces one.
pub fn write_policy(path: &Path, bytes: &[u8]) -> Result<(), TrustError> {
    durable::write_atomic(path, bytes, durable::FILE_MODE, Clobber::Refuse).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            usage(path, "already exists; choose another --out (policies are never replaced: each version is a new file)")
        } else {
            TrustError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })
}

/// Writes `sig` beside the policy file `policy`; refuses if that key's
/// signature is already there.
pub fn write_signature(policy: &Path, sig: &Signature) -> Result<PathBuf, TrustError> {
    let out = signature_path(policy, sig.key_id);
    let text = sig.to_text(&format!(
        "gapferry trust policy signature by root key {}",
        sig.key_id
    ));
    durable::write_atomic(&out, text.as_bytes(), durable::FILE_MODE, Clobber::Refuse).map_err(
        |e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                usage(
                    &out,
                    format!("key {} has already signed this policy", sig.key_id),
                )
            } else {
                TrustError::Io {
                    path: out.clone(),
                    source: e,
                }
            }
        },
    )?;
    Ok(out)
}
