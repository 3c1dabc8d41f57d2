//! SHA-256 off the I/O thread: chunks are handed to a hashing thread through
//! a small bounded queue, so reading, decompressing and writing overlap with
//! hashing on a second core. Memory stays at a few chunk buffers.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// Size of one chunk.
pub const CHUNK: usize = 1 << 20;
const DEPTH: usize = 4;

/// A SHA-256 running on its own thread.
#[derive(Debug)]
pub struct BackgroundHasher {
    tx: Option<SyncSender<Vec<u8>>>,
    spare: Receiver<Vec<u8>>,
    handle: Option<JoinHandle<[u8; 32]>>,
}

impl BackgroundHasher {
    pub fn new() -> Self {
        let (tx, rx) = sync_channel::<Vec<u8>>(DEPTH);
        let (spare_tx, spare) = sync_channel::<Vec<u8>>(DEPTH + 2);
        for _ in 0..DEPTH + 1 {
            let _ = spare_tx.try_send(Vec::with_capacity(CHUNK));
        }
        let handle = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for mut buf in rx {
                h.update(&buf);
                buf.clear();
                let _ = spare_tx.try_send(buf);
            }
            h.finalize().into()
        });
        BackgroundHasher {
            tx: Some(tx),
            spare,
            handle: Some(handle),
        }
    }

    /// An empty buffer with capacity [`CHUNK`] to fill and pass to [`Self::update`].
    pub fn buffer(&self) -> Vec<u8> {
        self.spare
            .try_recv()
            .or_else(|_| self.spare.recv())
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK))
    }

    /// Hashes `buf` (asynchronously).
    pub fn update(&self, buf: Vec<u8>) {
        if let Some(tx) = &self.tx {
            // The receiver only goes away if the thread panicked; finish() reports that.
            let _ = tx.send(buf);
        }
    }

    /// Waits for the hash of everything passed in.
    pub fn finish(mut self) -> [u8; 32] {
        drop(self.tx.take());
        self.handle
            .take()
            .expect("finish once")
            .join()
            .expect("hashing thread panicked")
    }
}

impl Default for BackgroundHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// Hex of a digest.
pub fn to_hex(d: &[u8; 32]) -> String {
    hex::encode(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_plain_sha256() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i * 31 % 251) as u8).collect();
        let h = BackgroundHasher::new();
        for c in data.chunks(CHUNK) {
            let mut b = h.buffer();
            b.extend_from_slice(c);
            h.update(b);
        }
        assert_eq!(h.finish(), <[u8; 32]>::from(Sha256::digest(&data)));
    }
}
