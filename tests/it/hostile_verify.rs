//! DESIGN section 6 through `gapferry verify`: every malicious bundle that
//! verify can see, crafted byte by byte here (never by gapferry's writer),
//! must be refused with exit 3 (rejected) or 4 (policy), a message naming
//! the problem, and nothing changed on disk.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gapferry::keys::{KeyId, PublicKey, SecretKey};
use gapferry::manifest::{self, Manifest};
use support::craft::{
    self, mde_manifest, payload_name, sig_name, tar_with, with_line, Header, Parts, Tar,
};
use support::{tree_digest, FakeRelease, Keys, Run, Sandbox};

struct H {
    sb: Sandbox,
    a: Keys,
    ska: SecretKey,
    skb: SecretKey,
    releases: Vec<FakeRelease>,
}

fn setup() -> H {
    let sb = Sandbox::new();
    let a = sb.keygen("a");
    let b = sb.keygen("b");
    let ska = a.secret_key();
    let skb = b.secret_key();
    // Only a's public key is trusted unless a test says otherwise.
    fs::remove_file(&b.public).unwrap();
    H {
        sb,
        a,
        ska,
        skb,
        releases: vec![
            FakeRelease::new("linux", "production", "x86_64"),
            FakeRelease::new("mac", "production", "arm64"),
        ],
    }
}

impl H {
    fn manifest(&self) -> (Manifest, Vec<(String, Vec<u8>)>) {
        mde_manifest(&self.releases)
    }

    /// A valid bundle signed by the trusted key.
    fn valid(&self) -> Parts {
        Parts::mde(&self.releases, &[&self.ska])
    }

    /// Manifest JSON edited as a value, serialized and signed by `a`.
    fn edited(&self, edit: impl FnOnce(&mut serde_json::Value)) -> Parts {
        let (m, payload) = self.manifest();
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        edit(&mut v);
        let bytes = serde_json::to_vec_pretty(&v).unwrap();
        Parts::signed_bytes(bytes, &m.trusted_comment(), &payload, &[&self.ska])
    }

    fn write(&self, bundle: &[u8]) -> PathBuf {
        let dir = self.sb.mkdir("in");
        let p = dir.join("hostile.tar.zst");
        fs::write(&p, bundle).unwrap();
        p
    }

    /// verify with `--trust a.pub` and `extra`; asserts nothing changed on disk.
    fn verify_with(&self, bundle: &[u8], trust: &[&Path], extra: &[&str]) -> Run {
        let p = self.write(bundle);
        let before = tree_digest(self.sb.path());
        let mut cmd = self.sb.cmd();
        cmd.arg("verify").arg(&p);
        for t in trust {
            cmd.arg("--trust").arg(t);
        }
        cmd.args(extra).timeout(Duration::from_secs(60));
        let r = support::run(cmd);
        assert_eq!(
            tree_digest(self.sb.path()),
            before,
            "verify changed something on disk"
        );
        r
    }

    fn verify(&self, bundle: &[u8]) -> Run {
        self.verify_with(bundle, &[&self.a.public], &[])
    }

    /// Expects exit 3 with a message naming the bundle and `needles`.
    #[track_caller]
    fn rejected(&self, bundle: &[u8], needles: &[&str]) -> Run {
        let mut n = vec!["hostile.tar.zst", "bundle rejected"];
        n.extend_from_slice(needles);
        self.verify(bundle).fails(3, &n)
    }
}

#[test]
fn crafted_baseline_verifies() {
    // Without this, every rejection below could be the crafter's fault.
    let h = setup();
    let r = h.verify(&h.valid().bundle()).ok();
    assert!(r.stderr.contains("is valid"), "{r:#?}");
    assert!(r.stderr.contains("4 files"), "{r:#?}");
    // A GNU-magic header, as GNU tar writes, is read too.
    let mut t = Tar::new();
    let p = h.valid();
    for (n, d) in std::iter::once((&p.manifest_name, &p.manifest_bytes))
        .chain(p.signatures.iter().map(|(n, d)| (n, d)))
        .chain(p.payload.iter().map(|(n, d)| (n, d)))
    {
        let hd = Header {
            magic: craft::GNU_MAGIC,
            ..Header::file(n, d.len() as u64)
        };
        t = t.entry(&hd, d);
    }
    h.verify(&craft::zstd(&t.end().into_bytes())).ok();
    // Zero padding to a 10 KiB record, as tar(1) writes, is fine.
    let mut tar = h.valid().tar_bytes();
    tar.resize(tar.len().div_ceil(10240) * 10240, 0);
    h.verify(&craft::zstd(&tar)).ok();
}

// ---- content integrity -------------------------------------------------

#[test]
fn flipped_payload_byte() {
    let h = setup();
    let mut p = h.valid();
    p.payload[2].1[40] ^= 0x01;
    h.rejected(
        &p.bundle(),
        &["payload/mac/production/arch_arm64/updates.zip", "SHA-256"],
    );
}

#[test]
fn payload_truncated_or_extended() {
    let h = setup();
    let mut p = h.valid();
    p.payload[0].1.pop();
    h.rejected(
        &p.bundle(),
        &[
            "payload/linux/production/arch_x86_64/updates.zip",
            "bytes in the archive but",
        ],
    );
    let mut p = h.valid();
    p.payload[3].1.push(b'\n');
    h.rejected(
        &p.bundle(),
        &[
            "payload/mac/production/arch_arm64/manifest.json",
            "bytes in the archive but",
        ],
    );
    // The header claims the listed size but the data stops short.
    let p = h.valid();
    let mut t = Tar::new().file(&p.manifest_name, &p.manifest_bytes);
    for (n, d) in &p.signatures {
        t = t.file(n, d);
    }
    let (n, d) = &p.payload[0];
    t = t
        .header(&Header::file(n, d.len() as u64))
        .raw(&d[..d.len() / 2]);
    h.rejected(&craft::zstd(&t.into_bytes()), &["truncated"]);
}

