//! `gapferry ledger verify|show` through the real binary: exit codes,
//! messages naming the first broken line, JSON read back strictly, and that
//! the commands never write to the state directory.

use std::fs;
use std::path::Path;

use assert_cmd::Command;
use serde::Deserialize;

use gapferry::mirror::ledger::{Ledger, LedgerEntry, Outcome, SlotChange, Versions};
use gapferry::mirror::state::StateDir;

fn entry(i: u64) -> LedgerEntry {
    LedgerEntry {
        bundle_id: Some(format!("bundle-{i}")),
        bundle_path: Some(format!("/media/usb/b{i}.tar.zst")),
        channel: Some("default".into()),
        sequence: Some(i),
        manifest_sha256: Some(format!("{i:064x}")),
        signer_key_ids: vec!["0123456789ABCDEF".into()],
        allow_downgrade: i == 3,
        reason: (i == 2).then(|| "older than served".to_string()),
        slots: vec![SlotChange {
            slot: "linux/production/arch_x86_64".into(),
            before: Some(Versions {
                engine_version: "1.1.1.0".into(),
                definition_version: format!("1.400.{}.0", i - 1),
            }),
            after: Some(Versions {
                engine_version: "1.1.1.0".into(),
                definition_version: format!("1.400.{i}.0"),
            }),
        }],
        ..LedgerEntry::new(if i == 2 {
            Outcome::Refused
        } else {
            Outcome::Imported
        })
    }
}

fn state_with(n: u64) -> (tempfile::TempDir, StateDir) {
    let t = tempfile::tempdir().unwrap();
    let sd = StateDir::open(&t.path().join("state")).unwrap();
    let l = Ledger::in_state_dir(&sd);
    for i in 1..=n {
        l.append(&entry(i)).unwrap();
    }
    (t, sd)
}

fn gapferry() -> Command {
    Command::cargo_bin("gapferry").unwrap()
}

fn dir_listing(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn verify_intact_chain() {
    let (_t, sd) = state_with(4);
    let before = dir_listing(sd.path());
    let out = gapferry()
        .args(["ledger", "verify", "--state-dir"])
        .arg(sd.path())
        .assert()
        .success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("4 entries, hash chain intact"), "{err}");

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct V {
        ledger: String,
        entries: usize,
        head_sha256: String,
        due: Option<serde_json::Value>,
    }
    let out = gapferry()
        .args(["ledger", "verify", "--json", "--state-dir"])
        .arg(sd.path())
        .assert()
        .success();
    let v: V = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v.entries, 4);
    assert_eq!(v.head_sha256.len(), 64);
    assert!(v.due.is_none(), "nothing due after complete imports");
    assert_eq!(dir_listing(sd.path()), before, "verify writes nothing");
}

#[test]
fn tampered_middle_line_exits_3_naming_it() {
    let (_t, sd) = state_with(5);
    let text = fs::read_to_string(sd.ledger_path()).unwrap();
    let tampered = text.replacen("bundle-2", "bundle-7", 1);
    fs::write(sd.ledger_path(), &tampered).unwrap();
    for sub in ["verify", "show"] {
        let out = gapferry()
            .args(["ledger", sub, "--state-dir"])
            .arg(sd.path())
            .assert()
            .code(3);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(err.contains("broken at line 3"), "{sub}: {err}");
        assert!(err.contains("line 2 was edited"), "{sub}: {err}");
        assert!(
            err.contains(&sd.ledger_path().display().to_string()),
            "{err}"
        );
        assert!(
            out.get_output().stdout.is_empty(),
            "{sub}: no partial output"
        );
    }
    assert_eq!(fs::read_to_string(sd.ledger_path()).unwrap(), tampered);
}

#[test]
fn deleted_line_exits_3() {
    let (_t, sd) = state_with(4);
    let text = fs::read_to_string(sd.ledger_path()).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(1);
    fs::write(sd.ledger_path(), lines.join("\n") + "\n").unwrap();
    let out = gapferry()
        .args(["ledger", "verify", "--state-dir"])
        .arg(sd.path())
        .assert()
        .code(3);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("broken at line 2"), "{err}");
}

#[test]
fn show_json_and_table() {
    let (_t, sd) = state_with(3);

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Ver {
        engine_version: String,
        definition_version: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Change {
        slot: String,
        before: Option<Ver>,
        after: Option<Ver>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct E {
        time: String,
        outcome: String,
        reason: Option<String>,
        bundle_path: Option<String>,
        bundle_id: Option<String>,
        manifest_sha256: Option<String>,
        signer_key_ids: Vec<String>,
        channel: Option<String>,
        sequence: Option<u64>,
        allow_downgrade: bool,
        slots: Vec<Change>,
        prev_hash: String,
    }
    let out = gapferry()
        .args(["ledger", "show", "--json", "--state-dir"])
        .arg(sd.path())
        .assert()
        .success();
    let entries: Vec<E> = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[1].outcome, "refused");
    assert_eq!(entries[0].prev_hash, "0".repeat(64));
    assert!(entries[2].allow_downgrade);

    let out = gapferry()
        .args(["ledger", "show", "--state-dir"])
        .arg(sd.path())
        .assert()
        .success();
    let table = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(table.contains("bundle-2"), "{table}");
    assert!(table.contains("refused"), "{table}");
    assert!(table.contains("reason: older than served"), "{table}");
    assert!(table.contains("(--allow-downgrade)"), "{table}");
    assert!(
        table.contains(
            "linux/production/arch_x86_64  definitions 1.400.2.0 (engine 1.1.1.0) -> \
             definitions 1.400.3.0 (engine 1.1.1.0)"
        ),
        "{table}"
    );
}

#[test]
fn missing_ledger_or_state_dir_exits_1_and_usage_exits_2() {
    let t = tempfile::tempdir().unwrap();
    let out = gapferry()
        .args(["ledger", "verify", "--state-dir"])
        .arg(t.path().join("nope"))
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("nope"), "{err}");
    assert!(!t.path().join("nope").exists(), "nothing created");

    let out = gapferry()
        .args(["ledger", "verify", "--state-dir"])
        .arg(t.path())
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("no ledger at") && err.contains("--state-dir"),
        "{err}"
    );

    gapferry().args(["ledger", "verify"]).assert().code(2);
    gapferry()
        .args(["ledger", "verify", "--state-dir", "a", "--mirror", "b"])
        .assert()
        .code(2);
}
