//! `gapferry repair`: makes a split bundle's media whole again. The lost or
//! damaged data volumes are rebuilt from the parity volumes (as verify and
//! import do, checked against the signed index), the lost or damaged
//! parity volumes are computed again from the data, and each is written
//! back under its own name (hidden temporary file, synced, renamed over the
//! bad one). Only files the signed index vouches for are ever written, and
//! only after the index signatures check out.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::hashing::to_hex;
use super::parity::{self, Source};
use super::volumes::{self, Layout, SplitBundle};
use super::BundleError;
use crate::durable;
use crate::keys::TrustSet;
use crate::progress::Observer;

/// What [`repair`] did.
#[derive(Debug, Clone, Default)]
pub struct Repaired {
    pub index_path: PathBuf,
    /// Data volumes written back (path, what was wrong with it).
    pub data: Vec<(PathBuf, String)>,
    /// Parity volumes written back (path, what was wrong with it).
    pub parity: Vec<(PathBuf, String)>,
}

fn input_err(path: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::Input {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes `len` bytes from `src` (from offset 0) into a new file beside
/// `to`, checks their SHA-256 against `sha256` and renames it over `to`.
fn write_back(
    src: &dyn Fn(&mut [u8], u64) -> io::Result<usize>,
    len: u64,
    sha256: &str,
    to: &Path,
) -> Result<(), BundleError> {
    let dir = durable::parent_of(to);
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(BundleError::io(dir))?;
    let tmp_path = tmp.path().to_path_buf();
    let mut out = durable::SyncingWriter::new(
        tmp.as_file()
            .try_clone()
            .map_err(BundleError::io(&tmp_path))?,
    );
    let mut h = Sha256::new();
    let mut buf = vec![0u8; super::hashing::CHUNK];
    let mut pos = 0;
    while pos < len {
        let want = (len - pos).min(buf.len() as u64) as usize;
        let n = src(&mut buf[..want], pos).map_err(BundleError::io(to))?;
        if n == 0 {
            return Err(BundleError::io(to)(io::ErrorKind::UnexpectedEof.into()));
        }
        out.write_all(&buf[..n])
            .map_err(BundleError::io(&tmp_path))?;
        h.update(&buf[..n]);
        pos += n as u64;
    }
    out.finish().map_err(BundleError::io(&tmp_path))?;
    let got = to_hex(&h.finalize().into());
    if got != sha256 {
        return Err(BundleError::Rejected {
            path: to.to_path_buf(),
            reason: format!(
                "the rebuilt file does not match the signed index (SHA-256 {got}, the index says {sha256}); nothing was written over it"
            ),
        });
    }
    durable::persist(tmp, to, durable::Clobber::Replace).map_err(BundleError::io(to))?;
    Ok(())
}

/// Repairs the split bundle `path` names (any of its volumes, its index or
/// its folder). Fails with the reader's rejection (exit 3) when more
/// volumes are lost than the parity volumes can rebuild; nothing is
/// written then.
pub fn repair(
    path: &Path,
    trust: &TrustSet,
    observer: &dyn Observer,
) -> Result<Repaired, BundleError> {
    let mut s: SplitBundle = match volumes::resolve(path)? {
        Layout::Split(s) => *s,
        Layout::Single(p) => {
            return Err(input_err(
                &p,
                "is a single-file bundle; repair rebuilds the volumes of a split bundle exported with --parity",
            ))
        }
    };
    s.check_signatures(trust)?;
    s.check_volumes(true, observer)?;
    let mut done = Repaired {
        index_path: s.index_path.clone(),
        ..Repaired::default()
    };
    let Some(layout) = s.index.layout() else {
        return Ok(done);
    };
    for (k, file) in &s.rebuilt {
        let v = &s.index.volumes[k - 1];
        let to = s.volume_path(*k);
        let f = Arc::clone(file);
        write_back(
            &move |buf, pos| std::os::unix::fs::FileExt::read_at(&*f, buf, pos),
            v.size,
            &v.sha256,
            &to,
        )?;
        let why = s.recovery.rebuilt.iter().find(|(n, _)| n == k);
        done.data
            .push((to, why.map(|(_, w)| w.clone()).unwrap_or_default()));
    }
    if s.recovery.bad_parity.is_empty() {
        return Ok(done);
    }
    // Every data volume is whole now (on disk or rebuilt): compute the lost
    // parity volumes again, into hidden files beside them.
    let mut files = Vec::with_capacity(layout.n);
    for v in &s.index.volumes {
        let p = s.volume_path(v.number);
        files.push((File::open(&p).map_err(BundleError::io(&p))?, p, v.size));
    }
    let data: Vec<Source<'_>> = files
        .iter()
        .map(|(f, p, size)| Source {
            file: f,
            path: p,
            size: *size,
        })
        .collect();
    let wanted: Vec<bool> = (1..=layout.k)
        .map(|j| s.recovery.bad_parity.iter().any(|(n, _)| *n == j))
        .collect();
    let mut outs: Vec<Option<File>> = Vec::with_capacity(layout.k);
    for &w in &wanted {
        outs.push(if w {
            let dir = std::env::temp_dir();
            Some(tempfile::tempfile_in(&dir).map_err(BundleError::io(&dir))?)
        } else {
            None
        });
    }
    observer.start("computing parity", layout.parity_size() * layout.n as u64);
    parity::encode(
        &layout,
        &data,
        &wanted,
        parity::lanes(),
        &mut |j, block| {
            outs[j]
                .as_mut()
                .expect("a wanted parity volume")
                .write_all(block)
                .map_err(BundleError::io(std::env::temp_dir()))
        },
        observer,
    )?;
    observer.finish();
    let entries = &s.index.parity.as_ref().expect("layout has parity").volumes;
    for (j, out) in outs.into_iter().enumerate() {
        let Some(f) = out else { continue };
        let e = &entries[j];
        let to = s.parity_path(e.number);
        write_back(
            &move |buf, pos| std::os::unix::fs::FileExt::read_at(&f, buf, pos),
            e.size,
            &e.sha256,
            &to,
        )?;
        let why = s.recovery.bad_parity.iter().find(|(n, _)| *n == e.number);
        done.parity
            .push((to, why.map(|(_, w)| w.clone()).unwrap_or_default()));
    }
    Ok(done)
}
