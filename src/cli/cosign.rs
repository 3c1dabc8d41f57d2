//! `gapferry sign`, `gapferry manifest` and `gapferry attach`: more
//! signatures on an exported bundle, made offline, where the signer's key
//! lives (docs/FORMAT.md section 12, keys/README.md).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use gapferry::bundle::cosign::{Cosign, CosignWritten};
use gapferry::bundle::reader::Head;
use gapferry::durable;
use gapferry::keys::{KeyId, PublicKey, SecretKey, TrustSet};
use gapferry::sign::{Signature, MAX_SIGNATURE_FILE};
use gapferry::text::{escape_path, Esc};

use super::export::load_secret_key;
use super::output::{print_json, print_text, Bar};
use super::UsageError;

/// Add a manifest signature to an exported bundle, offline.
///
/// Only the bundle's head is rewritten: the payload frames are copied, not
/// recompressed. The signature is checked against the manifest before it is
/// added; a key that has signed already is refused (exit 2). A single file
/// is replaced atomically (or written to --out); a split bundle is written
/// as a new set with --out, its volume index signed by the new key.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The bundle file; for a split bundle its first volume, its index
    /// (NAME.volumes.json) or its directory.
    bundle: PathBuf,
    /// Secret key to sign with; repeatable.
    #[arg(long = "secret-key", value_name = "FILE", required = true)]
    secret_keys: Vec<PathBuf>,
    /// Password of encrypted secret keys, first line of FILE (else prompted).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Sign only a bundle already signed by one of these keys (public key
    /// file or directory of *.pub files; repeatable): an officer co-signs
    /// what the online key signed, nothing else (exit 3 otherwise).
    #[arg(long = "trust", value_name = "K")]
    trust: Vec<PathBuf>,
    /// Write the signed bundle here instead of replacing BUNDLE (required
    /// for a split bundle: NEW.tar.zst.001, ... and its index).
    #[arg(long, value_name = "NEW")]
    out: Option<PathBuf>,
    /// Replace an existing --out.
    #[arg(long)]
    force: bool,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// No summary on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Add signatures made elsewhere (e.g. by stock minisign) to a bundle.
///
/// Each SIGNATURE is a minisign signature of the manifest `gapferry
/// manifest` wrote, with its trusted comment; it is checked with the
/// signer's public key (--trust) before it is added. Only the head is
/// rewritten, as by `gapferry sign`. A split bundle cannot take them (its
/// index needs a new signature too): join its volumes first, or use
/// `gapferry sign`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The bundle file.
    bundle: PathBuf,
    /// minisign signature files of the bundle's manifest.
    #[arg(value_name = "SIGNATURE.minisig", required = true)]
    signatures: Vec<PathBuf>,
    /// Public key file (or directory of *.pub files) of the signers, to
    /// check each signature before it is added; repeatable. Without it, a
    /// *.pub file of the signature's key beside the signature or in the
    /// current folder is used.
    #[arg(long = "trust", value_name = "K")]
    trust: Vec<PathBuf>,
    /// Write the signed bundle here instead of replacing BUNDLE.
    #[arg(long, value_name = "NEW")]
    out: Option<PathBuf>,
    /// Replace an existing --out.
    #[arg(long)]
    force: bool,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// No summary on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Write a bundle's manifest (the exact signed bytes) for signing elsewhere.
///
/// Prints the stock minisign command that signs it with the right trusted
/// comment, and the `gapferry attach` command that adds the signature.
#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// The bundle file; for a split bundle its first volume, its index or
    /// its directory.
    bundle: PathBuf,
    /// Where to write the manifest.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The signer's minisign secret key, named in the printed command (it
    /// is not read); else minisign's default key.
    #[arg(long, value_name = "FILE")]
    minisign_key: Option<PathBuf>,
    /// Replace an existing --out.
    #[arg(long)]
    force: bool,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// The `--json` output of `sign` and `attach`.
#[derive(Debug, Serialize)]
pub struct CosignOutput {
    /// The bundle as given.
    pub bundle_path: PathBuf,
    /// Deprecated name of `bundle_path` (docs/JSON.md).
    pub bundle: PathBuf,

    /// The bundle file written (the new set's index for a split bundle).
    pub written: PathBuf,
    pub manifest_sha256: String,
    /// Key ids added.
    pub added: Vec<String>,
    /// Key ids of every signature the bundle now carries.
    pub signer_key_ids: Vec<String>,
    /// Deprecated name of `signer_key_ids` (docs/JSON.md).
    pub signers: Vec<String>,
    /// Compressed bytes of the head before and after, and bytes copied as
    /// they were.
    pub head_before: u64,
    pub head_after: u64,
    pub copied: u64,
    /// The new set's volumes (split bundles only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<PathBuf>,
}

