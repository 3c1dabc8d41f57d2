//! Parity volumes of a split bundle: the erasure-code layout (docs/FORMAT.md,
//! section 10, "Parity volumes"), computing the parity volumes from the data
//! volumes, and rebuilding lost data volumes from any `n` good volumes.
//!
//! This module owns the arithmetic and the stripe-by-stripe streaming only:
//! which volume is good (its size and signed SHA-256) is decided by
//! [`super::volumes`], which also names the files. Memory is one stripe,
//! whatever the bundle size: the block size is chosen so the coder's work
//! area stays within [`WORK_LIMIT`].

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use serde::{Deserialize, Serialize};

use super::BundleError;
use crate::progress::Observer;

mod encoder;
pub use encoder::{encode, lanes, MAX_LANES};

/// The erasure code of every parity volume this gapferry writes.
pub const SCHEME: &str = "reed-solomon-gf16-leopard";
/// Most parity volumes one bundle may carry (`.p001` to `.p999`).
pub const MAX_PARITY: usize = 999;
/// Largest erasure block.
pub const MAX_BLOCK: u64 = 1 << 20;
/// Smallest erasure block, and the multiple every block size is of.
pub const BLOCK_ALIGN: u64 = 64;
/// Bound on the coder's work area (work shards x block size).
pub const WORK_LIMIT: u64 = 32 << 20;

/// One parity volume in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParityEntry {
    /// 1-based; the file is `<bundle>.p<number as 3 digits>`.
    pub number: usize,
    pub size: u64,
    /// Lower-case hex SHA-256 of the parity volume file.
    pub sha256: String,
}

/// The `parity` object of a `gapferry-volumes/2` index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParityIndex {
    /// Exactly [`SCHEME`].
    pub scheme: String,
    /// Bytes of one erasure block (a multiple of 64).
    pub block_size: u64,
    pub volumes: Vec<ParityEntry>,
}

/// Shards in the coder's work area for `n` data and `k` parity shards (the
/// larger of reed-solomon-simd's encoder and decoder needs, rounded up).
fn work_shards(n: usize, k: usize) -> u64 {
    (k.next_power_of_two() + n).next_power_of_two() as u64
}

/// The block size the writer uses for `n` data volumes of `volume_size`
/// and `k` parity volumes: at most 1 MiB, no larger than a volume (rounded
/// up to 64), and small enough that the work area stays within 32 MiB.
pub fn block_size_for(volume_size: u64, n: usize, k: usize) -> u64 {
    let by_work = (WORK_LIMIT / work_shards(n, k)) / BLOCK_ALIGN * BLOCK_ALIGN;
    let by_volume = volume_size.div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN;
    MAX_BLOCK.min(by_volume).min(by_work).max(BLOCK_ALIGN)
}

/// The shape of one split bundle's erasure code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Data volumes.
    pub n: usize,
    /// Parity volumes.
    pub k: usize,
    /// Size of every data volume but the last.
    pub volume_size: u64,
    pub block: u64,
}

impl Shape {
    /// Stripes: blocks per (zero-padded) data volume.
    pub fn stripes(&self) -> u64 {
        self.volume_size.div_ceil(self.block)
    }

    /// Size of every parity volume.
    pub fn parity_size(&self) -> u64 {
        self.stripes() * self.block
    }

    /// The layout's own rules (an index that breaks them is refused before
    /// anything is allocated).
    pub fn check(&self) -> Result<(), String> {
        if self.k == 0 || self.k > MAX_PARITY {
            return Err(format!(
                "must list 1 to {MAX_PARITY} parity volumes, lists {}",
                self.k
            ));
        }
        if self.block == 0 || !self.block.is_multiple_of(BLOCK_ALIGN) || self.block > MAX_BLOCK {
            return Err(format!(
                "parity block_size {} must be a multiple of {BLOCK_ALIGN} from {BLOCK_ALIGN} to {MAX_BLOCK}",
                self.block
            ));
        }
        if self.block > BLOCK_ALIGN && work_shards(self.n, self.k) * self.block > WORK_LIMIT {
            return Err(format!(
                "parity block_size {} is too large for {} data and {} parity volumes (the coder would need more than 32 MiB)",
                self.block, self.n, self.k
            ));
        }
        if !ReedSolomonEncoder::supports(self.n, self.k) {
            return Err(format!(
                "{} data and {} parity volumes are beyond the erasure code",
                self.n, self.k
            ));
        }
        Ok(())
    }
}

