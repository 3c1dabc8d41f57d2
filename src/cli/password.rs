//! Passwords for secret keys: from `--password-file` (first line), or a
//! prompt on a terminal. Never from the command line itself.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context};

use super::UsageError;

/// Reads the first line of a password file (without its line ending).
pub fn from_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read password file {}", path.display()))?;
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        bail!(UsageError(format!(
            "password file {} is empty; put the password on its first line",
            path.display()
        )));
    }
    Ok(line.to_vec())
}

/// Asks on the terminal; `confirm` asks twice (for new keys).
pub fn prompt(what: &str, confirm: bool) -> anyhow::Result<Vec<u8>> {
    if !std::io::stdin().is_terminal() {
        bail!(UsageError(format!(
            "{what}: a password is needed and there is no terminal to ask on; give --password-file"
        )));
    }
    let p = rpassword::prompt_password(format!("Password for {what}: "))?;
    if confirm {
        let again = rpassword::prompt_password("Password (again): ")?;
        if again != p {
            bail!(UsageError("the two passwords differ".into()));
        }
    }
    if p.is_empty() {
        bail!(UsageError(
            "an empty password is not allowed; use --unencrypted for a key without one".into()
        ));
    }
    Ok(p.into_bytes())
}
