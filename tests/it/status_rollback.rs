//! `gapferry status` and `gapferry rollback` on a real mirror built by
//! export + import through the binary.

use std::path::PathBuf;

use crate::support::{self, gapferry};

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        crate::support::keygen(&root, "k");
        Env { _tmp: tmp, root }
    }

    fn p(&self, s: &str) -> PathBuf {
        self.root.join(s)
    }

    /// Exports linux/production (both arches) with `definitions`, then imports it.
    fn release(&self, definitions: &str, n: u8) {
        let dl = self.p(&format!("dl{n}"));
        for arch in ["x86_64", "arm64"] {
            let rel = format!("linux/production/arch_{arch}");
            let d = dl.join(&rel);
            std::fs::create_dir_all(&d).unwrap();
            let zip = support::import::zip_for(&rel, "1.1.1.1", definitions, 2000);
            std::fs::write(d.join("updates.zip"), zip).unwrap();
            let manifest = support::import::folder_manifest("1.1.1.1", definitions);
            std::fs::write(d.join("manifest.json"), manifest).unwrap();
        }
        let bundle = self.bundle(n);
        gapferry()
            .args(["export", "--quiet", "--from"])
            .arg(&dl)
            .arg("--secret-key")
            .arg(self.p("k.key"))
            .arg("--out")
            .arg(&bundle)
            .arg("--state-dir")
            .arg(self.p("export-state"))
            .assert()
            .success();
        self.import(n).success();
    }

    fn bundle(&self, n: u8) -> PathBuf {
        self.p(&format!("b{n}.tar.zst"))
    }

    fn import(&self, n: u8) -> assert_cmd::assert::Assert {
        gapferry()
            .arg("import")
            .arg(self.bundle(n))
            .arg("--quiet")
            .arg("--trust")
            .arg(self.p("k.pub"))
            .arg("--create")
            .arg("--mirror")
            .arg(self.p("mirror"))
            .arg("--state-dir")
            .arg(self.p("state"))
            .assert()
    }

    fn status_json(&self) -> (i32, serde_json::Value) {
        let out = gapferry()
            .args(["status", "--json", "--mirror"])
            .arg(self.p("mirror"))
            .arg("--state-dir")
            .arg(self.p("state"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            serde_json::from_slice(&out.stdout).unwrap(),
        )
    }

    fn rollback(&self) -> assert_cmd::assert::Assert {
        gapferry()
            .args([
                "rollback",
                "--platform",
                "linux",
                "--ring",
                "production",
                "--mirror",
            ])
            .arg(self.p("mirror"))
            .arg("--state-dir")
            .arg(self.p("state"))
            .assert()
    }

    fn served_definitions(&self, arch: &str) -> String {
        let m = std::fs::read_to_string(
            self.p("mirror")
                .join(format!("linux/production/arch_{arch}/manifest.json")),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        v["DefinitionVersion"].as_str().unwrap().to_string()
    }
}

fn slot<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == name)
        .unwrap()
}

