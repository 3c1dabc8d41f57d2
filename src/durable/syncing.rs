//! Writing large files durably without paying for it all at the end.
//!
//! Linux starts writeback only at `dirty_background_ratio` (gigabytes on a
//! large machine), so a plain write-then-fsync of a big file flushes all of
//! it in the final `fsync` while the CPU waits, and the CPU work before it
//! (compressing, hashing) ran while the disk sat idle. [`SyncingWriter`]
//! asks a background thread to `fdatasync` every [`SYNC_EVERY`] bytes, so the
//! disk writes while the caller computes and the final sync has little left.
//! The bundle writer and the mirror's staged files both write through it.
//! It only writes and syncs one open file; naming and renaming are
//! [`super::files`]'s.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Bytes written between background syncs.
pub const SYNC_EVERY: u64 = 32 << 20;

/// A file writer that syncs in the background as it goes; see the module
/// docs. [`finish`](Self::finish) makes everything durable. Small files never
/// start the background thread.
#[derive(Debug)]
pub struct SyncingWriter {
    file: Arc<File>,
    /// Bytes between background syncs ([`SYNC_EVERY`] unless chosen).
    every: u64,
    since_sync: u64,
    syncer: Option<Syncer>,
}

#[derive(Debug)]
struct Syncer {
    tx: mpsc::SyncSender<()>,
    handle: JoinHandle<io::Result<()>>,
}

impl SyncingWriter {
    pub fn new(file: File) -> Self {
        Self::syncing_every(file, SYNC_EVERY)
    }

    /// A writer that syncs in the background every `every` bytes: smaller
    /// for files written side by side whose final syncs all come at the
    /// end (less is left for [`finish`](Self::finish) to wait for).
    pub fn syncing_every(file: File, every: u64) -> Self {
        SyncingWriter {
            file: Arc::new(file),
            every: every.max(1),
            since_sync: 0,
            syncer: None,
        }
    }

    fn wrote(&mut self, n: u64) {
        self.since_sync += n;
        if self.since_sync < self.every {
            return;
        }
        self.since_sync = 0;
        let syncer = self.syncer.get_or_insert_with(|| {
            let (tx, rx) = mpsc::sync_channel::<()>(1);
            let file = Arc::clone(&self.file);
            let handle = std::thread::spawn(move || {
                for () in rx {
                    rustix::fs::fdatasync(&*file)?;
                }
                Ok(())
            });
            Syncer { tx, handle }
        });
        // A sync already queued covers this data too; a failed one is
        // reported by `finish`.
        let _ = syncer.tx.try_send(());
    }

    /// Appends up to `n` bytes of `src` (from its current position) without
    /// passing them through user space where the kernel allows it
    /// (`std::io::copy` uses copy_file_range, then sendfile, then a buffer).
    /// Returns how many bytes were copied: fewer only at the end of `src`.
    pub fn copy_from(&mut self, src: &File, n: u64) -> io::Result<u64> {
        let copied = io::copy(&mut src.take(n), &mut &*self.file)?;
        self.wrote(copied);
        Ok(copied)
    }

    /// Stops the background syncer, reporting any sync it failed, then syncs
    /// everything (data and metadata).
    pub fn finish(mut self) -> io::Result<()> {
        self.stop_syncer()?;
        self.file.sync_all()
    }

    /// Stops and joins the background syncer, if it was started.
    fn stop_syncer(&mut self) -> io::Result<()> {
        match self.syncer.take() {
            Some(Syncer { tx, handle }) => {
                drop(tx);
                handle.join().expect("syncer thread panicked")
            }
            None => Ok(()),
        }
    }
}

impl Drop for SyncingWriter {
    /// Dropped without `finish` (an error path): the syncer is stopped and
    /// joined, so no thread outlives its writer.
    fn drop(&mut self) {
        let _ = self.stop_syncer();
    }
}

impl Write for SyncingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&*self.file).write(buf)?;
        self.wrote(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_copies_everything_and_syncs_small_files_without_a_thread() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let big: Vec<u8> = (0..(SYNC_EVERY as usize * 2 + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&src_path, &big).unwrap();

        let mut w = SyncingWriter::new(File::create(dir.path().join("small")).unwrap());
        w.write_all(b"small").unwrap();
        assert!(w.syncer.is_none());
        w.finish().unwrap();
        assert_eq!(std::fs::read(dir.path().join("small")).unwrap(), b"small");

        let mut w =
            SyncingWriter::syncing_every(File::create(dir.path().join("mid")).unwrap(), 4096);
        w.write_all(&big[..4095]).unwrap();
        assert!(w.syncer.is_none(), "no sync before the chosen interval");
        w.write_all(&big[4095..5000]).unwrap();
        assert!(
            w.syncer.is_some(),
            "a background sync after the chosen interval"
        );
        w.finish().unwrap();
        assert_eq!(std::fs::read(dir.path().join("mid")).unwrap(), &big[..5000]);

        let mut w = SyncingWriter::new(File::create(dir.path().join("big")).unwrap());
        w.write_all(&big[..SYNC_EVERY as usize]).unwrap();
        assert!(w.syncer.is_some(), "a background sync after SYNC_EVERY");
        let src = File::open(&src_path).unwrap();
        let mut src = src;
        std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(SYNC_EVERY)).unwrap();
        let rest = big.len() as u64 - SYNC_EVERY;
        assert_eq!(w.copy_from(&src, rest + 100).unwrap(), rest);
        w.finish().unwrap();
        assert_eq!(std::fs::read(dir.path().join("big")).unwrap(), big);
    }
}
