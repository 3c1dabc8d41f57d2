//! Every resource limit of docs/SECURITY.md, tested at the limit (accepted)
//! and just past it (refused with a message naming the limit). Mostly
//! through the library, on bundles crafted in memory, so the whole file runs
//! in a few seconds; the 16 MiB manifest is the largest input.

use crate::support;

use std::fs;
use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use gapferry::bundle::reader::{BundleReader, Head};
use gapferry::bundle::{
    BundleError, FRAMING_ALLOWANCE, FRAMING_BYTES_PER_UNIT, MAX_HEAD_FRAMES, MAX_HEAD_INPUT,
    MAX_SIGNATURES, MAX_TRAILING_ZEROS, MAX_WINDOW_LOG,
};
use gapferry::keys::{PublicKey, SecretKey, MAX_KEY_FILE, MAX_MEMLIMIT};
use gapferry::manifest::{
    FileEntry, Manifest, MAX_DEPTH, MAX_FIELD_LEN, MAX_FILES, MAX_ITEMS, MAX_MANIFEST_SIZE,
    MAX_TOTAL_SIZE,
};
use gapferry::mde::FolderManifest;
use gapferry::mirror::ledger::{Ledger, LedgerEntry, Outcome, MAX_LINE};
use gapferry::mirror::state::{StateDir, MAX_STATE_SIZE};
use gapferry::progress::NoProgress;
use gapferry::safepath::{SafePath, MAX_COMPONENT_LEN, MAX_DEPTH as MAX_PATH_DEPTH, MAX_PATH_LEN};
use gapferry::sign::{Signature, MAX_SIGNATURE_FILE};

use support::craft::{self, Header, Parts, Tar};
use support::FakeRelease;

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn key() -> SecretKey {
    SecretKey::generate()
}

/// A valid one-folder mde manifest and its payload.
fn base() -> (Manifest, Vec<(String, Vec<u8>)>) {
    craft::mde_manifest(&[FakeRelease::new("linux", "production", "x86_64")])
}

/// Reads the head of bundle bytes.
fn head(bytes: &[u8]) -> Result<Head, BundleError> {
    BundleReader::new(Cursor::new(bytes), Path::new("limit.tar.zst"))?.read_head()
}

/// Reads and verifies the whole bundle (no trust decision).
fn read_all(bytes: &[u8]) -> Result<(), BundleError> {
    let mut r = BundleReader::new(Cursor::new(bytes), Path::new("limit.tar.zst"))?;
    r.read_head()?;
    r.verify_payload(&NoProgress)
}

#[track_caller]
fn assert_err_contains<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>, needle: &str) {
    match r {
        Ok(v) => panic!("accepted past the limit: {v:?}"),
        Err(e) => assert!(e.to_string().contains(needle), "{e}"),
    }
}

/// `m` serialized, with `pad` spaces inserted before the final `}` so the
/// bytes are exactly `len` long.
fn padded(m: &Manifest, len: usize) -> Vec<u8> {
    let mut b = m.to_bytes();
    assert_eq!(b.pop(), Some(b'\n'));
    assert_eq!(b.pop(), Some(b'}'));
    assert!(b.len() + 2 <= len);
    b.resize(len - 2, b' ');
    b.extend_from_slice(b"}\n");
    b
}

// ---- manifest ----------------------------------------------------------

#[test]
fn manifest_size_16_mib() {
    assert_eq!(MAX_MANIFEST_SIZE, 16 * 1024 * 1024);
    let (m, payload) = base();
    let k = key();
    let at = padded(&m, MAX_MANIFEST_SIZE as usize);
    Manifest::parse(&at).unwrap();
    // Through the reader: a signed 16 MiB manifest is read.
    let bundle = Parts::signed_bytes(at, &m.trusted_comment(), &payload, &[&k]).bundle();
    let h = head(&bundle).unwrap();
    assert_eq!(h.manifest_bytes.len() as u64, MAX_MANIFEST_SIZE);
    drop(h);

    let past = padded(&m, MAX_MANIFEST_SIZE as usize + 1);
    assert_err_contains(Manifest::parse(&past), "larger than 16 MiB");
    // The reader refuses from the header alone: no data follows it here.
    let tar = Tar::new()
        .header(&Header::file(craft::MANIFEST_NAME, MAX_MANIFEST_SIZE + 1))
        .into_bytes();
    assert_err_contains(head(&craft::zstd(&tar)), "more than the 16 MiB limit");
}

