//! Whether a bundle file has finished arriving: its zstd frames, walked
//! from their headers only (never decompressed), end exactly where the file
//! ends. Reads an already opened file; never opens anything by name.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

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

/// Walks the zstd frames of an opened file (RFC 8878, section 3.1.1): a bundle is
/// one or more standard frames back to back, and a complete one ends exactly
/// at the end of its last frame.
pub fn frame_state(f: &mut File) -> io::Result<FrameState> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(FrameState::Incomplete);
    }
    let mut pos = 0u64;
    while pos < len {
        match walk_frame(f, pos, len)? {
            Ok(end) => pos = end,
            Err(state) => return Ok(state),
        }
    }
    Ok(if pos == len {
        FrameState::Complete
    } else {
        FrameState::Incomplete
    })
}

/// Walks the frame starting at `start`; `Ok(end)` is where it ends (which
/// may lie beyond `len` when the file is cut inside the checksum).
fn walk_frame(f: &mut File, start: u64, len: u64) -> io::Result<Result<u64, FrameState>> {
    let mut hdr = [0u8; 6];
    if len - start < 6 {
        return Ok(Err(FrameState::Incomplete));
    }
    f.seek(SeekFrom::Start(start))?;
    f.read_exact(&mut hdr)?;
    if u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) != 0xFD2F_B528 {
        return Ok(Err(FrameState::NotZstd));
    }
    let fhd = hdr[4];
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    let checksum = fhd & 0x04 != 0;
    let dict_len = [0u64, 1, 2, 4][(fhd & 3) as usize];
    let fcs_len = match fcs_flag {
        0 => u64::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let mut pos = start + 5 + u64::from(!single_segment) + dict_len + fcs_len;
    loop {
        if pos + 3 > len {
            return Ok(Err(FrameState::Incomplete));
        }
        let mut b = [0u8; 3];
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut b)?;
        let h = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
        let last = h & 1 != 0;
        let size = u64::from(h >> 3);
        let content = match (h >> 1) & 3 {
            0 | 2 => size,
            1 => 1,
            _ => return Ok(Err(FrameState::NotZstd)),
        };
        pos += 3 + content;
        if last {
            break;
        }
    }
    if checksum {
        pos += 4;
    }
    if pos > len {
        return Ok(Err(FrameState::Incomplete));
    }
    Ok(Ok(pos))
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
}
