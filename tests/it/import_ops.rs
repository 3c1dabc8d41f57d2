//! Operating an import: one at a time per mirror (the lock), the state
//! directory and its hash-chained ledger, a full filesystem, the `--json`
//! report, and the default state directory.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gapferry::mirror::state::StateDir;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use support::import::*;

const LX: &str = "linux/production/arch_x86_64";
const LA: &str = "linux/production/arch_arm64";

// ---------------------------------------------------------------- lock

#[test]
fn second_import_waits_for_the_lock_then_fails_naming_it() {
    let fx = Fx::new();
    let k = fx.key("k");
    let dl = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let b = fx.export(&dl, "b", &[&k], &[]);
    let sd = StateDir::open(&fx.state).unwrap();
    let lock = sd.lock(Duration::from_secs(5)).unwrap();
    let before = fx.snapshot();
    let start = Instant::now();
    let r = fx.import(&b, &[&k.public], &["--lock-wait", "1s"]);
    let waited = start.elapsed();
    r.expect(
        1,
        &[
            "another gapferry import is running on this mirror",
            &sd.lock_path().display().to_string(),
            &format!("pid {}", std::process::id()),
        ],
    );
    assert!(
        waited >= Duration::from_millis(900),
        "gave up after {waited:?}"
    );
    fx.assert_unchanged(&before);
    assert!(fx.mirror_is_empty());
    // Nothing under the lock happened, so nothing was recorded.
    assert!(ledger(&fx.state).is_empty());

    drop(lock);
    fx.import(&b, &[&k.public], &["--lock-wait", "1s"]).ok();
    assert_same_files(&fx.mirror.join(LX), &dl.join(LX));
}

#[test]
fn a_waiting_import_runs_after_the_holder_not_during() {
    let fx = Fx::new();
    let k = fx.key("k");
    let dl = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let b = fx.export(&dl, "b", &[&k], &[]);
    let sd = StateDir::open(&fx.state).unwrap();
    let lock = sd.lock(Duration::from_secs(5)).unwrap();
    let mut c = fx.import_cmd(&b, &[&k.public], &["--lock-wait", "30s", "--quiet"]);
    c.arg("--mirror")
        .arg(&fx.mirror)
        .arg("--state-dir")
        .arg(&fx.state)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    // While we hold the lock, the child writes nothing.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(700) {
        assert!(child.try_wait().unwrap().is_none(), "did not wait");
        assert!(fx.mirror_is_empty(), "wrote while another held the lock");
        assert!(ledger(&fx.state).is_empty());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(lock);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_same_files(&fx.mirror.join(LX), &dl.join(LX));
    assert_eq!(ledger(&fx.state).len(), 1);
}

