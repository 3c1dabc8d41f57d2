//! `import --inbox DIR`: every complete bundle in DIR imported in sequence
//! order, then sorted into processed/ and rejected/ (with a reason file);
//! partial files left alone; `--watch` picks up bundles dropped later and
//! stops cleanly on SIGTERM.

use crate::support;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{tree_digest, FakeRelease, Keys, Sandbox};

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
            "--create".into(),
            "--mirror".into(),
            self.sb.join("mirror").into(),
            "--state-dir".into(),
            self.sb.join("state").into(),
        ]
    }

    fn inbox_pass(&self, extra: &[&str]) -> support::Run {
        let mut c = self.sb.cmd();
        c.args(self.import_args())
            .arg("--inbox")
            .arg(&self.inbox)
            .args(["--settle", "0s"])
            .args(extra);
        support::run(c)
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
    support::run(c).ok();

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
    let run = support::run(c).ok();
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
    support::run(c).fails(2, &["nowhere", "not a directory"]);
    let mut c = fx.sb.cmd();
    c.args(fx.import_args()).arg("--watch");
    assert_eq!(support::run(c).code, 2, "--watch needs --inbox");
}

#[test]
fn watch_picks_up_a_bundle_dropped_later_and_stops_on_sigterm() {
    let fx = Fx::new();
    let b = fx.bundle("late.tar.zst", "1.419.100.0", 10, &[]);
    let mut child = support::command()
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

// ---- Hostile inbox users (docs/SECURITY.md section 2): someone who can
// write the inbox but nothing else. Every operation in the inbox goes
// through the opened folder, links are never followed, a FIFO never blocks,
// and one bad file or folder never stops the pass.

fn is_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("note: not root; skipping the part of this test that needs a second user");
    }
    root
}

