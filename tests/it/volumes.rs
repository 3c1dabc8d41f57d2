//! Split bundles (`export --split`): round trip through verify, inspect and
//! import given the first volume, the index or the directory; every broken
//! set (a volume missing, damaged, truncated, duplicated, stale or from
//! another bundle; the index tampered or unsigned) named by volume number,
//! with nothing written to the mirror; and stock `cat | zstd -d | tar -x`
//! and `minisign -V` on the volumes and index.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{json, standard_releases, tree_digest, FakeRelease, Keys, Sandbox};

/// Small enough that the tiny test bundles make several volumes.
const SPLIT: &str = "400";

struct Split {
    sb: Sandbox,
    keys: Keys,
    out: PathBuf,
    export: json::Export,
    volumes: usize,
}

/// `export --split 400` of the standard releases into `root/out/b.tar.zst`.
fn split_bundle() -> Split {
    let sb = Sandbox::new();
    let keys = sb.keygen("k");
    let from = sb.download_folder("dl", &standard_releases());
    sb.mkdir("out");
    let out = sb.join("out/b.tar.zst");
    let run = sb.export(&from, &[&keys], &out, &["--split", SPLIT, "--json"]);
    let export: json::Export = serde_json::from_value({
        let mut v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        v.as_object_mut().unwrap().remove("split");
        v
    })
    .unwrap();
    let volumes = (1..).take_while(|k| vol(&out, *k).exists()).count();
    assert!(
        volumes >= 3,
        "the test bundle should make at least 3 volumes"
    );
    assert!(!out.exists(), "a split export writes no whole bundle");
    Split {
        sb,
        keys,
        out,
        export,
        volumes,
    }
}

fn vol(out: &Path, k: usize) -> PathBuf {
    PathBuf::from(format!("{}.{k:03}", out.display()))
}

fn index(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.volumes.json", out.display()))
}

impl Split {
    fn verify(&self, bundle: &Path) -> support::Run {
        self.sb.verify(bundle, &[&self.keys.public], &[])
    }

    fn import(&self, bundle: &Path) -> support::Run {
        let mirror = self.sb.join("mirror");
        let state = self.sb.join("state");
        self.sb.run([
            "import".as_ref(),
            bundle.as_os_str(),
            "--trust".as_ref(),
            self.keys.public.as_os_str(),
            "--create".as_ref(),
            "--mirror".as_ref(),
            mirror.as_os_str(),
            "--state-dir".as_ref(),
            state.as_os_str(),
        ])
    }

    /// verify and import both fail with exit 3 naming `needles`, and the
    /// mirror is left as it was.
    #[track_caller]
    fn refused(&self, needles: &[&str]) {
        let mirror = self.sb.join("mirror");
        let before = tree_digest(&mirror);
        for b in [vol(&self.out, 1), index(&self.out), self.sb.join("out")] {
            self.verify(&b).fails(3, needles);
        }
        self.import(&vol(&self.out, 1)).fails(3, needles);
        assert_eq!(tree_digest(&mirror), before, "the mirror changed");
    }
}

