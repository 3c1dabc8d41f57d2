//! The golden bundle: a format v1 bundle frozen in `tests/data/` when the
//! format was first released, with the public key that signed it. The
//! secret key was thrown away. These tests hold gapferry to the
//! compatibility promise of docs/FORMAT.md section 7: a bundle already on a
//! courier's stick keeps verifying, inspecting and importing, byte for byte,
//! whatever later releases change.
//!
//! Never regenerate the golden bundle to make a test pass: a failure here
//! means the change breaks bundles in the field. (The ignored `make_golden`
//! test is how it was made, kept for the record and for a future
//! `golden-v2`.)

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gapferry::bundle::reader::BundleReader;
use gapferry::bundle::trust;
use gapferry::keys::{PublicKey, TrustSet};
use gapferry::mirror::import::{import, ImportOptions, Target};
use gapferry::mirror::ledger::Outcome;
use gapferry::mirror::publish::PublishOptions;
use gapferry::progress::NoProgress;

use support::{json, sha256_hex, Sandbox};

const BUNDLE: &str = "tests/data/golden-v1.tar.zst";
const PUBKEY: &str = "tests/data/golden-v1.pub";

/// SHA-256 of the whole bundle file: the file itself must never change.
const BUNDLE_SHA256: &str = "a7510aa74d51acad94162f74bbee83e2a20b070d8c040ca0ad318c7780054a06";
const MANIFEST_SHA256: &str = "2587864c58fc2c605a77d7d646063752b067a76917ebe843d1f2476e2f3b54ad";
const BUNDLE_ID: &str = "118c15b7572f0c0e67f0790884670d63";
const KEY_ID: &str = "3CCDCB9005507441";
const SEQUENCE: u64 = 1_795_772_341;
const CREATED: &str = "2026-11-27T09:39:01Z";
const EXPIRES: &str = "2126-01-01T00:00:00Z";

/// (platform, ring, arch, engine, definitions) of each item, in order.
const ITEMS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "linux",
        "production",
        "x86_64",
        "1.1.24090.4",
        "1.419.100.0",
    ),
    ("mac", "production", "arm64", "1.1.24080.9", "1.419.99.0"),
];

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The folder manifest.json each item carries.
fn folder_manifest(engine: &str, definitions: &str) -> Vec<u8> {
    format!("{{\"EngineVersion\": \"{engine}\", \"DefinitionVersion\": \"{definitions}\"}}\n")
        .into_bytes()
}

/// The updates.zip each item carries.
fn updates_zip(rel: &str, engine: &str, definitions: &str) -> Vec<u8> {
    let body = format!("golden bundle v1: {rel} engine {engine} definitions {definitions}\n");
    gapferry::mde::zipcheck::tiny_zip("mpavdlta.vdm", body.repeat(4).as_bytes())
}

/// `(payload path, bytes)` in manifest order.
fn payload() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (p, r, a, e, d) in ITEMS {
        let rel = format!("{p}/{r}/arch_{a}");
        out.push((format!("{rel}/updates.zip"), updates_zip(&rel, e, d)));
        out.push((format!("{rel}/manifest.json"), folder_manifest(e, d)));
    }
    out
}

fn trust() -> TrustSet {
    TrustSet::load(&[data(PUBKEY)]).unwrap()
}

#[test]
fn golden_file_is_unchanged() {
    let bytes = fs::read(data(BUNDLE)).unwrap();
    assert_eq!(sha256_hex(&bytes), BUNDLE_SHA256, "{BUNDLE} was modified");
    let key = PublicKey::from_file(&data(PUBKEY)).unwrap();
    assert_eq!(key.key_id.to_string(), KEY_ID);
}