#[test]
fn edited_manifest() {
    let h = setup();
    let mut p = h.valid();
    let text = String::from_utf8(p.manifest_bytes.clone()).unwrap();
    let edited = text.replacen("1.419.100.0", "1.419.999.0", 1);
    assert_ne!(edited, text);
    p.manifest_bytes = edited.into_bytes();
    let id = h.ska.key_id.to_string();
    h.rejected(&p.bundle(), &[&id, "invalid", "does not match the data"]);
    // One added space is enough.
    let mut p = h.valid();
    p.manifest_bytes.insert(1, b' ');
    h.rejected(&p.bundle(), &[&id, "does not match the data"]);
}

// ---- signatures and keys -----------------------------------------------

#[test]
fn valid_signature_by_an_untrusted_key() {
    let h = setup();
    let p = Parts::mde(&h.releases, &[&h.skb]);
    let r = h.rejected(&p.bundle(), &["no signature by a trusted key", "--trust"]);
    assert!(r.stderr.contains(&h.skb.key_id.to_string()), "{r:#?}");
    // An untrusted signature beside a trusted one counts for nothing but
    // does no harm.
    let p = Parts::mde(&h.releases, &[&h.skb, &h.ska]);
    h.verify(&p.bundle()).ok();
}

#[test]
fn trusted_key_id_on_a_signature_by_another_key() {
    let h = setup();
    let mut impostor = SecretKey::generate();
    impostor.key_id = h.ska.key_id;
    let p = Parts::mde(&h.releases, &[&impostor]);
    h.rejected(
        &p.bundle(),
        &[
            &format!("signature by trusted key {} is invalid", h.ska.key_id),
            "does not match the data",
        ],
    );
    // Even with a second, genuine signature by another trusted key.
    let b_pub = h.sb.join("keys/b.pub");
    fs::write(&b_pub, h.skb.public().to_file_text()).unwrap();
    let p = Parts::mde(&h.releases, &[&impostor, &h.skb]);
    let b = p.bundle();
    h.verify_with(&b, &[&h.a.public, &b_pub], &[])
        .fails(3, &["is invalid"]);
}

fn line(sig: &[u8], n: usize) -> String {
    String::from_utf8(sig.to_vec())
        .unwrap()
        .lines()
        .nth(n)
        .unwrap()
        .to_string()
}

#[test]
fn tampered_trusted_comment() {
    let h = setup();
    let mut p = h.valid();
    let tc = line(&p.signatures[0].1, 2);
    let tampered = tc.replace("sequence:1000", "sequence:9999");
    assert_ne!(tc, tampered);
    p.signatures[0].1 = with_line(&p.signatures[0].1, 2, &tampered);
    h.rejected(&p.bundle(), &["trusted comment", "altered"]);
}

#[test]
fn trusted_comment_that_does_not_describe_the_manifest() {
    // Validly signed, but the comment (what `minisign -V` shows an auditor)
    // names another sequence.
    let h = setup();
    let (m, payload) = h.manifest();
    let comment = m
        .trusted_comment()
        .replace("sequence:1000", "sequence:1001");
    let p = Parts::signed_bytes(m.to_bytes(), &comment, &payload, &[&h.ska]);
    h.rejected(&p.bundle(), &["does not describe this manifest"]);
}

#[test]
fn malformed_signature_files() {
    let h = setup();
    let good = h.valid().signatures[0].1.clone();
    let b64 = base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    let raw = b64.decode(line(&good, 1)).unwrap();
    let graw = b64.decode(line(&good, 3)).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (with_line(&good, 1, "RUT!!!not-base64!!!"), "bad base64"),
        (
            with_line(&good, 1, &b64.encode(&raw[..73])),
            "decoded to 73 bytes, expected 74",
        ),
        (
            with_line(&good, 1, &b64.encode([&raw[..], b"x"].concat())),
            "decoded to 75 bytes",
        ),
        (
            with_line(&good, 1, &b64.encode([b"Ed", &raw[2..]].concat())),
            "legacy algorithm",
        ),
        (
            with_line(&good, 1, &b64.encode([b"XX", &raw[2..]].concat())),
            "unknown signature algorithm",
        ),
        (with_line(&good, 3, "%%%"), "bad base64 in global signature"),
        (
            with_line(&good, 3, &b64.encode(&graw[..63])),
            "global signature decoded to 63 bytes",
        ),
        (
            with_line(&good, 2, "untrusted comment: swapped"),
            "not a trusted comment",
        ),
        (good[..good.len() / 2].to_vec(), "missing"),
        (b"".to_vec(), "untrusted comment"),
        ([&good[..], b"extra line\n"].concat(), "extra lines"),
        ([&[0xffu8][..], &good[..]].concat(), "not UTF-8"),
    ];
    for (sig, needle) in cases {
        let mut p = h.valid();
        p.signatures[0].1 = sig;
        let id = h.ska.key_id.to_string();
        h.rejected(&p.bundle(), &[&id, "malformed signature", needle]);
    }
}