/// The `--json` output of `manifest`.
#[derive(Debug, Serialize)]
pub struct ManifestOutput {
    pub bundle_path: PathBuf,
    /// Deprecated name of `bundle_path` (docs/JSON.md).
    pub bundle: PathBuf,

    pub manifest: PathBuf,
    pub manifest_sha256: String,
    pub trusted_comment: String,
    /// Where the minisign command writes its signature.
    pub signature: PathBuf,
    pub minisign_command: String,
    pub attach_command: String,
}

fn report(
    bundle: &Path,
    c: &CosignWritten,
    head: &Head,
    json: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let sha = head.manifest_sha256.to_string();
    let ids = |v: &[gapferry::keys::KeyId]| v.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    if json {
        return print_json(
            &CosignOutput {
                bundle_path: bundle.to_path_buf(),
                bundle: bundle.to_path_buf(),
                written: c.bundle.clone(),
                manifest_sha256: sha,
                added: ids(&c.added),
                signer_key_ids: ids(&c.signers),
                signers: ids(&c.signers),
                head_before: c.head_before,
                head_after: c.head_after,
                copied: c.copied,
                volumes: c.volumes.clone(),
            },
            None,
        );
    }
    if !quiet {
        // What the new signature vouches for, so the signer sees it.
        let m = &head.manifest;
        eprintln!(
            "signed manifest {sha}: bundle {} channel {} sequence {}, expires {}, {} item(s), {} file(s), {} bytes",
            Esc(&m.bundle_id.to_string()),
            Esc(&m.channel),
            m.sequence,
            m.expires,
            m.items.len(),
            m.files.len(),
            m.total_size()
        );
        eprintln!(
            "added signature(s) by {} to {}; signed by {} ({} key(s)); head {} -> {} bytes, {} bytes copied as they were",
            ids(&c.added).join(", "),
            escape_path(&c.bundle),
            ids(&c.signers).join(", "),
            c.signers.len(),
            c.head_before,
            c.head_after,
            c.copied
        );
    }
    Ok(())
}

impl SignArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        let mut keys: Vec<SecretKey> = Vec::new();
        for p in &self.secret_keys {
            let k = load_secret_key(p, self.password_file.as_deref())?;
            if keys.iter().any(|o| o.key_id == k.key_id) {
                return Err(UsageError(format!(
                    "{} is the same key ({}) as another --secret-key",
                    p.display(),
                    k.key_id
                ))
                .into());
            }
            keys.push(k);
        }
        let trust = if self.trust.is_empty() {
            None
        } else {
            Some(TrustSet::load(&self.trust)?)
        };
        let mut c = Cosign::open(&self.bundle)?;
        if let Some(t) = &trust {
            gapferry::bundle::trust::require(c.head(), t, 1, &self.bundle)?;
        }
        for (k, p) in keys.iter().zip(&self.secret_keys) {
            c.sign(k, p)?;
        }
        let head = c.head().clone();
        let bar = Bar::new(self.quiet || self.json);
        let w = c.write(self.out.as_deref(), &keys, self.force, &bar)?;
        report(&self.bundle, &w, &head, self.json, self.quiet)?;
        Ok(0)
    }
}

/// Reads a signature file given on the command line.
fn read_signature(path: &Path) -> anyhow::Result<Signature> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_SIGNATURE_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() > MAX_SIGNATURE_FILE {
        return Err(UsageError(format!(
            "{} is larger than 8 KiB: not a minisign signature file",
            path.display()
        ))
        .into());
    }
    Signature::parse(&bytes).map_err(|e| {
        UsageError(format!(
            "{}: {e}; give the .minisig file minisign -S wrote",
            path.display()
        ))
        .into()
    })
}

/// The public key of `id` among the `*.pub` files directly in `dirs` (files
/// that do not parse are skipped): without `--trust`, `attach` looks beside
/// the signature and in the current folder. Only to check the signature
/// before adding it: trust is the importer's.
fn find_public_key(id: KeyId, dirs: &[PathBuf]) -> Option<(PublicKey, PathBuf)> {
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut pubs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pub") && p.is_file())
            .collect();
        pubs.sort();
        for p in pubs {
            if let Ok(k) = PublicKey::from_file(&p) {
                if k.key_id == id {
                    return Some((k, p));
                }
            }
        }
    }
    None
}

