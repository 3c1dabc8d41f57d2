//! Computing the parity volumes of a split bundle from its data volumes
//! (docs/FORMAT.md section 10, "Parity volumes"), fast: every stripe is cut
//! into pieces on 64-byte boundaries, small enough that a piece's work stays
//! in the CPU caches, and up to [`MAX_LANES`] threads read and encode pieces
//! at once while the caller hashes and writes the result, in order.
//!
//! It owns only the cutting and the threads; the layout, the block size and
//! the coder's errors are [`super`]'s. It must never change a byte of the
//! result: the pieces put together are exactly one
//! `ReedSolomonEncoder::new(n, k, block)` per stripe, as the format says.

use std::io;
use std::sync::mpsc::{Receiver, SyncSender};

use reed_solomon_simd::ReedSolomonEncoder;

use super::{coder_err, read_span, BlockSink, Shape, Source, BLOCK_ALIGN};
use crate::bundle::BundleError;
use crate::progress::Observer;

/// Most threads [`encode`] reads and encodes with.
pub const MAX_LANES: usize = 2;

/// Threads [`encode`] should use here: one per CPU, at most [`MAX_LANES`].
pub fn lanes() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_LANES)
}

/// Widest piece of a stripe one lane encodes at a time.
const MAX_PIECE: u64 = 256 << 10;

/// How [`encode`] cuts the work: every stripe is cut into pieces of
/// `piece` bytes (the last one of a block may be shorter), and piece `q`
/// (counting through all stripes) is encoded by lane `q % lanes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cut {
    lanes: usize,
    piece: u64,
}

impl Cut {
    /// `lanes` threads (at least 1, no more than there are pieces) for
    /// `layout`. A piece is a multiple of [`BLOCK_ALIGN`], at most
    /// [`MAX_PIECE`] and at most `block / (2 x lanes)` (unless that is below
    /// 64 bytes): so the coders of all lanes together need at most half the
    /// work area of one coder of a whole block, and the recovery pieces in
    /// flight (two per lane) are at most K blocks, as docs/FORMAT.md
    /// promises.
    fn new(layout: &Shape, lanes: usize) -> Cut {
        let lanes = lanes.max(1);
        let piece = (layout.block / (2 * lanes as u64) / BLOCK_ALIGN * BLOCK_ALIGN)
            .clamp(BLOCK_ALIGN, MAX_PIECE)
            .min(layout.block);
        let per_stripe = layout.block.div_ceil(piece);
        let lanes = (lanes as u64).min(layout.stripes() * per_stripe).max(1) as usize;
        Cut { lanes, piece }
    }

    fn per_stripe(&self, layout: &Shape) -> u64 {
        layout.block.div_ceil(self.piece)
    }

    /// Offset in every volume and width of piece `q`.
    fn span(&self, layout: &Shape, q: u64) -> (u64, usize) {
        let per = self.per_stripe(layout);
        let (s, p) = (q / per, q % per);
        let off = p * self.piece;
        let width = self.piece.min(layout.block - off);
        (s * layout.block + off, width as usize)
    }
}

/// What a lane hands the caller: the recovery pieces of one piece of a
/// stripe (`width` bytes of each wanted parity volume, back to back).
type Piece = Result<(Vec<u8>, usize), BundleError>;

/// A lane's coder: `ReedSolomonEncoder` for pieces of `width` bytes, fed
/// from one read buffer. (Reading straight into the coder's own work area
/// would save that copy, a few per cent of the pass, but only by
/// re-implementing the crate's encoding on its engine: the parity bytes
/// would then depend on code the crate does not promise to keep in step.)
struct Coder {
    enc: ReedSolomonEncoder,
    width: usize,
    read: Vec<u8>,
}

impl Coder {
    fn new(layout: &Shape, width: usize, path: &std::path::Path) -> Result<Coder, BundleError> {
        let enc =
            ReedSolomonEncoder::new(layout.n, layout.k, width).map_err(|e| coder_err(path, e))?;
        Ok(Coder {
            enc,
            width,
            read: vec![0u8; width],
        })
    }

    fn width(&self) -> usize {
        self.width
    }

