//! Passwords for secret keys: from `--password-file` (first line), or a
//! prompt on a terminal. Never from the command line itself. A password
//! file other users can read (or write) is refused; every copy of a password
//! is wiped when dropped.

use std::io::{IsTerminal, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context};
use zeroize::Zeroizing;

use super::UsageError;

/// Longest password file read (its first line is the password).
const MAX_PASSWORD_FILE: u64 = 64 * 1024;

/// Reads the first line of a password file (without its line ending). A
/// regular file with any group or other permission bits is refused with the
/// fix (`chmod 600`): whoever can read it has the key, and whoever can write
/// it chooses the password of a new key.
pub fn from_file(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .with_context(|| format!("cannot read password file {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read password file {}", path.display()))?;
    check_private(path, meta.file_type().is_file(), meta.mode())?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(256));
    file.take(MAX_PASSWORD_FILE)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read password file {}", path.display()))?;
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        bail!(UsageError(format!(
            "password file {} is empty; put the password on its first line",
            path.display()
        )));
    }
    Ok(Zeroizing::new(line.to_vec()))
}

/// Refuses a regular file with group or other permission bits. Pipes and
/// terminals (`--password-file /dev/stdin`, `<(...)`) are not files anyone
/// else can open later.
fn check_private(path: &Path, regular: bool, mode: u32) -> anyhow::Result<()> {
    if regular && mode & 0o077 != 0 {
        bail!(UsageError(format!(
            "password file {} can be read or written by other users (mode {:04o}); \
             run `chmod 600 {}` and try again",
            path.display(),
            mode & 0o7777,
            path.display()
        )));
    }
    Ok(())
}

/// Asks on the terminal; `confirm` asks twice (for new keys).
pub fn prompt(what: &str, confirm: bool) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    if !std::io::stdin().is_terminal() {
        bail!(UsageError(format!(
            "{what}: a password is needed and there is no terminal to ask on; give --password-file"
        )));
    }
    let p = Zeroizing::new(rpassword::prompt_password(format!(
        "Password for {what}: "
    ))?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("Password (again): ")?);
        if again != p {
            bail!(UsageError(
                "the two passwords differ; nothing was written: run the command again".into()
            ));
        }
    }
    if p.is_empty() {
        bail!(UsageError(
            "an empty password is not allowed; use --unencrypted for a key without one".into()
        ));
    }
    Ok(Zeroizing::new(p.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use zeroize::ZeroizeOnDrop;

    fn wiped_on_drop<T: ZeroizeOnDrop>() {}

    #[test]
    fn passwords_are_wiped_and_private_files_required() {
        wiped_on_drop::<Zeroizing<Vec<u8>>>();
        let _: fn(&Path) -> anyhow::Result<Zeroizing<Vec<u8>>> = from_file;
        let _: fn(&str, bool) -> anyhow::Result<Zeroizing<Vec<u8>>> = prompt;

        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("pw");
        std::fs::write(&p, b"secret\r\nignored\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = from_file(&p).unwrap_err();
            assert!(e.downcast_ref::<UsageError>().is_some(), "{mode:o}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("chmod 600 {}", p.display())), "{msg}");
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(&from_file(&p).unwrap()[..], b"secret");
        }
        // Not a regular file: nobody else can open it later.
        check_private(Path::new("/dev/stdin"), false, 0o620).unwrap();
    }
}