/// `{"x": [[...]]}` added to a valid manifest, `n` arrays deep.
fn nested(n: usize) -> Vec<u8> {
    let (m, _) = base();
    let mut b = m.to_bytes();
    b.truncate(b.len() - 2);
    b.extend_from_slice(b",\n  \"x\": ");
    b.extend(std::iter::repeat_n(b'[', n));
    b.extend(std::iter::repeat_n(b']', n));
    b.extend_from_slice(b"\n}\n");
    b
}

#[test]
fn json_nesting_depth_16() {
    assert_eq!(MAX_DEPTH, 16);
    // The top-level object is level 0: values may sit 16 levels below it.
    Manifest::parse(&nested(MAX_DEPTH)).unwrap();
    assert_err_contains(
        Manifest::parse(&nested(MAX_DEPTH + 1)),
        "nested deeper than 16 levels",
    );
    // Far past it: no stack overflow, the same error.
    assert_err_contains(Manifest::parse(&nested(100_000)), "nested deeper");
}

fn with_files(n: usize) -> Manifest {
    let (mut m, _) = base();
    m.files = (0..n)
        .map(|i| FileEntry {
            path: SafePath::new(&format!("f{i}")).unwrap(),
            size: 0,
            sha256: EMPTY_SHA256.parse().unwrap(),
        })
        .collect();
    m
}

#[test]
fn number_of_files_10000() {
    assert_eq!(MAX_FILES, 10_000);
    Manifest::parse(&with_files(MAX_FILES).to_bytes()).unwrap();
    assert_err_contains(
        Manifest::parse(&with_files(MAX_FILES + 1).to_bytes()),
        "more than 10000 files",
    );
}

#[test]
fn number_of_items_1000() {
    assert_eq!(MAX_ITEMS, 1_000);
    let (mut m, _) = base();
    let item = m.items[0].clone();
    m.items = vec![item.clone(); MAX_ITEMS];
    // The manifest's own limit (the mde profile then wants each slot once).
    Manifest::parse(&m.to_bytes()).unwrap();
    m.items.push(item);
    assert_err_contains(Manifest::parse(&m.to_bytes()), "more than 1000 items");
}

#[test]
fn total_size_1_tib() {
    assert_eq!(MAX_TOTAL_SIZE, 1 << 40);
    let mut m = with_files(2);
    m.files[0].size = MAX_TOTAL_SIZE - 1;
    m.files[1].size = 1;
    Manifest::parse(&m.to_bytes()).unwrap();
    m.files[1].size = 2;
    assert_err_contains(Manifest::parse(&m.to_bytes()), "larger than 1 TiB");
    // Sizes whose sum overflows u64 are refused the same way.
    m.files[0].size = u64::MAX;
    assert_err_contains(Manifest::parse(&m.to_bytes()), "larger than 1 TiB");
}