#[test]
fn concurrent_imports_serialise() {
    let fx = Fx::new();
    let k = fx.key("k");
    let mut bundles = Vec::new();
    for i in 1..=4 {
        let def = format!("1.400.{i}.0");
        let dl = fx.download(
            &format!("v{i}"),
            &[(LX, "1.1.1.0", &def), (LA, "1.1.1.0", &def)],
        );
        bundles.push(fx.export(&dl, &format!("b{i}"), &[&k], &[]));
    }
    let children: Vec<_> = bundles
        .iter()
        .map(|b| {
            let mut c = fx.import_cmd(b, &[&k.public], &["--quiet"]);
            c.arg("--mirror")
                .arg(&fx.mirror)
                .arg("--state-dir")
                .arg(&fx.state);
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut codes: Vec<i32> = children
        .into_iter()
        .map(|mut c| c.wait().unwrap().code().unwrap())
        .collect();
    codes.sort();
    // Whatever the order, each import saw the state the one before left:
    // later ones are imported, earlier-sequence ones arriving last refused.
    assert!(codes.iter().all(|c| *c == 0 || *c == 4), "{codes:?}");
    let entries = ledger(&fx.state);
    assert_eq!(entries.len(), 4);
    let mut c = fx.cmd();
    c.args(["ledger", "verify", "--state-dir"]).arg(&fx.state);
    fx.run(c).ok();
    // The newest bundle always wins, both folders from one bundle.
    for rel in [LX, LA] {
        assert_eq!(served_versions(&fx.mirror.join(rel)).1, "1.400.4.0");
    }
    assert_no_staging(&fx.root);
}

/// Two state directories for one mirror (say a manual run with its own
/// --state-dir beside the inbox service): the state directories' locks do
/// not see each other, so the served folder itself is locked too. A second
/// import waits, then fails naming the mirror and the fix; once the first
/// is done it goes through.
#[test]
fn imports_with_different_state_dirs_are_refused_on_one_mirror() {
    // One mirror, one state directory: the served folder records its owner
    // (an extended attribute, nothing in the served tree, nothing locked
    // there) and a run with another state directory is refused at once.
    let fx = Fx::new();
    let k = fx.key("k");
    let dl = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let b = fx.export(&dl, "b1", &[&k], &[]);
    fs::create_dir_all(&fx.mirror).unwrap();
    let other_state = fx.root.join("other-state");
    let import = |state: &Path| {
        let mut c = fx.import_cmd(&b, &[&k.public], &[]);
        c.arg("--mirror")
            .arg(&fx.mirror)
            .arg("--state-dir")
            .arg(state);
        fx.run(c)
    };

    // Another run on this mirror, with its own state directory, claimed it.
    fs::create_dir_all(&fx.state).unwrap();
    let claim = gapferry::mirror::lock::claim_served(&fx.mirror, &fx.state).unwrap();
    assert_eq!(claim, gapferry::mirror::lock::Claim::Claimed);
    let before = content_digest(&fx.mirror);
    let r = import(&other_state);
    assert_eq!(r.code, 1, "{r:#?}");
    for want in [
        fx.mirror.to_str().unwrap(),
        fx.state.canonicalize().unwrap().to_str().unwrap(),
        "belongs to the state directory",
        "the same --state-dir",
        "setfattr -x user.gapferry.state-dir",
    ] {
        assert!(r.stderr.contains(want), "{want}: {r:#?}");
    }
    assert_trees_eq(&before, &content_digest(&fx.mirror));

    // The owner imports; the other is still refused.
    import(&fx.state).ok();
    assert_eq!(served_versions(&fx.mirror.join(LX)).1, "1.400.1.0");
    assert_eq!(import(&other_state).code, 1);

    // Released by the operator, the mirror goes to the next run.
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os,sys; os.removexattr(sys.argv[1], 'user.gapferry.state-dir')",
        ])
        .arg(&fx.mirror)
        .status()
        .unwrap();
    assert!(out.success());
    let r = import(&other_state);
    assert_eq!(r.code, 0, "{r:#?}");
    assert_eq!(import(&fx.state).code, 1, "now owned by the other one");
}

// ---------------------------------------------------------------- ledger

