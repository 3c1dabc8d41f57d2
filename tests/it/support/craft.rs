//! A byte-by-byte bundle crafter for hostile-input tests.
//!
//! [`Header`] builds one 512-byte tar header by hand (ustar or GNU magic,
//! any type flag, name, prefix, link name, size in octal or base-256, a
//! correct or deliberately wrong checksum); [`Tar`] strings headers, data,
//! PAX records and raw bytes together; [`zstd`] and [`zstd_zero_frame`]
//! compress. [`Parts`] is a whole bundle kept as editable pieces (manifest
//! bytes, signature files, payload entries) that [`Parts::bundle`] turns into
//! `.tar.zst` bytes, and [`mde_manifest`] / [`Parts::signed`] make a valid
//! starting point signed with real keys through `gapferry::sign`.
//!
//! Nothing here uses the `tar` crate or gapferry's writer: a bug there must
//! not hide a bug in the reader.

use std::path::Path;
use std::time::{Duration, SystemTime};

use gapferry::keys::{KeyId, SecretKey};
use gapferry::manifest::{self, FileEntry, Item, Manifest};
use gapferry::safepath::SafePath;
use gapferry::sign::Signature;
use gapferry::timestamp::Timestamp;

use super::FakeRelease;

pub const MANIFEST_NAME: &str = "gapferry/manifest.json";

/// `gapferry/signatures/<KEYID>.minisig`.
pub fn sig_name(id: KeyId) -> Vec<u8> {
    format!("gapferry/signatures/{id}.minisig").into_bytes()
}

/// `payload/<path>`.
pub fn payload_name(path: &str) -> Vec<u8> {
    format!("payload/{path}").into_bytes()
}

/// One tar header, field by field.
#[derive(Debug, Clone)]
pub struct Header {
    /// The 100-byte name field (longer is truncated).
    pub name: Vec<u8>,
    /// The 155-byte ustar prefix field.
    pub prefix: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Written in octal when it fits 11 digits, else base-256.
    pub size: u64,
    pub mtime: u64,
    /// `b'0'` regular, `b'1'` hard link, `b'2'` symlink, `b'3'`/`b'4'`
    /// devices, `b'5'` directory, `b'6'` FIFO, `b'x'` PAX, `b'L'` GNU long name.
    pub typeflag: u8,
    pub linkname: Vec<u8>,
    /// magic ‖ version: `ustar\0` `00` (POSIX) or `ustar ` ` \0` (GNU).
    pub magic: [u8; 8],
    pub devmajor: u32,
    pub devminor: u32,
    /// Store this checksum instead of the correct one.
    pub bad_checksum: Option<u32>,
}

pub const USTAR_MAGIC: [u8; 8] = *b"ustar\x0000";
pub const GNU_MAGIC: [u8; 8] = *b"ustar  \x00";

