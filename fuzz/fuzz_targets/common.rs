//! Shared by the fuzz targets: a fixed public test key, a hand-written tar
//! entry builder, and the bundle checks (inspect, verify, import into a
//! throwaway mirror) that every bundle target runs.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gapferry::bundle::reader::BundleReader;
use gapferry::bundle::trust;
use gapferry::keys::{KeyId, SecretKey, TrustSet};
use gapferry::mirror::import::{import, ImportOptions, Target};
use gapferry::mirror::publish::PublishOptions;
use gapferry::progress::NoProgress;

/// The fuzzing key. Public on purpose: it signs nothing outside fuzzing.
pub fn key() -> SecretKey {
    SecretKey {
        key_id: KeyId(*b"fuzzkey!"),
        signing_key: ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]),
    }
}

pub fn trust_set() -> TrustSet {
    let mut t = TrustSet::default();
    t.add(key().public(), PathBuf::from("fuzz.pub")).unwrap();
    t
}

/// One ustar header + data + padding.
pub fn tar_entry(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A scratch directory on tmpfs when there is one: imports fsync.
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

/// What `inspect` and `verify` do, through the library. Every outcome but a
/// panic is fine.
pub fn read_bundle(bytes: &[u8]) {
    let Ok(mut r) = BundleReader::new(Cursor::new(bytes), Path::new("fuzz.tar.zst")) else {
        return;
    };
    let Ok(head) = r.read_head() else { return };
    let _ = head.manifest.trusted_comment();
    let _ = gapferry::mde::check::slots(&head.manifest);
    let checks = trust::check_signatures(&head, Some(&trust_set()));
    let _ = trust::check_signatures(&head, None);
    let _ = checks;
    let _ = r.verify_payload(&NoProgress);
}

/// `gapferry import` into a fresh mirror.
pub fn import_bundle(bytes: &[u8]) {
    let dir = scratch();
    let bundle = dir.path().join("b.tar.zst");
    std::fs::write(&bundle, bytes).unwrap();
    let mirror = dir.path().join("mirror");
    std::fs::create_dir(&mirror).unwrap();
    let opts = ImportOptions {
        bundle,
        trust: trust_set(),
        threshold: 1,
        target: Target::Mirror(mirror),
        state_dir: dir.path().join("state"),
        channel: "default".into(),
        platforms: Vec::new(),
        rings: Vec::new(),
        allow_downgrade: false,
        // Let expired bundles through so the fuzzer reaches the payload.
        allow_expired: true,
        lock_wait: Duration::from_secs(0),
        publish: PublishOptions::default(),
    };
    let (report, err) = import(&opts, &NoProgress);
    // A success must have published exactly what the manifest lists.
    if err.is_none() {
        assert!(report.exit_code == 0);
    }
}
