//! Offline co-signing (`gapferry sign`, `manifest`, `attach`): a bundle
//! exported with one key gets a second signature on another machine, by
//! gapferry or by stock minisign, and imports under a threshold of two; the
//! payload frames are copied untouched; duplicates, signatures of another
//! manifest or with another trusted comment are refused with the bundle
//! unchanged; a crash before the rename leaves the old bundle; split
//! bundles are written as a new set with a re-signed index.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use gapferry::bundle::frames::read_frame;
use support::{standard_releases, Keys, Run, Sandbox};

/// A sandbox with an online folder (K2 exports there) and an offline one
/// holding a copy of only the bundle and K3.
struct Two {
    sb: Sandbox,
    k2: Keys,
    k3: Keys,
    /// The bundle as exported (online).
    online: PathBuf,
    /// Its copy on the offline machine.
    offline: PathBuf,
}

fn two() -> Two {
    let sb = Sandbox::new();
    let k2 = support::keygen(&sb.join("online/keys"), "k2");
    let k3 = support::keygen(&sb.join("officer"), "k3");
    let from = sb.download_folder("dl", &standard_releases());
    let online = sb.join("online/b.tar.zst");
    sb.export(&from, &[&k2], &online, &["--quiet"]);
    let off = sb.mkdir("offline");
    let offline = off.join("b.tar.zst");
    fs::copy(&online, &offline).unwrap();
    fs::copy(&k3.secret, off.join("k3.key")).unwrap();
    Two {
        sb,
        k2,
        k3,
        online,
        offline,
    }
}

impl Two {
    /// `gapferry ARGS` run inside the offline folder.
    fn offline_run(&self, args: &[&std::ffi::OsStr]) -> Run {
        let mut c = self.sb.cmd();
        c.current_dir(self.sb.join("offline")).args(args);
        support::run(c)
    }

    fn sign_offline(&self) -> Run {
        self.offline_run(&[
            "sign".as_ref(),
            "b.tar.zst".as_ref(),
            "--secret-key".as_ref(),
            "k3.key".as_ref(),
            "--json".as_ref(),
        ])
    }
}

/// `gapferry import BUNDLE --trust ... --threshold N` into a fresh mirror
/// named `mirror`.
fn import(sb: &Sandbox, bundle: &Path, trust: &[&Path], threshold: usize, mirror: &str) -> Run {
    let mut c = sb.cmd();
    c.arg("import")
        .arg(bundle)
        .arg("--mirror")
        .arg(sb.join(mirror))
        .arg("--create")
        .arg("--state-dir")
        .arg(sb.join(format!("{mirror}-state")))
        .arg("--threshold")
        .arg(threshold.to_string());
    for t in trust {
        c.arg("--trust").arg(t);
    }
    support::run(c)
}

/// The compressed length of the frames before the first payload frame of a
/// gapferry bundle (its head frame).
fn head_frame_len(bundle: &[u8]) -> usize {
    let mut r = bundle;
    read_frame(&mut r, 1 << 30).unwrap().unwrap().len()
}

/// The decompressed tar entries of a bundle: (name, bytes), in order.
fn entries(bundle: &[u8]) -> Vec<(String, Vec<u8>)> {
    let tar = zstd::stream::decode_all(bundle).unwrap();
    let mut ar = tar::Archive::new(&tar[..]);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (name, data)
        })
        .collect()
}

fn sig_entry(k: &Keys) -> String {
    format!("gapferry/signatures/{}.minisig", k.id())
}