#[test]
fn signature_entry_names_and_counts() {
    let h = setup();
    // Lower-case key id in the entry name.
    let mut p = h.valid();
    let lower = String::from_utf8(p.signatures[0].0.clone())
        .unwrap()
        .to_lowercase();
    p.signatures[0].0 = lower.into_bytes();
    h.rejected(
        &p.bundle(),
        &["is not named <16 upper-case hex digits>.minisig"],
    );
    // Named after one key, holding another's signature.
    let mut p = h.valid();
    p.signatures[0].0 = sig_name(h.skb.key_id);
    h.rejected(
        &p.bundle(),
        &[&format!("holds a signature by key {}", h.ska.key_id)],
    );
    // No signature at all.
    let mut p = h.valid();
    p.signatures.clear();
    h.rejected(&p.bundle(), &["no signatures"]);
    // More than 16 signatures.
    let (m, payload) = h.manifest();
    let keys: Vec<SecretKey> = (0..17).map(|_| SecretKey::generate()).collect();
    let refs: Vec<&SecretKey> = keys.iter().collect();
    let p = Parts::signed(&m, &payload, &refs);
    h.rejected(&p.bundle(), &["more than 16 signatures"]);
    // A signature file larger than 8 KiB.
    let mut p = h.valid();
    p.signatures[0].1.extend(std::iter::repeat_n(b'\n', 9000));
    h.rejected(&p.bundle(), &["larger than 8 KiB"]);
}

#[test]
fn bad_public_key_files() {
    // The trust set is the operator's input, not the bundle's: a usage error.
    let h = setup();
    let bundle = h.valid().bundle();
    let text = fs::read_to_string(&h.a.public).unwrap();
    let line1 = text.lines().nth(1).unwrap();
    let cases = [
        (
            "garbage",
            "untrusted comment: x\n!!!!\n".to_string(),
            "bad base64",
        ),
        (
            "short",
            format!("untrusted comment: x\n{}\n", &line1[..40]),
            "decoded to 30 bytes, expected 42",
        ),
        (
            "long",
            format!("untrusted comment: x\n{line1}AAAA\n"),
            "decoded to 45 bytes, expected 42",
        ),
        ("empty", String::new(), "empty"),
    ];
    for (name, text, needle) in cases {
        let p = h.sb.join(format!("keys/{name}.pub"));
        fs::write(&p, text).unwrap();
        h.verify_with(&bundle, &[&p], &[]).fails(
            2,
            &[&format!("{name}.pub"), "not a minisign public key", needle],
        );
        fs::remove_file(&p).unwrap();
    }
    // A directory without *.pub files.
    let empty = h.sb.mkdir("no-keys");
    h.verify_with(&bundle, &[&empty], &[])
        .fails(2, &["no-keys", "no *.pub"]);
}

#[test]
fn the_same_key_counted_twice_toward_a_threshold() {
    let h = setup();
    // Two signature entries by one key: the reader refuses duplicates.
    let mut p = h.valid();
    let dup = p.signatures[0].clone();
    p.signatures.push(dup);
    h.rejected(&p.bundle(), &["duplicate entry", &h.ska.key_id.to_string()]);

    // One key known under two key ids (a re-labelled copy of its .pub):
    // a signature re-labelled with the second id verifies too, but one key
    // must count once.
    let mut other_id = h.ska.key_id.0;
    other_id[0] ^= 0xff;
    let alias = PublicKey {
        key_id: KeyId(other_id),
        key: h.ska.public().key,
    };
    let trust = h.sb.mkdir("trust");
    fs::copy(&h.a.public, trust.join("a.pub")).unwrap();
    fs::write(trust.join("alias.pub"), alias.to_file_text()).unwrap();
    let mut p = h.valid();
    let relabelled = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut raw = b64.decode(line(&p.signatures[0].1, 1)).unwrap();
        raw[2..10].copy_from_slice(&other_id);
        with_line(&p.signatures[0].1, 1, &b64.encode(raw))
    };
    p.signatures.push((sig_name(KeyId(other_id)), relabelled));
    let b = p.bundle();
    // Each signature on its own is valid...
    h.verify_with(&b, &[&trust], &[]).ok();
    // ...but they are one key.
    h.verify_with(&b, &[&trust], &["--threshold", "2"])
        .fails(4, &["threshold not met", "1 distinct", "2 required"]);
}

// ---- archive structure ---------------------------------------------------

#[test]
fn tar_entry_not_in_the_manifest() {
    let h = setup();
    let mut p = h.valid();
    p.payload
        .push((payload_name("extra.txt"), b"surprise".to_vec()));
    h.rejected(
        &p.bundle(),
        &["payload/extra.txt", "follows the last listed file"],
    );
    let mut p = h.valid();
    p.payload
        .insert(1, (payload_name("linux/evil.sh"), b"#!/bin/sh\n".to_vec()));
    h.rejected(
        &p.bundle(),
        &["payload/linux/evil.sh", "not listed in the manifest"],
    );
    // Outside payload/ altogether.
    let mut p = h.valid();
    p.payload.insert(0, (b"README".to_vec(), b"hi".to_vec()));
    h.rejected(&p.bundle(), &["README", "not listed in the manifest"]);
}

#[test]
fn manifest_entry_missing_from_the_tar() {
    let h = setup();
    let mut p = h.valid();
    p.payload.pop();
    h.rejected(
        &p.bundle(),
        &["archive ends before payload/mac/production/arch_arm64/manifest.json"],
    );
    let mut p = h.valid();
    p.payload.remove(1);
    h.rejected(
        &p.bundle(),
        &[
            "payload/mac/production/arch_arm64/updates.zip",
            "out of order",
        ],
    );
}