#[test]
fn ledger_records_every_attempt_and_verifies() {
    let fx = Fx::new();
    let k = fx.key("k");
    let evil = fx.key("evil");
    let v1 = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let v2 = fx.download("v2", &[(LX, "1.1.2.0", "1.400.2.0")]);
    // An older bundle that never reaches this mirror before newer ones do.
    let b0 = fx.export(&v1, "b0", &[&k], &["--sequence", "50"]);
    let b1 = fx.export(&v1, "b1", &[&k], &["--sequence", "100"]);
    let b2 = fx.export(&v2, "b2", &[&k], &["--sequence", "200"]);
    let be = fx.export(&v2, "be", &[&evil], &["--sequence", "300"]);

    fx.import(&b1, &[&k.public], &[]).ok(); // imported
    fx.import(&b2, &[&k.public], &[]).ok(); // imported
    fx.import(&b2, &[&k.public], &[]).ok(); // already_imported
    fx.import(&b0, &[&k.public], &[]).expect(4, &[]); // refused
    fx.import(&be, &[&k.public], &[]).expect(3, &[]); // rejected

    let mut c = fx.cmd();
    c.args(["ledger", "verify", "--state-dir"]).arg(&fx.state);
    fx.run(c).expect(0, &["5 entries", "hash chain intact"]);

    let mut c = fx.cmd();
    c.args(["ledger", "show", "--json", "--state-dir"])
        .arg(&fx.state);
    let r = fx.run(c);
    r.expect(0, &[]);
    let shown: Vec<serde_json::Value> = support::json::ledger_entries(&r.stdout);
    let lines = fs::read_to_string(fx.state.join("ledger.jsonl")).unwrap();
    let raw: Vec<&str> = lines.lines().collect();
    assert_eq!(shown.len(), 5);
    assert_eq!(raw.len(), 5);
    let outcomes: Vec<&str> = shown
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "imported",
            "imported",
            "already_imported",
            "refused",
            "rejected"
        ]
    );
    // The chain: each prev_hash is the sha256 of the previous line.
    let mut prev = "0".repeat(64);
    for (e, line) in shown.iter().zip(&raw) {
        assert_eq!(e["prev_hash"], prev.as_str());
        prev = hex::encode(Sha256::digest(line.as_bytes()));
    }
    let seqs: Vec<u64> = shown
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [100, 200, 200, 50, 300]);
    for e in &shown[..4] {
        assert_eq!(e["signer_key_ids"], serde_json::json!([k.id().to_string()]));
        assert_eq!(e["manifest_sha256"].as_str().unwrap().len(), 64);
        assert!(e["bundle_id"].is_string() && e["time"].is_string());
    }
    assert_eq!(shown[4]["signer_key_ids"], serde_json::json!([]));
    // Versions before and after.
    let slot = |i: usize| &shown[i]["slots"][0];
    assert_eq!(slot(0)["slot"], LX);
    assert!(slot(0)["before"].is_null());
    assert_eq!(slot(0)["after"]["definition_version"], "1.400.1.0");
    assert_eq!(slot(1)["before"]["definition_version"], "1.400.1.0");
    assert_eq!(slot(1)["after"]["definition_version"], "1.400.2.0");
    assert_eq!(slot(1)["after"]["engine_version"], "1.1.2.0");
    assert!(
        slot(3)["after"].is_null(),
        "a refused import changed nothing"
    );
    assert!(shown[3]["reason"]
        .as_str()
        .unwrap()
        .contains("sequence 50 is below 200"));
    assert!(shown[4]["reason"]
        .as_str()
        .unwrap()
        .contains("no signature by a trusted key"));

    // The human table names every attempt.
    let mut c = fx.cmd();
    c.args(["ledger", "show", "--state-dir"]).arg(&fx.state);
    let r = fx.run(c);
    r.expect(0, &[]);
    for o in [
        "imported",
        "already_imported",
        "refused",
        "rejected",
        "default:300",
    ] {
        assert!(r.stdout.contains(o), "{o}:\n{}", r.stdout);
    }

    // Tamper with line 2: verify names line 3 (whose prev_hash no longer
    // matches) and exits 3; show refuses too.
    let tampered = lines.replacen("\"1.400.2.0\"", "\"1.400.9.0\"", 1);
    assert_ne!(tampered, lines);
    fs::write(fx.state.join("ledger.jsonl"), &tampered).unwrap();
    let mut c = fx.cmd();
    c.args(["ledger", "verify", "--state-dir"]).arg(&fx.state);
    fx.run(c)
        .expect(3, &["broken at line 3", "line 2 was edited"]);
    let mut c = fx.cmd();
    c.args(["ledger", "show", "--json", "--state-dir"])
        .arg(&fx.state);
    let r = fx.run(c);
    r.expect(3, &["broken at line 3"]);
    support::json::failure(&r.stdout, "ledger show", 3);

    // An edited last line is caught when the next import chains onto it.
    fs::write(fx.state.join("ledger.jsonl"), &lines).unwrap();
    let last_edit = {
        let mut l: Vec<String> = raw.iter().map(|s| s.to_string()).collect();
        l[4] = l[4].replace("rejected", "imported");
        l.join("\n") + "\n"
    };
    fs::write(fx.state.join("ledger.jsonl"), last_edit).unwrap();
    let mut c = fx.cmd();
    c.args(["ledger", "verify", "--state-dir"]).arg(&fx.state);
    let head = fx.run(c);
    head.expect(0, &[]);
    assert!(
        !head.stderr.contains(&prev),
        "the head hash must change when the last line is edited"
    );
}

#[test]
fn state_records_served_versions_and_sequences() {
    let fx = Fx::new();
    let k = fx.key("k");
    let v1 = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let b1 = fx.export(&v1, "b1", &[&k], &["--sequence", "42", "--channel", "lab"]);
    fx.import(&b1, &[&k.public], &["--channel", "lab"]).ok();
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(fx.state.join("state.json")).unwrap()).unwrap();
    let served = &state["served"][LX];
    assert_eq!(served["definition_version"], "1.400.1.0");
    assert_eq!(served["engine_version"], "1.1.1.0");
    assert_eq!(served["sequence"], 42);
    assert_eq!(served["channel"], "lab");
    assert!(state["channels"]["lab"]["accepted"]["42"].is_object());
    assert!(state.get("pending").is_none());
    // The state dir is the only place outside the mirror that changed.
    let names: Vec<String> = fs::read_dir(&fx.state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        names,
        ["ledger.jsonl", "lock", "receipts.jsonl", "state.json"]
    );
}