impl Header {
    /// A regular file (`0644`, ustar) named `name` of `size` bytes.
    pub fn file(name: impl AsRef<[u8]>, size: u64) -> Header {
        Header {
            name: name.as_ref().to_vec(),
            prefix: Vec::new(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime: 1_700_000_000,
            typeflag: b'0',
            linkname: Vec::new(),
            magic: USTAR_MAGIC,
            devmajor: 0,
            devminor: 0,
            bad_checksum: None,
        }
    }

    /// An entry of another type, size 0.
    pub fn typed(name: impl AsRef<[u8]>, typeflag: u8) -> Header {
        Header {
            typeflag,
            ..Header::file(name, 0)
        }
    }

    /// The 512 bytes.
    pub fn to_block(&self) -> [u8; 512] {
        fn put(block: &mut [u8], at: usize, len: usize, v: &[u8]) {
            let n = v.len().min(len);
            block[at..at + n].copy_from_slice(&v[..n]);
        }
        fn octal(block: &mut [u8], at: usize, len: usize, v: u64) {
            let s = format!("{:0width$o}", v, width = len - 1);
            assert!(s.len() < len, "{v} does not fit {len} octal bytes");
            put(block, at, len, s.as_bytes());
            block[at + len - 1] = 0;
        }
        let mut b = [0u8; 512];
        put(&mut b, 0, 100, &self.name);
        octal(&mut b, 100, 8, self.mode as u64);
        octal(&mut b, 108, 8, self.uid as u64);
        octal(&mut b, 116, 8, self.gid as u64);
        if self.size < 8u64.pow(11) {
            octal(&mut b, 124, 12, self.size);
        } else {
            // GNU base-256: high bit set, big-endian value in the rest.
            b[124..136].fill(0);
            b[128..136].copy_from_slice(&self.size.to_be_bytes());
            b[124] = 0x80;
        }
        octal(&mut b, 136, 12, self.mtime);
        b[156] = self.typeflag;
        put(&mut b, 157, 100, &self.linkname);
        b[257..265].copy_from_slice(&self.magic);
        put(&mut b, 265, 32, b"root");
        put(&mut b, 297, 32, b"root");
        octal(&mut b, 329, 8, self.devmajor as u64);
        octal(&mut b, 337, 8, self.devminor as u64);
        put(&mut b, 345, 155, &self.prefix);
        b[148..156].fill(b' ');
        let sum: u32 = b.iter().map(|&x| x as u32).sum();
        let stored = self.bad_checksum.unwrap_or(sum);
        let s = format!("{stored:06o}\0 ");
        b[148..156].copy_from_slice(s.as_bytes());
        b
    }
}

/// A tar stream under construction.
#[derive(Debug, Clone, Default)]
pub struct Tar(pub Vec<u8>);

impl Tar {
    pub fn new() -> Tar {
        Tar(Vec::new())
    }

    /// A header block alone.
    pub fn header(mut self, h: &Header) -> Tar {
        self.0.extend_from_slice(&h.to_block());
        self
    }

    /// Data followed by zero padding to the next 512-byte boundary.
    pub fn data(mut self, data: &[u8]) -> Tar {
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.resize(self.0.len() + pad, 0);
        self
    }

    /// A header and its data.
    pub fn entry(self, h: &Header, data: &[u8]) -> Tar {
        self.header(h).data(data)
    }

    /// A regular file.
    pub fn file(self, name: impl AsRef<[u8]>, data: &[u8]) -> Tar {
        self.entry(&Header::file(name, data.len() as u64), data)
    }

    /// A PAX extended header (`x`) with these records, for the next entry.
    pub fn pax(self, records: &[(&str, &str)]) -> Tar {
        let mut body = Vec::new();
        for (k, v) in records {
            // "<len> <key>=<value>\n" where <len> counts itself.
            let rest = format!(" {k}={v}\n");
            let mut len = rest.len() + 1;
            while format!("{len}{rest}").len() != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len}{rest}").as_bytes());
        }
        let h = Header {
            typeflag: b'x',
            ..Header::file("PaxHeaders/entry", body.len() as u64)
        };
        self.entry(&h, &body)
    }

    /// Bytes as they are.
    pub fn raw(mut self, bytes: &[u8]) -> Tar {
        self.0.extend_from_slice(bytes);
        self
    }