#[test]
fn duplicate_entries() {
    let h = setup();
    let mut p = h.valid();
    let last = p.payload.last().unwrap().clone();
    p.payload.push(last);
    h.rejected(&p.bundle(), &["follows the last listed file", "duplicate"]);
    let mut p = h.valid();
    let first = p.payload[0].clone();
    p.payload.insert(1, first);
    h.rejected(&p.bundle(), &["is a duplicate or out of order"]);
    // A second manifest after the signatures.
    let mut p = h.valid();
    let m = (p.manifest_name.clone(), p.manifest_bytes.clone());
    p.payload.insert(0, m);
    h.rejected(&p.bundle(), &["gapferry/manifest.json is out of place"]);
    // A file listed twice in the manifest.
    let p = h.edited(|v| {
        let f = v["files"][0].clone();
        v["files"].as_array_mut().unwrap().push(f);
    });
    h.rejected(&p.bundle(), &["listed twice"]);
}

#[test]
fn duplicate_json_keys() {
    let h = setup();
    let (m, payload) = h.manifest();
    let text = String::from_utf8(m.to_bytes()).unwrap();
    let evil = text.replacen(
        "\"channel\": \"default\"",
        "\"channel\": \"default\",\n  \"channel\": \"elsewhere\"",
        1,
    );
    assert_ne!(evil, text);
    let p = Parts::signed_bytes(evil.into_bytes(), &m.trusted_comment(), &payload, &[&h.ska]);
    h.rejected(&p.bundle(), &["duplicate key", "channel"]);
    // Also inside a file entry.
    let evil = text.replacen("\"size\": ", "\"size\": 1, \"size\": ", 1);
    let p = Parts::signed_bytes(evil.into_bytes(), &m.trusted_comment(), &payload, &[&h.ska]);
    h.rejected(&p.bundle(), &["duplicate key", "size"]);
}

const EVIL_PATHS: &[&str] = &[
    "../x",
    "a/../../x",
    "/abs",
    "/etc/passwd",
    "C:\\x",
    "C:x",
    "a\\b",
    "linux\\production\\arch_x86_64\\updates.zip",
    "./a",
    "a//b",
    "a/",
    "",
];

#[test]
fn unsafe_paths_in_the_manifest() {
    let h = setup();
    for evil in EVIL_PATHS {
        let p = h.edited(|v| v["files"][0]["path"] = (*evil).into());
        h.rejected(&p.bundle(), &["invalid manifest", "path"]);
    }
}

#[test]
fn unsafe_paths_in_the_tar() {
    let h = setup();
    for evil in EVIL_PATHS {
        for name in [evil.as_bytes().to_vec(), payload_name(evil)] {
            // In place of the first payload file...
            let mut p = h.valid();
            p.payload[0].0 = name.clone();
            h.rejected(&p.bundle(), &["expected payload/linux/production"]);
            // ...and after the last one.
            let mut p = h.valid();
            p.payload.push((name, b"x".to_vec()));
            h.rejected(&p.bundle(), &["follows the last listed file"]);
        }
    }
    // A ustar prefix field that puts a listed name under ../
    let mut p = h.valid();
    let (n, d) = p.payload.remove(0);
    let hd = Header {
        prefix: b"..".to_vec(),
        ..Header::file(&n, d.len() as u64)
    };
    let mut t = Tar::new().file(&p.manifest_name, &p.manifest_bytes);
    for (n, d) in &p.signatures {
        t = t.file(n, d);
    }
    t = t.entry(&hd, &d);
    for (n, d) in &p.payload {
        t = t.file(n, d);
    }
    h.rejected(
        &craft::zstd(&t.end().into_bytes()),
        &["../payload/linux", "not listed"],
    );
}

#[test]
fn links_devices_fifos_and_directories() {
    let h = setup();
    for (flag, what) in [
        (b'1', "a hard link"),
        (b'2', "a symbolic link"),
        (b'3', "a character device"),
        (b'4', "a block device"),
        (b'5', "a directory"),
        (b'6', "a FIFO"),
        (b'7', "an unsupported entry type"),
    ] {
        let p = h.valid();
        let (name, _) = &p.payload[0];
        let mut hd = Header::typed(name, flag);
        hd.linkname = b"/etc/passwd".to_vec();
        let mut t = Tar::new().file(&p.manifest_name, &p.manifest_bytes);
        for (n, d) in &p.signatures {
            t = t.file(n, d);
        }
        t = t.header(&hd);
        for (n, d) in &p.payload {
            t = t.file(n, d);
        }
        h.rejected(
            &craft::zstd(&t.end().into_bytes()),
            &[
                "payload/linux/production/arch_x86_64/updates.zip",
                what,
                "regular files only",
            ],
        );
    }
    // A directory entry before the files.
    let p = h.valid();
    let mut t = Tar::new().file(&p.manifest_name, &p.manifest_bytes);
    for (n, d) in &p.signatures {
        t = t.file(n, d);
    }
    t = t.header(&Header::typed("payload/", b'5'));
    for (n, d) in &p.payload {
        t = t.file(n, d);
    }
    h.rejected(&craft::zstd(&t.end().into_bytes()), &["a directory"]);
}

#[test]
fn entries_out_of_order() {
    let h = setup();
    let mut p = h.valid();
    p.payload.swap(0, 1);
    h.rejected(
        &p.bundle(),
        &[
            "payload/linux/production/arch_x86_64/manifest.json",
            "out of order",
        ],
    );
    // Signatures before the manifest.
    let p = h.valid();
    let mut t = Tar::new();
    for (n, d) in &p.signatures {
        t = t.file(n, d);
    }
    t = t.file(&p.manifest_name, &p.manifest_bytes);
    for (n, d) in &p.payload {
        t = t.file(n, d);
    }
    h.rejected(
        &craft::zstd(&t.end().into_bytes()),
        &["first entry is gapferry/signatures/", "out of order"],
    );
    // A signature among the payload files.
    let p = h.valid();
    let sig = p.signatures[0].clone();
    let b = tar_with(&p, 2, |t| t.file(&sig.0, &sig.1));
    h.rejected(&b, &["gapferry/signatures/", "out of place"]);
}