// ---------------------------------------------------------------- disk full

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn disk_full_fails_cleanly() {
    if !is_root() {
        eprintln!("note: disk_full_fails_cleanly needs root to mount a tmpfs; skipped");
        return;
    }
    let fx = Fx::new();
    let Some(_mnt) = Tmpfs::mount(&fx.root.join("small"), "2m") else {
        eprintln!("note: cannot mount a tmpfs here; disk_full_fails_cleanly skipped");
        return;
    };
    let mirror = fx.root.join("small/mirror");
    let k = fx.key("k");
    let small = fx.download("small", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let big = fx.download_sized("big", &[(LX, "1.1.2.0", "1.400.2.0")], 3 << 20);
    let big2 = fx.download_sized("big2", &[(LA, "1.1.2.0", "1.400.2.0")], 3 << 20);
    let b_small = fx.export(&small, "small", &[&k], &[]);
    let b_big = fx.export(&big, "big", &[&k], &[]);
    let b_big2 = fx.export(&big2, "big2", &[&k], &[]);
    let import = |b: &Path| {
        let mut c = fx.import_cmd(b, &[&k.public], &["--create"]);
        c.arg("--mirror")
            .arg(&mirror)
            .arg("--state-dir")
            .arg(&fx.state);
        fx.run(c)
    };
    import(&b_small).ok();

    // Over a served folder: the old set stays.
    let before = fx.snapshot();
    import(&b_big).expect(1, &["the filesystem is full", "small/mirror"]);
    fx.assert_unchanged(&before);
    assert_same_files(&mirror.join(LX), &small.join(LX));
    assert_eq!(ledger(&fx.state).pop().unwrap()["outcome"], "failed");

    // Into a folder that did not exist: it still does not.
    import(&b_big2).expect(1, &["the filesystem is full"]);
    fx.assert_unchanged(&before);
    assert!(!mirror.join(LA).exists());

    // The failure left nothing in the way of a bundle that fits.
    let v3 = fx.download("v3", &[(LX, "1.1.3.0", "1.400.3.0")]);
    let b3 = fx.export(&v3, "v3", &[&k], &[]);
    import(&b3).ok();
    assert_same_files(&mirror.join(LX), &v3.join(LX));
    assert_same_files(
        &mirror.join("linux/production_back/arch_x86_64"),
        &small.join(LX),
    );
}

// ---------------------------------------------------------------- json

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    schema_version: u32,
    ok: bool,
    /// With `ok` false: `{ message, exit_code, kind }` (docs/JSON.md).
    error: Option<support::json::Error>,
    bundle_path: PathBuf,
    signer_key_ids: Vec<String>,
    outcome: String,
    bundle: PathBuf,
    bundle_id: Option<String>,
    channel: Option<String>,
    sequence: Option<u64>,
    manifest_sha256: Option<String>,
    signers: Vec<String>,
    slots: Vec<SlotReport>,
    bytes_written: u64,
    downgrades: Vec<String>,
    recovered: Vec<PathBuf>,
    discarded: Vec<String>,
    exit_code: i32,
    receipt: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotReport {
    slot: String,
    dir: PathBuf,
    before: Option<Versions>,
    after: Option<Versions>,
    published: bool,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Versions {
    engine_version: String,
    definition_version: String,
}

fn v(e: &str, d: &str) -> Option<Versions> {
    Some(Versions {
        engine_version: e.into(),
        definition_version: d.into(),
    })
}

#[track_caller]
fn report(r: &Run, code: i32) -> Report {
    assert_eq!(r.code, code, "stderr:\n{}", r.stderr);
    let rep: Report = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout is not one report:\n{}", r.stdout));
    assert_eq!(rep.exit_code, code);
    assert_eq!((rep.schema_version, rep.ok), (1, code == 0));
    assert_eq!(
        rep.error.as_ref().map(|e| e.exit_code),
        (code != 0).then_some(code)
    );
    assert_eq!(
        (&rep.bundle_path, &rep.signer_key_ids),
        (&rep.bundle, &rep.signers)
    );
    rep
}

fn size_of(dir: &Path) -> u64 {
    ["updates.zip", "manifest.json"]
        .iter()
        .map(|n| fs::metadata(dir.join(n)).unwrap().len())
        .sum()
}

#[test]
fn json_report_for_every_outcome() {
    let fx = Fx::new();
    let k = fx.key("k");
    let evil = fx.key("evil");
    let v1 = fx.download(
        "v1",
        &[(LX, "1.1.1.0", "1.400.1.0"), (LA, "1.1.1.0", "1.400.1.0")],
    );
    let v2 = fx.download(
        "v2",
        &[(LX, "1.1.2.0", "1.400.2.0"), (LA, "1.1.2.0", "1.400.2.0")],
    );
    let b0 = fx.export(&v1, "b0", &[&k], &["--sequence", "5"]);
    let b1 = fx.export(&v1, "b1", &[&k], &["--sequence", "10"]);
    let b2 = fx.export(&v2, "b2", &[&k], &["--sequence", "20"]);
    let be = fx.export(&v2, "be", &[&evil], &["--sequence", "30"]);
    let json = ["--json"];

    let r = fx.import(&b1, &[&k.public], &json);
    assert!(
        r.stderr.is_empty(),
        "--json prints no summary: {}",
        r.stderr
    );
    let rep = report(&r, 0);
    assert_eq!(rep.outcome, "imported");
    assert_eq!(rep.bundle, b1);
    assert_eq!(rep.sequence, Some(10));
    assert_eq!(rep.channel.as_deref(), Some("default"));
    assert_eq!(rep.signers, [k.id().to_string()]);
    assert_eq!(rep.manifest_sha256.as_ref().map(String::len), Some(64));
    assert!(rep.bundle_id.is_some() && rep.error.is_none());
    assert!(rep.downgrades.is_empty() && rep.recovered.is_empty() && rep.discarded.is_empty());
    let sha = rep.manifest_sha256.as_deref().unwrap();
    assert_eq!(
        rep.receipt.as_deref(),
        Some(
            format!(
                "GF1-10-{}-{}-{}-{}-OK",
                &sha[..4],
                &sha[4..8],
                &sha[8..12],
                &sha[12..16]
            )
            .as_str()
        )
    );
    assert_eq!(
        rep.bytes_written,
        size_of(&v1.join(LX)) + size_of(&v1.join(LA))
    );
    let mut slots: Vec<&str> = rep.slots.iter().map(|s| s.slot.as_str()).collect();
    slots.sort();
    assert_eq!(slots, [LA, LX]);
    for s in &rep.slots {
        assert_eq!(s.dir, fx.mirror.join(&s.slot));
        assert!(s.published && s.before.is_none());
        assert_eq!(s.after, v("1.1.1.0", "1.400.1.0"));
    }

    let rep = report(&fx.import(&b2, &[&k.public], &json), 0);
    assert_eq!(rep.outcome, "imported");
    for s in &rep.slots {
        assert_eq!(s.before, v("1.1.1.0", "1.400.1.0"));
        assert_eq!(s.after, v("1.1.2.0", "1.400.2.0"));
    }

    let before = fx.snapshot();
    let rep = report(&fx.import(&b2, &[&k.public], &json), 0);
    assert_eq!(rep.outcome, "already_imported");
    assert_eq!(rep.bytes_written, 0);
    assert!(rep.slots.iter().all(|s| !s.published));
    assert!(rep.error.is_none());

    let r = fx.import(&b0, &[&k.public], &json);
    let rep = report(&r, 4);
    assert_eq!(rep.outcome, "refused");
    assert_eq!(rep.sequence, Some(5));
    assert_eq!(rep.bytes_written, 0);
    let err = rep.error.unwrap().message;
    assert!(err.contains("sequence 5 is below 20"), "{err}");
    assert!(r.stderr.contains("sequence 5 is below 20"), "{}", r.stderr);

    let rep = report(&fx.import(&be, &[&k.public], &json), 3);
    assert_eq!(rep.outcome, "rejected");
    assert!(rep.signers.is_empty());
    assert!(rep
        .error
        .unwrap()
        .message
        .contains("no signature by a trusted key"));

    let rep = report(
        &fx.import(&b2, &[&k.public], &["--json", "--platform", "mac"]),
        2,
    );
    assert!(rep
        .error
        .unwrap()
        .message
        .contains("no carried folder matches"));

    // Errors found before the import starts still give one report.
    let missing = fx.root.join("keys/missing.pub");
    let r = fx.import(&b2, &[&missing], &json);
    // An unreadable key file is a usage error (docs/FORMAT.md section 6).
    let rep = report(&r, 2);
    assert_eq!(rep.outcome, "failed");
    assert_eq!(rep.bundle, b2);
    assert!(rep.error.unwrap().message.contains("missing.pub"));
    assert!(r.stderr.contains("missing.pub"), "{}", r.stderr);
    let rep = report(
        &fx.import(&b2, &[&k.public], &["--json", "--threshold", "2"]),
        2,
    );
    assert!(rep.error.unwrap().message.contains("--threshold 2"));

    let sd = StateDir::open(&fx.state).unwrap();
    let lock = sd.lock(Duration::from_secs(5)).unwrap();
    let rep = report(
        &fx.import(&b2, &[&k.public], &["--json", "--lock-wait", "100ms"]),
        1,
    );
    drop(lock);
    assert_eq!(rep.outcome, "failed");
    assert!(rep.bundle_id.is_none() && rep.slots.is_empty());
    assert!(rep
        .error
        .unwrap()
        .message
        .contains("another gapferry import is running"));
    fx.assert_unchanged(&before);
}

// ---------------------------------------------------------------- default state dir

#[test]
fn default_state_dir_honours_gapferry_state_dir() {
    let fx = Fx::new();
    let k = fx.key("k");
    let dl = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let b = fx.export(&dl, "b", &[&k], &[]);
    let base = fx.root.join("base");
    let with_base = |c: &mut Command| {
        c.env("GAPFERRY_STATE_DIR", &base);
    };
    let mut c = fx.import_cmd(&b, &[&k.public], &["--mirror"]);
    c.arg(&fx.mirror);
    with_base(&mut c);
    fx.run(c).ok();
    assert_same_files(&fx.mirror.join(LX), &dl.join(LX));
    let dirs: Vec<PathBuf> = fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let sd = &dirs[0];
    let name = sd.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("mirror-") && name.len() == "mirror-".len() + 16,
        "{name}"
    );
    assert!(sd.join("ledger.jsonl").is_file() && sd.join("state.json").is_file());
    assert!(!sd.starts_with(&fx.mirror));
    assert!(
        !fx.root.join("home").exists(),
        "HOME and XDG_STATE_HOME untouched"
    );

    // The same mirror named another way maps to the same state: the second
    // import is "already imported".
    let mut c = fx.import_cmd(&b, &[&k.public], &["--mirror", "../mirror/."]);
    with_base(&mut c);
    fx.run(c).expect(0, &["already imported"]);
    assert_eq!(fs::read_dir(&base).unwrap().count(), 1);

    // ledger --mirror finds it.
    let mut c = fx.cmd();
    c.args(["ledger", "verify", "--mirror"]).arg(&fx.mirror);
    with_base(&mut c);
    fx.run(c).expect(0, &["2 entries"]);

    // A base inside the served tree is refused before anything is written.
    let before = fx.snapshot();
    let mut c = fx.import_cmd(&b, &[&k.public], &["--mirror"]);
    c.arg(&fx.mirror)
        .env("GAPFERRY_STATE_DIR", fx.mirror.join("state"));
    fx.run(c)
        .expect(1, &["inside the served tree", "--state-dir"]);
    fx.assert_unchanged(&before);
    let mut c = fx.import_cmd(&b, &[&k.public], &["--mirror"]);
    c.arg(&fx.mirror).env("GAPFERRY_STATE_DIR", "relative/base");
    fx.run(c).expect(
        1,
        &["GAPFERRY_STATE_DIR", "not an absolute path", "--state-dir"],
    );
    fx.assert_unchanged(&before);
}

#[test]
fn default_state_dir_without_the_variable_is_outside_the_mirror() {
    // Not root: the XDG base. Root: /var/lib/gapferry, which a test must
    // not touch, so only the naming is checked through the library.
    let fx = Fx::new();
    if is_root() {
        let d = gapferry::mirror::state::default_state_dir(&fx.mirror);
        if std::env::var_os("GAPFERRY_STATE_DIR").is_none() {
            let d = d.unwrap();
            assert!(d.starts_with("/var/lib/gapferry"), "{}", d.display());
            assert!(!d.starts_with(&fx.mirror));
        }
        return;
    }
    let k = fx.key("k");
    let dl = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let b = fx.export(&dl, "b", &[&k], &[]);
    let mut c = fx.import_cmd(&b, &[&k.public], &["--mirror"]);
    c.arg(&fx.mirror);
    fx.run(c).ok();
    let base = fx.root.join("home/.state/gapferry");
    assert_eq!(fs::read_dir(&base).unwrap().count(), 1);
}