    /// The end-of-archive marker (two zero blocks).
    pub fn end(self) -> Tar {
        self.raw(&[0u8; 1024])
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// zstd at level 3, one frame with a content checksum.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_checksum(true).unwrap();
    std::io::Write::write_all(&mut enc, data).unwrap();
    enc.finish().unwrap()
}

/// A zstd frame that decompresses to `len` zero bytes, built by hand from
/// RLE blocks (4 bytes per 128 KiB), so a multi-gigabyte bomb costs a few
/// hundred kilobytes and no compression time.
pub fn zstd_zero_frame(len: u64) -> Vec<u8> {
    const BLOCK: u64 = 128 * 1024;
    let mut out = Vec::new();
    out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame header descriptor: no content size, no checksum, not single segment.
    out.push(0x00);
    // Window descriptor: exponent 7 -> window 2^(10+7) = 128 KiB.
    out.push(7 << 3);
    let mut left = len;
    loop {
        let n = left.min(BLOCK);
        left -= n;
        let last = u32::from(left == 0);
        // Block header: last bit, type 1 (RLE), size = regenerated bytes.
        let h = last | (1 << 1) | ((n as u32) << 3);
        out.extend_from_slice(&h.to_le_bytes()[..3]);
        out.push(0);
        if left == 0 {
            break;
        }
    }
    out
}

/// One zstd frame built by hand: `data` in raw (stored) blocks, then
/// `zeros` zero bytes in RLE blocks. Lets a test put a multi-gigabyte run of
/// zeros inside the same frame as a real tar, cheaply.
pub fn zstd_raw_frame(data: &[u8], zeros: u64) -> Vec<u8> {
    const BLOCK: usize = 128 * 1024;
    let mut out = Vec::new();
    out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    out.push(0x00);
    out.push(7 << 3);
    let mut blocks: Vec<(u32, &[u8], u32)> = data
        .chunks(BLOCK)
        .map(|c| (0u32, c, c.len() as u32))
        .collect();
    let mut left = zeros;
    while left > 0 {
        let n = left.min(BLOCK as u64);
        left -= n;
        blocks.push((1, &[0u8][..], n as u32));
    }
    if blocks.is_empty() {
        blocks.push((0, &[][..], 0));
    }
    let count = blocks.len();
    for (i, (kind, body, size)) in blocks.into_iter().enumerate() {
        let last = u32::from(i + 1 == count);
        let h = last | (kind << 1) | (size << 3);
        out.extend_from_slice(&h.to_le_bytes()[..3]);
        out.extend_from_slice(body);
    }
    out
}

/// A valid `mde` manifest for `releases` (channel `default`, sequence 1000,
/// created an hour ago, expiring in 30 days) and its payload `(path, bytes)`.
pub fn mde_manifest(releases: &[FakeRelease]) -> (Manifest, Vec<(String, Vec<u8>)>) {
    let payload: Vec<(String, Vec<u8>)> = releases.iter().flat_map(|r| r.payload()).collect();
    let now = SystemTime::now();
    let m = Manifest {
        format: manifest::FORMAT.into(),
        bundle_id: "crafted-bundle-0001".parse().expect("a bundle id"),
        channel: "default".into(),
        sequence: 1000,
        created: Timestamp::from_time(now - Duration::from_secs(3600)),
        expires: Timestamp::from_time(now + Duration::from_secs(30 * 86400)),
        producer: "gapferry-tests craft".into(),
        profile: "mde".into(),
        items: releases
            .iter()
            .map(|r| Item {
                platform: r.platform.clone(),
                ring: r.ring.clone(),
                arch: r.arch.clone(),
                engine_version: r.engine.clone(),
                definition_version: r.definitions.clone(),
            })
            .collect(),
        files: files_for(&payload),
    };
    (m, payload)
}

/// Manifest file entries (size and SHA-256) for payload `(path, bytes)`.
pub fn files_for(payload: &[(String, Vec<u8>)]) -> Vec<FileEntry> {
    payload
        .iter()
        .map(|(p, d)| FileEntry {
            path: SafePath::new(p).expect("a safe path"),
            size: d.len() as u64,
            sha256: super::sha256_hex(d).parse().expect("a SHA-256"),
        })
        .collect()
}

/// The bytes of a `.minisig` file: `key` signs `data` with `trusted_comment`.
pub fn signature_file(key: &SecretKey, data: &[u8], trusted_comment: &str) -> Vec<u8> {
    Signature::sign(key, data, trusted_comment)
        .to_text("signature from the gapferry test crafter")
        .into_bytes()
}

/// A bundle as editable pieces, written in this order: manifest, signatures,
/// payload.
#[derive(Debug, Clone)]
pub struct Parts {
    /// Tar name of the manifest entry (normally [`MANIFEST_NAME`]).
    pub manifest_name: Vec<u8>,
    /// The exact manifest bytes in the archive.
    pub manifest_bytes: Vec<u8>,
    /// `(tar name, .minisig bytes)`.
    pub signatures: Vec<(Vec<u8>, Vec<u8>)>,
    /// `(tar name, bytes)`, names including `payload/`.
    pub payload: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Parts {
    /// `manifest` serialized as gapferry does, signed by each of `keys` with
    /// the canonical trusted comment, with `payload` under `payload/`.
    pub fn signed(
        manifest: &Manifest,
        payload: &[(String, Vec<u8>)],
        keys: &[&SecretKey],
    ) -> Parts {
        Parts::signed_bytes(
            manifest.to_bytes(),
            &manifest.trusted_comment(),
            payload,
            keys,
        )
    }

    /// Arbitrary manifest bytes signed by each of `keys` with `comment`.
    pub fn signed_bytes(
        manifest_bytes: Vec<u8>,
        comment: &str,
        payload: &[(String, Vec<u8>)],
        keys: &[&SecretKey],
    ) -> Parts {
        let signatures = keys
            .iter()
            .map(|k| {
                (
                    sig_name(k.key_id),
                    signature_file(k, &manifest_bytes, comment),
                )
            })
            .collect();
        Parts {
            manifest_name: MANIFEST_NAME.as_bytes().to_vec(),
            manifest_bytes,
            signatures,
            payload: payload
                .iter()
                .map(|(p, d)| (payload_name(p), d.clone()))
                .collect(),
        }
    }

    /// A valid bundle of `releases` signed by `keys`.
    pub fn mde(releases: &[FakeRelease], keys: &[&SecretKey]) -> Parts {
        let (m, payload) = mde_manifest(releases);
        Parts::signed(&m, &payload, keys)
    }

    /// The entries as a tar stream, without the end-of-archive marker.
    pub fn tar(&self) -> Tar {
        let mut t = Tar::new().file(&self.manifest_name, &self.manifest_bytes);
        for (n, d) in &self.signatures {
            t = t.file(n, d);
        }
        for (n, d) in &self.payload {
            t = t.file(n, d);
        }
        t
    }

    /// The uncompressed tar with its end-of-archive marker.
    pub fn tar_bytes(&self) -> Vec<u8> {
        self.tar().end().into_bytes()
    }

    /// The `.tar.zst` bytes.
    pub fn bundle(&self) -> Vec<u8> {
        zstd(&self.tar_bytes())
    }

    /// Writes the `.tar.zst` to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.bundle()).unwrap();
    }
}

/// The valid bundle's tar with `insert` placed just before payload entry `at`.
pub fn tar_with(p: &Parts, at: usize, insert: impl FnOnce(Tar) -> Tar) -> Vec<u8> {
    let mut t = Tar::new().file(&p.manifest_name, &p.manifest_bytes);
    for (n, d) in &p.signatures {
        t = t.file(n, d);
    }
    let mut insert = Some(insert);
    for (i, (n, d)) in p.payload.iter().enumerate() {
        if i == at {
            t = (insert.take().unwrap())(t);
        }
        t = t.file(n, d);
    }
    if let Some(f) = insert {
        t = f(t);
    }
    zstd(&t.end().into_bytes())
}

/// Replaces line `n` (0-based) of a `.minisig` file.
pub fn with_line(sig: &[u8], n: usize, line: &str) -> Vec<u8> {
    let text = String::from_utf8(sig.to_vec()).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[n] = line.to_string();
    (lines.join("\n") + "\n").into_bytes()
}
