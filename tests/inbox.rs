//! `import --inbox DIR`: every complete bundle in DIR imported in sequence
//! order, then sorted into processed/ and rejected/ (with a reason file);
//! partial files left alone; `--watch` picks up bundles dropped later and
//! stops cleanly on SIGTERM.

mod util;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{tree_digest, FakeRelease, Keys, Sandbox};

fn release(defs: &str) -> Vec<FakeRelease> {
    vec![FakeRelease::new("linux", "production", "x86_64").versions("1.1.24090.4", defs)]
}

struct Fx {
    sb: Sandbox,
    keys: Keys,
    inbox: PathBuf,
}

impl Fx {
    fn new() -> Fx {
        let sb = Sandbox::new();
        let keys = sb.keygen("k");
        let inbox = sb.mkdir("inbox");
        sb.mkdir("out");
        Fx { sb, keys, inbox }
    }

    /// Exports definitions `defs` with sequence `seq` to `out/NAME`.
    fn bundle(&self, name: &str, defs: &str, seq: u64, extra: &[&str]) -> PathBuf {
        let from = self
            .sb
            .download_folder(&format!("dl-{name}"), &release(defs));
        let out = self.sb.join("out").join(name);
        let seq = seq.to_string();
        let mut args = vec!["--sequence", &seq];
        args.extend_from_slice(extra);
        self.sb.export(&from, &[&self.keys], &out, &args);
        out
    }

    fn import_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "import".into(),
            "--trust".into(),
            self.keys.public.clone().into(),
            "--mirror".into(),
            self.sb.join("mirror").into(),
            "--state-dir".into(),
            self.sb.join("state").into(),
        ]
    }

    fn inbox_pass(&self, extra: &[&str]) -> util::Run {
        let mut c = self.sb.cmd();
        c.args(self.import_args())
            .arg("--inbox")
            .arg(&self.inbox)
            .args(["--settle", "0s"])
            .args(extra);
        util::run(c)
    }

    fn served_defs(&self) -> String {
        let m = fs::read_to_string(
            self.sb
                .join("mirror/linux/production/arch_x86_64/manifest.json"),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        v["DefinitionVersion"].as_str().unwrap().to_string()
    }
}