impl AttachArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        let trust = if self.trust.is_empty() {
            None
        } else {
            Some(TrustSet::load(&self.trust)?)
        };
        let mut c = Cosign::open(&self.bundle)?;
        for p in &self.signatures {
            let sig = read_signature(p)?;
            let key = match &trust {
                Some(t) => t.get(&sig.key_id).cloned().ok_or_else(|| {
                    UsageError(format!(
                        "{} is a signature by key {}, which no --trust key is; add its public key with --trust",
                        p.display(),
                        sig.key_id
                    ))
                })?,
                None => {
                    let beside = match p.parent() {
                        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                        _ => PathBuf::from("."),
                    };
                    let dirs = [beside, PathBuf::from(".")];
                    let (k, found) = find_public_key(sig.key_id, &dirs).ok_or_else(|| {
                        UsageError(format!(
                            "{} is a signature by key {}, and no *.pub file of that key is beside it or in the current folder; give the signer's public key with --trust K.pub, so the signature is checked before it is added",
                            p.display(),
                            sig.key_id
                        ))
                    })?;
                    if !self.quiet && !self.json {
                        eprintln!(
                            "checking {} with {}",
                            escape_path(p),
                            escape_path(&found)
                        );
                    }
                    k
                }
            };
            c.add(sig, &key, p)?;
        }
        let head = c.head().clone();
        let bar = Bar::new(self.quiet || self.json);
        let w = c.write(self.out.as_deref(), &[], self.force, &bar)?;
        report(&self.bundle, &w, &head, self.json, self.quiet)?;
        Ok(0)
    }
}

/// Quotes `s` for a POSIX shell: as it is when it is plainly safe, else in
/// single quotes (a single quote inside as `'\''`).
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:=@%+,-".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn quote_path(p: &Path) -> String {
    shell_quote(&p.to_string_lossy())
}

impl ManifestArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        let c = Cosign::open(&self.bundle)?;
        let head = c.head();
        let clobber = if self.force {
            durable::Clobber::Replace
        } else {
            durable::Clobber::Refuse
        };
        durable::write_atomic(&self.out, &head.manifest_bytes, durable::FILE_MODE, clobber)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    anyhow::Error::new(UsageError(format!(
                        "{} already exists; add --force to overwrite it",
                        self.out.display()
                    )))
                } else {
                    anyhow::Error::new(e).context(format!("cannot write {}", self.out.display()))
                }
            })?;
        let comment = head.manifest.trusted_comment();
        let mut sig = self.out.as_os_str().to_os_string();
        sig.push(".minisig");
        let sig = PathBuf::from(sig);
        let key = match &self.minisign_key {
            Some(k) => format!(" -s {}", quote_path(k)),
            None => String::new(),
        };
        let minisign = format!(
            "minisign -S{key} -m {} -x {} -t {}",
            quote_path(&self.out),
            quote_path(&sig),
            shell_quote(&comment)
        );
        let pubkey = match &self.minisign_key {
            Some(k) if k.extension().is_some_and(|e| e == "key") => k.with_extension("pub"),
            _ => PathBuf::from("SIGNER.pub"),
        };
        let attach = format!(
            "gapferry attach {} {} --trust {}",
            quote_path(&self.bundle),
            quote_path(&sig),
            quote_path(&pubkey)
        );
        if self.json {
            print_json(
                &ManifestOutput {
                    bundle_path: self.bundle.clone(),
                    bundle: self.bundle.clone(),
                    manifest: self.out.clone(),
                    manifest_sha256: head.manifest_sha256.to_string(),
                    trusted_comment: comment,
                    signature: sig,
                    minisign_command: minisign,
                    attach_command: attach,
                },
                None,
            )?;
            return Ok(0);
        }
        let default_key = if self.minisign_key.is_none() {
            " (minisign's default secret key ~/.minisign/minisign.key; add -s KEY for another)"
        } else {
            ""
        };
        let text = format!(
            "wrote the manifest of bundle {} sequence {} (SHA-256 {}) to {}\n\
             sign it where the key is{default_key}:\n  {}\n\
             the signature lands in {}; then, with the bundle and the signer's public key:\n  {}\n",
            Esc(&head.manifest.bundle_id.to_string()),
            head.manifest.sequence,
            head.manifest_sha256,
            escape_path(&self.out),
            Esc(&minisign),
            escape_path(&sig),
            Esc(&attach),
        );
        if let Err(e) = print_text(&text) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(e.into());
            }
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a/b.json"), "a/b.json");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
