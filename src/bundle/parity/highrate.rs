//! A Reed-Solomon encoder whose work area the data volumes are read
//! straight into, saving the copy `ReedSolomonEncoder::add_original_shard`
//! makes of every byte. It is reed-solomon-simd's own high-rate encoding
//! (`rate::HighRateEncoder`), step for step, built from the crate's public
//! engine: the same FFTs in the same order, so the same bytes.
//!
//! It owns that arithmetic only, and only for shapes where
//! `ReedSolomonEncoder` itself encodes at high rate ([`HighRate::fits`]);
//! every other shape goes through `ReedSolomonEncoder`. It must never be
//! used for a shape it does not fit: the two rates give different bytes.

use reed_solomon_simd::engine::utils::xor_within;
use reed_solomon_simd::engine::{DefaultEngine, Engine, ShardsRefMut};

/// Bytes of the crate's shard chunk: pieces are multiples of it.
const CHUNK: usize = 64;

/// High-rate encoder of `n` original and `k` recovery shards of `width`
/// bytes (a multiple of 64).
pub(super) struct HighRate {
    engine: DefaultEngine,
    n: usize,
    k: usize,
    /// Shards per chunk of the encoding: `k` rounded up to a power of two.
    m: usize,
    width: usize,
    /// `n` rounded up to a multiple of `m` shards of `width` bytes.
    work: Vec<[u8; CHUNK]>,
}

impl std::fmt::Debug for HighRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HighRate")
            .field("n", &self.n)
            .field("k", &self.k)
            .field("width", &self.width)
            .finish()
    }
}

impl HighRate {
    /// Whether `ReedSolomonEncoder::new(n, k, _)` encodes at high rate for
    /// certain: more original shards than recovery shards even rounded up
    /// to powers of two (its rule, where this one stays on the safe side:
    /// equal powers of two are left to the crate).
    pub(super) fn fits(n: usize, k: usize) -> bool {
        n.next_power_of_two() > k.next_power_of_two()
            && reed_solomon_simd::ReedSolomonEncoder::supports(n, k)
    }

    pub(super) fn new(n: usize, k: usize, width: usize) -> HighRate {
        debug_assert!(Self::fits(n, k) && width > 0 && width.is_multiple_of(CHUNK));
        let m = k.next_power_of_two();
        HighRate {
            engine: DefaultEngine::new(),
            n,
            k,
            m,
            width,
            work: vec![[0u8; CHUNK]; n.next_multiple_of(m) * width / CHUNK],
        }
    }

    pub(super) fn width(&self) -> usize {
        self.width
    }

    /// Original shard `i`, to read the data into.
    pub(super) fn original_mut(&mut self, i: usize) -> &mut [u8] {
        assert!(i < self.n);
        let len = self.width / CHUNK;
        self.work[i * len..(i + 1) * len].as_flattened_mut()
    }

    /// Encodes the `n` original shards as they are now; recovery shard `j`
    /// is then [`Self::recovery`]`(j)`, until the originals are read again.
    pub(super) fn encode(&mut self) {
        let (n, m) = (self.n, self.m);
        let shards = self.work.len() / (self.width / CHUNK);
        let mut work = ShardsRefMut::new(shards, self.width / CHUNK, &mut self.work);
        let engine = &self.engine;
        // The first chunk (n > m here: `fits`), in place.
        engine.ifft(&mut work, 0, m, m, m);
        let mut start = m;
        while start + m <= n {
            engine.ifft(&mut work, start, m, m, start + m);
            xor_within(&mut work, 0, start, m);
            start += m;
        }
        let last = n % m;
        if last > 0 {
            work.zero(start + last..);
            engine.ifft(&mut work, start, m, last, start + m);
            xor_within(&mut work, 0, start, m);
        }
        engine.fft(&mut work, 0, m, self.k, 0);
    }

    /// Recovery shard `j` of the last [`Self::encode`].
    pub(super) fn recovery(&self, j: usize) -> &[u8] {
        assert!(j < self.k);
        let len = self.width / CHUNK;
        self.work[j * len..(j + 1) * len].as_flattened()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reed_solomon_simd::ReedSolomonEncoder;

    /// Against the crate's own encoder, for every shape up to 70 x 40 it
    /// takes (and stripes of changing data, so nothing stale survives).
    #[test]
    fn same_bytes_as_the_crates_encoder() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut byte = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        };
        let mut shapes = 0;
        for n in 1..=70 {
            for k in 1..=40 {
                if !HighRate::fits(n, k) {
                    continue;
                }
                shapes += 1;
                let width = if n < 20 { 192 } else { 64 };
                let mut ours = HighRate::new(n, k, width);
                let mut theirs = ReedSolomonEncoder::new(n, k, width).unwrap();
                for _ in 0..2 {
                    for i in 0..n {
                        let shard: Vec<u8> = (0..width).map(|_| byte()).collect();
                        ours.original_mut(i).copy_from_slice(&shard);
                        theirs.add_original_shard(&shard).unwrap();
                    }
                    ours.encode();
                    let r = theirs.encode().unwrap();
                    for (j, shard) in r.recovery_iter().enumerate() {
                        assert!(ours.recovery(j) == shard, "n {n} k {k} shard {j}");
                    }
                }
            }
        }
        assert!(shapes > 1000, "{shapes} shapes");
        assert!(!HighRate::fits(2, 2) && !HighRate::fits(3, 4) && HighRate::fits(17, 2));
    }
}