#[test]
fn string_fields_256_bytes_channel_64() {
    assert_eq!(MAX_FIELD_LEN, 256);
    let (mut m, _) = base();
    m.bundle_id = "b".repeat(256).parse().unwrap();
    m.producer = "p".repeat(256);
    m.channel = "c".repeat(64);
    m.items[0].engine_version = "1".repeat(256);
    Manifest::parse(&m.to_bytes()).unwrap();
    for edit in [
        |m: &mut Manifest| m.producer.push('p'),
        |m: &mut Manifest| m.items[0].engine_version.push('1'),
    ] {
        let mut m2 = m.clone();
        edit(&mut m2);
        assert_err_contains(Manifest::parse(&m2.to_bytes()), "1 to 256 bytes");
    }
    // A bundle id one byte too long cannot be held in memory at all: the
    // manifest that carries one is refused where it is read.
    let long = String::from_utf8(m.to_bytes())
        .unwrap()
        .replace(&"b".repeat(256), &"b".repeat(257));
    assert_err_contains(Manifest::parse(long.as_bytes()), "1 to 256 bytes");
    m.channel.push('c');
    assert_err_contains(Manifest::parse(&m.to_bytes()), "1 to 64 characters");
}

// ---- paths -------------------------------------------------------------

#[test]
fn path_length_component_length_depth() {
    assert_eq!(
        (MAX_PATH_LEN, MAX_COMPONENT_LEN, MAX_PATH_DEPTH),
        (200, 100, 16)
    );
    // 200 bytes: two 99-byte components and a 1-byte one, with two slashes.
    let at = format!("{}/{}/x", "a".repeat(99), "b".repeat(98));
    assert_eq!(at.len(), 200);
    SafePath::new(&at).unwrap();
    assert_err_contains(SafePath::new(&format!("{at}y")), "longer than 200 bytes");

    SafePath::new(&"c".repeat(100)).unwrap();
    assert_err_contains(
        SafePath::new(&"c".repeat(101)),
        "component longer than 100 bytes",
    );

    let deep = vec!["d"; 16].join("/");
    SafePath::new(&deep).unwrap();
    assert_err_contains(
        SafePath::new(&format!("{deep}/d")),
        "more than 16 components",
    );
}

// ---- signatures --------------------------------------------------------

#[test]
fn signature_count_16() {
    assert_eq!(MAX_SIGNATURES, 16);
    let (m, payload) = base();
    let keys: Vec<SecretKey> = (0..=MAX_SIGNATURES).map(|_| key()).collect();
    let refs: Vec<&SecretKey> = keys.iter().collect();
    let at = Parts::signed(&m, &payload, &refs[..MAX_SIGNATURES]).bundle();
    assert_eq!(head(&at).unwrap().signatures.len(), 16);
    let past = Parts::signed(&m, &payload, &refs).bundle();
    assert_err_contains(head(&past), "more than 16 signatures");
}

#[test]
fn signature_file_8_kib() {
    assert_eq!(MAX_SIGNATURE_FILE, 8 * 1024);
    let (m, payload) = base();
    let k = key();
    let mut sig = craft::signature_file(&k, &m.to_bytes(), &m.trusted_comment());
    // Empty lines may follow the fourth line.
    sig.resize(MAX_SIGNATURE_FILE, b'\n');
    Signature::parse(&sig).unwrap();
    let mut p = Parts::signed(&m, &payload, &[&k]);
    p.signatures[0].1 = sig.clone();
    head(&p.bundle()).unwrap();

    sig.push(b'\n');
    assert_err_contains(Signature::parse(&sig), "larger than 8 KiB");
    p.signatures[0].1 = sig;
    assert_err_contains(head(&p.bundle()), "larger than 8 KiB");
}

// ---- container ---------------------------------------------------------

#[test]
fn trailing_zeros_1_mib() {
    assert_eq!(MAX_TRAILING_ZEROS, 1024 * 1024);
    let (m, payload) = base();
    let k = key();
    let tar = Parts::signed(&m, &payload, &[&k]).tar_bytes();
    let with_zeros = |n: u64| {
        let mut t = tar.clone();
        t.resize(t.len() + n as usize, 0);
        craft::zstd(&t)
    };
    read_all(&with_zeros(MAX_TRAILING_ZEROS)).unwrap();
    assert_err_contains(
        read_all(&with_zeros(MAX_TRAILING_ZEROS + 1)),
        "more than 1 MiB of padding",
    );
}

