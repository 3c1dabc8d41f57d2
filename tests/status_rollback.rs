//! `gapferry status` and `gapferry rollback` on a real mirror built by
//! export + import through the binary.

use std::path::PathBuf;

use assert_cmd::Command;

fn gapferry() -> Command {
    Command::cargo_bin("gapferry").unwrap()
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        gapferry()
            .args(["keygen", "--unencrypted", "--secret-key"])
            .arg(root.join("k.key"))
            .arg("--public-key")
            .arg(root.join("k.pub"))
            .assert()
            .success();
        Env { _tmp: tmp, root }
    }

    fn p(&self, s: &str) -> PathBuf {
        self.root.join(s)
    }

    /// Exports linux/production (both arches) with `definitions`, then imports it.
    fn release(&self, definitions: &str, n: u8) {
        let dl = self.p(&format!("dl{n}"));
        for arch in ["x86_64", "arm64"] {
            let d = dl.join(format!("linux/production/arch_{arch}"));
            std::fs::create_dir_all(&d).unwrap();
            let body = format!("release {definitions} {arch}").repeat(100);
            std::fs::write(
                d.join("updates.zip"),
                gapferry::mde::zipcheck::tiny_zip("x", body.as_bytes()),
            )
            .unwrap();
            std::fs::write(
                d.join("manifest.json"),
                format!(r#"{{"EngineVersion": "1.1.1.1", "DefinitionVersion": "{definitions}"}}"#),
            )
            .unwrap();
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