#[test]
fn pax_and_gnu_extension_headers() {
    let h = setup();
    let p = h.valid();
    // PAX size smuggling: a size record that would change how many bytes
    // the next entry has.
    let b = tar_with(&p, 0, |t| t.pax(&[("size", "3")]));
    h.rejected(&b, &["a PAX extended header", "regular files only"]);
    let b = tar_with(&p, 1, |t| t.pax(&[("path", "../../etc/cron.d/x")]));
    h.rejected(&b, &["a PAX extended header"]);
    // A global PAX header and a GNU long name.
    let b = tar_with(&p, 0, |t| {
        let body = b"20 comment=hello!!\n";
        t.entry(
            &Header {
                typeflag: b'g',
                ..Header::file("pax_global_header", body.len() as u64)
            },
            body,
        )
    });
    h.rejected(&b, &["a PAX extended header"]);
    let b = tar_with(&p, 0, |t| {
        let long = b"payload/../../../../tmp/x\0";
        t.entry(
            &Header {
                typeflag: b'L',
                ..Header::file("././@LongLink", long.len() as u64)
            },
            long,
        )
    });
    h.rejected(&b, &["a GNU long-name header"]);
}

#[test]
fn damaged_tar_headers() {
    let h = setup();
    let p = h.valid();
    let b = tar_with(&p, 1, |t| {
        let d = &p.payload[1].1;
        t.entry(
            &Header {
                bad_checksum: Some(12345),
                ..Header::file(&p.payload[1].0, d.len() as u64)
            },
            d,
        )
    });
    h.rejected(&b, &["checksum mismatch"]);
    // Not ustar (an old v7 header).
    let b = tar_with(&p, 0, |t| {
        t.header(&Header {
            magic: [0; 8],
            ..Header::file("payload/x", 0)
        })
    });
    h.rejected(&b, &["not ustar or GNU"]);
    // Non-zero padding after a file.
    let mut t = Tar::new().file(&p.manifest_name, &p.manifest_bytes);
    for (n, d) in &p.signatures {
        t = t.file(n, d);
    }
    let (n, d) = &p.payload[0];
    assert_ne!(d.len() % 512, 0);
    let mut padded = d.clone();
    padded.resize(d.len().div_ceil(512) * 512, b'Z');
    t = t.header(&Header::file(n, d.len() as u64)).raw(&padded);
    for (n, d) in &p.payload[1..] {
        t = t.file(n, d);
    }
    h.rejected(&craft::zstd(&t.end().into_bytes()), &["non-zero padding"]);
}

#[test]
fn truncated_archive() {
    let h = setup();
    let good = h.valid().bundle();
    for cut in [good.len() - 1, good.len() / 2, 20] {
        let r = h.verify(&good[..cut]).fails(3, &["hostile.tar.zst"]);
        assert!(
            r.stderr.contains("truncated") || r.stderr.contains("damaged"),
            "{r:#?}"
        );
    }
    // zstd complete, tar without its end-of-archive marker.
    let b = craft::zstd(&h.valid().tar().into_bytes());
    h.rejected(&b, &["truncated", "tar header"]);
    // Only the first of the two end blocks.
    let b = craft::zstd(&h.valid().tar().raw(&[0; 512]).into_bytes());
    h.rejected(&b, &["truncated", "end-of-archive marker"]);
    // Empty file; not zstd at all.
    h.rejected(b"", &["truncated"]);
    h.rejected(&h.valid().tar_bytes(), &["not a gapferry bundle"]);
}

#[test]
fn trailing_garbage() {
    let h = setup();
    let good = h.valid().bundle();
    let after_frame = "data after a zstd frame is not a zstd frame";
    // After the zstd frame.
    h.rejected(
        &[&good[..], b"GARBAGE AFTER THE FRAME"].concat(),
        &[after_frame],
    );
    // A second zstd frame with data: decoded, and refused as data after the
    // end of the archive.
    h.rejected(
        &[&good[..], &craft::zstd(b"more")[..]].concat(),
        &["trailing data after the end of the archive"],
    );
    // A zstd skippable frame (which decoders silently skip) hiding data.
    let mut skippable = 0x184D_2A50u32.to_le_bytes().to_vec();
    skippable.extend_from_slice(&11u32.to_le_bytes());
    skippable.extend_from_slice(b"hidden data");
    h.rejected(&[&good[..], &skippable[..]].concat(), &[after_frame]);
    // Inside the tar, after the end-of-archive marker.
    let tar = h.valid().tar().end().raw(b"hidden data").into_bytes();
    h.rejected(&craft::zstd(&tar), &["trailing data after the end"]);
    // A zero block followed by data is not an end marker.
    let tar = h
        .valid()
        .tar()
        .raw(&[0; 512])
        .file("payload/late", b"x")
        .end()
        .into_bytes();
    h.rejected(&craft::zstd(&tar), &["zero block is followed by data"]);
    // Entries after the end marker.
    let tar = h
        .valid()
        .tar()
        .end()
        .file("payload/late", b"x")
        .into_bytes();
    h.rejected(&craft::zstd(&tar), &["trailing data"]);
    // Zero padding within bounds is fine, in a hand-built frame too.
    let tar = h.valid().tar_bytes();
    h.verify(&craft::zstd_raw_frame(&tar, 512 * 1024)).ok();
}

