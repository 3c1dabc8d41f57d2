//! Parity volumes (`export --split SIZE --parity K`): the signed
//! `gapferry-volumes/2` index lists them; verify and import rebuild every
//! combination of up to K lost or damaged volumes (data or parity), say
//! which, and write nothing beside the volumes; K+1 is refused naming every
//! bad volume; a damaged or forged parity volume is never used; `repair`
//! writes the lost volumes back byte for byte; the inbox imports a set
//! missing up to K volumes once the rest has settled.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{content_digest, standard_releases, tree_digest, FakeRelease, Keys, Sandbox};

/// Small enough that the tiny test bundles make several volumes.
const SPLIT: &str = "400";
const K: usize = 2;

struct Fx {
    sb: Sandbox,
    keys: Keys,
    /// The pristine set, `out/b.tar.zst.*`.
    out: PathBuf,
    /// Data volumes.
    n: usize,
}

fn vol(base: &Path, k: usize) -> PathBuf {
    PathBuf::from(format!("{}.{k:03}", base.display()))
}

fn par(base: &Path, j: usize) -> PathBuf {
    PathBuf::from(format!("{}.p{j:03}", base.display()))
}

fn index(base: &Path) -> PathBuf {
    PathBuf::from(format!("{}.volumes.json", base.display()))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// One volume of the set: data `D(k)` or parity `P(j)`, 1-based.
#[derive(Debug, Clone, Copy, PartialEq)]
enum V {
    D(usize),
    P(usize),
}

impl V {
    fn path(self, base: &Path) -> PathBuf {
        match self {
            V::D(k) => vol(base, k),
            V::P(j) => par(base, j),
        }
    }
}

impl Fx {
    fn new() -> Fx {
        let sb = Sandbox::new();
        let keys = sb.keygen("k");
        let from = sb.download_folder("dl", &standard_releases());
        sb.mkdir("out");
        let out = sb.join("out/b.tar.zst");
        let k = K.to_string();
        sb.export(&from, &[&keys], &out, &["--split", SPLIT, "--parity", &k])
            .ok();
        let n = (1..).take_while(|k| vol(&out, *k).exists()).count();
        assert!(n >= 4, "the test bundle should make at least 4 volumes");
        Fx { sb, keys, out, n }
    }

    /// A copy of the whole set in `name/`; returns its base path.
    fn copy(&self, name: &str) -> PathBuf {
        let dir = self.sb.mkdir(name);
        for f in names(&self.sb.join("out")) {
            fs::copy(self.sb.join("out").join(&f), dir.join(&f)).unwrap();
        }
        dir.join("b.tar.zst")
    }

    fn all(&self) -> Vec<V> {
        (1..=self.n).map(V::D).chain((1..=K).map(V::P)).collect()
    }

    fn verify_json(&self, bundle: &Path) -> support::Run {
        self.sb.verify(bundle, &[&self.keys.public], &["--json"])
    }

    fn import(&self, bundle: &Path, mirror: &str) -> support::Run {
        let mirror = self.sb.join(mirror);
        let state = self.sb.join(format!("{}-state", mirror.display()));
        self.sb.run([
            "import".as_ref(),
            bundle.as_os_str(),
            "--trust".as_ref(),
            self.keys.public.as_os_str(),
            "--mirror".as_ref(),
            mirror.as_os_str(),
            "--create".as_ref(),
            "--state-dir".as_ref(),
            state.as_os_str(),
            "--json".as_ref(),
        ])
    }

    fn repair(&self, bundle: &Path) -> support::Run {
        self.sb.run([
            "repair".as_ref(),
            bundle.as_os_str(),
            "--trust".as_ref(),
            self.keys.public.as_os_str(),
            "--json".as_ref(),
        ])
    }
}

/// Loses volume `v`: removed (`lose`) or one byte flipped.
fn spoil(base: &Path, v: V, lose: bool) {
    let p = v.path(base);
    if lose {
        fs::remove_file(&p).unwrap();
    } else {
        let mut data = fs::read(&p).unwrap();
        let at = data.len() / 2;
        data[at] ^= 0x40;
        fs::write(&p, data).unwrap();
    }
}

fn rebuilt_of(run: &support::Run) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    v["rebuilt_volumes"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn parity_volumes_are_listed_in_a_signed_v2_index_and_the_data_volumes_stay_plain() {
    let fx = Fx::new();
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(index(&fx.out)).unwrap()).unwrap();
    assert_eq!(idx["format"], "gapferry-volumes/2");
    let p = &idx["parity"];
    assert_eq!(p["scheme"], "reed-solomon-gf16-leopard");
    let block = p["block_size"].as_u64().unwrap();
    assert_eq!(block % 64, 0);
    let stripes = 400u64.div_ceil(block);
    let pv = p["volumes"].as_array().unwrap();
    assert_eq!(pv.len(), K);
    for (j, e) in pv.iter().enumerate() {
        let data = fs::read(par(&fx.out, j + 1)).unwrap();
        assert_eq!(e["number"], j + 1);
        assert_eq!(e["size"], data.len());
        assert_eq!(data.len() as u64, stripes * block);
        assert_eq!(e["sha256"], support::sha256_hex(&data).as_str());
    }
    assert!(!par(&fx.out, K + 1).exists());
    // The signature vouches for the parity too (trusted comment).
    let sig = fs::read_to_string(format!(
        "{}.{}.minisig",
        index(&fx.out).display(),
        fx.keys.id()
    ))
    .unwrap();
    assert!(sig.contains(&format!(" parity:{K}\n")), "{sig}");
    // The data volumes joined are the bundle, as without parity.
    let mut cat = Vec::new();
    for k in 1..=fx.n {
        cat.extend(fs::read(vol(&fx.out, k)).unwrap());
    }
    assert_eq!(cat.len() as u64, idx["total_size"].as_u64().unwrap());
    let joined = fx.sb.join("joined.tar.zst");
    fs::write(&joined, &cat).unwrap();
    fx.sb.verify(&joined, &[&fx.keys.public], &[]).ok();
    if Command::new("zstd").arg("--version").output().is_ok() {
        let sh = format!("cat {}.0* | zstd -d | tar -t", fx.out.display());
        let o = Command::new("sh").args(["-c", &sh]).output().unwrap();
        assert!(o.status.success(), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("gapferry/manifest.json"));
    }
    // A whole set verifies without a word about parity.
    let run = fx.verify_json(&fx.out).ok();
    assert!(rebuilt_of(&run).is_empty(), "{run:#?}");
    // No temporary files left beside the volumes.
    assert!(names(&fx.sb.join("out"))
        .iter()
        .all(|n| !n.starts_with('.')));
}

#[test]
fn parity_needs_split() {
    let sb = Sandbox::new();
    let keys = sb.keygen("k");
    let from = sb.download_folder("dl", &standard_releases());
    let out = sb.join("b.tar.zst");
    let mut c = sb.cmd();
    c.arg("export")
        .arg("--from")
        .arg(&from)
        .arg("--out")
        .arg(&out)
        .arg("--secret-key")
        .arg(&keys.secret)
        .args(["--parity", "2"]);
    support::run(c).fails(2, &["--split"]);
    assert!(!out.exists());
}

/// Every set of up to K volumes (data or parity), each lost or damaged:
/// verify rebuilds exactly the bad data volumes, says so, and writes
/// nothing anywhere near the volumes.
#[test]
fn every_combination_of_up_to_k_lost_or_damaged_volumes_is_rebuilt() {
    let fx = Fx::new();
    let all = fx.all();
    let mut cases: Vec<Vec<V>> = all.iter().map(|&v| vec![v]).collect();
    for (i, &a) in all.iter().enumerate() {
        for &b in &all[i + 1..] {
            cases.push(vec![a, b]);
        }
    }
    for (c, case) in cases.iter().enumerate() {
        let base = fx.copy(&format!("case{c}"));
        for (i, &v) in case.iter().enumerate() {
            spoil(&base, v, (c + i) % 2 == 0);
        }
        let dir = base.parent().unwrap();
        let before = tree_digest(dir);
        // The index, a volume (a lost one too) or the folder.
        let given = match c % 3 {
            0 => index(&base),
            1 => vol(&base, 1),
            _ => dir.to_path_buf(),
        };
        let run = fx.verify_json(&given);
        assert_eq!(run.code, 0, "case {case:?}: {run:#?}");
        let rebuilt = rebuilt_of(&run);
        let want: Vec<usize> = case
            .iter()
            .filter_map(|v| match v {
                V::D(k) => Some(*k),
                V::P(_) => None,
            })
            .collect();
        let mut want = want;
        want.sort();
        assert_eq!(rebuilt.len(), want.len(), "case {case:?}: {rebuilt:?}");
        for (why, k) in rebuilt.iter().zip(&want) {
            assert!(
                why.starts_with(&format!("volume {k} of {}", fx.n)),
                "case {case:?}: {why}"
            );
        }
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let bad_parity = case.iter().filter(|v| matches!(v, V::P(_))).count();
        assert_eq!(
            v["damaged_parity"].as_array().map_or(0, |a| a.len()),
            bad_parity,
            "case {case:?}"
        );
        assert_eq!(tree_digest(dir), before, "case {case:?}: files changed");
        assert!(names(dir).iter().all(|n| !n.starts_with('.')));
    }
}

#[test]
fn import_rebuilds_lost_volumes_and_reports_them() {
    let fx = Fx::new();
    let base = fx.copy("set");
    spoil(&base, V::D(1), true);
    spoil(&base, V::D(fx.n), false);
    let run = fx.import(&index(&base), "mirror").ok();
    let rebuilt = rebuilt_of(&run);
    assert_eq!(rebuilt.len(), 2, "{run:#?}");
    assert!(rebuilt[0].starts_with(&format!("volume 1 of {} is missing", fx.n)));
    assert!(rebuilt[1].contains(&format!("volume {} of {} is", fx.n, fx.n)));
    // The mirror holds what an import of the whole set gives.
    let whole = fx.import(&fx.out, "mirror2").ok();
    assert!(rebuilt_of(&whole).is_empty());
    assert_eq!(
        content_digest(&fx.sb.join("mirror")),
        content_digest(&fx.sb.join("mirror2"))
    );
    // Human output says so too.
    let base = fx.copy("set2");
    spoil(&base, V::D(2), true);
    let human = fx.sb.verify(&base, &[&fx.keys.public], &[]).ok();
    assert!(
        human.stderr.contains(&format!(
            "rebuilt from the parity volumes: volume 2 of {} is missing",
            fx.n
        )),
        "{human:#?}"
    );
}

#[test]
fn k_plus_one_lost_volumes_are_refused_naming_every_one_and_nothing_is_written() {
    let fx = Fx::new();
    for (c, case) in [
        vec![V::D(1), V::D(2), V::D(3)],
        vec![V::D(2), V::P(1), V::D(3)],
        vec![V::P(1), V::P(2), V::D(4)],
    ]
    .iter()
    .enumerate()
    {
        let base = fx.copy(&format!("case{c}"));
        for (i, &v) in case.iter().enumerate() {
            spoil(&base, v, i % 2 == 0);
        }
        let dir = base.parent().unwrap();
        let before = tree_digest(dir);
        let mut needles: Vec<String> = case
            .iter()
            .map(|v| match v {
                V::D(k) => format!("volume {k} of {}", fx.n),
                V::P(j) => format!("parity volume {j} of {K}"),
            })
            .collect();
        needles.push("1 more good volume(s)".into());
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        fx.sb
            .verify(&index(&base), &[&fx.keys.public], &[])
            .fails(3, &needles);
        let run = fx.import(&index(&base), "mirror");
        run.expect(3, &needles);
        assert!(!fx.sb.join("mirror").join("linux").exists(), "{run:#?}");
        fx.repair(&index(&base)).fails(3, &needles);
        assert_eq!(tree_digest(dir), before, "case {case:?}: files changed");
    }
}

/// A damaged parity volume is not used: with one data volume lost the
/// other parity volume rebuilds it; with two lost, one good parity volume
/// is not enough.
#[test]
fn a_damaged_parity_volume_is_never_used() {
    let fx = Fx::new();
    let base = fx.copy("one");
    spoil(&base, V::P(1), false);
    spoil(&base, V::D(2), true);
    let run = fx.verify_json(&index(&base)).ok();
    assert_eq!(rebuilt_of(&run).len(), 1);
    let base = fx.copy("two");
    spoil(&base, V::P(1), false);
    spoil(&base, V::D(2), true);
    spoil(&base, V::D(3), true);
    fx.sb.verify(&index(&base), &[&fx.keys.public], &[]).fails(
        3,
        &[
            "parity volume 1 of 2 is damaged",
            "volume 2 of",
            "volume 3 of",
        ],
    );
}

/// A parity volume replaced by one computed for other data (a forged one:
/// the right size, the wrong hash) is never used, even when it is the only
/// way to rebuild.
#[test]
fn a_forged_parity_volume_is_never_used() {
    let fx = Fx::new();
    // Parity of another export, the same shape.
    let releases: Vec<FakeRelease> = standard_releases()
        .into_iter()
        .map(|r| r.versions("1.1.24090.4", "1.419.999.0"))
        .collect();
    let other = fx.sb.download_folder("dl2", &releases);
    fx.sb.mkdir("other");
    let other_out = fx.sb.join("other/b.tar.zst");
    fx.sb
        .export(
            &other,
            &[&fx.keys],
            &other_out,
            &["--split", SPLIT, "--parity", "2"],
        )
        .ok();
    let forged = fs::read(par(&other_out, 1)).unwrap();
    assert_eq!(
        forged.len() as u64,
        fs::metadata(par(&fx.out, 1)).unwrap().len()
    );

    let base = fx.copy("forged");
    fs::write(par(&base, 1), &forged).unwrap();
    spoil(&base, V::D(1), true);
    // p002 is good: the rebuild uses it, and says p001 was not used.
    let run = fx.verify_json(&index(&base)).ok();
    assert_eq!(rebuilt_of(&run).len(), 1);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(v["damaged_parity"][0]
        .as_str()
        .unwrap()
        .contains("parity volume 1 of 2 is damaged or from another bundle"));
    // Without p002, the forged p001 is all there is: refused.
    fs::remove_file(par(&base, 2)).unwrap();
    fx.sb
        .verify(&index(&base), &[&fx.keys.public], &[])
        .fails(3, &["parity volume 1 of 2 is damaged", "volume 1 of"]);
}

#[test]
fn repair_writes_lost_data_and_parity_volumes_back_byte_for_byte() {
    let fx = Fx::new();
    let base = fx.copy("set");
    spoil(&base, V::D(2), true);
    spoil(&base, V::P(2), false);
    let run = fx
        .repair(&base.parent().unwrap().join("b.tar.zst.002"))
        .ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        v["rebuilt_volumes"].as_array().unwrap().len(),
        1,
        "{run:#?}"
    );
    assert_eq!(v["rebuilt_parity"].as_array().unwrap().len(), 1, "{run:#?}");
    assert_eq!(
        content_digest(base.parent().unwrap()),
        content_digest(&fx.sb.join("out")),
        "the repaired set is the exported one"
    );
    // A whole set: nothing to do.
    let run = fx.repair(&base).ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(v["rebuilt_volumes"].as_array().unwrap().is_empty());
    assert!(v["rebuilt_parity"].as_array().unwrap().is_empty());
}