/// Where each computed block goes: `(volume index, bytes)`.
pub type BlockSink<'a> = dyn FnMut(usize, &[u8]) -> Result<(), BundleError> + 'a;

/// A volume to read: its file, its path (for errors) and its size.
#[derive(Debug)]
pub struct Source<'a> {
    pub file: &'a File,
    pub path: &'a Path,
    pub size: u64,
}

/// Reads `buf.len()` bytes of `src` from `start`, zero-padded past the
/// volume's end.
pub(super) fn read_span(src: &Source<'_>, start: u64, buf: &mut [u8]) -> Result<(), BundleError> {
    let have = src.size.saturating_sub(start).min(buf.len() as u64) as usize;
    src.file
        .read_exact_at(&mut buf[..have], start)
        .map_err(BundleError::io(src.path))?;
    buf[have..].fill(0);
    Ok(())
}

/// Reads block `s` of `src` into `buf`, zero-padded past the volume's end.
fn read_block(src: &Source<'_>, s: u64, buf: &mut [u8]) -> Result<(), BundleError> {
    read_span(src, s * buf.len() as u64, buf)
}

pub(super) fn coder_err(path: &Path, e: reed_solomon_simd::Error) -> BundleError {
    BundleError::io(path)(io::Error::other(format!("erasure code: {e}")))
}