#[test]
fn scenario_6_a_second_key_signs_offline_and_the_payload_is_untouched() {
    let t = two();
    let trust = [t.k2.public.as_path(), t.k3.public.as_path()];
    // One signature does not meet a threshold of two.
    import(&t.sb, &t.online, &trust, 2, "m0").fails(4, &["threshold"]);

    let before = fs::read(&t.offline).unwrap();
    let run = t.sign_offline().ok();
    let out: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(out["added"], serde_json::json!([t.k3.id().to_string()]));
    assert_eq!(
        out["signers"],
        serde_json::json!([t.k2.id().to_string(), t.k3.id().to_string()])
    );
    let after = fs::read(&t.offline).unwrap();

    // The payload frames are the very same bytes, after a new head frame.
    let old_head = head_frame_len(&before);
    let new_head = head_frame_len(&after);
    assert_eq!(out["head_before"], old_head);
    assert_eq!(out["head_after"], new_head);
    assert_eq!(after.len() - new_head, before.len() - old_head);
    // A whole number of filesystem blocks longer (so a filesystem that
    // shares blocks can clone the rest instead of copying it).
    let block = std::os::unix::fs::MetadataExt::blksize(&fs::metadata(&t.offline).unwrap());
    assert_eq!(
        (new_head - old_head) as u64 % block,
        0,
        "{old_head} -> {new_head}"
    );
    assert!(
        after[new_head..] == before[old_head..],
        "bytes after the head changed"
    );
    // Decompressed: the same entries, with K3's signature right after K2's.
    let (old, new) = (entries(&before), entries(&after));
    assert_eq!(new.len(), old.len() + 1);
    assert_eq!(new[0], old[0], "manifest");
    assert_eq!(new[1], old[1], "K2's signature entry");
    assert_eq!(new[1].0, sig_entry(&t.k2));
    assert_eq!(new[2].0, sig_entry(&t.k3));
    assert_eq!(&new[3..], &old[2..], "payload entries");
    assert!(old[2].0.starts_with("payload/"));

    // Carried back: imports under 2 of {K2, K3}; verify names both signers.
    import(&t.sb, &t.offline, &trust, 2, "m1").ok();
    let v =
        t.sb.verify(&t.offline, &trust, &["--threshold", "2", "--json"])
            .ok();
    let v: serde_json::Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(v["signers"].as_array().unwrap().len(), 2);
}

#[test]
fn a_key_that_signed_already_is_refused_and_the_bundle_is_unchanged() {
    let t = two();
    t.sign_offline().ok();
    let before = fs::read(&t.offline).unwrap();
    t.sign_offline()
        .fails(2, &["already carries a signature by key"]);
    // The exporter's own key too.
    let mut c = t.sb.cmd();
    c.args([
        "sign".as_ref(),
        t.offline.as_os_str(),
        "--secret-key".as_ref(),
    ])
    .arg(&t.k2.secret);
    support::run(c).fails(2, &[&t.k2.id().to_string()]);
    assert!(fs::read(&t.offline).unwrap() == before);
}

/// `gapferry manifest BUNDLE --out m.json --minisign-key KEY --json`.
fn manifest_json(sb: &Sandbox, bundle: &Path, out: &Path, key: &Path) -> serde_json::Value {
    let mut c = sb.cmd();
    c.arg("manifest")
        .arg(bundle)
        .arg("--out")
        .arg(out)
        .arg("--minisign-key")
        .arg(key)
        .arg("--json");
    serde_json::from_str(&support::run(c).ok().stdout).unwrap()
}