    /// Reads the piece at `start` of every data volume, encodes it and
    /// appends the wanted recovery pieces to `out`.
    fn encode(
        &mut self,
        data: &[Source<'_>],
        start: u64,
        wanted: &[bool],
        out: &mut Vec<u8>,
    ) -> Result<(), BundleError> {
        for src in data {
            read_span(src, start, &mut self.read)?;
            self.enc
                .add_original_shard(&self.read[..])
                .map_err(|e| coder_err(src.path, e))?;
        }
        let result = self.enc.encode().map_err(|e| coder_err(data[0].path, e))?;
        for (shard, _) in result.recovery_iter().zip(wanted).filter(|(_, w)| **w) {
            out.extend_from_slice(shard);
        }
        Ok(())
    }
}

/// One lane of [`encode`]: encodes pieces `lane`, `lane + lanes`, ... and
/// sends them in that order. Stops quietly when the caller has stopped.
fn encode_lane(
    layout: &Shape,
    cut: Cut,
    lane: usize,
    data: &[Source<'_>],
    wanted: &[bool],
    to_caller: &SyncSender<Piece>,
    spare: &Receiver<Vec<u8>>,
) {
    let pieces = layout.stripes() * cut.per_stripe(layout);
    let out_len = wanted.iter().filter(|w| **w).count() * cut.piece as usize;
    // A new coder when the width changes (the last piece of a block may be
    // narrower): the work area is that of the piece.
    let mut coder: Option<Coder> = None;
    // Two buffers of recovery pieces per lane: one in the channel, one
    // being filled; after that each comes back from the caller.
    let mut allocated = 0;
    let mut q = lane as u64;
    while q < pieces {
        let (start, width) = cut.span(layout, q);
        let piece = (|| -> Result<Vec<u8>, BundleError> {
            let c = match &mut coder {
                Some(c) if c.width() == width => c,
                _ => coder.insert(Coder::new(layout, width, data[0].path)?),
            };
            let mut buf = if allocated < 2 {
                allocated += 1;
                Vec::with_capacity(out_len)
            } else {
                match spare.recv() {
                    Ok(b) => b,
                    // The caller stopped; it has its reason.
                    Err(_) => return Ok(Vec::new()),
                }
            };
            buf.clear();
            c.encode(data, start, wanted, &mut buf)?;
            Ok(buf)
        })();
        let failed = piece.is_err();
        if to_caller.send(piece.map(|b| (b, width))).is_err() || failed {
            return;
        }
        q += cut.lanes as u64;
    }
}

/// Computes the parity volumes of `data` (all `n` data volumes, in order),
/// handing their bytes to `out(j, bytes)` (`j` 0-based) in order, on the
/// calling thread, in pieces of at most one block: the pieces of parity
/// volume `j` follow each other, and put end to end they are the volume.
/// `wanted[j]` false skips parity volume `j` (repair regenerates only the
/// lost ones).
///
/// Every stripe is cut into pieces on 64-byte boundaries, which the code
/// computes independently (each 64 bytes of a shard are 32 symbols of their
/// own), so the result is byte for byte that of one
/// `ReedSolomonEncoder::new(n, k, block)` per stripe; up to `lanes` threads
/// (at most [`MAX_LANES`]) read and encode pieces at once while the caller
/// writes.
pub fn encode(
    layout: &Shape,
    data: &[Source<'_>],
    wanted: &[bool],
    lanes: usize,
    out: &mut BlockSink<'_>,
    observer: &dyn Observer,
) -> Result<(), BundleError> {
    assert_eq!(data.len(), layout.n);
    assert_eq!(wanted.len(), layout.k);
    let cut = Cut::new(layout, lanes.min(MAX_LANES));
    let pieces = layout.stripes() * cut.per_stripe(layout);
    std::thread::scope(|scope| {
        let mut from_lanes = Vec::with_capacity(cut.lanes);
        let mut to_lanes = Vec::with_capacity(cut.lanes);
        for lane in 0..cut.lanes {
            // One piece waiting per lane: memory stays bounded however far
            // a lane could run ahead of the writing.
            let (to_caller, from_lane) = std::sync::mpsc::sync_channel::<Piece>(1);
            let (to_lane, spare) = std::sync::mpsc::channel::<Vec<u8>>();
            from_lanes.push(from_lane);
            to_lanes.push(to_lane);
            scope.spawn(move || {
                encode_lane(layout, cut, lane, data, wanted, &to_caller, &spare);
            });
        }
        // Dropping the channels on return (an error here) stops the lanes.
        for q in 0..pieces {
            let lane = (q % cut.lanes as u64) as usize;
            let (buf, width) = match from_lanes[lane].recv() {
                Ok(piece) => piece?,
                Err(_) => {
                    return Err(BundleError::io(data[0].path)(io::Error::other(
                        "a parity encoding thread stopped",
                    )))
                }
            };
            for (chunk, (j, _)) in buf
                .chunks(width)
                .zip(wanted.iter().enumerate().filter(|(_, w)| **w))
            {
                out(j, chunk)?;
            }
            // The lane may be done: nothing to return to.
            let _ = to_lanes[lane].send(buf);
            observer.advance(width as u64 * layout.n as u64);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::PathBuf;

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

    /// `n` volumes of `sizes` bytes of noise in a temporary folder.
    struct Volumes {
        _dir: tempfile::TempDir,
        paths: Vec<PathBuf>,
        files: Vec<File>,
        bytes: Vec<Vec<u8>>,
    }

    impl Volumes {
        fn new(sizes: &[u64], seed: u64) -> Volumes {
            let dir = tempfile::tempdir().unwrap();
            let mut v = Volumes {
                paths: Vec::new(),
                files: Vec::new(),
                bytes: Vec::new(),
                _dir: dir,
            };
            for (i, &size) in sizes.iter().enumerate() {
                let p = v._dir.path().join(format!("d{i}"));
                let b = noise(size as usize, seed + i as u64);
                std::fs::write(&p, &b).unwrap();
                v.files.push(File::open(&p).unwrap());
                v.paths.push(p);
                v.bytes.push(b);
            }
            v
        }

        /// The sizes the index would list: as written, or as claimed.
        fn sources(&self, sizes: &[u64]) -> Vec<Source<'_>> {
            self.files
                .iter()
                .zip(&self.paths)
                .zip(sizes)
                .map(|((file, path), &size)| Source { file, path, size })
                .collect()
        }
    }

    /// The format's definition: one encoder of the whole block per stripe.
    fn reference(layout: &Shape, vols: &Volumes) -> Vec<Vec<u8>> {
        let b = layout.block as usize;
        let mut par = vec![Vec::new(); layout.k];
        let mut enc = ReedSolomonEncoder::new(layout.n, layout.k, b).unwrap();
        for s in 0..layout.stripes() as usize {
            for v in &vols.bytes {
                let mut block = vec![0u8; b];
                let from = (s * b).min(v.len());
                let to = ((s + 1) * b).min(v.len());
                block[..to - from].copy_from_slice(&v[from..to]);
                enc.add_original_shard(&block).unwrap();
            }
            let r = enc.encode().unwrap();
            for (j, shard) in r.recovery_iter().enumerate() {
                par[j].extend_from_slice(shard);
            }
        }
        par
    }

    fn run(
        layout: &Shape,
        data: &[Source<'_>],
        wanted: &[bool],
        lanes: usize,
    ) -> Result<Vec<Vec<u8>>, BundleError> {
        let mut par = vec![Vec::new(); layout.k];
        encode(
            layout,
            data,
            wanted,
            lanes,
            &mut |j, b| {
                assert!(wanted[j], "only wanted parity volumes are written");
                assert!(b.len() as u64 <= layout.block);
                par[j].extend_from_slice(b);
                Ok(())
            },
            &NoProgress,
        )?;
        Ok(par)
    }

    /// Pieces of any width, on any number of lanes, put together are the
    /// format's one encoder per stripe: high-rate and low-rate shapes,
    /// blocks that are not a multiple of the piece, a short last volume.
    #[test]
    fn pieces_on_lanes_are_byte_for_byte_the_format() {
        for (n, k, vs, block) in [
            (4usize, 2usize, 5000u64, 1024u64),
            (5, 2, 3000, 448),
            (2, 5, 2000, 320),
            (3, 3, 700, 64),
            (17, 2, 70_000, 65_536),
        ] {
            let sizes: Vec<u64> = (0..n as u64)
                .map(|i| if i + 1 == n as u64 { vs / 3 + 1 } else { vs })
                .collect();
            let vols = Volumes::new(&sizes, n as u64 * 31 + k as u64);
            let layout = Shape {
                n,
                k,
                volume_size: vs,
                block,
            };
            layout.check().unwrap();
            let want = reference(&layout, &vols);
            assert!(want.iter().all(|p| p.len() as u64 == layout.parity_size()));
            for lanes in 1..=3 {
                let got = run(&layout, &vols.sources(&sizes), &vec![true; k], lanes).unwrap();
                assert!(
                    got == want,
                    "n {n} k {k} block {block} lanes {lanes}: {:?}",
                    Cut::new(&layout, lanes)
                );
            }
            // Only the wanted ones, each still whole.
            let wanted: Vec<bool> = (0..k).map(|j| j % 2 == 1).collect();
            let got = run(&layout, &vols.sources(&sizes), &wanted, 2).unwrap();
            for j in 0..k {
                assert_eq!(got[j].is_empty(), !wanted[j]);
                if wanted[j] {
                    assert!(got[j] == want[j], "wanted parity volume {j}");
                }
            }
        }
    }

    #[test]
    fn pieces_stay_within_the_memory_bound() {
        for (n, k, vs) in [
            (17usize, 2usize, 64u64 << 20),
            (3, 2, 1000),
            (999, 999, 4 << 30),
        ] {
            let block = crate::bundle::parity::block_size_for(vs, n, k);
            let layout = Shape {
                n,
                k,
                volume_size: vs,
                block,
            };
            for lanes in 1..=MAX_LANES {
                let cut = Cut::new(&layout, lanes);
                assert!(cut.piece.is_multiple_of(BLOCK_ALIGN) && cut.piece <= MAX_PIECE);
                assert!(cut.lanes >= 1 && cut.lanes <= lanes);
                // Two recovery pieces per lane in flight: at most K blocks.
                assert!(
                    cut.piece == BLOCK_ALIGN || 2 * cut.lanes as u64 * cut.piece <= block,
                    "{cut:?} for block {block}"
                );
            }
        }
    }

    /// A volume shorter than its size says fails the encode with its name,
    /// from any lane, and nothing waits forever.
    #[test]
    fn a_short_volume_fails_with_its_name() {
        let sizes = [4096u64, 4096, 4096];
        let vols = Volumes::new(&sizes, 7);
        let layout = Shape {
            n: 3,
            k: 2,
            volume_size: 8192,
            block: 1024,
        };
        for lanes in 1..=3 {
            let claimed = [8192u64, 8192, 4096];
            let err = run(&layout, &vols.sources(&claimed), &[true; 2], lanes)
                .expect_err("the first volume is short");
            let text = format!("{err}");
            assert!(
                text.contains(&vols.paths[0].display().to_string()),
                "{text}"
            );
        }
    }

    /// The caller's error stops the lanes and is the one returned.
    #[test]
    fn the_writers_error_stops_everything() {
        let sizes = [64u64 << 10; 4];
        let vols = Volumes::new(&sizes, 9);
        let layout = Shape {
            n: 4,
            k: 2,
            volume_size: 64 << 10,
            block: 4096,
        };
        for lanes in 1..=3 {
            let mut calls = 0;
            let err = encode(
                &layout,
                &vols.sources(&sizes),
                &[true; 2],
                lanes,
                &mut |_, _| {
                    calls += 1;
                    if calls == 5 {
                        return Err(BundleError::io("/parity/out")(io::Error::other(
                            "disk full",
                        )));
                    }
                    Ok(())
                },
                &NoProgress,
            )
            .expect_err("the writer failed");
            assert!(format!("{err}").contains("/parity/out"), "{err}");
            assert_eq!(calls, 5, "nothing written after the error");
        }
    }
}
