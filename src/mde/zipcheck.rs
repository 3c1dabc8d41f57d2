//! A structural check that a file is a zip archive: a local file header at
//! the start and an end-of-central-directory record near the end. It catches
//! the classic failure of saving an HTTP error page as `updates.zip` without
//! reading the whole file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Largest distance of the end-of-central-directory record from the end
/// (22-byte record plus a comment of at most 65535 bytes).
const EOCD_SEARCH: u64 = 22 + 65535;

/// Why a file is not a zip.
pub fn check_zip(path: &Path) -> std::io::Result<Result<(), String>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(Err("is empty".into()));
    }
    if len < 22 {
        return Ok(Err(format!("is only {len} bytes, too small for a zip")));
    }
    let mut start = [0u8; 4];
    f.read_exact(&mut start)?;
    if start != *b"PK\x03\x04" {
        let mut head = [0u8; 64];
        f.seek(SeekFrom::Start(0))?;
        let n = f.read(&mut head)?;
        let text = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
        return Ok(Err(
            if text.contains("<html") || text.contains("<!doctype") || text.contains("<?xml") {
                "is an HTML or XML page, not a zip (a download saved an error page)".into()
            } else {
                "does not start with a zip local file header (PK\\3\\4)".into()
            },
        ));
    }
    let tail_len = len.min(EOCD_SEARCH);
    f.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    f.read_exact(&mut tail)?;
    if !tail.windows(4).any(|w| w == b"PK\x05\x06") {
        return Ok(Err(
            "has no zip end-of-central-directory record (truncated download?)".into(),
        ));
    }
    Ok(Ok(()))
}

/// A minimal valid zip (one stored, empty-named-free file) for tests and demos:
/// local header + data + central directory + end record.
pub fn tiny_zip(name: &str, data: &[u8]) -> Vec<u8> {
    let crc = crc32(data);
    let mut out = Vec::new();
    let n = name.len() as u16;
    let size = data.len() as u32;
    out.extend_from_slice(b"PK\x03\x04");
    out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(data);
    let cd_offset = out.len() as u32;
    out.extend_from_slice(b"PK\x01\x02");
    out.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&[0u8; 12]);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    let cd_size = out.len() as u32 - cd_offset;
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_zip_passes_html_fails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.zip");
        std::fs::write(&p, tiny_zip("a.txt", b"hello")).unwrap();
        check_zip(&p).unwrap().unwrap();
        std::fs::write(
            &p,
            b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        )
        .unwrap();
        assert!(check_zip(&p).unwrap().unwrap_err().contains("HTML"));
        std::fs::write(&p, b"").unwrap();
        assert!(check_zip(&p).unwrap().unwrap_err().contains("empty"));
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