#[test]
fn zstd_bombs_are_bounded() {
    let h = setup();
    let tar = h.valid().tar_bytes();
    // 4 GiB of zeros after the archive in the same frame, as 128 KiB of RLE
    // blocks: refused after the 1 MiB padding allowance, never decompressed
    // to the end (the process timeout is a backstop, not the assertion).
    let bomb = craft::zstd_raw_frame(&tar, 4 << 30);
    assert!(bomb.len() < 200 * 1024);
    h.rejected(&bomb, &["more than 1 MiB of padding"]);
    // The same as a second frame: refused after the padding allowance too.
    let good = h.valid().bundle();
    let second = craft::zstd_zero_frame(4 << 30);
    h.rejected(
        &[&good[..], &second[..]].concat(),
        &["more than 1 MiB of padding"],
    );
    // An entry header claiming far more than the manifest lists (and no
    // data behind it): refused from the header alone.
    let p = h.valid();
    let b = tar_with(&p, 0, |t| t.header(&Header::file(&p.payload[0].0, 1 << 40)));
    h.rejected(&b, &["1099511627776 bytes in the archive but"]);
    // A manifest entry claiming 16 GiB, with 4 GiB of zeros behind it.
    let t = Tar::new().header(&Header::file(craft::MANIFEST_NAME, 16 << 30));
    let b = craft::zstd_raw_frame(&t.into_bytes(), 4 << 30);
    h.rejected(&b, &["manifest is 17179869184 bytes", "16 MiB"]);
    // A frame that asks for a 2 GiB window.
    let mut frame = craft::zstd_zero_frame(1024);
    frame[5] = (31 - 10) << 3;
    h.rejected(&frame, &["damaged compressed data"]);
}

#[test]
fn huge_manifest() {
    let h = setup();
    let (m, payload) = h.manifest();
    let mut bytes = m.to_bytes();
    // Valid JSON padded with whitespace past 16 MiB.
    bytes.resize(manifest::MAX_MANIFEST_SIZE as usize + 1, b' ');
    let p = Parts::signed_bytes(bytes, &m.trusted_comment(), &payload, &[&h.ska]);
    h.rejected(&p.bundle(), &["manifest is 16777217 bytes", "16 MiB"]);
}

#[test]
fn deeply_nested_json() {
    let h = setup();
    for depth in [20, 100_000] {
        let p = h.edited(|v| {
            v["extension"] = serde_json::Value::Null;
        });
        let text = String::from_utf8(p.manifest_bytes.clone()).unwrap();
        let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let evil = text.replacen("\"extension\": null", &format!("\"extension\": {deep}"), 1);
        let (m, payload) = h.manifest();
        let p = Parts::signed_bytes(evil.into_bytes(), &m.trusted_comment(), &payload, &[&h.ska]);
        let r = h.rejected(&p.bundle(), &["invalid manifest"]);
        assert!(
            r.stderr.contains("nested deeper") || r.stderr.contains("recursion limit"),
            "{r:#?}"
        );
    }
}

#[test]
fn non_utf8_and_nul_in_names() {
    let h = setup();
    let mut p = h.valid();
    p.payload[0].0 = b"payload/linux/production/arch_x86_64/updates\xff.zip".to_vec();
    h.rejected(&p.bundle(), &["updates\\xff.zip", "not listed"]);
    // A NUL ends a tar name: "payload/linux\0..." reads as "payload/linux".
    let mut p = h.valid();
    p.payload[0].0 = b"payload/linux\0/production/arch_x86_64/updates.zip".to_vec();
    h.rejected(&p.bundle(), &["entry payload/linux is not listed"]);
    // In the manifest: NUL (escaped in JSON) and raw non-UTF-8 bytes.
    let p =
        h.edited(|v| v["files"][0]["path"] = "linux/production/arch_x86_64/up\0dates.zip".into());
    h.rejected(&p.bundle(), &["invalid manifest"]);
    let (m, payload) = h.manifest();
    let mut bytes = m.to_bytes();
    let at = bytes.windows(11).position(|w| w == b"updates.zip").unwrap();
    bytes[at] = 0xff;
    let p = Parts::signed_bytes(bytes, &m.trusted_comment(), &payload, &[&h.ska]);
    h.rejected(&p.bundle(), &["invalid manifest", "not UTF-8"]);
}

#[test]
fn case_only_collisions_and_file_under_file() {
    let h = setup();
    let p = h.edited(|v| {
        v["files"][1]["path"] = "LINUX/production/arch_x86_64/updates.zip".into();
    });
    h.rejected(&p.bundle(), &["listed twice (ignoring case)"]);
    let p = h.edited(|v| {
        v["files"][1]["path"] = "linux/production/arch_x86_64/updates.zip/b".into();
    });
    h.rejected(
        &p.bundle(),
        &["is a file and also a directory of another listed file"],
    );
}

#[test]
fn manifest_field_rules() {
    let h = setup();
    for (edit, needle) in [
        (
            Box::new(|v: &mut serde_json::Value| v["format"] = "gapferry-bundle/2".into())
                as Box<dyn Fn(&mut serde_json::Value)>,
            "this gapferry cannot read it",
        ),
        (
            Box::new(|v: &mut serde_json::Value| v["files"][0]["sha256"] = "A".repeat(64).into()),
            "not 64 lower-case hex digits",
        ),
        (
            Box::new(|v: &mut serde_json::Value| v["sequence"] = (-1).into()),
            "invalid manifest",
        ),
        (
            Box::new(|v: &mut serde_json::Value| {
                v.as_object_mut().unwrap().remove("channel");
            }),
            "missing field `channel`",
        ),
        (
            Box::new(|v: &mut serde_json::Value| v["files"] = serde_json::json!([])),
            "lists no files",
        ),
        (
            Box::new(|v: &mut serde_json::Value| v["profile"] = "macos".into()),
            "profile \"macos\" is not supported",
        ),
        (
            // An mde item under the windows profile.
            Box::new(|v: &mut serde_json::Value| v["profile"] = "windows".into()),
            "is not a Windows item",
        ),
        (
            Box::new(|v: &mut serde_json::Value| v["items"][0]["arch"] = "mips".into()),
            "unknown arch",
        ),
    ] {
        let p = h.edited(edit);
        h.rejected(&p.bundle(), &[needle]);
    }
}

