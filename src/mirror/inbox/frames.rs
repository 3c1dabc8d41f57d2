//! Whether a bundle file has finished arriving: its zstd frames, walked
//! from their headers only (never decompressed), end exactly where the file
//! ends. Reads an already opened file; never opens anything by name.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};

use crate::bundle::frames::{scan_headers, HeaderScan};

/// Whether a file holds complete zstd frames, walking only the frame and
/// block headers (never decompressing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameState {
    /// The file ends exactly where a frame ends.
    Complete,
    /// The file ends inside a frame: still being written, or truncated.
    Incomplete,
    /// Not (only) standard zstd frames: the import will reject it.
    NotZstd,
}

/// Walks the zstd frames of an opened file (RFC 8878, section 3.1.1): a
/// bundle is one or more standard frames back to back, and a complete one
/// ends exactly at the end of its last frame. The walk is the bundle
/// reader's own header scan ([`crate::bundle::frames::scan_headers`]), so a
/// file the reader would refuse for its framing (empty frames or blocks, a
/// flood of tiny ones) is refused here at its first bad header, at a cost
/// bounded by the file's size, instead of being walked header by header.
pub fn frame_state(f: &mut File) -> io::Result<FrameState> {
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(0))?;
    let state = match scan_headers(&mut *f, len)? {
        HeaderScan::Complete => FrameState::Complete,
        HeaderScan::Incomplete => FrameState::Incomplete,
        HeaderScan::Refused(_) => FrameState::NotZstd,
    };
    f.seek(SeekFrom::Start(0))?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(data: &[u8], checksum: bool) -> Vec<u8> {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        e.include_checksum(checksum).unwrap();
        io::Write::write_all(&mut e, data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn frame_walk_tells_complete_from_cut() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.tar.zst");
        let data: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for checksum in [true, false] {
            let z = frame(&data, checksum);
            std::fs::write(&p, &z).unwrap();
            assert_eq!(
                frame_state(&mut File::open(&p).unwrap()).unwrap(),
                FrameState::Complete
            );
            for cut in [z.len() - 1, z.len() / 2, 7, 0] {
                std::fs::write(&p, &z[..cut]).unwrap();
                assert_eq!(
                    frame_state(&mut File::open(&p).unwrap()).unwrap(),
                    FrameState::Incomplete,
                    "cut {cut}"
                );
            }
        }
        std::fs::write(&p, b"not zstd at all").unwrap();
        assert_eq!(
            frame_state(&mut File::open(&p).unwrap()).unwrap(),
            FrameState::NotZstd
        );

        // Bundles may be several frames back to back (stored payload).
        let a = frame(&data, true);
        let b = frame(&data[..1000], false);
        let both = [&a[..], &b[..]].concat();
        std::fs::write(&p, &both).unwrap();
        assert_eq!(
            frame_state(&mut File::open(&p).unwrap()).unwrap(),
            FrameState::Complete
        );
        for cut in [a.len() + 3, a.len() + b.len() - 1] {
            std::fs::write(&p, &both[..cut]).unwrap();
            assert_eq!(
                frame_state(&mut File::open(&p).unwrap()).unwrap(),
                FrameState::Incomplete,
                "cut {cut}"
            );
        }
        std::fs::write(&p, [&a[..], b"garbage after"].concat()).unwrap();
        assert_eq!(
            frame_state(&mut File::open(&p).unwrap()).unwrap(),
            FrameState::NotZstd
        );
    }

    /// A flood of empty frames (or empty raw blocks) is refused by the
    /// header scan at its first empty frame, not walked to its end and
    /// called complete, and the file is left at its start for the reader.
    #[test]
    fn floods_of_empty_frames_or_blocks_are_refused_not_walked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.tar.zst");
        // An empty single-segment frame: magic, descriptor (single segment,
        // 1-byte size 0), one last raw block of size 0.
        let empty = [0x28, 0xB5, 0x2F, 0xFD, 0x20, 0x00, 0x01, 0x00, 0x00];
        let mut flood = empty.repeat(100_000);
        flood.extend_from_slice(&frame(b"real data", true));
        std::fs::write(&p, &flood).unwrap();
        let mut f = File::open(&p).unwrap();
        assert_eq!(frame_state(&mut f).unwrap(), FrameState::NotZstd);
        assert_eq!(f.stream_position().unwrap(), 0);

        // One frame of 100 000 empty raw blocks, then a last block.
        let mut blocks = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x58];
        for _ in 0..100_000 {
            blocks.extend_from_slice(&[0x00, 0x00, 0x00]);
        }
        blocks.extend_from_slice(&[0x09, 0x00, 0x00, b'x']);
        std::fs::write(&p, &blocks).unwrap();
        assert_eq!(
            frame_state(&mut File::open(&p).unwrap()).unwrap(),
            FrameState::NotZstd
        );
    }
}