impl Fx {
    /// One inbox pass over `inbox` into mirror `mirror`.
    fn inbox_pass(&self, inbox: &Path, mirror: &str, extra: &[&str]) -> support::Run {
        let mut c = self.sb.cmd();
        c.arg("import")
            .arg("--trust")
            .arg(&self.keys.public)
            .arg("--mirror")
            .arg(self.sb.join(mirror))
            .arg("--create")
            .arg("--state-dir")
            .arg(self.sb.join(format!("{mirror}-state")))
            .arg("--inbox")
            .arg(inbox)
            .args(["--settle", "0s"])
            .args(extra);
        support::run(c)
    }

    /// The set copied into a new inbox `name/` without `lost`.
    fn inbox_without(&self, name: &str, lost: &[V]) -> PathBuf {
        let base = self.copy(name);
        for &v in lost {
            spoil(&base, v, true);
        }
        base.parent().unwrap().to_path_buf()
    }
}

/// The inbox imports a set missing up to K volumes (rebuilding them) once
/// the rest has settled, instead of waiting for volumes that will not come.
#[test]
fn the_inbox_imports_a_set_missing_up_to_k_volumes() {
    let fx = Fx::new();
    let inbox = fx.inbox_without("inbox", &[V::D(1), V::P(2)]);
    let run = fx.inbox_pass(&inbox, "mirror", &[]).ok();
    assert!(
        run.stderr.contains("b.tar.zst.volumes.json: imported"),
        "{run:#?}"
    );
    assert!(fx.sb.join("mirror/linux").is_dir());
    let processed = names(&inbox.join("processed"));
    assert!(processed.contains(&"b.tar.zst.volumes.json".to_string()));
    assert!(processed.contains(&"b.tar.zst.p001".to_string()));
    assert!(!processed.contains(&"b.tar.zst.001".to_string()));
    // Nothing is left behind in the inbox, no temporary file either.
    assert_eq!(names(&inbox), vec!["processed".to_string()]);
}