// ---- policy ----------------------------------------------------------------

fn dated(h: &H, created_ago: u64, expires_ago: u64) -> Parts {
    let (mut m, payload) = h.manifest();
    let now = SystemTime::now();
    m.created = gapferry::timestamp::Timestamp::from_time(now - Duration::from_secs(created_ago));
    m.expires = gapferry::timestamp::Timestamp::from_time(now - Duration::from_secs(expires_ago));
    Parts::signed(&m, &payload, &[&h.ska])
}

#[test]
fn expired_bundle() {
    let h = setup();
    let b = dated(&h, 40 * 86400, 10 * 86400).bundle();
    h.verify(&b).fails(
        4,
        &[
            "hostile.tar.zst",
            "refused by policy",
            "expired",
            "--allow-expired",
        ],
    );
    let r = h.verify_with(&b, &[&h.a.public], &["--allow-expired"]).ok();
    assert!(r.stderr.contains("EXPIRED"), "{r:#?}");
    // --allow-expired does not excuse anything else.
    let mut p = dated(&h, 40 * 86400, 10 * 86400);
    p.payload[0].1[0] ^= 1;
    h.verify_with(&p.bundle(), &[&h.a.public], &["--allow-expired"])
        .fails(3, &["SHA-256"]);
}

#[test]
fn wrong_channel() {
    let h = setup();
    let b = h.valid().bundle();
    h.verify_with(&b, &[&h.a.public], &["--channel", "plant-b"])
        .fails(
            4,
            &["refused by policy", "channel \"default\", not \"plant-b\""],
        );
    h.verify_with(&b, &[&h.a.public], &["--channel", "default"])
        .ok();
}

#[test]
fn threshold_not_met() {
    let h = setup();
    let b_pub = h.sb.join("keys/b.pub");
    fs::write(&b_pub, h.skb.public().to_file_text()).unwrap();
    let b = h.valid().bundle();
    h.verify_with(&b, &[&h.a.public, &b_pub], &["--threshold", "2"])
        .fails(
            4,
            &[
                "refused by policy",
                "threshold not met",
                "1 distinct",
                "2 required",
            ],
        );
    let both = Parts::mde(&h.releases, &[&h.ska, &h.skb]).bundle();
    h.verify_with(&both, &[&h.a.public, &b_pub], &["--threshold", "2"])
        .ok();
}

// ---- work before the signature check (issue 11, item 2) -----------------

/// The 9-byte empty zstd frame: single segment, content size 0, one empty
/// last raw block.
const EMPTY_FRAME: [u8; 9] = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00];

/// A reader that counts what is taken from it, to bound the work structurally.
struct Counting<'a> {
    inner: &'a [u8],
    taken: std::rc::Rc<std::cell::Cell<usize>>,
}

impl std::io::Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken.set(self.taken.get() + n);
        Ok(n)
    }
}

/// Reads the head of `bundle` through the library; returns the error and
/// how many bytes of the file the reader took.
fn head_error(bundle: &[u8]) -> (String, usize) {
    use gapferry::bundle::reader::BundleReader;
    let taken = std::rc::Rc::new(std::cell::Cell::new(0));
    let input = Counting {
        inner: bundle,
        taken: taken.clone(),
    };
    let err = BundleReader::new(input, Path::new("hostile.tar.zst"))
        .and_then(|mut r| r.read_head())
        .expect_err("accepted");
    (err.to_string(), taken.get())
}

/// The bundle's tar cut into pieces: the head entries, each payload entry,
/// and the end-of-archive marker.
fn tar_pieces(p: &Parts) -> Vec<Vec<u8>> {
    let mut head = Tar::new().file(&p.manifest_name, &p.manifest_bytes);
    for (n, d) in &p.signatures {
        head = head.file(n, d);
    }
    let mut pieces = vec![head.into_bytes()];
    for (n, d) in &p.payload {
        pieces.push(Tar::new().file(n, d).into_bytes());
    }
    pieces.push(vec![0; 1024]);
    pieces
}

/// Each piece in a zstd frame of its own, as gapferry's writer frames entries.
fn frames_of(pieces: &[Vec<u8>]) -> Vec<u8> {
    pieces.iter().flat_map(|p| craft::zstd(p)).collect()
}

#[test]
fn a_million_empty_frames_before_the_head() {
    // The attack took 28 s to refuse with an untrusted key (10^7: 293 s):
    // every empty frame cost a new decoder. Now the first empty frame is
    // refused, and the reader takes at most one input buffer (1 MiB) of
    // the 9 MB file.
    let h = setup();
    let untrusted = Parts::mde(&h.releases, &[&h.skb]).bundle();
    let without_size = craft::zstd_raw_frame(b"", 0);
    assert_eq!(without_size.len(), EMPTY_FRAME.len());
    for empty in [&EMPTY_FRAME[..], &without_size[..]] {
        let bundle = [empty.repeat(1_000_000), untrusted.clone()].concat();
        let (err, taken) = head_error(&bundle);
        assert!(err.contains("zstd frame 1 decodes to nothing"), "{err}");
        assert!(taken <= 1 << 20, "read {taken} bytes");
        h.rejected(
            &bundle,
            &["zstd frame 1 decodes to nothing", "no empty frames"],
        );
    }
}

