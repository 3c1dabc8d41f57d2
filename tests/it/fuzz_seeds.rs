//! Writes the seed corpora of the fuzz targets (fuzz/, see fuzz/run.sh):
//! bundles the tool makes and the hostile cases of the tests, in each
//! target's input format. Ignored in the normal suite; fuzz/run.sh runs it
//! with `GAPFERRY_FUZZ_CORPUS=fuzz/corpus`. Nothing it writes is committed.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};

use gapferry::keys::SecretKey;

use support::craft::{self, Header, Parts, Tar};
use support::FakeRelease;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(name), bytes).unwrap();
}

/// `len: u16 LE ‖ manifest ‖ tail` for the bundle_signed target: the tail is
/// the tar after the manifest and signature entries.
fn signed_seed(p: &Parts) -> Vec<u8> {
    let mut tail = Tar::new();
    for (n, d) in &p.payload {
        tail = tail.file(n, d);
    }
    let tail = tail.end().into_bytes();
    let mut out = (p.manifest_bytes.len().min(u16::MAX as usize) as u16)
        .to_le_bytes()
        .to_vec();
    out.extend_from_slice(&p.manifest_bytes);
    out.extend_from_slice(&tail);
    out
}

#[test]
#[ignore = "writes fuzz seed corpora; run by fuzz/run.sh"]
fn write_fuzz_corpus() {
    let Some(dir) = std::env::var_os("GAPFERRY_FUZZ_CORPUS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let k = SecretKey::generate();
    let k2 = SecretKey::generate();

    // Every input fuzzing has found (tests/data/fuzz/<target>-<what>), back
    // into its target's corpus.
    for e in fs::read_dir(root.join("tests/data/fuzz")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some((target, _)) = name.split_once('-') {
            write(&dir, target, &name, &fs::read(e.path()).unwrap());
        }
    }

    // Keys.
    write(&dir, "keys", "pub", k.public().to_file_text().as_bytes());
    write(&dir, "keys", "pub-bare", k.public().to_base64().as_bytes());
    write(&dir, "keys", "sec", k.to_file_text(None).as_bytes());
    write(
        &dir,
        "keys",
        "golden-pub",
        &fs::read(root.join("tests/data/golden-v1.pub")).unwrap(),
    );
    write(&dir, "keys", "empty", b"");

    // Bundles: the golden one, several valid ones, hostile variants.
    let golden = fs::read(root.join("tests/data/golden-v1.tar.zst")).unwrap();
    write(&dir, "bundle", "golden", &golden);
    let rels = [
        FakeRelease::new("linux", "production", "x86_64"),
        FakeRelease::new("mac", "preview", "arm64").versions("1.1.1.1", "1.2.3.4"),
    ];
    let valid = Parts::mde(&rels, &[&k, &k2]);
    let one = Parts::mde(&rels[..1], &[&k]);
    let mut cases: Vec<(&str, Parts)> = vec![("valid2", valid.clone()), ("valid1", one.clone())];
    let mut dup = one.clone();
    dup.payload.push(dup.payload[0].clone());
    cases.push(("duplicate", dup));
    let mut swapped = valid.clone();
    swapped.payload.swap(0, 1);
    cases.push(("out-of-order", swapped));
    let mut dotdot = one.clone();
    dotdot.payload[0].0 = b"payload/../x".to_vec();
    cases.push(("dotdot", dotdot));
    let mut nosig = one.clone();
    nosig.signatures.clear();
    cases.push(("no-signature", nosig));
    for (name, p) in &cases {
        write(&dir, "bundle", name, &p.bundle());
        write(&dir, "bundle_signed", name, &signed_seed(p));
        write(&dir, "manifest", name, &p.manifest_bytes);
        for (i, (_, s)) in p.signatures.iter().enumerate() {
            write(&dir, "signature", &format!("{name}-{i}"), s);
        }
    }
    // Tar tricks, compressed.
    let tricks: Vec<(&str, Vec<u8>)> = vec![
        (
            "symlink",
            one.tar()
                .entry(&Header::typed("payload/link", b'2'), b"")
                .end()
                .into_bytes(),
        ),
        (
            "pax",
            Tar::new()
                .pax(&[("size", "5"), ("path", "gapferry/manifest.json")])
                .file(craft::MANIFEST_NAME, &one.manifest_bytes)
                .end()
                .into_bytes(),
        ),
        ("trailing", [one.tar_bytes(), b"garbage".to_vec()].concat()),
        ("truncated", one.tar_bytes()[..1500].to_vec()),
    ];
    for (name, tar) in tricks {
        write(&dir, "bundle", name, &craft::zstd(&tar));
    }
    write(
        &dir,
        "bundle",
        "zero-frame",
        &craft::zstd_zero_frame(1 << 16),
    );

    // Manifests: hostile JSON.
    let m = &one.manifest_bytes;
    let text = String::from_utf8(m.clone()).unwrap();
    write(
        &dir,
        "manifest",
        "dup-key",
        text.replacen("\"channel\"", "\"channel\": \"x\", \"channel\"", 1)
            .as_bytes(),
    );
    write(
        &dir,
        "manifest",
        "deep",
        &[b"[".repeat(40), b"]".repeat(40)].concat(),
    );
    write(
        &dir,
        "manifest",
        "case",
        text.replacen("arch_x86_64/manifest.json", "ARCH_x86_64/updates.zip", 1)
            .as_bytes(),
    );
}