/// The uid and gid of `nobody`, the second local user of these tests.
fn nobody() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let o = Command::new("id").args([flag, "nobody"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// `gapferry` as a plain `std` command (to spawn), set up like `Sandbox::cmd`.
fn std_cmd(fx: &Fx) -> Command {
    let mut c = support::command();
    c.current_dir(fx.sb.path())
        .env("GAPFERRY_STATE_DIR", fx.sb.state_dir())
        .env("NO_COLOR", "1");
    c
}

/// Runs an inbox pass as a child and fails the test (instead of hanging
/// the suite) if it has not finished after a generous limit: a hang
/// detector, not a timing assertion.
fn pass_must_finish(fx: &Fx, extra: &[&str]) -> support::Run {
    let mut child = std_cmd(fx)
        .args(fx.import_args())
        .arg("--inbox")
        .arg(&fx.inbox)
        .args(["--settle", "0s"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return support::Run::from_output(child.wait_with_output().unwrap());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the inbox pass hangs; stderr so far: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json_lines(run: &support::Run) -> Vec<serde_json::Value> {
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect()
}

fn line_for<'a>(lines: &'a [serde_json::Value], bundle: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["bundle"] == bundle)
        .unwrap_or_else(|| panic!("no result for {bundle}: {lines:?}"))
}

#[test]
fn a_symlinked_bundle_is_never_opened_and_is_moved_aside() {
    let fx = Fx::new();
    // A valid bundle outside the inbox: following the link would import it.
    let outside = fx.bundle("outside.tar.zst", "1.419.100.0", 10, &[]);
    let before = fs::read(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, fx.inbox.join("link.tar.zst")).unwrap();
    let run = pass_must_finish(&fx, &["--json"]);
    assert_eq!(run.code, 3, "{run:#?}");
    let lines = json_lines(&run);
    let l = line_for(&lines, "link.tar.zst");
    assert_eq!(l["outcome"], "rejected");
    assert!(
        l["error"]["message"]
            .as_str()
            .unwrap()
            .contains("symbolic link"),
        "{l}"
    );
    assert!(!fx.sb.join("mirror").exists(), "nothing was imported");
    // The link itself was moved, still a link; its target is untouched.
    let moved = fx.inbox.join("rejected/link.tar.zst");
    assert!(fs::symlink_metadata(&moved)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(&outside).unwrap(), before);
    let reason = fs::read_to_string(fx.inbox.join("rejected/link.tar.zst.reason.json")).unwrap();
    assert!(reason.contains("never follows links"), "{reason}");
}

#[test]
fn a_fifo_named_like_a_bundle_does_not_hang_the_pass() {
    let fx = Fx::new();
    let good = fx.bundle("good.tar.zst", "1.419.100.0", 10, &[]);
    fs::copy(&good, fx.inbox.join("good.tar.zst")).unwrap();
    let st = Command::new("mkfifo")
        .arg(fx.inbox.join("pipe.tar.zst"))
        .status()
        .unwrap();
    assert!(st.success());
    let run = pass_must_finish(&fx, &["--json"]);
    assert_eq!(run.code, 3, "{run:#?}");
    let lines = json_lines(&run);
    let l = line_for(&lines, "pipe.tar.zst");
    assert_eq!(l["outcome"], "rejected");
    assert!(
        l["error"]["message"].as_str().unwrap().contains("FIFO"),
        "{l}"
    );
    assert_eq!(line_for(&lines, "good.tar.zst")["outcome"], "imported");
    assert_eq!(fx.served_defs(), "1.419.100.0");
}

/// Names swapped between a bundle and a FIFO while the pass runs
/// (`RENAME_EXCHANGE` in a tight loop): whatever the pass sees, it must
/// finish, and report each name.
#[test]
fn a_fifo_swapped_in_for_a_bundle_does_not_hang_the_pass() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let fx = Fx::new();
    let good = fx.bundle("good.tar.zst", "1.419.100.0", 10, &[]);
    let mut pairs = Vec::new();
    for i in 0..4 {
        let name = fx.inbox.join(format!("swap{i}.tar.zst"));
        fs::copy(&good, &name).unwrap();
        let fifo = fx.inbox.join(format!(".fifo{i}"));
        assert!(Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        pairs.push((name, fifo));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, pairs) = (Arc::clone(&stop), pairs.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (name, fifo) in &pairs {
                    if rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        fifo,
                        rustix::fs::CWD,
                        name,
                        rustix::fs::RenameFlags::EXCHANGE,
                    )
                    .is_ok()
                    {
                        swaps += 1;
                    }
                }
            }
            swaps
        })
    };
    for _ in 0..5 {
        let run = pass_must_finish(&fx, &[]);
        let present: Vec<_> = pairs
            .iter()
            .filter(|(n, _)| fs::symlink_metadata(n).is_ok())
            .collect();
        for (n, _) in &present {
            let n = n.file_name().unwrap().to_string_lossy();
            assert!(run.stderr.contains(&*n), "the pass reports {n}: {run:#?}");
        }
        if present.is_empty() {
            break; // all moved aside (as FIFOs or as bundles)
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(swapper.join().unwrap() > 0, "the swapper ran");
}

#[test]
fn processed_or_rejected_as_a_file_does_not_stop_newer_bundles() {
    let fx = Fx::new();
    // One byte each: where the folders should be.
    fs::write(fx.inbox.join("processed"), b"x").unwrap();
    fs::write(fx.inbox.join("rejected"), b"x").unwrap();
    let a = fx.bundle("a.tar.zst", "1.419.100.0", 10, &[]);
    let b = fx.bundle("b.tar.zst", "1.419.200.0", 20, &[]);
    let c = fx.bundle("c.tar.zst", "1.419.300.0", 30, &[]);
    fs::copy(&a, fx.inbox.join("a.tar.zst")).unwrap();
    fs::copy(&b, fx.inbox.join("b.tar.zst")).unwrap();
    tampered_copy(&c, &fx.inbox.join("t.tar.zst"));
    let run = pass_must_finish(&fx, &["--json"]);
    assert_eq!(run.code, 1, "left in place means exit 1: {run:#?}");
    let lines = json_lines(&run);
    for (n, outcome) in [
        ("a.tar.zst", "imported"),
        ("b.tar.zst", "imported"),
        ("t.tar.zst", "rejected"),
    ] {
        let l = line_for(&lines, n);
        assert_eq!(l["outcome"], outcome, "{l}");
        assert!(l["moved_to"].is_null(), "{l}");
        assert!(
            l["not_moved"].as_str().unwrap().contains("not a folder"),
            "{l}"
        );
    }
    assert_eq!(fx.served_defs(), "1.419.200.0", "the newest is served");
    // Fixed by the operator: the next pass sorts everything.
    fs::remove_file(fx.inbox.join("processed")).unwrap();
    fs::remove_file(fx.inbox.join("rejected")).unwrap();
    let run = fx.inbox_pass(&[]);
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(fx.inbox.join("processed/b.tar.zst").is_file());
    assert!(fx.inbox.join("rejected/t.tar.zst.reason.json").is_file());
}

#[test]
fn a_symlinked_rejected_folder_is_not_followed() {
    let fx = Fx::new();
    // Where the attacker wants the bundle and its reason to land: a served folder.
    let served = fx.sb.mkdir("mirror/linux/production/arch_x86_64");
    std::os::unix::fs::symlink(&served, fx.inbox.join("rejected")).unwrap();
    std::os::unix::fs::symlink(&served, fx.inbox.join("processed")).unwrap();
    let b = fx.bundle("b.tar.zst", "1.419.200.0", 20, &[]);
    tampered_copy(&b, &fx.inbox.join("t.tar.zst"));
    let run = pass_must_finish(&fx, &["--json"]);
    assert_eq!(run.code, 1, "{run:#?}");
    let l = line_for(&json_lines(&run), "t.tar.zst").clone();
    assert_eq!(l["outcome"], "rejected");
    assert!(
        l["not_moved"].as_str().unwrap().contains("symbolic link"),
        "{l}"
    );
    assert_eq!(names(&served), Vec::<String>::new(), "nothing landed there");
    assert!(fx.inbox.join("t.tar.zst").is_file(), "left in the inbox");
}

#[test]
fn subfolders_owned_by_another_user_are_refused() {
    if !is_root() {
        return;
    }
    let (uid, gid) = nobody();
    let fx = Fx::new();
    let rejected = fx.inbox.join("rejected");
    fs::create_dir(&rejected).unwrap();
    std::os::unix::fs::chown(&rejected, Some(uid), Some(gid)).unwrap();
    let good = fx.bundle("good.tar.zst", "1.419.100.0", 10, &[]);
    let b = fx.bundle("b.tar.zst", "1.419.200.0", 20, &[]);
    tampered_copy(&b, &fx.inbox.join("t.tar.zst"));
    fs::copy(&good, fx.inbox.join("good.tar.zst")).unwrap();
    let run = pass_must_finish(&fx, &["--json"]);
    assert_eq!(run.code, 1, "{run:#?}");
    let lines = json_lines(&run);
    let l = line_for(&lines, "t.tar.zst");
    assert!(
        l["not_moved"]
            .as_str()
            .unwrap()
            .contains(&format!("belongs to uid {uid}")),
        "{l}"
    );
    assert_eq!(
        names(&rejected),
        Vec::<String>::new(),
        "nothing written there"
    );
    // The rest of the pass went on.
    assert_eq!(line_for(&lines, "good.tar.zst")["outcome"], "imported");
    assert!(fx.inbox.join("processed/good.tar.zst").is_file());
}

/// The attack on the old `write_reason`: a user who owns `rejected/` keeps
/// replacing every new entry in it with a symlink to a root-only file,
/// hoping the importer chmods it 0644 by path. The importer's reason file
/// is created and chmodded by descriptor only, in a folder it owns.
#[test]
fn the_chmod_race_on_reason_files_changes_no_other_file() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    if !is_root() {
        return;
    }
    let (uid, gid) = nobody();
    let fx = Fx::new();
    let secret = fx.sb.join("secret");
    fs::write(&secret, b"root only").unwrap();
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let rejected = fx.inbox.join("rejected");
    fs::create_dir(&rejected).unwrap();
    std::os::unix::fs::chown(&rejected, Some(uid), Some(gid)).unwrap();
    let b = fx.bundle("b.tar.zst", "1.419.200.0", 20, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    // The attacker's watcher: on every new hidden (temporary) name in
    // rejected/, put a symlink to the secret in its place at once.
    let swapper = {
        let (stop, rejected, secret) = (Arc::clone(&stop), rejected.clone(), secret.clone());
        std::thread::spawn(move || {
            use rustix::fs::inotify;
            let ino = inotify::init(inotify::CreateFlags::NONBLOCK).unwrap();
            inotify::add_watch(&ino, &rejected, inotify::WatchFlags::CREATE).unwrap();
            let mut buf = [std::mem::MaybeUninit::uninit(); 4096];
            let mut swaps = 0u64;
            let mut reader = inotify::Reader::new(&ino, &mut buf);
            while !stop.load(Ordering::Relaxed) {
                let n = match reader.next() {
                    Ok(ev) => match ev.file_name() {
                        Some(n) => n.to_string_lossy().into_owned(),
                        None => continue,
                    },
                    Err(_) => {
                        std::thread::yield_now();
                        continue;
                    }
                };
                if !n.starts_with('.') || n.ends_with(".link") || n.ends_with(".aside") {
                    continue;
                }
                let p = rejected.join(&n);
                let link = rejected.join(format!("{n}.link"));
                let _ = std::os::unix::fs::symlink(&secret, &link);
                if fs::rename(&p, rejected.join(format!("{n}.aside"))).is_ok()
                    && fs::rename(&link, &p).is_ok()
                {
                    swaps += 1;
                }
            }
            swaps
        })
    };
    for i in 0..10 {
        tampered_copy(&b, &fx.inbox.join(format!("t{i}.tar.zst")));
        let run = pass_must_finish(&fx, &[]);
        // Rejected (3), or left in place when the racing swap wins (1).
        assert!(matches!(run.code, 1 | 3), "{run:#?}");
        assert_eq!(
            mode(&secret),
            0o600,
            "pass {i} changed the mode of another file"
        );
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert_eq!(mode(&secret), 0o600);
    assert_eq!(fs::read(&secret).unwrap(), b"root only");
}

#[test]
fn inbox_folders_and_reason_files_ignore_the_umask() {
    let fx = Fx::new();
    let b = fx.bundle("b.tar.zst", "1.419.200.0", 20, &[]);
    let c = fx.bundle("c.tar.zst", "1.419.300.0", 30, &[]);
    fs::copy(&b, fx.inbox.join("b.tar.zst")).unwrap();
    tampered_copy(&c, &fx.inbox.join("t.tar.zst"));
    let mut args: Vec<String> = fx
        .import_args()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    args.extend([
        "--inbox".into(),
        fx.inbox.display().to_string(),
        "--settle".into(),
        "0s".into(),
    ]);
    let mut c = std_cmd(&fx);
    let c = c
        .arg("-c")
        .arg(r#"umask 000; exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_gapferry"))
        .args(&args);
    let mut sh = Command::new("sh");
    sh.args(c.get_args()).current_dir(fx.sb.path());
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            sh.env(k, v);
        }
    }
    let run = support::Run::from_output(sh.output().unwrap());
    assert_eq!(run.code, 3, "{run:#?}");
    assert_eq!(mode(&fx.inbox.join("processed")), 0o755);
    assert_eq!(mode(&fx.inbox.join("rejected")), 0o755);
    assert_eq!(
        mode(&fx.inbox.join("rejected/t.tar.zst.reason.json")),
        0o644
    );
    // A folder the importer owns with a loose mode is tightened.
    fs::set_permissions(
        fx.inbox.join("processed"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    fs::copy(&b, fx.inbox.join("again.tar.zst")).unwrap();
    fx.inbox_pass(&[]).ok();
    assert_eq!(mode(&fx.inbox.join("processed")), 0o755);
}

/// Empty zstd frames (9 bytes each) in front of a bundle signed by an
/// untrusted key: slow to refuse on a reader that walks them all. The head
/// is read once, before the import lock, so imports run meanwhile still get
/// the lock.
#[test]
fn a_hostile_file_being_refused_does_not_hold_the_import_lock() {
    let fx = Fx::new();
    let good = fx.bundle("good.tar.zst", "1.419.100.0", 10, &[]);
    let mut c = fx.sb.cmd();
    c.args(fx.import_args()).arg(&good);
    support::run(c).ok();
    let stranger = fx.sb.keygen("stranger");
    let from = fx.sb.download_folder("dl-h", &release("1.419.300.0"));
    let signed = fx.sb.join("out/h.tar.zst");
    fx.sb
        .export(&from, &[&stranger], &signed, &["--sequence", "30"]);
    let empty_frame = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00];
    let mut hostile = empty_frame.repeat(400_000);
    hostile.extend(fs::read(&signed).unwrap());
    fs::write(fx.inbox.join("hostile.tar.zst"), &hostile).unwrap();

    let mut child = std_cmd(&fx)
        .args(fx.import_args())
        .arg("--inbox")
        .arg(&fx.inbox)
        .args(["--settle", "0s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Legitimate imports (the same bundle again: it takes the locks, then
    // answers "already imported") for as long as the inbox works.
    // At least one, even if the inbox is done first (a reader that refuses
    // such a file at once).
    let mut runs = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "the inbox pass hangs");
        let mut c = fx.sb.cmd();
        c.args(fx.import_args())
            .arg(&good)
            .args(["--lock-wait", "3s"]);
        let run = support::run(c);
        assert_eq!(run.code, 0, "an import beside the inbox failed: {run:#?}");
        runs += 1;
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    let out = support::Run::from_output(child.wait_with_output().unwrap());
    assert_eq!(out.code, 3, "{out:#?}");
    let lines = json_lines(&out);
    let l = line_for(&lines, "hostile.tar.zst");
    assert_eq!(l["outcome"], "rejected", "{l}");
    assert!(runs >= 1);
    assert!(fx.inbox.join("rejected/hostile.tar.zst").is_file());
}

#[test]
fn a_split_bundle_with_a_symlinked_volume_is_rejected_unread() {
    let fx = Fx::new();
    let out = fx.bundle("s.tar.zst", "1.419.100.0", 10, &["--split", "300"]);
    let out_dir = out.parent().unwrap();
    for f in names(out_dir) {
        if f == "s.tar.zst.002" {
            // The real volume, but through a link: following it would import.
            std::os::unix::fs::symlink(out_dir.join(&f), fx.inbox.join(&f)).unwrap();
        } else {
            fs::copy(out_dir.join(&f), fx.inbox.join(&f)).unwrap();
        }
    }
    let run = pass_must_finish(&fx, &["--json"]);
    assert_eq!(run.code, 3, "{run:#?}");
    let lines = json_lines(&run);
    let l = line_for(&lines, "s.tar.zst.volumes.json");
    assert_eq!(l["outcome"], "rejected");
    let err = l["error"]["message"].as_str().unwrap();
    assert!(
        err.contains("s.tar.zst.002") && err.contains("symbolic link"),
        "{l}"
    );
    assert!(!fx.sb.join("mirror").exists(), "nothing was imported");
    assert!(
        fs::symlink_metadata(fx.inbox.join("rejected/s.tar.zst.002"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // The whole set went aside together; nothing of it waits in the inbox.
    assert!(fx.inbox.join("rejected/s.tar.zst.001").is_file());
    assert_eq!(names(&fx.inbox), ["rejected"]);
}

#[test]
fn at_most_16_bundles_are_opened_in_one_pass() {
    let fx = Fx::new();
    let b = fx.bundle("b.tar.zst", "1.419.100.0", 10, &[]);
    for i in 0..17 {
        fs::copy(&b, fx.inbox.join(format!("b{i:02}.tar.zst"))).unwrap();
    }
    let run = fx.inbox_pass(&[]).ok();
    assert!(
        run.stderr
            .contains("left for the next pass (at most 16 bundles are opened in one pass"),
        "{run:#?}"
    );
    assert_eq!(names(&fx.inbox.join("processed")).len(), 16);
    let run = fx.inbox_pass(&["--json"]).ok();
    assert_eq!(json_lines(&run).len(), 1, "{run:#?}");
    assert_eq!(names(&fx.inbox), ["processed"]);
}