/// One zstd frame of raw blocks with window 2^`window_log` (block size
/// capped at the window and at 128 KiB).
fn frame_with_window(data: &[u8], window_log: u32) -> Vec<u8> {
    let block = (1usize << window_log).min(128 * 1024);
    let mut out = 0xFD2F_B528u32.to_le_bytes().to_vec();
    out.push(0x00); // no content size, no checksum, not single segment
    out.push(((window_log - 10) << 3) as u8); // exponent, mantissa 0
    let chunks: Vec<&[u8]> = data.chunks(block).collect();
    for (i, c) in chunks.iter().enumerate() {
        let last = u32::from(i + 1 == chunks.len());
        let h = last | ((c.len() as u32) << 3);
        out.extend_from_slice(&h.to_le_bytes()[..3]);
        out.extend_from_slice(c);
    }
    out
}

#[test]
fn zstd_window_16_mib() {
    assert_eq!(MAX_WINDOW_LOG, 24);
    let (m, payload) = base();
    let k = key();
    let tar = Parts::signed(&m, &payload, &[&k]).tar_bytes();
    read_all(&frame_with_window(&tar, MAX_WINDOW_LOG)).unwrap();
    assert_err_contains(
        read_all(&frame_with_window(&tar, MAX_WINDOW_LOG + 1)),
        "bundle rejected",
    );
}

/// Bytes of a bundle's tar that the head reader takes: the manifest and
/// signature entries and the tar header after them.
fn head_len(p: &Parts) -> usize {
    let mut t = Tar::new().file(&p.manifest_name, &p.manifest_bytes);
    for (n, d) in &p.signatures {
        t = t.file(n, d);
    }
    t.into_bytes().len() + 512
}

#[test]
fn head_within_8_frames() {
    assert_eq!(MAX_HEAD_FRAMES, 8);
    let (m, payload) = base();
    let k = key();
    let p = Parts::signed(&m, &payload, &[&k]);
    let tar = p.tar_bytes();
    let end = head_len(&p);
    // `n` frames of 100 bytes, then one frame up to the end of the head,
    // then the rest of the archive in a frame of its own.
    let framed = |n: usize| {
        let mut out = Vec::new();
        for i in 0..n {
            out.extend(craft::zstd(&tar[i * 100..(i + 1) * 100]));
        }
        out.extend(craft::zstd(&tar[n * 100..end]));
        out.extend(craft::zstd(&tar[end..]));
        out
    };
    let n = MAX_HEAD_FRAMES as usize - 1;
    assert!(n * 100 < end);
    read_all(&framed(n)).unwrap();
    assert_err_contains(
        read_all(&framed(n + 1)),
        "do not end within the first 8 zstd frames (the head frame limit",
    );
}

#[test]
fn head_within_17_mib() {
    assert_eq!(MAX_HEAD_INPUT, 17 * 1024 * 1024);
    // Every head gapferry can write fits, whatever the layout: the largest
    // (a 16 MiB manifest, 16 signature files of 8 KiB and the header after
    // them), stored in raw 128 KiB blocks (3 header bytes each), plus the
    // rest of the block that holds the last header byte and two frame
    // headers with checksums.
    let largest =
        512 + MAX_MANIFEST_SIZE + MAX_SIGNATURES as u64 * (512 + MAX_SIGNATURE_FILE as u64) + 512;
    let blocks = largest.div_ceil(128 * 1024) + 1;
    assert!(largest + 128 * 1024 + 3 * blocks + 2 * (18 + 4) < MAX_HEAD_INPUT);
    // The largest manifest in one frame of raw blocks, as incompressible
    // as a head gets, reads. (Past the limit cannot be reached by blocks
    // the framing budget allows; the byte count at and one past a limit
    // is tested on the frame walker itself, bundle::frames.)
    let (m, payload) = base();
    let k = key();
    let at = padded(&m, MAX_MANIFEST_SIZE as usize);
    let tar = Parts::signed_bytes(at, &m.trusted_comment(), &payload, &[&k]).tar_bytes();
    let bundle = craft::zstd_raw_frame(&tar, 0);
    assert!(bundle.len() as u64 > MAX_MANIFEST_SIZE);
    read_all(&bundle).unwrap();
}