/// A copy of `src` at `dst` whose payload was altered and recompressed: a
/// complete zstd frame holding a tampered archive.
fn tampered_copy(src: &Path, dst: &Path) {
    let mut tar = Vec::new();
    zstd::stream::read::Decoder::new(fs::File::open(src).unwrap())
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    let needle = b"fake Defender definitions";
    let at = tar
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("payload text in the archive");
    tar[at] ^= 0x20;
    fs::write(dst, zstd::encode_all(&tar[..], 1).unwrap()).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn inbox_imports_in_sequence_order_and_sorts_good_from_bad() {
    let fx = Fx::new();
    // Exported in sequence order (the exporter insists); sequence 10 is
    // already served when the inbox runs.
    let older = fx.bundle("older.tar.zst", "1.419.50.0", 5, &[]);
    let first = fx.bundle("first.tar.zst", "1.419.100.0", 10, &[]);
    let mut c = fx.sb.cmd();
    c.args(fx.import_args()).arg(&first);
    util::run(c).ok();

    let good = fx.bundle("good.tar.zst", "1.419.200.0", 20, &[]);
    let bad = fx.bundle("bad.tar.zst", "1.419.250.0", 25, &[]);
    fx.sb.mkdir("out/split");
    let split = fx.sb.join("out/split/s.tar.zst");
    {
        let from = fx.sb.download_folder("dl-split", &release("1.419.300.0"));
        fx.sb.export(
            &from,
            &[&fx.keys],
            &split,
            &["--sequence", "30", "--split", "300"],
        );
    }
    for (src, name) in [
        (&first, "again.tar.zst"),
        (&older, "older.tar.zst"),
        (&good, "good.tar.zst"),
    ] {
        fs::copy(src, fx.inbox.join(name)).unwrap();
    }
    tampered_copy(&bad, &fx.inbox.join("tampered.tar.zst"));
    for f in names(&fx.sb.join("out/split")) {
        fs::copy(fx.sb.join("out/split").join(&f), fx.inbox.join(&f)).unwrap();
    }
    // Still being written: the first half of a bundle.
    let whole = fs::read(&good).unwrap();
    fs::write(fx.inbox.join("partial.tar.zst"), &whole[..whole.len() / 2]).unwrap();
    // Not a bundle at all: ignored.
    fs::write(fx.inbox.join("README.txt"), b"hello").unwrap();

    let run = fx.inbox_pass(&["--json"]);
    assert_eq!(run.code, 3, "something was rejected: {run:#?}");
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect();
    let seen: Vec<(String, String, i64)> = lines
        .iter()
        .map(|l| {
            (
                l["bundle"].as_str().unwrap().to_string(),
                l["outcome"].as_str().unwrap().to_string(),
                l["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    let expect = [
        ("older.tar.zst", "refused", 4),
        ("again.tar.zst", "already_imported", 0),
        ("good.tar.zst", "imported", 0),
        ("tampered.tar.zst", "rejected", 3),
        ("s.tar.zst.volumes.json", "imported", 0),
    ];
    assert_eq!(
        seen,
        expect
            .iter()
            .map(|(b, o, c)| (b.to_string(), o.to_string(), *c))
            .collect::<Vec<_>>(),
        "in sequence order"
    );
    for l in &lines {
        let ok = l["exit_code"] == 0;
        assert_eq!(l["receipt"].is_string(), ok, "{l}");
    }
    assert_eq!(
        fx.served_defs(),
        "1.419.300.0",
        "the newest (split) bundle is served"
    );

    // Sorted.
    assert_eq!(
        names(&fx.inbox),
        ["README.txt", "partial.tar.zst", "processed", "rejected"]
    );
    let processed = names(&fx.inbox.join("processed"));
    for n in [
        "again.tar.zst",
        "good.tar.zst",
        "s.tar.zst.001",
        "s.tar.zst.volumes.json",
    ] {
        assert!(
            processed.contains(&n.to_string()),
            "{n} not in {processed:?}"
        );
    }
    assert!(processed
        .iter()
        .any(|n| n.starts_with("s.tar.zst.volumes.json.") && n.ends_with(".minisig")));
    let rejected = names(&fx.inbox.join("rejected"));
    assert_eq!(
        rejected,
        [
            "older.tar.zst",
            "older.tar.zst.reason.json",
            "tampered.tar.zst",
            "tampered.tar.zst.reason.json"
        ]
    );
    let reason: serde_json::Value = serde_json::from_slice(
        &fs::read(fx.inbox.join("rejected/tampered.tar.zst.reason.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(reason["exit_code"], 3);
    assert!(
        reason["reason"].as_str().unwrap().contains("SHA-256"),
        "{reason}"
    );
    assert!(reason["time"].as_str().unwrap().ends_with('Z'));
    let reason: serde_json::Value = serde_json::from_slice(
        &fs::read(fx.inbox.join("rejected/older.tar.zst.reason.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(reason["exit_code"], 4);
    assert_eq!(reason["sequence"], 5);

    // Receipts kept for the three successes (plus the first plain import).
    let kept = fs::read_to_string(fx.sb.join("state/receipts.jsonl")).unwrap();
    assert_eq!(kept.lines().count(), 4);

    // Re-delivery of the newest bundle (a diode sends twice) under the same
    // names: already imported, kept beside the first copy, exit 0.
    for f in names(&fx.sb.join("out/split")) {
        fs::copy(fx.sb.join("out/split").join(&f), fx.inbox.join(&f)).unwrap();
    }
    let mirror = tree_digest(&fx.sb.join("mirror"));
    let run = fx.inbox_pass(&[]).ok();
    assert!(
        run.stderr
            .contains("s.tar.zst.volumes.json: already imported"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("partial.tar.zst: left alone"),
        "{run:#?}"
    );
    assert!(fx
        .inbox
        .join("processed/1-s.tar.zst.volumes.json")
        .is_file());
    assert!(fx.inbox.join("processed/1-s.tar.zst.001").is_file());
    assert!(fx.inbox.join("processed/s.tar.zst.volumes.json").is_file());
    // The renamed set still verifies as a whole.
    fx.sb
        .verify(
            &fx.inbox.join("processed/1-s.tar.zst.001"),
            &[&fx.keys.public],
            &[],
        )
        .ok();
    assert_eq!(tree_digest(&fx.sb.join("mirror")), mirror);
}

#[test]
fn files_younger_than_the_settle_time_are_left_alone() {
    let fx = Fx::new();
    let b = fx.bundle("b.tar.zst", "1.419.100.0", 10, &[]);
    fs::copy(&b, fx.inbox.join("b.tar.zst")).unwrap();
    let before = tree_digest(&fx.inbox);
    let mut c = fx.sb.cmd();
    c.args(fx.import_args())
        .arg("--inbox")
        .arg(&fx.inbox)
        .args(["--settle", "1h"]);
    let run = util::run(c).ok();
    assert!(run.stderr.contains("b.tar.zst: left alone"), "{run:#?}");
    assert_eq!(tree_digest(&fx.inbox), before);
    assert!(!fx.sb.join("mirror").exists());
}

#[test]
fn a_split_bundle_missing_a_volume_waits_for_it() {
    let fx = Fx::new();
    let out = fx.bundle("s.tar.zst", "1.419.100.0", 10, &["--split", "300"]);
    let out_dir = out.parent().unwrap();
    for f in names(out_dir) {
        if f != "s.tar.zst.002" {
            fs::copy(out_dir.join(&f), fx.inbox.join(&f)).unwrap();
        }
    }
    let run = fx.inbox_pass(&[]).ok();
    assert!(
        run.stderr.contains("s.tar.zst.volumes.json: left alone"),
        "{run:#?}"
    );
    assert!(!fx.sb.join("mirror").exists());
    // The missing volume arrives: the next pass imports the set.
    fs::copy(
        out_dir.join("s.tar.zst.002"),
        fx.inbox.join("s.tar.zst.002"),
    )
    .unwrap();
    let run = fx.inbox_pass(&[]).ok();
    assert!(
        run.stderr.contains("s.tar.zst.volumes.json: imported"),
        "{run:#?}"
    );
    assert_eq!(fx.served_defs(), "1.419.100.0");
}

#[test]
fn inbox_must_be_a_directory() {
    let fx = Fx::new();
    let mut c = fx.sb.cmd();
    c.args(fx.import_args())
        .arg("--inbox")
        .arg(fx.sb.join("nowhere"));
    util::run(c).fails(2, &["nowhere", "not a directory"]);
    let mut c = fx.sb.cmd();
    c.args(fx.import_args()).arg("--watch");
    assert_eq!(util::run(c).code, 2, "--watch needs --inbox");
}

#[test]
fn watch_picks_up_a_bundle_dropped_later_and_stops_on_sigterm() {
    let fx = Fx::new();
    let b = fx.bundle("late.tar.zst", "1.419.100.0", 10, &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_gapferry"))
        .current_dir(fx.sb.path())
        .env("GAPFERRY_STATE_DIR", fx.sb.state_dir())
        .args(fx.import_args())
        .arg("--inbox")
        .arg(&fx.inbox)
        .args(["--watch", "--interval", "200ms", "--settle", "0s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Dropped the way a careful sender does: a hidden name, then a rename.
    std::thread::sleep(Duration::from_millis(300));
    let tmp = fx.inbox.join(".late.tar.zst.part");
    fs::copy(&b, &tmp).unwrap();
    fs::rename(&tmp, fx.inbox.join("late.tar.zst")).unwrap();

    let done = fx.inbox.join("processed/late.tar.zst");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the watcher exited early: {st}");
        }
        assert!(
            Instant::now() < deadline,
            "the watcher never processed the bundle"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "clean exit on SIGTERM; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["bundle"], "late.tar.zst");
    assert_eq!(line["outcome"], "imported");
    assert_eq!(fx.served_defs(), "1.419.100.0");
    let _ = std::io::stdout().flush();
}