#[test]
fn split_export_writes_numbered_volumes_and_a_signed_index() {
    let s = split_bundle();
    let idx: serde_json::Value = serde_json::from_slice(&fs::read(index(&s.out)).unwrap()).unwrap();
    assert_eq!(idx["format"], "gapferry-volumes/1");
    assert_eq!(idx["bundle"], "b.tar.zst");
    assert_eq!(idx["bundle_id"], s.export.bundle_id.as_str());
    assert_eq!(idx["sequence"], s.export.sequence);
    assert_eq!(idx["manifest_sha256"], s.export.manifest_sha256.as_str());
    assert_eq!(idx["volume_size"], 400);
    assert_eq!(idx["total_size"], s.export.bundle_size);
    let vols = idx["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), s.volumes);
    let mut total = 0;
    for (i, v) in vols.iter().enumerate() {
        let data = fs::read(vol(&s.out, i + 1)).unwrap();
        assert_eq!(v["number"], i + 1);
        assert_eq!(v["size"], data.len());
        assert_eq!(v["sha256"], support::sha256_hex(&data).as_str());
        assert!(data.len() <= 400);
        total += data.len() as u64;
    }
    assert_eq!(total, s.export.bundle_size);
    let sig = PathBuf::from(format!(
        "{}.{}.minisig",
        index(&s.out).display(),
        s.keys.id()
    ));
    assert!(sig.is_file(), "detached signature of the index");
    // No temporary files left beside the volumes.
    let names: Vec<String> = fs::read_dir(s.sb.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "leftovers: {names:?}"
    );
}

#[test]
fn verify_inspect_and_import_take_the_first_volume_the_index_or_the_directory() {
    let s = split_bundle();
    for b in [vol(&s.out, 1), index(&s.out), s.sb.join("out")] {
        let v = s.verify(&b).ok();
        assert!(v.stderr.contains("is valid"), "{v:#?}");
        let run =
            s.sb.run(["inspect".as_ref(), b.as_os_str(), "--json".as_ref()])
                .ok();
        let i: json::Inspect = json::parse(&run.stdout);
        assert_eq!(i.bundle_id, s.export.bundle_id);
        assert_eq!(i.manifest_sha256, s.export.manifest_sha256);
    }
    // Any volume names the set too.
    s.verify(&vol(&s.out, 2)).ok();

    s.import(&vol(&s.out, 1)).ok();
    for r in standard_releases() {
        let dir = s.sb.join("mirror").join(r.rel());
        assert_eq!(fs::read(dir.join("updates.zip")).unwrap(), r.updates_zip());
        assert_eq!(
            fs::read(dir.join("manifest.json")).unwrap(),
            r.manifest_json()
        );
    }
    let again = s.import(&s.sb.join("out")).ok();
    assert!(again.stderr.contains("already imported"), "{again:#?}");
}

#[test]
fn a_missing_volume_is_named_by_number() {
    let s = split_bundle();
    fs::remove_file(vol(&s.out, 2)).unwrap();
    let msg = format!("volume 2 of {} is missing", s.volumes);
    s.refused(&[&msg, "b.tar.zst.002", "copy it again"]);
}

#[test]
fn a_damaged_volume_is_named_by_number() {
    let s = split_bundle();
    let p = vol(&s.out, 2);
    let mut data = fs::read(&p).unwrap();
    data[100] ^= 0x01;
    fs::write(&p, data).unwrap();
    let msg = format!(
        "volume 2 of {} is damaged or from another bundle",
        s.volumes
    );
    s.refused(&[&msg, "b.tar.zst.002"]);
}

#[test]
fn a_truncated_volume_is_named_by_number() {
    let s = split_bundle();
    let p = vol(&s.out, 3);
    let data = fs::read(&p).unwrap();
    fs::write(&p, &data[..data.len() - 1]).unwrap();
    let msg = format!("volume 3 of {} is truncated", s.volumes);
    s.refused(&[&msg, "b.tar.zst.003"]);
}

#[test]
fn a_duplicated_volume_is_named_by_number() {
    let s = split_bundle();
    fs::copy(vol(&s.out, 1), vol(&s.out, 2)).unwrap();
    let msg = format!(
        "volume 2 of {} is damaged: it is a duplicate of volume 1",
        s.volumes
    );
    s.refused(&[&msg]);
}

#[test]
fn a_volume_from_another_bundle_is_named_by_number() {
    let s = split_bundle();
    // Another export of other definitions, split the same way.
    let from2 =
        s.sb.download_folder(
            "dl2",
            &[FakeRelease::new("linux", "production", "x86_64")
                .versions("1.1.24100.1", "1.419.200.0")],
        );
    s.sb.mkdir("other");
    let other = s.sb.join("other/b.tar.zst");
    s.sb.export(&from2, &[&s.keys], &other, &["--split", SPLIT]);
    fs::copy(vol(&other, 2), vol(&s.out, 2)).unwrap();
    let msg = format!(
        "volume 2 of {} is damaged or from another bundle",
        s.volumes
    );
    s.refused(&[&msg]);
}

#[test]
fn a_stale_extra_volume_is_refused() {
    let s = split_bundle();
    let extra = vol(&s.out, s.volumes + 1);
    fs::write(&extra, b"left over").unwrap();
    let msg = format!(
        "volume {} is present but the index lists only {} volumes",
        s.volumes + 1,
        s.volumes
    );
    s.refused(&[&msg, "remove it"]);
}

#[test]
fn a_tampered_index_fails_its_signature() {
    let s = split_bundle();
    let p = index(&s.out);
    let text = fs::read_to_string(&p).unwrap();
    // Point the index at a damaged last volume: new hash, same size. Only
    // the signature can tell.
    let last = vol(&s.out, s.volumes);
    let data = fs::read(&last).unwrap();
    let mut damaged = data.clone();
    damaged[0] ^= 0xff;
    let old = support::sha256_hex(&data);
    assert!(text.contains(&old));
    fs::write(&p, text.replace(&old, &support::sha256_hex(&damaged))).unwrap();
    fs::write(&last, damaged).unwrap();
    s.refused(&[
        "volume index signature is invalid",
        "b.tar.zst.volumes.json",
    ]);
}

#[test]
fn an_index_signed_by_an_untrusted_key_or_unsigned_is_refused() {
    let s = split_bundle();
    let stranger = s.sb.keygen("stranger");
    let v = s.sb.verify(&vol(&s.out, 1), &[&stranger.public], &[]);
    v.fails(
        3,
        &[
            "no signature of the volume index by a trusted key",
            "--trust",
        ],
    );
    let sig = PathBuf::from(format!(
        "{}.{}.minisig",
        index(&s.out).display(),
        s.keys.id()
    ));
    fs::remove_file(sig).unwrap();
    s.refused(&["volume index is not signed", ".minisig"]);
}

#[test]
fn a_volume_without_its_index_says_what_is_missing() {
    let s = split_bundle();
    fs::remove_file(index(&s.out)).unwrap();
    s.verify(&vol(&s.out, 1)).fails(
        3,
        &[
            "looks like volume 1 of a split bundle",
            "b.tar.zst.volumes.json",
        ],
    );
    s.verify(&s.sb.join("out"))
        .fails(1, &["without a split bundle", "give the bundle file"]);
}

#[test]
fn inspect_without_trust_only_shows_and_checks_sizes() {
    let s = split_bundle();
    // A damaged volume of the right size: inspect (no payload read) still
    // shows the head; verify would refuse it.
    let p = vol(&s.out, s.volumes);
    let mut data = fs::read(&p).unwrap();
    let n = data.len() - 1;
    data[n] ^= 0xff;
    fs::write(&p, data).unwrap();
    s.sb.run(["inspect".as_ref(), vol(&s.out, 1).as_os_str()])
        .ok();
    // A missing volume is noticed even there.
    fs::remove_file(&p).unwrap();
    let msg = format!("volume {0} of {0} is missing", s.volumes);
    s.sb.run(["inspect".as_ref(), vol(&s.out, 1).as_os_str()])
        .fails(3, &[&msg]);
}

#[test]
fn split_export_refuses_to_overwrite_and_force_removes_stale_volumes() {
    let s = split_bundle();
    let from = s.sb.join("dl");
    let mut c = s.sb.cmd();
    c.args(["export", "--split", SPLIT, "--from"])
        .arg(&from)
        .arg("--out")
        .arg(&s.out)
        .arg("--secret-key")
        .arg(&s.keys.secret);
    support::run(c).fails(1, &["already exists", "--force"]);
    // A larger split makes fewer volumes; the old extra ones must go.
    s.sb.export(&from, &[&s.keys], &s.out, &["--split", "100K", "--force"]);
    assert!(vol(&s.out, 1).exists());
    assert!(!vol(&s.out, 2).exists(), "stale volume 2 left behind");
    s.verify(&s.sb.join("out")).ok();
}

#[test]
fn split_size_must_be_a_size() {
    let s = split_bundle();
    let mut c = s.sb.cmd();
    c.args([
        "export",
        "--split",
        "4X",
        "--from",
        "dl",
        "--out",
        "x.tar.zst",
    ])
    .arg("--secret-key")
    .arg(&s.keys.secret);
    support::run(c).fails(2, &["not a size", "650M"]);
}

#[test]
fn stock_cat_zstd_tar_reads_the_volumes() {
    let s = split_bundle();
    let dest = s.sb.mkdir("extracted");
    let script = format!(
        "cat {0}.0* | zstd -d | tar -x -C {1}",
        s.out.display(),
        dest.display()
    );
    let st = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success(), "{script} failed");
    for r in standard_releases() {
        for (path, bytes) in r.payload() {
            assert_eq!(fs::read(dest.join("payload").join(&path)).unwrap(), bytes);
        }
    }
    assert!(dest.join("gapferry/manifest.json").is_file());
}

#[test]
fn stock_minisign_checks_the_index() {
    let s = split_bundle();
    let idx = index(&s.out);
    let sig = format!("{}.{}.minisig", idx.display(), s.keys.id());
    let o = Command::new("minisign")
        .arg("-Vm")
        .arg(&idx)
        .arg("-x")
        .arg(&sig)
        .arg("-p")
        .arg(&s.keys.public)
        .output()
        .expect("the minisign binary is needed (apt-get install minisign; .ci/run does it)");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains(&format!(
            "gapferry volumes bundle_id:{} channel:default sequence:{}",
            s.export.bundle_id, s.export.sequence
        )),
        "{out}"
    );
}