/// K+1 volumes missing: the inbox waits, saying what for and for how long,
/// then after --give-up-after rejects the set naming what is missing.
#[test]
fn the_inbox_waits_for_k_plus_one_missing_volumes_then_gives_up() {
    let fx = Fx::new();
    let inbox = fx.inbox_without("inbox", &[V::D(2), V::D(3), V::P(1)]);
    let before = tree_digest(&inbox);
    let run = fx.inbox_pass(&inbox, "mirror", &[]).ok();
    assert!(
        run.stderr.contains("b.tar.zst.volumes.json: left alone (1 more volume(s) needed of b.tar.zst.002 (missing), b.tar.zst.003 (missing), b.tar.zst.p001 (missing); last change"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("if still incomplete 1h after it"),
        "{run:#?}"
    );
    assert_eq!(tree_digest(&inbox), before, "a waiting set is not touched");
    // `status` shows what the last pass left waiting, and since when (on
    // the mirror's folder, which nothing was published into yet).
    std::fs::create_dir_all(fx.sb.join("mirror")).unwrap();
    let status = fx.sb.run([
        "status".as_ref(),
        "--mirror".as_ref(),
        fx.sb.join("mirror").as_os_str(),
        "--state-dir".as_ref(),
        fx.sb.join("mirror-state").as_os_str(),
    ]);
    assert!(status.stdout.contains("): 1 waiting"), "{status:#?}");
    assert!(
        status
            .stdout
            .contains("b.tar.zst.volumes.json: left alone (1 more volume(s) needed"),
        "{status:#?}"
    );
    assert!(status.stdout.contains("last change"), "{status:#?}");
    let run = fx.inbox_pass(&inbox, "mirror", &["--give-up-after", "0s"]);
    run.expect(3, &["b.tar.zst.volumes.json", "still incomplete"]);
    assert!(!fx.sb.join("mirror/linux").exists());
    let rejected = inbox.join("rejected");
    let reason = fs::read_to_string(rejected.join("b.tar.zst.volumes.json.reason.json")).unwrap();
    assert!(reason.contains("1 more volume(s) needed"), "{reason}");
    assert!(reason.contains("b.tar.zst.002 (missing)"), "{reason}");
    assert!(names(&rejected).contains(&"b.tar.zst.p002".to_string()));
    assert_eq!(names(&inbox), vec!["rejected".to_string()]);
}

/// Replacing a split bundle with `--force` removes its stale parity
/// volumes (they would be offered to the next reader as parity of another
/// bundle); without `--force` an existing parity volume is not overwritten.
#[test]
fn force_removes_stale_parity_volumes_and_without_it_none_is_overwritten() {
    let fx = Fx::new();
    let from = fx.sb.join("dl");
    let before = fs::read(par(&fx.out, 1)).unwrap();
    fs::remove_file(index(&fx.out)).unwrap();
    fs::remove_file(vol(&fx.out, 1)).unwrap();
    let mut c = fx.sb.cmd();
    c.arg("export")
        .arg("--from")
        .arg(&from)
        .arg("--out")
        .arg(&fx.out)
        .arg("--secret-key")
        .arg(&fx.keys.secret)
        .args(["--split", SPLIT, "--parity", "2"]);
    support::run(c).fails(1, &["b.tar.zst.p001", "already exists"]);
    assert_eq!(fs::read(par(&fx.out, 1)).unwrap(), before);
    fx.sb
        .export(&from, &[&fx.keys], &fx.out, &["--split", SPLIT, "--force"])
        .ok();
    assert!(!par(&fx.out, 1).exists() && !par(&fx.out, 2).exists());
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(index(&fx.out)).unwrap()).unwrap();
    assert_eq!(idx["format"], "gapferry-volumes/1");
    assert!(idx.get("parity").is_none());
}

#[test]
fn a_split_export_into_a_missing_folder_names_it() {
    let sb = Sandbox::new();
    let keys = sb.keygen("k");
    let from = sb.download_folder("dl", &standard_releases());
    let out = sb.join("nowhere/b.tar.zst");
    let mut c = sb.cmd();
    c.arg("export")
        .arg("--from")
        .arg(&from)
        .arg("--out")
        .arg(&out)
        .arg("--secret-key")
        .arg(&keys.secret)
        .args(["--split", SPLIT, "--parity", "1"]);
    support::run(c).fails(2, &["nowhere", "does not exist", "create it"]);
    assert!(!sb.join("nowhere").exists());
}