#[test]
fn framing_65536_plus_one_per_kib() {
    assert_eq!(FRAMING_ALLOWANCE, 65_536);
    assert_eq!(FRAMING_BYTES_PER_UNIT, 1024);
    let (m, payload) = base();
    let k = key();
    let tar = Parts::signed(&m, &payload, &[&k]).tar_bytes();
    assert!(tar.len() <= 128 * 1024);
    // One frame: the archive in one raw block, then `zeros` blocks of one
    // zero byte each (RLE), as padding after the end-of-archive marker.
    let framed = |zeros: u64| {
        let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3];
        out.extend_from_slice(&((tar.len() as u32) << 3).to_le_bytes()[..3]);
        out.extend_from_slice(&tar);
        for j in 1..=zeros {
            let h = u32::from(j == zeros) | 1 << 1 | 1 << 3;
            out.extend_from_slice(&h.to_le_bytes()[..3]);
            out.push(0);
        }
        out
    };
    // The rule: the u-th frame or block may start when u is at most the
    // allowance plus one per KiB decoded before it. Frame and archive
    // block are units 1 and 2; zero block j is unit 2 + j.
    let fits =
        |j: u64| 2 + j <= FRAMING_ALLOWANCE + (tar.len() as u64 + j - 1) / FRAMING_BYTES_PER_UNIT;
    let mut most = 0;
    while fits(most + 1) {
        most += 1;
    }
    assert!(most < MAX_TRAILING_ZEROS);
    read_all(&framed(most)).unwrap();
    assert_err_contains(
        read_all(&framed(most + 1)),
        &format!("framing limit allows: {} after", most + 3),
    );
}

// ---- key files ---------------------------------------------------------

#[test]
fn key_file_64_kib() {
    assert_eq!(MAX_KEY_FILE, 64 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.pub");
    let mut text = key().public().to_file_text().into_bytes();
    // Trailing empty lines are allowed in a key file.
    text.resize(MAX_KEY_FILE as usize, b'\n');
    fs::write(&p, &text).unwrap();
    PublicKey::from_file(&p).unwrap();
    text.push(b'\n');
    fs::write(&p, &text).unwrap();
    assert_err_contains(PublicKey::from_file(&p), "larger than 65536 bytes");
    // Secret keys are read the same way.
    assert_err_contains(SecretKey::read_text(&p), "larger than 65536 bytes");
}

/// An unencrypted secret key file turned into an `Sc` one with the given
/// scrypt limits (the contents are then garbage: only the limits matter).
fn encrypted_with_limits(opslimit: u64, memlimit: u64) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = key().to_file_text(None);
    let line = text.lines().nth(1).unwrap();
    let mut raw = b64.decode(line).unwrap();
    raw[2..4].copy_from_slice(b"Sc");
    raw[38..46].copy_from_slice(&opslimit.to_le_bytes());
    raw[46..54].copy_from_slice(&memlimit.to_le_bytes());
    format!("untrusted comment: test\n{}\n", b64.encode(raw))
}

#[test]
fn scrypt_memlimit_2_gib() {
    assert_eq!(MAX_MEMLIMIT, 2 << 30);
    let p = Path::new("limit.key");
    // At the cap the key is tried (a small opslimit keeps scrypt cheap):
    // the password is wrong, not the parameters.
    let at = encrypted_with_limits(32_768, MAX_MEMLIMIT);
    assert_err_contains(SecretKey::parse(&at, p, Some(b"pw")), "wrong password");
    let past = encrypted_with_limits(32_768, MAX_MEMLIMIT + 1);
    assert_err_contains(
        SecretKey::parse(&past, p, Some(b"pw")),
        "scrypt memory limit 2147483649 is larger than the 2147483648",
    );
}