#[test]
fn empty_blocks_before_the_head() {
    // 32 MiB of empty raw blocks (3 bytes each, 11 million) in one frame
    // before the head: refused at the first, not decoded to the end.
    let h = setup();
    let untrusted = Parts::mde(&h.releases, &[&h.skb]).bundle();
    let mut bundle = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3];
    bundle.extend_from_slice(&[0, 0, 0].repeat((32 << 20) / 3));
    bundle.extend_from_slice(&[1, 0, 0]);
    bundle.extend_from_slice(&untrusted);
    let needle = "block that decodes to nothing before its last block";
    let (err, taken) = head_error(&bundle);
    assert!(err.contains(needle), "{err}");
    assert!(taken <= 1 << 20, "read {taken} bytes");
    h.rejected(&bundle, &[needle, "no empty blocks but a frame's last"]);
    // One frame made only of an empty last block is an empty frame.
    let bundle = [
        &[0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3, 1, 0, 0][..],
        &untrusted,
    ]
    .concat();
    h.rejected(&bundle, &["zstd frame 1 decodes to nothing"]);
}

#[test]
fn head_spread_over_too_many_frames() {
    // Non-empty but tiny frames before the manifest ends: the head must end
    // within the first 8 frames.
    let h = setup();
    let tar = Parts::mde(&h.releases, &[&h.skb]).tar_bytes();
    let bundle: Vec<u8> = tar
        .chunks(1)
        .flat_map(|c| craft::zstd_raw_frame(c, 0))
        .collect();
    let (err, taken) = head_error(&bundle);
    assert!(err.contains("within the first 8 zstd frames"), "{err}");
    assert!(taken <= 1 << 20, "read {taken} bytes");
    h.rejected(
        &bundle,
        &["within the first 8 zstd frames", "head frame limit"],
    );
}

#[test]
fn empty_or_tiny_frames_between_payload_files() {
    // The framing is not signed: anyone can reframe a validly signed
    // bundle. Frame per entry, as gapferry writes, is fine...
    let h = setup();
    let pieces = tar_pieces(&h.valid());
    h.verify(&frames_of(&pieces)).ok();
    // ...an empty frame anywhere is not, even with a trusted signature.
    for at in [1, 2, pieces.len() - 1] {
        let mut framed = frames_of(&pieces[..at]);
        framed.extend_from_slice(&EMPTY_FRAME);
        framed.extend(frames_of(&pieces[at..]));
        h.rejected(
            &framed,
            &[&format!("zstd frame {} decodes to nothing", at + 1)],
        );
    }
    // Nor a flood of non-empty 1-byte frames: 100 000 frames of one zero
    // byte each as padding after the end-of-archive marker (100 KiB of
    // zeros, within the 1 MiB allowance) break the framing budget.
    let mut framed = frames_of(&pieces);
    for _ in 0..100_000 {
        framed.extend(craft::zstd_raw_frame(&[0], 0));
    }
    h.rejected(&framed, &["framing limit", "65536 plus one per 1024 bytes"]);
}

#[test]
fn split_bundle_reads_through_the_same_bounded_reader() {
    use gapferry::bundle::volumes::{
        index_path, signature_path, volume_path, VolumeEntry, VolumeIndex, INDEX_FORMAT,
    };
    // A validly signed index over volumes whose joined bytes start with a
    // million empty frames: the index's signature passes, the reader still
    // refuses at the first empty frame.
    let h = setup();
    let p = h.valid();
    let joined = [EMPTY_FRAME.repeat(1_000_000), p.bundle()].concat();
    let dir = h.sb.mkdir("split");
    let bundle = dir.join("hostile.tar.zst");
    let half = joined.len().div_ceil(2);
    let volumes: Vec<VolumeEntry> = joined
        .chunks(half)
        .enumerate()
        .map(|(i, v)| {
            fs::write(volume_path(&bundle, i + 1), v).unwrap();
            VolumeEntry {
                number: i + 1,
                size: v.len() as u64,
                sha256: support::sha256_hex(v),
            }
        })
        .collect();
    let manifest: Manifest = Manifest::parse(&p.manifest_bytes).unwrap();
    let index = VolumeIndex {
        format: INDEX_FORMAT.into(),
        bundle: "hostile.tar.zst".into(),
        bundle_id: manifest.bundle_id.to_string(),
        channel: manifest.channel.clone(),
        sequence: manifest.sequence,
        manifest_sha256: support::sha256_hex(&p.manifest_bytes),
        volume_size: half as u64,
        total_size: joined.len() as u64,
        volumes,
        parity: None,
    };
    let idx = index_path(&bundle);
    let bytes = index.to_bytes();
    fs::write(&idx, &bytes).unwrap();
    fs::write(
        signature_path(&idx, h.ska.key_id),
        craft::signature_file(&h.ska, &bytes, &index.trusted_comment()),
    )
    .unwrap();
    for cmd in ["verify", "inspect"] {
        let before = tree_digest(h.sb.path());
        let mut c = h.sb.cmd();
        c.arg(cmd).arg(&idx).arg("--trust").arg(&h.a.public);
        support::run(c).fails(3, &["hostile.tar.zst", "zstd frame 1 decodes to nothing"]);
        assert_eq!(tree_digest(h.sb.path()), before);
    }
}
