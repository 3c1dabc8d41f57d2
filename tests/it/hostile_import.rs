//! DESIGN section 6 through `gapferry import`: every malicious bundle,
//! crafted byte by byte here (never by gapferry's writer), is run against a
//! mirror that already serves a good set and its n-1. Each case asserts the
//! exit code (3 rejected, 4 refused), a message naming the problem, the
//! mirror unchanged file for file (content, mode, inode, mtime), nothing
//! created or changed anywhere else in the sandbox but the state dir, no
//! staging left, and a ledger entry with the matching outcome; each test
//! ends with `gapferry ledger verify`.
//!
//! Every import runs under `prlimit --fsize` (when available), so a bomb
//! that got decompressed to disk kills the child with SIGXFSZ instead of
//! filling the disk; and its `--json` report must show almost nothing
//! written. Folder mtimes are not compared: staging is created and removed
//! inside `<mirror>/<platform>/`, which updates that folder's mtime.
//!
//! Planted symlinks in the mirror (not the bundle's doing) are at the end.

use crate::support;

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gapferry::keys::{KeyId, PublicKey, SecretKey};
use gapferry::manifest::{self, Manifest};
use support::craft::{
    self, mde_manifest, payload_name, sig_name, tar_with, with_line, Header, Parts, Tar,
};
use support::{FakeRelease, Keys, Run, Sandbox, TreeDigest};

const LX: &str = "linux/production/arch_x86_64";
const LA: &str = "linux/production/arch_arm64";
const LX_BACK: &str = "linux/production_back/arch_x86_64";
const LA_BACK: &str = "linux/production_back/arch_arm64";

/// No file an import writes may grow past this.
const FSIZE_LIMIT: u64 = 16 << 20;

/// The versions of the two good imports and of the hostile bundles, which
/// would all be upgrades if they were not hostile.
const V1: (&str, &str) = ("1.1.24080.1", "1.419.100.0");
const V2: (&str, &str) = ("1.1.24080.2", "1.419.200.0");
const V3: (&str, &str) = ("1.1.24080.3", "1.419.300.0");

fn releases((engine, defs): (&str, &str)) -> Vec<FakeRelease> {
    vec![
        FakeRelease::new("linux", "production", "x86_64").versions(engine, defs),
        FakeRelease::new("linux", "production", "arm64").versions(engine, defs),
    ]
}

/// One hostile input and what `import` must say about it.
struct Case {
    name: String,
    bundle: Vec<u8>,
    /// `--trust` arguments; `None` is the trusted key `a.pub` alone.
    trust: Option<Vec<PathBuf>>,
    extra: Vec<String>,
    code: i32,
    needles: Vec<String>,
    /// Payload bytes the import may have staged before it noticed.
    max_written: u64,
}

fn case(name: impl Into<String>, bundle: Vec<u8>, code: i32, needles: &[&str]) -> Case {
    Case {
        name: name.into(),
        bundle,
        trust: None,
        extra: Vec::new(),
        code,
        needles: needles.iter().map(|s| s.to_string()).collect(),
        max_written: 64 * 1024,
    }
}

fn rejected(name: impl Into<String>, bundle: Vec<u8>, needles: &[&str]) -> Case {
    case(name, bundle, 3, needles)
}

impl Case {
    fn trust(mut self, trust: &[&Path]) -> Case {
        self.trust = Some(trust.iter().map(|p| p.to_path_buf()).collect());
        self
    }

    fn extra(mut self, extra: &[&str]) -> Case {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self
    }
}

struct Fx {
    sb: Sandbox,
    a: Keys,
    ska: SecretKey,
    skb: SecretKey,
    mirror: PathBuf,
    state: PathBuf,
    n: Cell<u32>,
}

/// A sandbox whose mirror serves V2 with V1 as n-1, imported from two good
/// crafted bundles signed by `a` (the only trusted key).
fn setup() -> Fx {
    let sb = Sandbox::new();
    let a = sb.keygen("a");
    let b = sb.keygen("b");
    fs::remove_file(&b.public).unwrap();
    let fx = Fx {
        ska: a.secret_key(),
        skb: b.secret_key(),
        mirror: sb.join("mirror"),
        state: sb.join("state"),
        a,
        sb,
        n: Cell::new(0),
    };
    for (seq, v) in [(1000, V1), (1001, V2)] {
        let (m, payload) = fx.manifest_of(seq, v);
        let b = Parts::signed(&m, &payload, &[&fx.ska]).bundle();
        let p = fx.write(&b);
        let (r, report) = fx.import_path(&p, None, &[]);
        assert_eq!(r.code, 0, "good import {seq} failed: {r:#?}");
        assert_eq!(report["outcome"], "imported");
        fs::remove_file(p).unwrap();
    }
    for rel in [LX, LA, LX_BACK, LA_BACK] {
        assert!(fx.mirror.join(rel).join("updates.zip").is_file(), "{rel}");
    }
    fx
}

/// [`support::tree_digest`] without folder mtimes (see the module docs).
fn digest(root: &Path) -> TreeDigest {
    support::tree_digest(root)
        .into_iter()
        .map(|(k, v)| {
            let v = if v.starts_with("dir ") {
                v.split(' ').take(2).collect::<Vec<_>>().join(" ")
            } else {
                v
            };
            (k, v)
        })
        .collect()
}

#[track_caller]
fn assert_digest_eq(name: &str, what: &str, before: &TreeDigest, after: &TreeDigest) {
    if before == after {
        return;
    }
    let mut diff = String::new();
    for (k, v) in before {
        match after.get(k) {
            None => diff.push_str(&format!("- {k} {v}\n")),
            Some(w) if w != v => diff.push_str(&format!("~ {k} {v} -> {w}\n")),
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            diff.push_str(&format!("+ {k} {v}\n"));
        }
    }
    panic!("case {name}: {what} changed:\n{diff}");
}

/// `prlimit`, when this system has it.
fn prlimit() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("prlimit"))
            .find(|p| p.is_file())
    })
}