// ---- Defender folder manifest.json -------------------------------------

#[test]
fn folder_manifest_64_kib() {
    assert_eq!(FolderManifest::MAX_SIZE, 64 * 1024);
    let mut b = br#"{"EngineVersion": "1.1.24090.4", "DefinitionVersion": "1.419.100.0"}"#.to_vec();
    b.resize(FolderManifest::MAX_SIZE as usize, b' ');
    FolderManifest::parse(&b, Path::new("manifest.json")).unwrap();
    b.push(b' ');
    assert_err_contains(
        FolderManifest::parse(&b, Path::new("manifest.json")),
        "too large",
    );
}

// ---- state directory ---------------------------------------------------

#[test]
fn state_file_16_mib() {
    assert_eq!(MAX_STATE_SIZE, 16 * 1024 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let sd = StateDir::open(dir.path()).unwrap();
    // A state as gapferry writes it, padded with JSON whitespace.
    let mut b = serde_json::to_vec(&gapferry::mirror::state::State::default()).unwrap();
    b.resize(MAX_STATE_SIZE as usize, b'\n');
    fs::write(sd.state_path(), &b).unwrap();
    sd.load().unwrap();
    b.push(b'\n');
    fs::write(sd.state_path(), &b).unwrap();
    assert_err_contains(sd.load(), "larger than 16777216 bytes");
}

/// Appends an entry whose line (without its newline) is exactly `len` bytes.
fn append_line_of(ledger: &Ledger, len: usize) -> Result<(), String> {
    let probe = |n: usize| LedgerEntry {
        reason: Some("r".repeat(n)),
        ..LedgerEntry::new(Outcome::Failed)
    };
    let base = serde_json::to_vec(&LedgerEntry {
        prev_hash: "0".repeat(64),
        ..probe(0)
    })
    .unwrap()
    .len();
    ledger
        .append(&probe(len - base))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn ledger_line_1_mib() {
    assert_eq!(MAX_LINE, 1024 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::new(&dir.path().join("ledger.jsonl"));
    append_line_of(&ledger, MAX_LINE).unwrap();
    let text = fs::read(ledger.path()).unwrap();
    assert_eq!(text.len(), MAX_LINE + 1, "one line of exactly 1 MiB");
    assert_eq!(ledger.read().unwrap().len(), 1);
    ledger.verify().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::new(&dir.path().join("ledger.jsonl"));
    // Past the limit: the entry is shortened on append, or the read refuses
    // it; never a silently accepted over-long line.
    match append_line_of(&ledger, MAX_LINE + 1) {
        Err(e) => panic!("append failed: {e}"),
        Ok(()) => {
            let len = fs::read(ledger.path()).unwrap().len();
            assert!(len <= MAX_LINE + 1, "a {len}-byte line was written");
            assert_eq!(ledger.read().unwrap().len(), 1);
        }
    }
}

// ---- policy clocks -----------------------------------------------------

#[test]
fn future_skew_24_hours() {
    use gapferry::mirror::import::MAX_FUTURE_SKEW;
    assert_eq!(MAX_FUTURE_SKEW, Duration::from_secs(24 * 3600));
    let (mut m, _) = base();
    let now = std::time::SystemTime::now();
    m.created = gapferry::timestamp::Timestamp::from_time(now + MAX_FUTURE_SKEW);
    m.expires = gapferry::timestamp::Timestamp::from_time(now + 2 * MAX_FUTURE_SKEW);
    let m = Manifest::parse(&m.to_bytes()).unwrap();
    assert!(!m.is_from_future(now, MAX_FUTURE_SKEW));
    assert!(m.is_from_future(now - Duration::from_secs(1), MAX_FUTURE_SKEW));
}
