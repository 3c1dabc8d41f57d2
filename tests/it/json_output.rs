//! `--json` output of export, inspect and verify: one JSON document on
//! stdout in the shape docs/FORMAT.md documents, read back with
//! `deny_unknown_fields` (support::json), and the failure document on
//! stdout on failure.

use crate::support;

use std::fs;
use std::io::Read;
use std::time::{Duration, SystemTime};

use support::craft::{self, Parts};
use support::{json, tree_digest, FakeRelease, Sandbox};

/// The manifest bytes inside a bundle, read with the `tar` crate (an
/// independent reader).
fn manifest_bytes(bundle: &std::path::Path) -> Vec<u8> {
    let data = zstd::decode_all(fs::File::open(bundle).unwrap()).unwrap();
    let mut ar = tar::Archive::new(&data[..]);
    let mut e = ar.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(&*e.path_bytes(), b"gapferry/manifest.json");
    let mut v = Vec::new();
    e.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn export_inspect_verify_json_agree() {
    let sb = Sandbox::new();
    let a = sb.keygen("a");
    let b = sb.keygen("b");
    let releases = [
        FakeRelease::new("linux", "production", "arm64").versions("1.1.24100.1", "1.421.5.0"),
        FakeRelease::new("mac", "preview", "x86_64"),
    ];
    let from = sb.download_folder("dl", &releases);
    let bundle = sb.join("b.tar.zst");
    let r = sb.export(
        &from,
        &[&a, &b],
        &bundle,
        &["--json", "--channel", "plant-7", "--expires-in", "7d"],
    );
    assert!(
        r.stderr.is_empty(),
        "--json keeps stderr quiet on success: {r:#?}"
    );
    let e: json::Export = json::parse(&r.stdout);
    assert_eq!(e.bundle_path, bundle.to_str().unwrap());
    assert_eq!(e.bundle, e.bundle_path);
    assert!(e.ok && e.schema_version == 1);
    assert_eq!(e.channel, "plant-7");
    assert_eq!(e.bundle_size, fs::metadata(&bundle).unwrap().len());
    let payload: Vec<(String, Vec<u8>)> = releases.iter().flat_map(|r| r.payload()).collect();
    assert_eq!(
        e.payload_size,
        payload.iter().map(|(_, d)| d.len() as u64).sum::<u64>()
    );
    assert_eq!(
        e.manifest_sha256,
        support::sha256_hex(&manifest_bytes(&bundle))
    );
    assert_eq!(e.signer_key_ids, [a.id().to_string(), b.id().to_string()]);
    assert_eq!(e.signers, e.signer_key_ids);
    assert_eq!(
        e.items,
        [
            json::Item {
                platform: "linux".into(),
                ring: "production".into(),
                arch: "arm64".into(),
                engine_version: "1.1.24100.1".into(),
                definition_version: "1.421.5.0".into(),
            },
            json::Item {
                platform: "mac".into(),
                ring: "preview".into(),
                arch: "x86_64".into(),
                engine_version: "1.1.24090.4".into(),
                definition_version: "1.419.100.0".into(),
            },
        ]
    );
    assert_eq!(e.bundle_id.len(), 32, "{e:?}");

    // inspect without --trust: every signature unchecked, no problem field.
    let r = sb
        .run(["inspect".as_ref(), bundle.as_os_str(), "--json".as_ref()])
        .ok();
    assert!(!r.stdout.contains("problem"), "{r:#?}");
    let i: json::Inspect = json::parse(&r.stdout);
    assert_eq!(i.bundle, e.bundle);
    assert_eq!(i.format, "gapferry-bundle/1");
    assert_eq!(i.bundle_id, e.bundle_id);
    assert_eq!(i.channel, e.channel);
    assert_eq!(i.sequence, e.sequence);
    assert_eq!(i.created, e.created);
    assert_eq!(i.expires, e.expires);
    assert!(!i.expired);
    assert_eq!(
        i.producer,
        format!("gapferry {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(i.profile, "mde");
    assert_eq!(i.manifest_sha256, e.manifest_sha256);
    assert_eq!(i.payload_size, e.payload_size);
    assert_eq!(i.items, e.items);
    let want_files: Vec<json::File> = payload
        .iter()
        .map(|(p, d)| json::File {
            path: p.clone(),
            size: d.len() as u64,
            sha256: support::sha256_hex(d),
        })
        .collect();
    assert_eq!(i.files, want_files);
    assert_eq!(
        i.signatures,
        [a.id(), b.id()].map(|id| json::SignatureCheck {
            key_id: id.to_string(),
            status: "unchecked".into(),
            problem: None,
        })
    );

    // inspect --trust a: a valid, b untrusted.
    let r = sb
        .run([
            "inspect".as_ref(),
            bundle.as_os_str(),
            "--json".as_ref(),
            "--trust".as_ref(),
            a.public.as_os_str(),
        ])
        .ok();
    let i: json::Inspect = json::parse(&r.stdout);
    let statuses: Vec<(&str, &str)> = i
        .signatures
        .iter()
        .map(|s| (s.key_id.as_str(), s.status.as_str()))
        .collect();
    let (ia, ib) = (a.id().to_string(), b.id().to_string());
    assert_eq!(
        statuses,
        [(ia.as_str(), "valid"), (ib.as_str(), "untrusted")]
    );

    // verify --json.
    let r = sb
        .verify(
            &bundle,
            &[&a.public, &b.public],
            &["--json", "--threshold", "2"],
        )
        .ok();
    assert!(r.stderr.is_empty(), "{r:#?}");
    let v: json::Verify = json::parse(&r.stdout);
    assert!(v.ok);
    assert_eq!(v.bundle, e.bundle);
    assert_eq!(v.bundle_id, e.bundle_id);
    assert_eq!(v.channel, "plant-7");
    assert_eq!(v.sequence, e.sequence);
    assert_eq!(v.expires, e.expires);
    assert!(!v.expired);
    assert_eq!(v.manifest_sha256, e.manifest_sha256);
    assert_eq!(v.signer_key_ids, e.signer_key_ids);
    assert_eq!(v.signers, v.signer_key_ids);
    assert_eq!(v.files_checked, 4);
    assert_eq!(v.bytes_checked, e.payload_size);
}

#[test]
fn json_for_invalid_and_expired_signatures() {
    let sb = Sandbox::new();
    let a = sb.keygen("a");
    let sk = a.secret_key();
    let rel = [FakeRelease::new("linux", "preview", "x86_64")];

    // An invalid signature by a trusted key: status invalid with a problem.
    let mut p = Parts::mde(&rel, &[&sk]);
    p.manifest_bytes.insert(1, b' ');
    let bad = sb.join("bad.tar.zst");
    p.write(&bad);
    let r = sb
        .run([
            "inspect".as_ref(),
            bad.as_os_str(),
            "--json".as_ref(),
            "--trust".as_ref(),
            a.public.as_os_str(),
        ])
        .ok();
    let i: json::Inspect = json::parse(&r.stdout);
    assert_eq!(i.signatures.len(), 1);
    assert_eq!(i.signatures[0].status, "invalid");
    assert!(
        i.signatures[0]
            .problem
            .as_deref()
            .unwrap()
            .contains("does not match the data"),
        "{i:?}"
    );
    // verify --json on a rejected bundle: exit 3, the failure document.
    let before = tree_digest(sb.path());
    let r = sb
        .verify(&bad, &[&a.public], &["--json"])
        .fails(3, &["bad.tar.zst"]);
    let f = json::failure(&r.stdout, "verify", 3);
    assert_eq!(f.error.kind, "rejected");
    assert!(f.error.message.contains("bad.tar.zst"), "{f:?}");
    assert_eq!(tree_digest(sb.path()), before);

    // An expired bundle: inspect says so; verify --allow-expired too.
    let (mut m, payload) = craft::mde_manifest(&rel);
    let now = SystemTime::now();
    m.created = gapferry::timestamp::Timestamp::from_time(now - Duration::from_secs(9 * 86400));
    m.expires = gapferry::timestamp::Timestamp::from_time(now - Duration::from_secs(2 * 86400));
    let old = sb.join("old.tar.zst");
    Parts::signed(&m, &payload, &[&sk]).write(&old);
    let r = sb
        .run(["inspect".as_ref(), old.as_os_str(), "--json".as_ref()])
        .ok();
    let i: json::Inspect = json::parse(&r.stdout);
    assert!(i.expired);
    let before = tree_digest(sb.path());
    let r = sb
        .verify(&old, &[&a.public], &["--json"])
        .fails(4, &["expired"]);
    let f = json::failure(&r.stdout, "verify", 4);
    assert_eq!(f.error.kind, "policy");
    assert_eq!(tree_digest(sb.path()), before);
    let r = sb
        .verify(&old, &[&a.public], &["--json", "--allow-expired"])
        .ok();
    let v: json::Verify = json::parse(&r.stdout);
    assert!(v.ok && v.expired);
}

#[test]
fn export_json_failure_prints_the_failure_document() {
    let sb = Sandbox::new();
    let a = sb.keygen("a");
    let from = sb.mkdir("empty-dl");
    let mut cmd = sb.cmd();
    cmd.arg("export")
        .arg("--from")
        .arg(&from)
        .arg("--secret-key")
        .arg(&a.secret)
        .arg("--out")
        .arg(sb.join("x.tar.zst"))
        .arg("--json");
    let before = tree_digest(sb.path());
    let r = support::run(cmd).fails(1, &["nothing to carry"]);
    let f = json::failure(&r.stdout, "export", 1);
    assert!(f.error.message.contains("nothing to carry"), "{f:?}");
    assert_eq!(tree_digest(sb.path()), before);
}