impl Fx {
    /// A valid manifest of the two slots at versions `v`.
    fn manifest_of(&self, sequence: u64, v: (&str, &str)) -> (Manifest, Vec<(String, Vec<u8>)>) {
        let (mut m, payload) = mde_manifest(&releases(v));
        m.sequence = sequence;
        m.bundle_id = format!("crafted-{sequence}").parse().unwrap();
        (m, payload)
    }

    /// The hostile bundles' starting point: V3, sequence 1002.
    fn manifest(&self) -> (Manifest, Vec<(String, Vec<u8>)>) {
        self.manifest_of(1002, V3)
    }

    /// A valid V3 bundle signed by the trusted key.
    fn valid(&self) -> Parts {
        let (m, payload) = self.manifest();
        Parts::signed(&m, &payload, &[&self.ska])
    }

    /// Arbitrary manifest bytes signed by `a` with the V3 trusted comment.
    fn signed_bytes(&self, bytes: Vec<u8>) -> Parts {
        let (m, payload) = self.manifest();
        Parts::signed_bytes(bytes, &m.trusted_comment(), &payload, &[&self.ska])
    }

    /// The V3 manifest edited as a JSON value, then signed by `a`.
    fn edited(&self, edit: impl FnOnce(&mut serde_json::Value)) -> Parts {
        let (m, _) = self.manifest();
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        edit(&mut v);
        self.signed_bytes(serde_json::to_vec_pretty(&v).unwrap())
    }

    /// Writes a bundle to `in/hostile-N.tar.zst`.
    fn write(&self, bundle: &[u8]) -> PathBuf {
        let n = self.n.get() + 1;
        self.n.set(n);
        let p = self.sb.mkdir("in").join(format!("hostile-{n}.tar.zst"));
        fs::write(&p, bundle).unwrap();
        p
    }

    /// `gapferry import PATH --json --mirror M --state-dir S --trust ...`
    /// under the file size limit; returns the run and its JSON report.
    fn import_path(
        &self,
        path: &Path,
        trust: Option<&[PathBuf]>,
        extra: &[String],
    ) -> (Run, serde_json::Value) {
        let bin = env!("CARGO_BIN_EXE_gapferry");
        let mut c = match prlimit() {
            Some(pl) => {
                let mut c = assert_cmd::Command::new(pl);
                c.arg(format!("--fsize={FSIZE_LIMIT}")).arg(bin);
                c
            }
            None => assert_cmd::Command::new(bin),
        };
        c.current_dir(self.sb.path())
            .env_remove("GAPFERRY_STATE_DIR")
            .env_remove("GAPFERRY_TEST_FORCE_FALLBACK")
            .env_remove("GAPFERRY_TEST_CRASH_AT")
            .env_remove("GAPFERRY_TEST_CRASH_AFTER_BYTES")
            .env("NO_COLOR", "1")
            .arg("import")
            .arg(path)
            .arg("--json")
            .arg("--create")
            .arg("--mirror")
            .arg(&self.mirror)
            .arg("--state-dir")
            .arg(&self.state);
        match trust {
            Some(t) => {
                for t in t {
                    c.arg("--trust").arg(t);
                }
            }
            None => {
                c.arg("--trust").arg(&self.a.public);
            }
        }
        c.args(extra).timeout(Duration::from_secs(60));
        let r = support::run(c);
        let report = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("no JSON report ({e}): {r:#?}"));
        (r, report)
    }

    /// Everything in the sandbox but the state dir.
    fn outside_state(&self) -> TreeDigest {
        digest(self.sb.path())
            .into_iter()
            .filter(|(k, _)| k != "state" && !k.starts_with("state/"))
            .collect()
    }

    fn ledger(&self) -> Vec<serde_json::Value> {
        let r = self.sb.run([
            "ledger".as_ref(),
            "show".as_ref(),
            "--json".as_ref(),
            "--state-dir".as_ref(),
            self.state.as_os_str(),
        ]);
        let r = r.ok();
        support::json::ledger_entries(&r.stdout)
    }

    fn ledger_verify(&self) {
        self.sb
            .run([
                "ledger".as_ref(),
                "verify".as_ref(),
                "--state-dir".as_ref(),
                self.state.as_os_str(),
            ])
            .ok();
    }

    /// Runs one case and asserts everything the module docs promise but
    /// the ledger; returns the bundle's file name and the JSON report.
    fn attempt(&self, c: &Case) -> (String, serde_json::Value) {
        let name = &c.name;
        let path = self.write(&c.bundle);
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let all_before = self.outside_state();
        let mirror_before = digest(&self.mirror);
        // Each case gets its own ledger line: start the ledger's flood limit
        // afresh (more than its 20 lines an hour run here; tests/it/ledger.rs
        // covers the limit itself).
        let _ = fs::remove_file(self.state.join("ledger-quota.json"));
        let (r, report) = self.import_path(&path, c.trust.as_deref(), &c.extra);
        assert_eq!(r.code, c.code, "case {name}: wrong exit code; {r:#?}");
        let mut needles = vec![file.clone()];
        needles.push(
            match c.code {
                3 => "bundle rejected",
                4 => "refused by policy",
                _ => "",
            }
            .to_string(),
        );
        needles.extend(c.needles.iter().cloned());
        for n in &needles {
            assert!(
                r.stderr.contains(n.as_str()),
                "case {name}: stderr does not mention {n:?}; {r:#?}"
            );
        }
        assert_digest_eq(name, "the mirror", &mirror_before, &digest(&self.mirror));
        fs::remove_file(&path).unwrap();
        let mut all_before = all_before;
        all_before.remove(&format!("in/{file}"));
        assert_digest_eq(
            name,
            "the sandbox outside the state dir",
            &all_before,
            &self.outside_state(),
        );
        for k in digest(self.sb.path()).keys() {
            assert!(
                !k.contains(".gapferry-staging-"),
                "case {name}: staging left behind: {k}"
            );
        }
        let written = report["bytes_written"].as_u64().unwrap();
        assert!(
            written <= c.max_written,
            "case {name}: {written} bytes staged; {report:#}"
        );
        (file, report)
    }

    /// Runs every case, then checks one new ledger entry per case with the
    /// matching outcome, and the ledger's hash chain.
    fn check(&self, cases: Vec<Case>) -> Vec<serde_json::Value> {
        let base = self.ledger().len();
        let mut files = Vec::new();
        let mut reports = Vec::new();
        for c in &cases {
            let (file, report) = self.attempt(c);
            let outcome = if c.code == 3 { "rejected" } else { "refused" };
            assert_eq!(report["outcome"], outcome, "case {}: {report:#}", c.name);
            files.push(file);
            reports.push(report);
        }
        let entries = self.ledger();
        assert_eq!(
            entries.len(),
            base + cases.len(),
            "one ledger entry per attempt"
        );
        for ((c, file), e) in cases.iter().zip(&files).zip(&entries[base..]) {
            let outcome = if c.code == 3 { "rejected" } else { "refused" };
            assert_eq!(e["outcome"], outcome, "case {}: {e:#}", c.name);
            assert!(
                e["bundle_path"].as_str().unwrap().ends_with(file.as_str()),
                "case {}: {e:#}",
                c.name
            );
            let reason = e["reason"].as_str().unwrap_or_default();
            for n in &c.needles {
                assert!(
                    reason.contains(n.as_str()),
                    "case {}: ledger reason lacks {n:?}: {reason}",
                    c.name
                );
            }
        }
        self.ledger_verify();
        // And the mirror still serves V2 with V1 behind it.
        for (rel, v) in [(LX, V2), (LA, V2), (LX_BACK, V1), (LA_BACK, V1)] {
            let text = fs::read_to_string(self.mirror.join(rel).join("manifest.json")).unwrap();
            assert!(text.contains(v.1), "{rel}: {text}");
        }
        reports
    }
}