#[test]
fn library_reads_and_verifies_golden() {
    let mut r = BundleReader::open(&data(BUNDLE)).unwrap();
    let head = r.read_head().unwrap();
    let m = &head.manifest;
    assert_eq!(head.manifest_sha256, MANIFEST_SHA256);
    assert_eq!(m.format, "gapferry-bundle/1");
    assert_eq!(m.bundle_id, BUNDLE_ID);
    assert_eq!(m.channel, "golden");
    assert_eq!(m.sequence, SEQUENCE);
    assert_eq!(m.created, CREATED);
    assert_eq!(m.expires, EXPIRES);
    assert_eq!(m.profile, "mde");
    assert_eq!(m.producer, "gapferry 0.1.0");
    let items: Vec<_> = m
        .items
        .iter()
        .map(|i| {
            (
                i.platform.as_str(),
                i.ring.as_str(),
                i.arch.as_str(),
                i.engine_version.as_str(),
                i.definition_version.as_str(),
            )
        })
        .collect();
    assert_eq!(items, ITEMS);
    let want = payload();
    assert_eq!(m.files.len(), want.len());
    for (f, (path, bytes)) in m.files.iter().zip(&want) {
        assert_eq!(f.path.as_str(), path);
        assert_eq!(f.size, bytes.len() as u64);
        assert_eq!(f.sha256, sha256_hex(bytes));
    }
    assert_eq!(head.signatures.len(), 1);
    assert_eq!(head.signatures[0].key_id.to_string(), KEY_ID);
    assert_eq!(head.signatures[0].trusted_comment, m.trusted_comment());

    let trust = trust();
    let checks = trust::check_signatures(&head, Some(&trust));
    assert_eq!(checks.len(), 1);
    assert_eq!(
        checks[0].status,
        trust::SignatureStatus::Valid,
        "{checks:?}"
    );
    r.verify_payload(&NoProgress).unwrap();
}

#[test]
fn cli_verifies_golden() {
    let sb = Sandbox::new();
    let run = sb
        .verify(
            &data(BUNDLE),
            &[&data(PUBKEY)],
            &["--json", "--channel", "golden"],
        )
        .ok();
    let v: json::Verify = json::parse(&run.stdout);
    assert!(v.ok);
    assert_eq!(v.bundle_id, BUNDLE_ID);
    assert_eq!(v.sequence, SEQUENCE);
    assert_eq!(v.manifest_sha256, MANIFEST_SHA256);
    assert_eq!(v.signers, vec![KEY_ID.to_string()]);
    assert_eq!(v.files_checked, 4);
    let bytes: u64 = payload().iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(v.bytes_checked, bytes);
}

#[test]
fn cli_inspects_golden() {
    let sb = Sandbox::new();
    let b = data(BUNDLE);
    let k = data(PUBKEY);
    let run = sb
        .run([
            "inspect".as_ref(),
            b.as_os_str(),
            "--trust".as_ref(),
            k.as_os_str(),
            "--json".as_ref(),
        ])
        .ok();
    let i: json::Inspect = json::parse(&run.stdout);
    assert_eq!(i.format, "gapferry-bundle/1");
    assert_eq!(i.bundle_id, BUNDLE_ID);
    assert_eq!(i.channel, "golden");
    assert_eq!(i.sequence, SEQUENCE);
    assert_eq!(i.created, CREATED);
    assert_eq!(i.expires, EXPIRES);
    assert!(!i.expired);
    assert_eq!(i.manifest_sha256, MANIFEST_SHA256);
    assert_eq!(i.signatures.len(), 1);
    assert_eq!(i.signatures[0].key_id, KEY_ID);
    assert_eq!(i.signatures[0].status, "valid");
    assert_eq!(i.items.len(), ITEMS.len());
    for (got, (p, r, a, e, d)) in i.items.iter().zip(ITEMS) {
        assert_eq!(
            (
                got.platform.as_str(),
                got.ring.as_str(),
                got.arch.as_str(),
                got.engine_version.as_str(),
                got.definition_version.as_str()
            ),
            (*p, *r, *a, *e, *d)
        );
    }
    let paths: Vec<_> = i.files.iter().map(|f| f.path.as_str()).collect();
    let want: Vec<_> = payload().into_iter().map(|(p, _)| p).collect();
    assert_eq!(paths, want);
}

#[test]
fn cli_imports_golden() {
    let sb = Sandbox::new();
    let mirror = sb.mkdir("mirror");
    let state = sb.state_dir();
    let b = data(BUNDLE);
    let k = data(PUBKEY);
    let args = [
        "import".as_ref(),
        b.as_os_str(),
        "--trust".as_ref(),
        k.as_os_str(),
        "--mirror".as_ref(),
        mirror.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--channel".as_ref(),
        "golden".as_ref(),
    ];
    sb.run(args).ok();
    for (path, bytes) in payload() {
        assert_eq!(fs::read(mirror.join(&path)).unwrap(), bytes, "{path}");
    }
    // The same bundle again: a success that changes nothing.
    let before = support::tree_digest(&mirror);
    sb.run(args).ok();
    assert_eq!(support::tree_digest(&mirror), before);
}