/// Runs a printed shell command line with bash.
fn sh(sb: &Sandbox, line: &str) {
    let o = Command::new("bash")
        .arg("-c")
        .arg(line)
        .current_dir(sb.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bash");
    assert!(
        o.status.success(),
        "{line}\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn attach(sb: &Sandbox, bundle: &Path, sigs: &[&Path], trust: &[&Path]) -> Run {
    let mut c = sb.cmd();
    c.arg("attach").arg(bundle).args(sigs);
    for t in trust {
        c.arg("--trust").arg(t);
    }
    support::run(c)
}

#[test]
fn stock_minisign_signs_the_printed_command_and_attach_adds_it() {
    let t = two();
    let k4 = t.sb.keygen("k4");
    let m = t.sb.join("offline/manifest.json");
    let out = manifest_json(&t.sb, &t.offline, &m, &k4.secret);
    // The manifest file is the exact signed bytes.
    let head = entries(&fs::read(&t.offline).unwrap());
    assert!(fs::read(&m).unwrap() == head[0].1);
    assert_eq!(
        out["manifest_sha256"],
        support::sha256_hex(&head[0].1).as_str()
    );
    let cmd = out["minisign_command"].as_str().unwrap();
    assert!(cmd.starts_with("minisign -S -s "), "{cmd}");
    // The printed command, run as printed (stock minisign, unencrypted key).
    sh(&t.sb, cmd);
    let sig = PathBuf::from(out["signature"].as_str().unwrap());
    assert!(sig.is_file());
    // The printed attach line names the bundle, the signature and K4's .pub.
    let line = out["attach_command"].as_str().unwrap();
    assert!(line.contains(&k4.public.display().to_string()), "{line}");

    // Without the signer's public key nothing is added.
    let before = fs::read(&t.offline).unwrap();
    attach(&t.sb, &t.offline, &[&sig], &[]).fails(2, &["no *.pub file", "--trust"]);
    attach(&t.sb, &t.offline, &[&sig], &[&t.k3.public]).fails(2, &["no --trust key"]);
    assert!(fs::read(&t.offline).unwrap() == before);

    // The call without --trust works when the signer's .pub lies beside
    // the signature (as the officer hands them over).
    fs::copy(&k4.public, sig.with_file_name("officer.pub")).unwrap();
    let run = attach(&t.sb, &t.offline, &[&sig], &[]).ok();
    assert!(run.stderr.contains("officer.pub"), "{run:?}");
    let trust = [t.k2.public.as_path(), k4.public.as_path()];
    import(&t.sb, &t.offline, &trust, 2, "m").ok();
    // And stock minisign verifies the entry gapferry stored.
    let e = entries(&fs::read(&t.offline).unwrap());
    assert_eq!(e[2].0, sig_entry(&k4));
    let stored = t.sb.join("stored.minisig");
    fs::write(&stored, &e[2].1).unwrap();
    let o = Command::new("minisign")
        .arg("-Vm")
        .arg(&m)
        .arg("-x")
        .arg(&stored)
        .arg("-p")
        .arg(&k4.public)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn a_signature_of_another_manifest_or_comment_is_refused() {
    let t = two();
    let k4 = t.sb.keygen("k4");
    // A second bundle, and K4's signature of its manifest.
    let from = t.sb.download_folder("dl2", &standard_releases());
    let other = t.sb.join("online/other.tar.zst");
    t.sb.export(&from, &[&t.k2], &other, &["--quiet"]);
    let m2 = t.sb.join("other.json");
    let out = manifest_json(&t.sb, &other, &m2, &k4.secret);
    sh(&t.sb, out["minisign_command"].as_str().unwrap());
    let wrong_manifest = PathBuf::from(out["signature"].as_str().unwrap());

    // K4's signature of the right manifest with another trusted comment.
    let m = t.sb.join("this.json");
    manifest_json(&t.sb, &t.offline, &m, &k4.secret);
    let wrong_comment = t.sb.join("comment.minisig");
    sh(
        &t.sb,
        &format!(
            "minisign -S -s '{}' -m '{}' -x '{}' -t 'gapferry bundle_id:x channel:default sequence:1'",
            k4.secret.display(),
            m.display(),
            wrong_comment.display()
        ),
    );

    let before = fs::read(&t.offline).unwrap();
    attach(&t.sb, &t.offline, &[&wrong_manifest], &[&k4.public])
        .fails(3, &["does not sign the manifest of bundle"]);
    attach(&t.sb, &t.offline, &[&wrong_comment], &[&k4.public])
        .fails(3, &["trusted comment", "is not this manifest's"]);
    // Not a signature at all.
    attach(&t.sb, &t.offline, &[&m], &[&k4.public]).fails(2, &["malformed"]);
    assert!(fs::read(&t.offline).unwrap() == before);
    let names: Vec<String> = fs::read_dir(t.sb.join("offline"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn a_crash_before_the_rename_leaves_the_old_bundle() {
    let t = two();
    let before = fs::read(&t.offline).unwrap();
    let mut c = t.sb.cmd();
    c.current_dir(t.sb.join("offline"))
        .args(["sign", "b.tar.zst", "--secret-key", "k3.key"])
        .env(
            gapferry::faults::ENV_CRASH_AT,
            gapferry::bundle::cosign::CRASH_BEFORE_RENAME,
        );
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), None, "killed at the crash point: {o:?}");
    assert!(
        fs::read(&t.offline).unwrap() == before,
        "the bundle changed"
    );
    t.sb.verify(&t.offline, &[&t.k2.public], &[]).ok();
    // Signing again after the crash works (the stray temporary file is
    // only a hidden .partial beside it).
    t.sign_offline().ok();
    let trust = [t.k2.public.as_path(), t.k3.public.as_path()];
    import(&t.sb, &t.offline, &trust, 2, "m").ok();
}

#[test]
fn an_unwritable_folder_fails_cleanly_with_out() {
    let t = two();
    let before = fs::read(&t.offline).unwrap();
    let mut c = t.sb.cmd();
    c.current_dir(t.sb.join("offline")).args([
        "sign",
        "b.tar.zst",
        "--secret-key",
        "k3.key",
        "--out",
        "no/such/dir/b.tar.zst",
    ]);
    support::run(c).fails(1, &["no/such/dir"]);
    assert!(fs::read(&t.offline).unwrap() == before);
}

#[test]
fn a_split_bundle_is_signed_into_a_new_set_and_imports() {
    let sb = Sandbox::new();
    let k2 = sb.keygen("k2");
    let k3 = sb.keygen("k3");
    let from = sb.download_folder("dl", &standard_releases());
    sb.mkdir("out");
    let out = sb.join("out/b.tar.zst");
    sb.export(&from, &[&k2], &out, &["--split", "400", "--quiet"]);
    let index = sb.join("out/b.tar.zst.volumes.json");

    // In place is refused (every volume changes); so is attach.
    let mut c = sb.cmd();
    c.arg("sign")
        .arg(&index)
        .arg("--secret-key")
        .arg(&k3.secret);
    support::run(c).fails(2, &["--out"]);

    sb.mkdir("signed");
    let signed = sb.join("signed/b.tar.zst");
    let mut c = sb.cmd();
    c.arg("sign")
        .arg(&index)
        .arg("--secret-key")
        .arg(&k3.secret)
        .arg("--out")
        .arg(&signed);
    support::run(c).ok();
    let new_index = sb.join("signed/b.tar.zst.volumes.json");
    let idx: serde_json::Value = serde_json::from_slice(&fs::read(&new_index).unwrap()).unwrap();
    assert_eq!(idx["volume_size"], 400);
    assert!(idx["volumes"].as_array().unwrap().len() >= 3);
    assert!(sb
        .join(format!("signed/b.tar.zst.volumes.json.{}.minisig", k3.id()))
        .is_file());

    // Again: refused without --force; with it, the new set replaces the
    // one there; never over the set being signed.
    let again = |extra: &[&str], out: &Path| {
        let mut c = sb.cmd();
        c.arg("sign")
            .arg(&index)
            .arg("--secret-key")
            .arg(&k3.secret)
            .arg("--out")
            .arg(out)
            .args(extra);
        support::run(c)
    };
    again(&[], &signed).fails(2, &["already exists"]);
    again(&["--force"], &signed).ok();
    again(&["--force"], &out).fails(2, &["names the split bundle being signed"]);

    let trust = [k2.public.as_path(), k3.public.as_path()];
    import(&sb, &sb.join("signed/b.tar.zst.001"), &trust, 2, "m").ok();
    // The old set is as it was and still carries one signature.
    import(&sb, &index, &trust, 2, "m2").fails(4, &["threshold"]);
    import(&sb, &index, &[&k2.public], 1, "m3").ok();

    // Joined, the new set is the old bundle with one more signature entry.
    let join = |dir: &str| {
        let mut all = Vec::new();
        for k in 1.. {
            let p = sb.join(format!("{dir}/b.tar.zst.{k:03}"));
            if !p.exists() {
                break;
            }
            all.extend(fs::read(p).unwrap());
        }
        all
    };
    let (old, new) = (entries(&join("out")), entries(&join("signed")));
    assert_eq!(new.len(), old.len() + 1);
    assert_eq!(new[2].0, sig_entry(&k3));
    assert_eq!(&new[3..], &old[2..]);

    // attach cannot sign the new index: refused, pointing to sign or a join.
    let manifest = gapferry::manifest::Manifest::parse(&old[0].1).unwrap();
    let by_k3 =
        gapferry::sign::Signature::sign(&k3.secret_key(), &old[0].1, &manifest.trusted_comment());
    let sig = sb.join("x.minisig");
    fs::write(&sig, by_k3.to_text("k3")).unwrap();
    attach(&sb, &index, &[&sig], &[&k3.public]).fails(2, &["split bundle", "attach has no key"]);
}

#[test]
fn a_one_frame_bundle_is_rewritten_when_small_and_refused_when_large() {
    use support::craft::Parts;
    let sb = Sandbox::new();
    let k2 = sb.keygen("k2");
    let k3 = sb.keygen("k3");
    // `tar | zstd`: one frame for everything, small: the whole frame is the
    // head frame and is rewritten.
    let parts = Parts::mde(&standard_releases(), &[&k2.secret_key()]);
    let small = sb.join("small.tar.zst");
    parts.write(&small);
    let mut c = sb.cmd();
    c.arg("sign")
        .arg(&small)
        .arg("--secret-key")
        .arg(&k3.secret);
    let run = support::run(c).ok();
    // The signer is told what the signature vouches for.
    let m = gapferry::manifest::Manifest::parse(&parts.manifest_bytes).unwrap();
    let said = format!(
        "bundle {} channel {} sequence {}",
        m.bundle_id, m.channel, m.sequence
    );
    assert!(run.stderr.contains(&said), "{run:?}");
    let trust = [k2.public.as_path(), k3.public.as_path()];
    sb.verify(&small, &trust, &["--threshold", "2"]).ok();

    // One frame holding 18 MiB of incompressible payload: more than the
    // head budget, refused without a change.
    let mut big = parts.clone();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    big.payload[0].1 = (0..18 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let large = sb.join("large.tar.zst");
    big.write(&large);
    let before = fs::read(&large).unwrap();
    let mut c = sb.cmd();
    c.arg("sign")
        .arg(&large)
        .arg("--secret-key")
        .arg(&k3.secret);
    support::run(c).fails(2, &["one large zstd frame", "export it again"]);
    assert!(fs::read(&large).unwrap() == before);
}

#[test]
fn sign_with_trust_co_signs_only_what_a_trusted_key_signed() {
    let t = two();
    let stranger = t.sb.keygen("stranger");
    let before = fs::read(&t.offline).unwrap();
    let sign = |trust: &Path| {
        let mut c = t.sb.cmd();
        c.arg("sign")
            .arg(&t.offline)
            .arg("--secret-key")
            .arg(&t.k3.secret)
            .arg("--trust")
            .arg(trust);
        support::run(c)
    };
    // Signed by K2 only: a signer who expects another key signs nothing.
    sign(&stranger.public).fails(3, &["no signature by a trusted key"]);
    assert!(fs::read(&t.offline).unwrap() == before);
    sign(&t.k2.public).ok();
    let trust = [t.k2.public.as_path(), t.k3.public.as_path()];
    import(&t.sb, &t.offline, &trust, 2, "m").ok();
}

/// A split set with parity volumes is signed into a new set that has as
/// many parity volumes, computed over the new data volumes: it still
/// survives the loss of a volume.
#[test]
fn a_split_bundle_with_parity_keeps_working_parity_when_signed() {
    let sb = Sandbox::new();
    let k2 = sb.keygen("k2");
    let k3 = sb.keygen("k3");
    let from = sb.download_folder("dl", &standard_releases());
    sb.mkdir("out");
    let out = sb.join("out/b.tar.zst");
    sb.export(
        &from,
        &[&k2],
        &out,
        &["--split", "400", "--parity", "2", "--quiet"],
    );
    sb.mkdir("signed");
    let signed = sb.join("signed/b.tar.zst");
    let mut c = sb.cmd();
    c.arg("sign")
        .arg(sb.join("out/b.tar.zst.volumes.json"))
        .arg("--secret-key")
        .arg(&k3.secret)
        .arg("--out")
        .arg(&signed);
    support::run(c).ok();
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(sb.join("signed/b.tar.zst.volumes.json")).unwrap())
            .unwrap();
    assert_eq!(idx["format"], "gapferry-volumes/2", "{idx}");
    let parity = idx["parity"]["volumes"].as_array().unwrap();
    assert_eq!(parity.len(), 2, "{idx}");
    for p in parity {
        let n = p["number"].as_u64().unwrap();
        let bytes = fs::read(sb.join(format!("signed/b.tar.zst.p{n:03}"))).unwrap();
        assert_eq!(bytes.len() as u64, p["size"].as_u64().unwrap());
    }
    // Two data volumes lost on the way: rebuilt from the new parity, and
    // both signatures count.
    fs::remove_file(sb.join("signed/b.tar.zst.001")).unwrap();
    fs::remove_file(sb.join("signed/b.tar.zst.003")).unwrap();
    import(
        &sb,
        &sb.join("signed/b.tar.zst.volumes.json"),
        &[&k2.public, &k3.public],
        2,
        "mirror",
    )
    .ok();
}