/// The valid bundle's tar with payload entry `at` written by `entry`.
fn tar_replacing(p: &Parts, at: usize, entry: impl FnOnce(Tar, &[u8], &[u8]) -> Tar) -> Tar {
    let mut t = Tar::new().file(&p.manifest_name, &p.manifest_bytes);
    for (n, d) in &p.signatures {
        t = t.file(n, d);
    }
    let mut entry = Some(entry);
    for (i, (n, d)) in p.payload.iter().enumerate() {
        t = if i == at {
            (entry.take().unwrap())(t, n, d)
        } else {
            t.file(n, d)
        };
    }
    t
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
fn crafted_baseline_imports() {
    // Without this, every rejection below could be the crafter's or the
    // fixture's fault: the V3 starting point imports, rotating V2 to n-1.
    let fx = setup();
    let p = fx.write(&fx.valid().bundle());
    let (r, report) = fx.import_path(&p, None, &[]);
    assert_eq!(r.code, 0, "{r:#?}");
    assert_eq!(report["outcome"], "imported");
    for (rel, v) in [(LX, V3), (LA, V3), (LX_BACK, V2), (LA_BACK, V2)] {
        let text = fs::read_to_string(fx.mirror.join(rel).join("manifest.json")).unwrap();
        assert!(text.contains(v.1), "{rel}: {text}");
    }
    fx.ledger_verify();
}

// ---- content integrity ---------------------------------------------------

#[test]
fn altered_content() {
    let fx = setup();
    let id = fx.ska.key_id.to_string();
    let mut cases = Vec::new();

    // A flipped byte in the last file: the three before it were already
    // staged (the report counts their bytes), and staging is discarded.
    let mut p = fx.valid();
    p.payload[3].1[10] ^= 0x01;
    let mut c = rejected(
        "flipped byte in the last file",
        p.bundle(),
        &[&format!("payload/{LA}/manifest.json"), "SHA-256"],
    );
    c.max_written = u64::MAX;
    let staged: u64 = fx.valid().payload[..3]
        .iter()
        .map(|(_, d)| d.len() as u64)
        .sum();
    cases.push(c);

    let mut p = fx.valid();
    p.payload[0].1[40] ^= 0x80;
    cases.push(rejected(
        "flipped byte in the first file",
        p.bundle(),
        &[&format!("payload/{LX}/updates.zip"), "SHA-256"],
    ));
    let mut p = fx.valid();
    p.payload[0].1.pop();
    cases.push(rejected(
        "payload truncated",
        p.bundle(),
        &[
            &format!("payload/{LX}/updates.zip"),
            "bytes in the archive but",
        ],
    ));
    let mut p = fx.valid();
    p.payload[3].1.push(b'\n');
    cases.push(rejected(
        "payload extended",
        p.bundle(),
        &[
            &format!("payload/{LA}/manifest.json"),
            "bytes in the archive but",
        ],
    ));
    // The header claims the listed size, the data stops short, the
    // archive ends there.
    let p = fx.valid();
    let mut t = Tar::new().file(&p.manifest_name, &p.manifest_bytes);
    for (n, d) in p.signatures.iter().chain(&p.payload[..2]) {
        t = t.file(n, d);
    }
    let (n, d) = &p.payload[2];
    let t = t
        .header(&Header::file(n, d.len() as u64))
        .raw(&d[..d.len() / 2]);
    cases.push(rejected(
        "data shorter than the header",
        craft::zstd(&t.into_bytes()),
        &["truncated"],
    ));

    let mut p = fx.valid();
    let text = String::from_utf8(p.manifest_bytes.clone()).unwrap();
    let edited = text.replacen(V3.1, "1.419.999.0", 1);
    assert_ne!(edited, text);
    p.manifest_bytes = edited.into_bytes();
    cases.push(rejected(
        "edited manifest",
        p.bundle(),
        &[&id, "does not match the data"],
    ));
    let mut p = fx.valid();
    p.manifest_bytes.insert(1, b' ');
    cases.push(rejected(
        "one space added to the manifest",
        p.bundle(),
        &[&id, "does not match the data"],
    ));
    let reports = fx.check(cases);
    assert_eq!(reports[0]["bytes_written"].as_u64().unwrap(), staged);
}

// ---- signatures and keys -------------------------------------------------

#[test]
fn signatures_and_keys() {
    let fx = setup();
    let id = fx.ska.key_id.to_string();
    let (m, payload) = fx.manifest();
    let mut cases = Vec::new();

    cases.push(rejected(
        "valid signature by an untrusted key",
        Parts::signed(&m, &payload, &[&fx.skb]).bundle(),
        &[
            "no signature by a trusted key",
            &fx.skb.key_id.to_string(),
            "--trust",
        ],
    ));

    let mut impostor = SecretKey::generate();
    impostor.key_id = fx.ska.key_id;
    cases.push(rejected(
        "trusted key id on another key's signature",
        Parts::signed(&m, &payload, &[&impostor]).bundle(),
        &[
            &format!("signature by trusted key {id} is invalid"),
            "does not match the data",
        ],
    ));

    let mut p = fx.valid();
    let tc = line(&p.signatures[0].1, 2);
    let tampered = tc.replace("sequence:1002", "sequence:9999");
    assert_ne!(tc, tampered);
    p.signatures[0].1 = with_line(&p.signatures[0].1, 2, &tampered);
    cases.push(rejected(
        "tampered trusted comment",
        p.bundle(),
        &["trusted comment", "altered"],
    ));

    let comment = m
        .trusted_comment()
        .replace("sequence:1002", "sequence:1003");
    cases.push(rejected(
        "signed trusted comment that describes another manifest",
        Parts::signed_bytes(m.to_bytes(), &comment, &payload, &[&fx.ska]).bundle(),
        &["does not describe this manifest"],
    ));

    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let good = fx.valid().signatures[0].1.clone();
    let raw = b64.decode(line(&good, 1)).unwrap();
    let graw = b64.decode(line(&good, 3)).unwrap();
    for (sig, needle) in [
        (with_line(&good, 1, "RUT!!!not-base64!!!"), "bad base64"),
        (
            with_line(&good, 1, &b64.encode(&raw[..73])),
            "decoded to 73 bytes, expected 74",
        ),
        (
            with_line(&good, 1, &b64.encode([&raw[..], b"x"].concat())),
            "decoded to 75 bytes",
        ),
        (with_line(&good, 3, "%%%"), "bad base64 in global signature"),
        (
            with_line(&good, 3, &b64.encode(&graw[..63])),
            "global signature decoded to 63 bytes",
        ),
        (good[..good.len() / 2].to_vec(), "missing"),
    ] {
        let mut p = fx.valid();
        p.signatures[0].1 = sig;
        cases.push(rejected(
            format!("malformed signature: {needle}"),
            p.bundle(),
            &[&id, "malformed signature", needle],
        ));
    }

    // The same key twice toward a threshold of 2: two entries by one key...
    let two = fx.sb.mkdir("trust-two");
    fs::copy(&fx.a.public, two.join("a.pub")).unwrap();
    fs::write(two.join("b.pub"), fx.skb.public().to_file_text()).unwrap();
    let mut p = fx.valid();
    let dup = p.signatures[0].clone();
    p.signatures.push(dup);
    cases.push(
        rejected(
            "one signature entry twice",
            p.bundle(),
            &["duplicate entry", &id],
        )
        .trust(&[&two])
        .extra(&["--threshold", "2"]),
    );
    // ...and one key known under two key ids: each signature verifies on
    // its own, but they are one key.
    let mut other_id = fx.ska.key_id.0;
    other_id[0] ^= 0xff;
    let alias = PublicKey {
        key_id: KeyId(other_id),
        key: fx.ska.public().key,
    };
    let aliased = fx.sb.mkdir("trust-alias");
    fs::copy(&fx.a.public, aliased.join("a.pub")).unwrap();
    fs::write(aliased.join("alias.pub"), alias.to_file_text()).unwrap();
    let mut p = fx.valid();
    let mut sraw = b64.decode(line(&p.signatures[0].1, 1)).unwrap();
    sraw[2..10].copy_from_slice(&other_id);
    let relabelled = with_line(&p.signatures[0].1, 1, &b64.encode(sraw));
    p.signatures.push((sig_name(KeyId(other_id)), relabelled));
    cases.push(
        case(
            "one key under two ids toward threshold 2",
            p.bundle(),
            4,
            &["threshold not met", "1 distinct", "2 required"],
        )
        .trust(&[&aliased])
        .extra(&["--threshold", "2"]),
    );
    // A real second key, but only one trusted signature present.
    cases.push(
        case(
            "threshold 2, one signature",
            fx.valid().bundle(),
            4,
            &["threshold not met", "2 required"],
        )
        .trust(&[&two])
        .extra(&["--threshold", "2"]),
    );
    fx.check(cases);
}

#[test]
fn bad_trusted_key_files_are_usage_errors() {
    // The trust set is the operator's input: exit 2 before the lock, so no
    // ledger entry, and nothing changes.
    let fx = setup();
    let bundle = fx.write(&fx.valid().bundle());
    let text = fs::read_to_string(&fx.a.public).unwrap();
    let line1 = text.lines().nth(1).unwrap().to_string();
    let entries = fx.ledger().len();
    for (name, text, needle) in [
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
    ] {
        let k = fx.sb.join(format!("keys/{name}.pub"));
        fs::write(&k, text).unwrap();
        let before = fx.outside_state();
        let mirror = digest(&fx.mirror);
        let (r, report) = fx.import_path(&bundle, Some(std::slice::from_ref(&k)), &[]);
        assert_eq!(r.code, 2, "{r:#?}");
        assert!(r.stderr.contains(&format!("{name}.pub")), "{r:#?}");
        assert!(r.stderr.contains(needle), "{r:#?}");
        assert_eq!(report["outcome"], "failed");
        assert_digest_eq(name, "the mirror", &mirror, &digest(&fx.mirror));
        assert_digest_eq(name, "the sandbox", &before, &fx.outside_state());
        fs::remove_file(&k).unwrap();
    }
    assert_eq!(fx.ledger().len(), entries);
    fx.ledger_verify();
}

// ---- archive structure ---------------------------------------------------

#[test]
fn unlisted_missing_duplicate_and_misordered_entries() {
    let fx = setup();
    let mut cases = Vec::new();

    let mut p = fx.valid();
    p.payload
        .push((payload_name("extra.txt"), b"surprise".to_vec()));
    cases.push(rejected(
        "entry after the last listed file",
        p.bundle(),
        &["payload/extra.txt", "follows the last listed file"],
    ));
    let mut p = fx.valid();
    p.payload.insert(
        1,
        (
            payload_name("linux/production/arch_x86_64/evil.sh"),
            b"#!/bin/sh\n".to_vec(),
        ),
    );
    cases.push(rejected(
        "unlisted entry among the listed ones",
        p.bundle(),
        &["payload/linux/production/arch_x86_64/evil.sh", "not listed"],
    ));
    let mut p = fx.valid();
    p.payload.insert(0, (b"README".to_vec(), b"hi".to_vec()));
    cases.push(rejected(
        "entry outside payload/",
        p.bundle(),
        &["README", "not listed in the manifest"],
    ));

    let mut p = fx.valid();
    p.payload.pop();
    cases.push(rejected(
        "last listed file missing",
        p.bundle(),
        &[&format!("archive ends before payload/{LA}/manifest.json")],
    ));
    let mut p = fx.valid();
    p.payload.remove(1);
    cases.push(rejected(
        "middle listed file missing",
        p.bundle(),
        &[&format!("payload/{LA}/updates.zip"), "out of order"],
    ));

    let mut p = fx.valid();
    let last = p.payload.last().unwrap().clone();
    p.payload.push(last);
    cases.push(rejected(
        "last entry twice",
        p.bundle(),
        &["follows the last listed file", "duplicate"],
    ));
    let mut p = fx.valid();
    let first = p.payload[0].clone();
    p.payload.insert(1, first);
    cases.push(rejected(
        "first entry twice",
        p.bundle(),
        &["is a duplicate or out of order"],
    ));
    let mut p = fx.valid();
    let m = (p.manifest_name.clone(), p.manifest_bytes.clone());
    p.payload.insert(0, m);
    cases.push(rejected(
        "a second manifest entry",
        p.bundle(),
        &["gapferry/manifest.json is out of place"],
    ));
    let p = fx.edited(|v| {
        let f = v["files"][0].clone();
        v["files"].as_array_mut().unwrap().push(f);
    });
    cases.push(rejected(
        "a file listed twice",
        p.bundle(),
        &["listed twice"],
    ));

    let mut p = fx.valid();
    p.payload.swap(0, 1);
    cases.push(rejected(
        "payload entries swapped",
        p.bundle(),
        &[&format!("payload/{LX}/manifest.json"), "out of order"],
    ));
    let mut p = fx.valid();
    p.payload.swap(1, 2);
    cases.push(rejected(
        "payload entries of two folders interleaved",
        p.bundle(),
        &["out of order"],
    ));
    let p = fx.valid();
    let mut t = Tar::new();
    for (n, d) in &p.signatures {
        t = t.file(n, d);
    }
    t = t.file(&p.manifest_name, &p.manifest_bytes);
    for (n, d) in &p.payload {
        t = t.file(n, d);
    }
    cases.push(rejected(
        "signatures before the manifest",
        craft::zstd(&t.end().into_bytes()),
        &["first entry is gapferry/signatures/", "out of order"],
    ));
    let p = fx.valid();
    let sig = p.signatures[0].clone();
    cases.push(rejected(
        "a signature among the payload",
        tar_with(&p, 2, |t| t.file(&sig.0, &sig.1)),
        &["gapferry/signatures/", "out of place"],
    ));
    fx.check(cases);
}

#[test]
fn duplicate_json_keys_huge_and_deep_manifests() {
    let fx = setup();
    let (m, _) = fx.manifest();
    let text = String::from_utf8(m.to_bytes()).unwrap();
    let mut cases = Vec::new();

    let evil = text.replacen(
        "\"channel\": \"default\"",
        "\"channel\": \"default\",\n  \"channel\": \"elsewhere\"",
        1,
    );
    assert_ne!(evil, text);
    cases.push(rejected(
        "duplicate key channel",
        fx.signed_bytes(evil.into_bytes()).bundle(),
        &["duplicate key", "channel"],
    ));
    let evil = text.replacen("\"size\": ", "\"size\": 1, \"size\": ", 1);
    cases.push(rejected(
        "duplicate key size in a file entry",
        fx.signed_bytes(evil.into_bytes()).bundle(),
        &["duplicate key", "size"],
    ));
    let evil = text.replacen(
        "\"definition_version\": ",
        "\"definition_version\": \"9.9.9.9\", \"definition_version\": ",
        1,
    );
    cases.push(rejected(
        "duplicate key definition_version in an item",
        fx.signed_bytes(evil.into_bytes()).bundle(),
        &["duplicate key", "definition_version"],
    ));

    let mut bytes = m.to_bytes();
    bytes.resize(manifest::MAX_MANIFEST_SIZE as usize + 1, b' ');
    cases.push(rejected(
        "huge manifest",
        fx.signed_bytes(bytes).bundle(),
        &["manifest is 16777217 bytes", "16 MiB"],
    ));

    for depth in [20, 100_000] {
        let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let evil = text.replacen("{\n", &format!("{{\n  \"extension\": {deep},\n"), 1);
        assert_ne!(evil, text);
        cases.push(rejected(
            format!("JSON nested {depth} deep"),
            fx.signed_bytes(evil.into_bytes()).bundle(),
            &["invalid manifest", "nested deeper"],
        ));
    }
    fx.check(cases);
}

// ---- paths ---------------------------------------------------------------

const EVIL_PATHS: &[&str] = &[
    "../x",
    "a/../../x",
    "linux/production/../../../x",
    "/abs",
    "/etc/passwd",
    "C:\\x",
    "C:x",
    "a\\b",
    "linux\\production\\arch_x86_64\\updates.zip",
    "..\\..\\x",
    "./a",
    "a//b",
    "a/",
    "",
];

#[test]
fn unsafe_paths_in_a_validly_signed_manifest() {
    let fx = setup();
    let mut cases = Vec::new();
    for evil in EVIL_PATHS {
        // In place of a listed file, and as an extra file.
        let p = fx.edited(|v| v["files"][0]["path"] = (*evil).into());
        cases.push(rejected(
            format!("manifest path {evil:?}"),
            p.bundle(),
            &["invalid manifest", "path"],
        ));
        let p = fx.edited(|v| {
            let mut f = v["files"][3].clone();
            f["path"] = (*evil).into();
            v["files"].as_array_mut().unwrap().push(f);
        });
        cases.push(rejected(
            format!("extra manifest path {evil:?}"),
            p.bundle(),
            &["invalid manifest", "path"],
        ));
    }
    fx.check(cases);
}

#[test]
fn unsafe_names_in_the_tar() {
    let fx = setup();
    let mut cases = Vec::new();
    for evil in ["../x", "a/../../x", "/abs", "C:\\x", "a\\b", "payload/../x"] {
        for name in [evil.as_bytes().to_vec(), payload_name(evil)] {
            let shown = String::from_utf8_lossy(&name).into_owned();
            let mut p = fx.valid();
            p.payload[0].0 = name.clone();
            cases.push(rejected(
                format!("tar name {shown:?} in place of the first file"),
                p.bundle(),
                &["expected payload/linux/production"],
            ));
            let mut p = fx.valid();
            p.payload.push((name, b"x".to_vec()));
            cases.push(rejected(
                format!("tar name {shown:?} after the last file"),
                p.bundle(),
                &["follows the last listed file"],
            ));
        }
    }
    // A ustar prefix field that puts a listed name under ../
    let p = fx.valid();
    let t = tar_replacing(&p, 0, |t, n, d| {
        t.entry(
            &Header {
                prefix: b"..".to_vec(),
                ..Header::file(n, d.len() as u64)
            },
            d,
        )
    });
    cases.push(rejected(
        "ustar prefix ..",
        craft::zstd(&t.end().into_bytes()),
        &["../payload/linux", "not listed"],
    ));

    // Non-UTF-8 and NUL, in the tar and in the signed manifest.
    let mut p = fx.valid();
    p.payload[0].0 = [format!("payload/{LX}/updates").as_bytes(), b"\xff.zip"].concat();
    cases.push(rejected(
        "non-UTF-8 tar name",
        p.bundle(),
        &["updates\\xff.zip", "not listed"],
    ));
    let mut p = fx.valid();
    p.payload[0].0 = b"payload/linux\0/production/arch_x86_64/updates.zip".to_vec();
    cases.push(rejected(
        "NUL in a tar name",
        p.bundle(),
        &["entry payload/linux is not listed"],
    ));
    let p = fx.edited(|v| v["files"][0]["path"] = format!("{LX}/up\0dates.zip").into());
    cases.push(rejected(
        "NUL in a manifest path",
        p.bundle(),
        &["invalid manifest"],
    ));
    let (m, _) = fx.manifest();
    let mut bytes = m.to_bytes();
    let at = bytes.windows(11).position(|w| w == b"updates.zip").unwrap();
    bytes[at] = 0xff;
    cases.push(rejected(
        "non-UTF-8 manifest",
        fx.signed_bytes(bytes).bundle(),
        &["invalid manifest", "not UTF-8"],
    ));

    // Case-only collisions and a file that is also a folder.
    let p =
        fx.edited(|v| v["files"][1]["path"] = format!("{}/updates.zip", LX.to_uppercase()).into());
    cases.push(rejected(
        "case-only collision",
        p.bundle(),
        &["listed twice (ignoring case)"],
    ));
    let p = fx.edited(|v| v["files"][1]["path"] = format!("{LX}/UPDATES.ZIP").into());
    cases.push(rejected(
        "case-only collision of the file name",
        p.bundle(),
        &["listed twice (ignoring case)"],
    ));
    let p = fx.edited(|v| v["files"][1]["path"] = format!("{LX}/updates.zip/b").into());
    cases.push(rejected(
        "a and a/b",
        p.bundle(),
        &["is a file and also a directory of another listed file"],
    ));
    fx.check(cases);
}

#[test]
fn files_outside_the_mde_layout() {
    // Validly signed, safe relative paths that belong to no item: the mde
    // profile lists exactly each item's updates.zip and manifest.json.
    let fx = setup();
    let mut cases = Vec::new();
    for extra in [
        format!("{LX}/evil.sh"),
        format!("{LX_BACK}/updates.zip"),
        "linux/production/evil.sh".to_string(),
        "linux/.gapferry-staging-1-2-3/production/arch_x86_64/updates.zip".to_string(),
        "mac/production/arch_x86_64/updates.zip".to_string(),
        "index.html".to_string(),
    ] {
        let (mut m, mut payload) = fx.manifest();
        payload.push((extra.clone(), b"#!/bin/sh\nrm -rf /\n".to_vec()));
        m.files = craft::files_for(&payload);
        let p = Parts::signed(&m, &payload, &[&fx.ska]);
        cases.push(rejected(
            format!("extra file {extra}"),
            p.bundle(),
            &[&format!("file {extra} belongs to no item")],
        ));
    }
    // An item outside the layout.
    let p = fx.edited(|v| v["items"][0]["ring"] = "production_back".into());
    cases.push(rejected(
        "item ring production_back",
        p.bundle(),
        &["unknown ring"],
    ));
    let p = fx.edited(|v| v["items"][0]["platform"] = "..".into());
    cases.push(rejected(
        "item platform ..",
        p.bundle(),
        &["unknown platform"],
    ));
    // An item whose files are missing from the list.
    let p = fx.edited(|v| {
        v["files"].as_array_mut().unwrap().remove(1);
    });
    cases.push(rejected(
        "item without its manifest.json",
        p.bundle(),
        &[&format!("has no file {LX}/manifest.json")],
    ));
    fx.check(cases);
}

#[test]
fn links_devices_fifos_and_extension_headers() {
    let fx = setup();
    let mut cases = Vec::new();
    for (flag, what) in [
        (b'1', "a hard link"),
        (b'2', "a symbolic link"),
        (b'3', "a character device"),
        (b'4', "a block device"),
        (b'5', "a directory"),
        (b'6', "a FIFO"),
        (b'7', "an unsupported entry type"),
    ] {
        for at in [0, 3] {
            // In place of a listed file (the last one: three files staged).
            let p = fx.valid();
            let t = tar_replacing(&p, at, |t, n, _| {
                let mut hd = Header::typed(n, flag);
                hd.linkname = b"../../../../etc/passwd".to_vec();
                t.header(&hd)
            });
            let mut c = rejected(
                format!("{what} as payload entry {at}"),
                craft::zstd(&t.end().into_bytes()),
                &[&p_name(&p, at), what, "regular files only"],
            );
            c.max_written = u64::MAX;
            cases.push(c);
        }
    }
    let p = fx.valid();
    cases.push(rejected(
        "PAX size smuggling",
        tar_with(&p, 0, |t| t.pax(&[("size", "3")])),
        &["a PAX extended header", "regular files only"],
    ));
    cases.push(rejected(
        "PAX path",
        tar_with(&p, 1, |t| t.pax(&[("path", "../../etc/cron.d/x")])),
        &["a PAX extended header"],
    ));
    cases.push(rejected(
        "global PAX header",
        tar_with(&p, 0, |t| {
            let body = b"20 comment=hello!!\n";
            t.entry(
                &Header {
                    typeflag: b'g',
                    ..Header::file("pax_global_header", body.len() as u64)
                },
                body,
            )
        }),
        &["a PAX extended header"],
    ));
    cases.push(rejected(
        "GNU long name",
        tar_with(&p, 0, |t| {
            let long = b"payload/../../../../tmp/x\0";
            t.entry(
                &Header {
                    typeflag: b'L',
                    ..Header::file("././@LongLink", long.len() as u64)
                },
                long,
            )
        }),
        &["a GNU long-name header"],
    ));
    let t = tar_replacing(&p, 1, |t, n, d| {
        t.entry(
            &Header {
                bad_checksum: Some(12345),
                ..Header::file(n, d.len() as u64)
            },
            d,
        )
    });
    cases.push(rejected(
        "bad header checksum",
        craft::zstd(&t.end().into_bytes()),
        &["checksum mismatch"],
    ));
    fx.check(cases);
}

fn p_name(p: &Parts, at: usize) -> String {
    String::from_utf8(p.payload[at].0.clone()).unwrap()
}

#[test]
fn truncated_archives_and_trailing_garbage() {
    let fx = setup();
    let good = fx.valid().bundle();
    let mut cases = Vec::new();
    for (cut, needle) in [
        (good.len() - 1, "truncated"),
        (good.len() / 2, "truncated"),
        (20, "truncated"),
        (0, "truncated"),
    ] {
        let mut c = rejected(
            format!("bundle cut at {cut}"),
            good[..cut].to_vec(),
            &[needle],
        );
        c.max_written = u64::MAX;
        cases.push(c);
    }
    cases.push(rejected(
        "tar without its end-of-archive marker",
        craft::zstd(&fx.valid().tar().into_bytes()),
        &["truncated", "tar header"],
    ));
    cases.push(rejected(
        "only one end block",
        craft::zstd(&fx.valid().tar().raw(&[0; 512]).into_bytes()),
        &["truncated", "end-of-archive marker"],
    ));
    cases.push(rejected(
        "not zstd at all",
        fx.valid().tar_bytes(),
        &["not a gapferry bundle"],
    ));

    let after_frame = "data after a zstd frame is not a zstd frame";
    cases.push(rejected(
        "garbage after the zstd frame",
        [&good[..], b"GARBAGE AFTER THE FRAME"].concat(),
        &[after_frame],
    ));
    cases.push(rejected(
        "a second zstd frame",
        [&good[..], &craft::zstd(b"more")[..]].concat(),
        &["trailing data after the end of the archive"],
    ));
    let mut skippable = 0x184D_2A50u32.to_le_bytes().to_vec();
    skippable.extend_from_slice(&11u32.to_le_bytes());
    skippable.extend_from_slice(b"hidden data");
    cases.push(rejected(
        "a skippable frame",
        [&good[..], &skippable[..]].concat(),
        &[after_frame],
    ));
    cases.push(rejected(
        "data after the end-of-archive marker",
        craft::zstd(&fx.valid().tar().end().raw(b"hidden data").into_bytes()),
        &["trailing data after the end"],
    ));
    cases.push(rejected(
        "a zero block followed by an entry",
        craft::zstd(
            &fx.valid()
                .tar()
                .raw(&[0; 512])
                .file("payload/late", b"x")
                .end()
                .into_bytes(),
        ),
        &["zero block is followed by data"],
    ));
    cases.push(rejected(
        "an entry after the end marker",
        craft::zstd(
            &fx.valid()
                .tar()
                .end()
                .file("payload/late", b"x")
                .into_bytes(),
        ),
        &["trailing data"],
    ));
    for c in &mut cases[7..] {
        // Everything was staged before the trailer was seen.
        c.max_written = u64::MAX;
    }
    fx.check(cases);
}

#[test]
fn zstd_bombs_write_nothing_like_their_size() {
    let fx = setup();
    let p = fx.valid();
    let listed: u64 = p.payload.iter().map(|(_, d)| d.len() as u64).sum();
    let mut cases = Vec::new();

    // 4 GiB of zeros after the archive, in the same frame: everything
    // listed is staged (a few KiB), then the padding allowance runs out.
    let bomb = craft::zstd_raw_frame(&p.tar_bytes(), 4 << 30);
    assert!(bomb.len() < 200 * 1024);
    let mut c = rejected(
        "4 GiB of zeros after the archive",
        bomb,
        &["more than 1 MiB of padding"],
    );
    c.max_written = listed;
    cases.push(c);

    // The same as a second frame.
    let mut c = rejected(
        "a 4 GiB second frame",
        [&p.bundle()[..], &craft::zstd_zero_frame(4 << 30)[..]].concat(),
        &["more than 1 MiB of padding"],
    );
    c.max_written = listed;
    cases.push(c);

    // The last entry's header claims 4 GiB (the manifest lists a few
    // hundred bytes), with the 4 GiB behind it.
    let t = tar_replacing(&p, 3, |t, n, _| t.header(&Header::file(n, 4 << 30)));
    let mut c = rejected(
        "an entry claiming 4 GiB with the zeros behind it",
        craft::zstd_raw_frame(&t.into_bytes(), 4 << 30),
        &["4294967296 bytes in the archive but"],
    );
    c.max_written = listed;
    cases.push(c);

    // The first entry claims 1 TiB, nothing behind it.
    let b = tar_with(&p, 0, |t| t.header(&Header::file(&p.payload[0].0, 1 << 40)));
    cases.push(rejected(
        "an entry claiming 1 TiB",
        b,
        &["1099511627776 bytes in the archive but"],
    ));

    // A manifest entry claiming 16 GiB, with 4 GiB of zeros behind it.
    let t = Tar::new().header(&Header::file(craft::MANIFEST_NAME, 16 << 30));
    cases.push(rejected(
        "a 16 GiB manifest entry",
        craft::zstd_raw_frame(&t.into_bytes(), 4 << 30),
        &["manifest is 17179869184 bytes", "16 MiB"],
    ));

    // An honest 4 GiB updates.zip of zeros, signed by an untrusted key:
    // refused from the head, before a payload byte is decompressed.
    let (mut m, mut payload) = fx.manifest();
    payload.truncate(0);
    m.files[0].size = 4 << 30;
    m.files[0].sha256 = support::sha256_hex(b"not the zeros").parse().unwrap();
    let signed = Parts::signed(&m, &payload, &[&fx.skb]);
    let mut t = signed.tar();
    t = t.header(&Header::file(
        payload_name(m.files[0].path.as_str()),
        4 << 30,
    ));
    cases.push(rejected(
        "a 4 GiB listed file signed by an untrusted key",
        craft::zstd_raw_frame(&t.into_bytes(), 4 << 30),
        &["no signature by a trusted key"],
    ));

    // A frame that asks for a 2 GiB window.
    let mut frame = craft::zstd_zero_frame(1024);
    frame[5] = (31 - 10) << 3;
    cases.push(rejected(
        "a 2 GiB window",
        frame,
        &["damaged compressed data"],
    ));
    for c in &mut cases {
        c.max_written = c.max_written.min(listed);
    }
    fx.check(cases);
}

// ---- symlinks planted in the mirror --------------------------------------

/// Replaces `<mirror>/<rel>` by a symlink to a copy of it outside the
/// mirror, then imports the valid V3 bundle. The import must refuse (exit
/// 1, naming the link) before it stages anything, and change nothing: not
/// the mirror, not the folder the link points to.
fn planted(rel: &str) {
    let fx = setup();
    let real = fx.mirror.join(rel);
    let outside = fx.sb.join("outside").join(rel);
    fs::create_dir_all(outside.parent().unwrap()).unwrap();
    fs::rename(&real, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &real).unwrap();
    let path = fx.write(&fx.valid().bundle());
    let all_before = fx.outside_state();
    let outside_before = digest(&fx.sb.join("outside"));
    let entries = fx.ledger().len();
    let (r, report) = fx.import_path(&path, None, &[]);
    assert_digest_eq(
        rel,
        "the folder outside the mirror",
        &outside_before,
        &digest(&fx.sb.join("outside")),
    );
    assert_digest_eq(rel, "the sandbox", &all_before, &fx.outside_state());
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stderr.contains(&format!(
            "{} is a symbolic link, not a folder",
            real.display()
        )),
        "{r:#?}"
    );
    assert!(r.stderr.contains("move it out of the mirror"), "{r:#?}");
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["bytes_written"], 0);
    let ledger = fx.ledger();
    assert_eq!(ledger.len(), entries + 1);
    assert_eq!(ledger.last().unwrap()["outcome"], "failed");
    fx.ledger_verify();

    // Put the real folder back: the same bundle now imports.
    fs::remove_file(&real).unwrap();
    fs::rename(&outside, &real).unwrap();
    let (r, _) = fx.import_path(&path, None, &[]);
    assert_eq!(r.code, 0, "{r:#?}");
}

