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
            for buf in rx {
                h.update(&buf);
                // Recycled with its length: refilling it needs no zeroing.
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
        let mut buf = self.recycled();
        buf.clear();
        buf
    }

    /// A buffer of length `len` (at most [`CHUNK`]) to overwrite entirely and
    /// pass to [`Self::update`]. Its contents are left over from earlier
    /// chunks: unlike `buffer()` plus `resize`, it costs no zeroing once the
    /// buffers have been used.
    pub fn buffer_of_len(&self, len: usize) -> Vec<u8> {
        let mut buf = self.recycled();
        buf.resize(len, 0);
        buf
    }

    fn recycled(&self) -> Vec<u8> {
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

impl Drop for BackgroundHasher {
    /// Abandoned mid-file (the bundle ended early, a write failed): the
    /// thread is stopped and joined here, so no hashing thread outlives the
    /// reader that started it.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
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

    /// Found by fuzzing (`bundle_signed`, LeakSanitizer): a bundle whose
    /// payload ended mid-file dropped the hasher without joining its thread,
    /// which then outlived the import.
    #[test]
    fn dropping_mid_stream_joins_the_thread() {
        let mut h = BackgroundHasher::new();
        for _ in 0..DEPTH {
            h.update(vec![7u8; CHUNK]);
        }
        // The thread holds the other end of `spare`: once it has ended, the
        // channel reports disconnection after its buffers.
        let (_keep, dummy) = sync_channel(1);
        let spare = std::mem::replace(&mut h.spare, dummy);
        drop(h);
        loop {
            match spare.try_recv() {
                Ok(_) => continue,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    panic!("the hashing thread is still running after the drop")
                }
            }
        }
    }

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

    #[test]
    fn recycled_buffers_hash_only_what_they_hold() {
        let data: Vec<u8> = (0..5 * CHUNK + 3).map(|i| (i * 7 % 253) as u8).collect();
        let h = BackgroundHasher::new();
        for (i, c) in data.chunks(CHUNK / 2 + 1).enumerate() {
            let mut b = if i % 2 == 0 {
                h.buffer_of_len(c.len())
            } else {
                let mut b = h.buffer();
                b.resize(c.len(), 0);
                b
            };
            assert_eq!(b.len(), c.len());
            b.copy_from_slice(c);
            h.update(b);
        }
        assert_eq!(h.finish(), <[u8; 32]>::from(Sha256::digest(&data)));
    }
}
