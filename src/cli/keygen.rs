//! `gapferry keygen`: a minisign-compatible key pair.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;

use gapferry::durable;
use gapferry::keys::SecretKey;

use super::{password, UsageError};

/// Create a signing key pair in minisign's format.
///
/// The secret key is encrypted with scrypt exactly as `minisign -G` does
/// (password from --password-file or a prompt), or left unencrypted with
/// --unencrypted (as `minisign -G -W`). It is created with mode 0600 and never
/// overwritten without --force.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (keep it offline; see keys/README.md).
    #[arg(long, value_name = "FILE")]
    secret_key: PathBuf,
    /// Where to write the public key (distribute to importing sites).
    #[arg(long, value_name = "FILE")]
    public_key: PathBuf,
    /// Untrusted comment for the public key file.
    #[arg(long, value_name = "TEXT")]
    comment: Option<String>,
    /// Read the password that encrypts the secret key from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "unencrypted")]
    password_file: Option<PathBuf>,
    /// Write the secret key without a password (for HSM-less automation; protect the file).
    #[arg(long)]
    unencrypted: bool,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

/// Writes `text` to `path` atomically with `mode`, refusing to replace an
/// existing file unless `force`.
fn write_new(path: &Path, text: &str, mode: u32, force: bool) -> anyhow::Result<()> {
    let clobber = if force {
        durable::Clobber::Replace
    } else {
        durable::Clobber::Refuse
    };
    durable::write_atomic(path, text.as_bytes(), mode, clobber).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists && !force {
            anyhow::Error::new(UsageError(format!(
                "{} already exists; add --force to overwrite it",
                path.display()
            )))
        } else {
            anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
        }
    })
}

impl KeygenArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        if self.secret_key == self.public_key {
            bail!(UsageError(
                "--secret-key and --public-key must be different files".into()
            ));
        }
        if !self.force {
            for p in [&self.secret_key, &self.public_key] {
                if p.exists() {
                    bail!(UsageError(format!(
                        "{} already exists; add --force to overwrite it",
                        p.display()
                    )));
                }
            }
        }
        let pw = if self.unencrypted {
            None
        } else if let Some(f) = &self.password_file {
            Some(password::from_file(f)?)
        } else if !std::io::stdin().is_terminal() {
            bail!(UsageError(
                "a password is needed for the new secret key and there is no terminal to ask on; \
                 give --password-file FILE, or --unencrypted for a key without a password"
                    .into()
            ));
        } else {
            Some(password::prompt(
                &format!("new secret key {}", self.secret_key.display()),
                true,
            )?)
        };
        let sk = SecretKey::generate();
        let pk = sk.public();
        let mut pub_text = pk.to_file_text();
        if let Some(c) = &self.comment {
            if c.contains(['\n', '\r']) {
                bail!(UsageError("--comment must be one line".into()));
            }
            pub_text = format!("untrusted comment: {c}\n{}\n", pk.to_base64());
        }
        write_new(
            &self.secret_key,
            &sk.to_file_text(pw.as_deref().map(Vec::as_slice)),
            0o600,
            self.force,
        )?;
        write_new(&self.public_key, &pub_text, 0o644, self.force)?;
        eprintln!(
            "gapferry: key {} written: secret key {} ({}), public key {}",
            pk.key_id,
            self.secret_key.display(),
            if pw.is_some() {
                "encrypted"
            } else {
                "unencrypted"
            },
            self.public_key.display()
        );
        eprintln!(
            "gapferry: give {} to importing sites (--trust); keep the secret key offline",
            self.public_key.display()
        );
        Ok(0)
    }
}