#[test]
fn planted_symlink_back_ring() {
    planted("linux/production_back");
}

#[test]
fn planted_symlink_back_arch() {
    planted(LA_BACK);
}

#[test]
fn planted_symlink_current_arch() {
    // The second folder: the first must not be published either.
    planted(LA);
}

#[test]
fn planted_symlink_ring() {
    planted("linux/production");
}

#[test]
fn planted_symlink_platform() {
    planted("linux");
}

#[test]
fn planted_symlink_back_ring_and_rollback() {
    // `gapferry rollback` swaps the served set with its n-1: through a
    // linked `<ring>_back` it would move the served set out of the mirror.
    let fx = setup();
    let real = fx.mirror.join("linux/production_back");
    let outside = fx.sb.join("outside");
    fs::rename(&real, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &real).unwrap();
    let before = fx.outside_state();
    let r = fx.sb.run([
        "rollback".as_ref(),
        "--mirror".as_ref(),
        fx.mirror.as_os_str(),
        "--state-dir".as_ref(),
        fx.state.as_os_str(),
        "--platform".as_ref(),
        "linux".as_ref(),
        "--ring".as_ref(),
        "production".as_ref(),
    ]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stderr
            .contains(&format!("{} is a symbolic link", real.display())),
        "{r:#?}"
    );
    assert_digest_eq("rollback", "the sandbox", &before, &fx.outside_state());
    fx.ledger_verify();
}

#[test]
fn planted_symlink_beside_a_target() {
    // With --target DIR the operator names DIR (a link is theirs to place);
    // DIR_back and the arch folders are gapferry's.
    let fx = setup();
    let target = fx.sb.mkdir("served/production");
    let (m, payload) = fx.manifest();
    let p = Parts::signed(&m, &payload, &[&fx.ska]);
    let outside = fx.sb.mkdir("outside");
    std::os::unix::fs::symlink(&outside, fx.sb.join("served/production_back")).unwrap();
    let path = fx.write(&p.bundle());
    let before = fx.outside_state();
    let mut c = fx.sb.cmd();
    c.arg("import")
        .arg(&path)
        .arg("--create")
        .arg("--target")
        .arg(&target)
        .arg("--state-dir")
        .arg(fx.sb.join("target-state"))
        .arg("--trust")
        .arg(&fx.a.public);
    let r = support::run(c);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stderr.contains("production_back is a symbolic link"),
        "{r:#?}"
    );
    let after: TreeDigest = fx
        .outside_state()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("target-state"))
        .collect();
    assert_digest_eq("target", "the sandbox", &before, &after);
}