/// Rebuilds the data volumes missing from `data` (`None`) from the others
/// and the parity volumes in `parity` (`None`: not usable), stripe by
/// stripe, handing each rebuilt block to `out(i, block)` (`i` 0-based, the
/// block cut to the volume's size). The caller has made sure enough are
/// present: at least `n` in all.
pub fn rebuild(
    layout: &Shape,
    sizes: &[u64],
    data: &[Option<Source<'_>>],
    parity: &[Option<Source<'_>>],
    out: &mut BlockSink<'_>,
    observer: &dyn Observer,
) -> Result<(), BundleError> {
    assert_eq!(data.len(), layout.n);
    assert_eq!(parity.len(), layout.k);
    let missing = data.iter().filter(|d| d.is_none()).count();
    let use_parity: Vec<&Source<'_>> = parity.iter().flatten().take(missing).collect();
    let some_path = data
        .iter()
        .flatten()
        .chain(parity.iter().flatten())
        .map(|s| s.path)
        .next()
        .unwrap_or(Path::new("."));
    if use_parity.len() < missing {
        return Err(coder_err(
            some_path,
            reed_solomon_simd::Error::NotEnoughShards {
                original_count: layout.n,
                original_received_count: layout.n - missing,
                recovery_received_count: use_parity.len(),
            },
        ));
    }
    let parity_index: Vec<usize> = parity
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_some())
        .map(|(j, _)| j)
        .take(missing)
        .collect();
    let block = layout.block as usize;
    let mut dec =
        ReedSolomonDecoder::new(layout.n, layout.k, block).map_err(|e| coder_err(some_path, e))?;
    let mut buf = vec![0u8; block];
    for s in 0..layout.stripes() {
        for (i, d) in data.iter().enumerate() {
            if let Some(src) = d {
                read_block(src, s, &mut buf)?;
                dec.add_original_shard(i, &buf)
                    .map_err(|e| coder_err(src.path, e))?;
            }
        }
        for (src, &j) in use_parity.iter().zip(&parity_index) {
            read_block(src, s, &mut buf)?;
            dec.add_recovery_shard(j, &buf)
                .map_err(|e| coder_err(src.path, e))?;
        }
        let result = dec.decode().map_err(|e| coder_err(some_path, e))?;
        for (i, shard) in result.restored_original_iter() {
            let start = s * layout.block;
            let keep = sizes[i].saturating_sub(start).min(layout.block) as usize;
            if keep > 0 {
                out(i, &shard[..keep])?;
            }
        }
        observer.advance(layout.block * missing as u64);
    }
    Ok(())
}

/// `<bundle>.pNNN`.
pub fn parity_path(bundle: &Path, number: usize) -> PathBuf {
    let mut s = bundle.as_os_str().to_os_string();
    s.push(format!(".p{number:03}"));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn block_sizes_bound_the_work_area() {
        assert_eq!(block_size_for(64 << 20, 16, 2), MAX_BLOCK);
        assert_eq!(block_size_for(1000, 3, 2), 1024);
        assert_eq!(block_size_for(1, 3, 2), 64);
        for (n, k) in [(1, 1), (16, 2), (999, 2), (999, 999), (500, 300)] {
            let b = block_size_for(4 << 30, n, k);
            let l = Shape {
                n,
                k,
                volume_size: 4 << 30,
                block: b,
            };
            l.check().unwrap();
            assert!(b == BLOCK_ALIGN || work_shards(n, k) * b <= WORK_LIMIT);
        }
    }

    /// Every way of losing up to `k` of `n + k` volumes rebuilds the data.
    #[test]
    fn any_k_losses_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let (n, k, vs) = (4usize, 2usize, 1000u64);
        let total = 3 * vs + 333;
        let stream = noise(total as usize, 5);
        let sizes: Vec<u64> = (0..n as u64).map(|i| (total - i * vs).min(vs)).collect();
        let layout = Shape {
            n,
            k,
            volume_size: vs,
            block: 256,
        };
        let mut paths = Vec::new();
        for i in 0..n {
            let p = dir.path().join(format!("d{i}"));
            let start = i * vs as usize;
            std::fs::write(&p, &stream[start..start + sizes[i] as usize]).unwrap();
            paths.push(p);
        }
        let files: Vec<File> = paths.iter().map(|p| File::open(p).unwrap()).collect();
        let data: Vec<Source<'_>> = files
            .iter()
            .zip(&paths)
            .zip(&sizes)
            .map(|((f, p), &s)| Source {
                file: f,
                path: p,
                size: s,
            })
            .collect();
        let mut par = vec![Vec::new(); k];
        encode(
            &layout,
            &data,
            &[true; 2],
            2,
            &mut |j, b| {
                par[j].extend_from_slice(b);
                Ok(())
            },
            &NoProgress,
        )
        .unwrap();
        assert!(par.iter().all(|p| p.len() as u64 == layout.parity_size()));
        let mut ppaths = Vec::new();
        for (j, p) in par.iter().enumerate() {
            let path = dir.path().join(format!("p{j}"));
            std::fs::write(&path, p).unwrap();
            ppaths.push(path);
        }
        let pfiles: Vec<File> = ppaths.iter().map(|p| File::open(p).unwrap()).collect();
        for lost in 0u32..(1 << (n + k)) {
            if lost.count_ones() as usize > k || lost & ((1 << n) - 1) == 0 {
                continue;
            }
            let d: Vec<Option<Source<'_>>> = (0..n)
                .map(|i| {
                    (lost & (1 << i) == 0).then(|| Source {
                        file: &files[i],
                        path: &paths[i],
                        size: sizes[i],
                    })
                })
                .collect();
            let p: Vec<Option<Source<'_>>> = (0..k)
                .map(|j| {
                    (lost & (1 << (n + j)) == 0).then(|| Source {
                        file: &pfiles[j],
                        path: &ppaths[j],
                        size: layout.parity_size(),
                    })
                })
                .collect();
            let mut got = vec![Vec::new(); n];
            rebuild(
                &layout,
                &sizes,
                &d,
                &p,
                &mut |i, b| {
                    got[i].extend_from_slice(b);
                    Ok(())
                },
                &NoProgress,
            )
            .unwrap();
            for i in 0..n {
                if lost & (1 << i) != 0 {
                    let start = i * vs as usize;
                    assert!(
                        got[i] == stream[start..start + sizes[i] as usize],
                        "volume {i} with lost set {lost:b}"
                    );
                }
            }
        }
    }
}