#[test]
fn status_healthy_missing_back_and_tampered() {
    let env = Env::new();
    // Empty mirror: nothing served is a problem for monitoring.
    std::fs::create_dir_all(env.p("mirror")).unwrap();
    let (code, _) = env.status_json();
    assert_eq!(code, 1);

    env.release("1.400.1.0", 1);
    let (code, v) = env.status_json();
    assert_eq!(code, 0, "{v}");
    let s = slot(&v, "linux/production/arch_x86_64");
    assert_eq!(s["definition_version"], "1.400.1.0");
    assert_eq!(s["files_match"], true);
    assert_eq!(s["back_exists"], false);
    assert!(s["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("no n-1"));
    // --strict turns the missing n-1 warning into a failure.
    gapferry()
        .args(["status", "--strict", "--mirror"])
        .arg(env.p("mirror"))
        .arg("--state-dir")
        .arg(env.p("state"))
        .assert()
        .code(1);

    env.release("1.400.2.0", 2);
    let (code, v) = env.status_json();
    assert_eq!(code, 0, "{v}");
    assert_eq!(slot(&v, "linux/production/arch_arm64")["back_exists"], true);

    // Same size, one byte changed: only the hash can tell.
    let zip = env.p("mirror/linux/production/arch_arm64/updates.zip");
    let mut bytes = std::fs::read(&zip).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&zip, bytes).unwrap();
    let (code, v) = env.status_json();
    assert_eq!(code, 1);
    let s = slot(&v, "linux/production/arch_arm64");
    assert_eq!(s["files_match"], false);
    assert!(s["findings"]
        .to_string()
        .contains("differs from what was imported"));
    assert_eq!(
        slot(&v, "linux/production/arch_x86_64")["files_match"],
        true
    );
}

#[test]
fn rollback_and_roll_forward_keep_rollback_protection() {
    let env = Env::new();
    env.release("1.400.1.0", 1);
    // Nothing to roll back to yet.
    env.rollback()
        .code(1)
        .stderr(predicates::str::contains("nothing to roll back to"));
    env.release("1.400.2.0", 2);
    assert_eq!(env.served_definitions("x86_64"), "1.400.2.0");

    env.rollback().success();
    assert_eq!(env.served_definitions("x86_64"), "1.400.1.0");
    assert_eq!(env.served_definitions("arm64"), "1.400.1.0");
    let (code, v) = env.status_json();
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        slot(&v, "linux/production/arch_x86_64")["back_definition_version"],
        "1.400.2.0"
    );

    // A re-delivered copy of the withdrawn bundle does not undo the rollback.
    env.import(2)
        .code(4)
        .stderr(predicates::str::contains("withdrawn"));
    assert_eq!(env.served_definitions("x86_64"), "1.400.1.0");
    // The bundle now served again is "already imported": nothing changes.
    env.import(1).success();
    assert_eq!(env.served_definitions("x86_64"), "1.400.1.0");

    // Roll forward.
    env.rollback().success();
    assert_eq!(env.served_definitions("x86_64"), "1.400.2.0");
    env.import(2).success();

    // Back again, then a newer release imports normally.
    env.rollback().success();
    env.release("1.400.3.0", 3);
    assert_eq!(env.served_definitions("x86_64"), "1.400.3.0");

    gapferry()
        .args(["ledger", "verify", "--state-dir"])
        .arg(env.p("state"))
        .assert()
        .success();
    let out = gapferry()
        .args(["ledger", "show", "--json", "--state-dir"])
        .arg(env.p("state"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("rolled_back"));
}

#[test]
fn rollback_by_copy_when_exchange_is_unavailable() {
    let env = Env::new();
    env.release("1.400.1.0", 1);
    env.release("1.400.2.0", 2);
    gapferry()
        .env("GAPFERRY_TEST_FORCE_FALLBACK", "1")
        .args([
            "rollback",
            "--platform",
            "linux",
            "--ring",
            "production",
            "--arch",
            "x86_64",
            "--json",
            "--mirror",
        ])
        .arg(env.p("mirror"))
        .arg("--state-dir")
        .arg(env.p("state"))
        .assert()
        .success()
        .stdout(predicates::str::contains("\"method\": \"copy\""));
    assert_eq!(env.served_definitions("x86_64"), "1.400.1.0");
    assert_eq!(env.served_definitions("arm64"), "1.400.2.0");
    let back =
        std::fs::read_to_string(env.p("mirror/linux/production_back/arch_x86_64/manifest.json"))
            .unwrap();
    assert!(back.contains("1.400.2.0"));
    let leftovers: Vec<_> = std::fs::read_dir(env.p("mirror/linux"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".gapferry"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn redelivered_superseded_bundle_is_already_imported_and_changes_nothing() {
    let env = Env::new();
    env.release("1.400.1.0", 1);
    env.release("1.400.2.0", 2);
    let before =
        std::fs::read(env.p("mirror/linux/production_back/arch_x86_64/manifest.json")).unwrap();
    // A data diode delivers bundle 1 again, late: nothing to do, exit 0.
    let out = gapferry()
        .arg("import")
        .arg(env.bundle(1))
        .args(["--json", "--trust"])
        .arg(env.p("k.pub"))
        .arg("--mirror")
        .arg(env.p("mirror"))
        .arg("--state-dir")
        .arg(env.p("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "already_imported");
    assert_eq!(env.served_definitions("x86_64"), "1.400.2.0");
    assert_eq!(
        std::fs::read(env.p("mirror/linux/production_back/arch_x86_64/manifest.json")).unwrap(),
        before
    );
}

impl Env {
    fn x86(&self) -> PathBuf {
        self.p("mirror/linux/production/arch_x86_64")
    }

    fn x86_back(&self) -> PathBuf {
        self.p("mirror/linux/production_back/arch_x86_64")
    }

    fn rollback_with(&self, extra: &[&str]) -> std::process::Output {
        gapferry()
            .args([
                "rollback",
                "--platform",
                "linux",
                "--ring",
                "production",
                "--mirror",
            ])
            .arg(self.p("mirror"))
            .arg("--state-dir")
            .arg(self.p("state"))
            .args(extra)
            .output()
            .unwrap()
    }

    /// `import --json` of bundle `n`, expected to succeed; the report.
    fn import_json(&self, n: u8) -> serde_json::Value {
        let out = gapferry()
            .arg("import")
            .arg(self.bundle(n))
            .args(["--json", "--trust"])
            .arg(self.p("k.pub"))
            .arg("--create")
            .arg("--mirror")
            .arg(self.p("mirror"))
            .arg("--state-dir")
            .arg(self.p("state"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn last_ledger_entry(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.p("state/ledger.jsonl")).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    }
}

/// Every file of `dir`, name -> bytes.
fn files_of(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn flip_a_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(path, bytes).unwrap();
}

/// Issue 11 item 7, the whole story as a new user lived it: a served
/// updates.zip is damaged, `status` advises re-importing, and the re-import
/// repairs it. It used to move the damaged set into n-1 and delete the good
/// n-1 (then `rollback` served the damaged file, exit 0). Now the damaged
/// set is discarded, the good n-1 kept, the ledger and the import say so,
/// and a rollback afterwards serves the good, intact n-1.
#[test]
fn repair_by_reimport_discards_the_damaged_set_and_keeps_the_good_n_1() {
    let env = Env::new();
    env.release("1.400.1.0", 1);
    let good_back = files_of(&env.x86());
    env.release("1.400.2.0", 2);
    let good_current = files_of(&env.x86());
    assert_eq!(files_of(&env.x86_back()), good_back);
    let arm_back = files_of(&env.p("mirror/linux/production_back/arch_arm64"));

    // Damaged: garbage appended (a botched copy, a disk error).
    let zip = env.x86().join("updates.zip");
    let mut bytes = std::fs::read(&zip).unwrap();
    bytes.extend_from_slice(b"garbage");
    std::fs::write(&zip, bytes).unwrap();
    let (code, v) = env.status_json();
    assert_eq!(code, 1, "{v}");
    let s = slot(&v, "linux/production/arch_x86_64");
    assert_eq!(s["files_match"], false);
    assert!(s["findings"].to_string().contains("re-import the bundle"));

    let report = env.import_json(2);
    // The reported bug: the damaged set became n-1, the good n-1 was gone.
    assert_eq!(
        files_of(&env.x86_back()),
        good_back,
        "the good n-1 was lost"
    );
    assert_eq!(files_of(&env.x86()), good_current, "not repaired");
    assert_eq!(report["outcome"], "imported");
    let discarded = report["discarded"].as_array().unwrap();
    assert_eq!(discarded.len(), 1, "{report}");
    let d = discarded[0].as_str().unwrap();
    assert!(
        d.starts_with("linux/production/arch_x86_64: ")
            && d.contains("arch_x86_64/updates.zip is")
            && d.contains("were imported"),
        "{d}"
    );
    // Repaired; the good n-1 kept byte for byte; arm64 untouched.
    assert_eq!(files_of(&env.x86()), good_current);
    assert_eq!(files_of(&env.x86_back()), good_back);
    assert_eq!(
        files_of(&env.p("mirror/linux/production_back/arch_arm64")),
        arm_back
    );
    let entry = env.last_ledger_entry();
    assert_eq!(entry["outcome"], "imported");
    let reason = entry["reason"].as_str().unwrap();
    assert!(
        reason.contains("linux/production/arch_x86_64")
            && reason.contains("discarded instead of becoming n-1 (n-1 kept as it was)"),
        "{reason}"
    );
    let (code, v) = env.status_json();
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        slot(&v, "linux/production/arch_x86_64")["back_files_match"],
        true
    );

    // Same size, one byte changed: only the hash can tell, and the
    // re-import repairs that too instead of answering "already imported".
    flip_a_byte(&env.x86().join("updates.zip"));
    let report = env.import_json(2);
    assert_eq!(report["outcome"], "imported", "{report}");
    assert!(report["discarded"][0]
        .as_str()
        .unwrap()
        .contains("has another SHA-256"));
    assert_eq!(files_of(&env.x86()), good_current);
    assert_eq!(files_of(&env.x86_back()), good_back);

    // Rolling back now serves the good previous set.
    env.rollback().success();
    assert_eq!(files_of(&env.x86()), good_back);
    let (code, v) = env.status_json();
    assert_eq!(code, 0, "{v}");
}

/// A damaged n-1 is never swapped in silently: `rollback` refuses it
/// (exit 3, naming the file, nothing moved, recorded in the ledger) and
/// `--force` swaps it in anyway, saying so.
#[test]
fn rollback_refuses_a_damaged_n_1_unless_forced() {
    let env = Env::new();
    env.release("1.400.1.0", 1);
    env.release("1.400.2.0", 2);
    let damaged = env.x86_back().join("updates.zip");
    flip_a_byte(&damaged);
    let before = (
        files_of(&env.x86()),
        files_of(&env.x86_back()),
        files_of(&env.p("mirror/linux/production/arch_arm64")),
    );
    let out = env.rollback_with(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&damaged.display().to_string())
            && stderr.contains("has another SHA-256 than what was imported")
            && stderr.contains("--force"),
        "{stderr}"
    );
    // Nothing moved, in either arch (the check runs before any swap).
    assert_eq!(
        before,
        (
            files_of(&env.x86()),
            files_of(&env.x86_back()),
            files_of(&env.p("mirror/linux/production/arch_arm64")),
        )
    );
    assert_eq!(env.served_definitions("arm64"), "1.400.2.0");
    let (code, v) = env.status_json();
    assert_eq!(code, 0, "a damaged n-1 is a warning: {v}");
    let s = slot(&v, "linux/production/arch_x86_64");
    assert_eq!(s["back_files_match"], false);
    assert!(
        s["findings"].to_string().contains("rollback` refuses it"),
        "{s}"
    );
    assert_eq!(
        slot(&v, "linux/production/arch_arm64")["back_files_match"],
        true
    );

    let entry = env.last_ledger_entry();
    assert_eq!(entry["outcome"], "rejected");
    assert!(entry["reason"]
        .as_str()
        .unwrap()
        .contains("gapferry rollback refused"));

    // A truncated file is named too.
    let bytes = std::fs::read(&damaged).unwrap();
    std::fs::write(&damaged, &bytes[..10]).unwrap();
    let out = env.rollback_with(&["--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("is 10 bytes"), "{stderr}");
    let f = crate::support::json::failure(&String::from_utf8_lossy(&out.stdout), "rollback", 3);
    assert!(f.error.message.contains("is 10 bytes"), "{f:?}");
    std::fs::write(&damaged, &bytes).unwrap();

    let out = env.rollback_with(&["--force"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("--force was given"), "{stderr}");
    assert_eq!(env.served_definitions("x86_64"), "1.400.1.0");
    assert_eq!(std::fs::read(env.x86().join("updates.zip")).unwrap(), bytes);
    let entry = env.last_ledger_entry();
    assert_eq!(entry["outcome"], "rolled_back");
    assert!(entry["reason"]
        .as_str()
        .unwrap()
        .contains("--force swapped in an n-1 that no longer matched"));
    gapferry()
        .args(["ledger", "verify", "--state-dir"])
        .arg(env.p("state"))
        .assert()
        .success();
}

/// An import killed right after publishing one folder leaves n-1 holding
/// the set it replaced; the next `rollback` first records that (as the next
/// import would), so its n-1 check passes on the good n-1 instead of
/// comparing it with a stale record.
#[test]
fn rollback_after_an_interrupted_import_checks_n_1_against_what_recovery_left() {
    let env = Env::new();
    env.release("1.400.1.0", 1);
    env.release("1.400.2.0", 2);
    // Export release 3 without importing it, then import it and die after
    // the first folder's publish.
    let dl = env.p("dl3");
    for arch in ["x86_64", "arm64"] {
        let d = dl.join(format!("linux/production/arch_{arch}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("updates.zip"),
            gapferry::mde::zipcheck::tiny_zip("x", format!("release 3 {arch}").as_bytes()),
        )
        .unwrap();
        std::fs::write(
            d.join("manifest.json"),
            r#"{"EngineVersion": "1.1.1.1", "DefinitionVersion": "1.400.3.0"}"#,
        )
        .unwrap();
    }
    gapferry()
        .args(["export", "--quiet", "--from"])
        .arg(&dl)
        .arg("--secret-key")
        .arg(env.p("k.key"))
        .arg("--out")
        .arg(env.bundle(3))
        .arg("--state-dir")
        .arg(env.p("export-state"))
        .assert()
        .success();
    let out = gapferry()
        .env("GAPFERRY_TEST_CRASH_AT", "cleaned")
        .arg("import")
        .arg(env.bundle(3))
        .arg("--quiet")
        .arg("--trust")
        .arg(env.p("k.pub"))
        .arg("--mirror")
        .arg(env.p("mirror"))
        .arg("--state-dir")
        .arg(env.p("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "killed");
    let published: Vec<&str> = ["x86_64", "arm64"]
        .into_iter()
        .filter(|a| env.served_definitions(a) == "1.400.3.0")
        .collect();
    assert_eq!(published.len(), 1, "one folder published before the kill");

    env.rollback().success();
    assert_eq!(env.served_definitions(published[0]), "1.400.2.0");
    let other = if published[0] == "x86_64" {
        "arm64"
    } else {
        "x86_64"
    };
    assert_eq!(env.served_definitions(other), "1.400.1.0");
    let (code, v) = env.status_json();
    assert_eq!(code, 0, "{v}");
    gapferry()
        .args(["ledger", "verify", "--state-dir"])
        .arg(env.p("state"))
        .assert()
        .success();
}

/// The same rule for a newer bundle: importing it over a damaged served set
/// discards that set and keeps the good n-1, so a rollback afterwards goes
/// to a set that was never damaged.
#[test]
fn a_newer_import_over_a_damaged_set_keeps_the_good_n_1() {
    let env = Env::new();
    env.release("1.400.1.0", 1);
    let good_back = files_of(&env.x86());
    env.release("1.400.2.0", 2);
    flip_a_byte(&env.x86().join("updates.zip"));
    env.release("1.400.3.0", 3);
    assert_eq!(env.served_definitions("x86_64"), "1.400.3.0");
    assert_eq!(files_of(&env.x86_back()), good_back);
    // arm64 was intact: its set rotated into n-1 as usual.
    let arm_back = env.p("mirror/linux/production_back/arch_arm64/manifest.json");
    assert!(std::fs::read_to_string(arm_back)
        .unwrap()
        .contains("1.400.2.0"));
    let reason = env.last_ledger_entry()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("arch_x86_64/updates.zip has another SHA-256")
            && reason.contains("discarded instead of becoming n-1"),
        "{reason}"
    );
    assert!(!reason.contains("arch_arm64"), "{reason}");
    env.rollback().success();
    assert_eq!(files_of(&env.x86()), good_back);
    let (code, v) = env.status_json();
    assert_eq!(code, 0, "{v}");
}