#[test]
fn library_imports_golden() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    fs::create_dir(&mirror).unwrap();
    let opts = ImportOptions {
        bundle: data(BUNDLE),
        trust: trust(),
        threshold: 1,
        target: Target::Mirror(mirror.clone()),
        state_dir: dir.path().join("state"),
        channel: "golden".into(),
        only: Default::default(),
        allow_downgrade: false,
        allow_expired: false,
        lock_wait: Duration::from_secs(5),
        publish: PublishOptions::default(),
        roots: None,
        allow_expired_policy: false,
    };
    let (report, err) = import(&opts, &NoProgress);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(report.outcome, Outcome::Imported);
    assert_eq!(report.bundle_id.as_deref(), Some(BUNDLE_ID));
    assert_eq!(
        report.manifest_sha256.as_ref().map(|s| s.as_str()),
        Some(MANIFEST_SHA256)
    );
    let signers: Vec<String> = report.signers.iter().map(|k| k.to_string()).collect();
    assert_eq!(signers, vec![KEY_ID.to_string()]);
    for (path, bytes) in payload() {
        assert_eq!(fs::read(mirror.join(&path)).unwrap(), bytes, "{path}");
    }
}

/// How the golden bundle was made (once, in 2026). Run with
/// `GAPFERRY_WRITE_GOLDEN=<dir> cargo test --test it golden:: -- --ignored`; it
/// writes `golden-v1.tar.zst` and `golden-v1.pub` into `<dir>` and prints
/// the constants above. The secret key lives only in memory.
#[test]
#[ignore = "writes a new golden bundle; never needed to run the suite"]
fn make_golden() {
    use gapferry::bundle::writer::{write_bundle, BundleSpec, SourceFile, WriteOptions};
    use gapferry::keys::SecretKey;
    use gapferry::manifest::Item;
    use gapferry::safepath::SafePath;

    let Some(out) = std::env::var_os("GAPFERRY_WRITE_GOLDEN") else {
        return;
    };
    let out = PathBuf::from(out);
    let src = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (path, bytes) in payload() {
        let p = src.path().join(path.replace('/', "_"));
        fs::write(&p, bytes).unwrap();
        files.push(SourceFile {
            path: SafePath::new(&path).unwrap(),
            source: p,
        });
    }
    let items = ITEMS
        .iter()
        .map(|(p, r, a, e, d)| Item {
            platform: p.to_string(),
            ring: r.to_string(),
            arch: a.to_string(),
            engine_version: e.to_string(),
            definition_version: d.to_string(),
        })
        .collect();
    let now = SystemTime::now();
    let now = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        );
    let mut id = [0u8; 16];
    getrandom::getrandom(&mut id).unwrap();
    let spec = BundleSpec {
        bundle_id: hex::encode(id),
        channel: "golden".into(),
        sequence: now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        created: now,
        expires: gapferry::manifest::parse_time(EXPIRES).unwrap(),
        producer: "gapferry 0.1.0".into(),
        profile: "mde".into(),
        items,
        files,
        trust: Vec::new(),
    };
    let key = SecretKey::generate();
    let bundle = out.join("golden-v1.tar.zst");
    let w = write_bundle(
        &spec,
        std::slice::from_ref(&key),
        &bundle,
        &WriteOptions {
            level: 19,
            threads: 0,
            overwrite: false,
        },
        &NoProgress,
    )
    .unwrap();
    let public = key.public();
    fs::write(
        out.join("golden-v1.pub"),
        format!(
            "untrusted comment: gapferry golden bundle v1 test key {} (secret key destroyed)\n{}\n",
            public.key_id,
            public.to_base64()
        ),
    )
    .unwrap();
    println!("BUNDLE_SHA256 {}", sha256_hex(&fs::read(&bundle).unwrap()));
    println!("MANIFEST_SHA256 {}", w.manifest_sha256);
    println!("BUNDLE_ID {}", w.manifest.bundle_id);
    println!("KEY_ID {}", public.key_id);
    println!("SEQUENCE {}", w.manifest.sequence);
    println!("CREATED {}", w.manifest.created);
}
