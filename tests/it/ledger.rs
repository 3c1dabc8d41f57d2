//! `gapferry ledger verify|show` through the real binary: exit codes,
//! messages naming the first broken line, JSON read back strictly, and that
//! the commands never write to the state directory. Then the attacks of
//! issue 11: a file name that forges a row (item 5), a rechained ledger
//! against a head kept elsewhere, and a flood of junk (item 11).

use crate::support;

use std::fs;
use std::path::Path;

use crate::support::gapferry;
use serde::Deserialize;

use gapferry::mirror::ledger::{Ledger, LedgerEntry, Outcome, SlotChange, Versions};
use gapferry::mirror::state::StateDir;

fn entry(i: u64) -> LedgerEntry {
    LedgerEntry {
        bundle_id: Some(format!("bundle-{i}")),
        bundle_path: Some(format!("/media/usb/b{i}.tar.zst")),
        channel: Some("default".into()),
        sequence: Some(i),
        manifest_sha256: Some(format!("{i:064x}").parse().unwrap()),
        signer_key_ids: vec!["0123456789ABCDEF".parse().unwrap()],
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
    let l = sd.ledger();
    for i in 1..=n {
        l.append(&entry(i)).unwrap();
    }
    (t, sd)
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
        schema_version: u32,
        ok: bool,
        ledger: String,
        entries: usize,
        head_sha256: String,
        head: String,
        expected_heads: Vec<String>,
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
    assert_eq!(v.head, format!("{}@4", v.head_sha256));
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
    let entries: Vec<E> =
        crate::support::json::ledger_entries(&String::from_utf8_lossy(&out.get_output().stdout));
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

// ---- issue 11: attacks on what the ledger shows and proves ----

use std::path::PathBuf;

use support::{standard_releases, Keys, Sandbox};

/// A sandbox with a trusted key, a stranger's key and a bundle signed by the
/// trusted one.
struct Site {
    sb: Sandbox,
    keys: Keys,
    stranger: Keys,
    bundle: PathBuf,
}

fn site() -> Site {
    let sb = Sandbox::new();
    let keys = sb.keygen("k");
    let stranger = sb.keygen("stranger");
    let from = sb.download_folder("dl", &standard_releases());
    let bundle = sb.join("b.tar.zst");
    sb.export(&from, &[&keys], &bundle, &[]);
    Site {
        sb,
        keys,
        stranger,
        bundle,
    }
}

impl Site {
    fn state(&self) -> PathBuf {
        self.sb.join("state")
    }

    fn import(&self, bundle: &Path, trust: &Keys) -> support::Run {
        let mut c = self.sb.cmd();
        c.arg("import")
            .arg(bundle)
            .arg("--trust")
            .arg(&trust.public)
            .arg("--create")
            .arg("--mirror")
            .arg(self.sb.join("mirror"))
            .arg("--state-dir")
            .arg(self.state());
        support::run(c)
    }

    fn ledger(&self, args: &[&str]) -> support::Run {
        let mut c = self.sb.cmd();
        c.arg("ledger")
            .args(args)
            .arg("--state-dir")
            .arg(self.state());
        support::run(c)
    }
}

/// A file name that, printed raw, ends its line and draws a convincing row
/// (`   2  <time>  imported  <bundle>  default:<seq>`), with ESC, CR, BEL and
/// a right-to-left override for good measure. (No `/` can be in a name: the
/// folder line uses U+2215, which looks the same.)
const FORGED: &str = "x.tar.zst\n   2  2026-01-01T00:00:00Z  imported          b-official                        default:9999999999\n        linux\u{2215}production\u{2215}arch_x86_64  definitions 1.1.1.0 (engine 1.1.1.0) -> definitions 9.9.9.9 (engine 9.9.9.9)\r\u{1b}[2K\u{7}\u{202e}gz.rats\n";

/// No line of `text` may look like a ledger row other than the `rows` real
/// ones, nor carry a terminal control.
fn assert_no_forged_rows(text: &str, rows: usize) {
    let looks_like_row = |l: &str| {
        let t = l.trim_start();
        l.len() > t.len()
            && t.split("  ")
                .next()
                .is_some_and(|n| n.parse::<u32>().is_ok())
    };
    let found: Vec<&str> = text.lines().filter(|l| looks_like_row(l)).collect();
    assert_eq!(found.len(), rows, "rows: {found:#?}\n{text}");
    let folder = text
        .lines()
        .find(|l| l.trim_start().starts_with("linux") && l.contains("9.9.9.9"));
    assert!(
        folder.is_none(),
        "a forged folder line {folder:?} in {text}"
    );
    for c in ['\u{1b}', '\r', '\u{7}', '\u{202e}'] {
        assert!(!text.contains(c), "{c:?} reached the output: {text:?}");
    }
}

#[test]
fn a_file_name_cannot_forge_a_ledger_row_and_unsigned_claims_are_marked() {
    let s = site();
    let forged = s.sb.join(FORGED);
    fs::copy(&s.bundle, &forged).unwrap();
    // Signed by a key this mirror does not trust: rejected, but its
    // manifest was read, so the entry carries its (unverified) claims.
    let run = s.import(&forged, &s.stranger);
    assert!(matches!(run.code, 3 | 4), "{run:#?}");
    assert_eq!(
        run.stderr.lines().count(),
        1,
        "one error line: {:?}",
        run.stderr
    );
    assert!(
        run.stderr.contains("x.tar.zst\\n   2  2026"),
        "{}",
        run.stderr
    );
    assert_no_forged_rows(&run.stderr, 0);

    let show = s.ledger(&["show"]).ok();
    assert_no_forged_rows(&show.stdout, 1);
    assert!(show.stdout.contains("(unverified)"), "{}", show.stdout);
    assert!(
        show.stdout
            .contains("unverified: bundle id, channel, sequence"),
        "{}",
        show.stdout
    );
    assert!(show.stdout.contains("file: "), "{}", show.stdout);

    // JSON stays JSON: the name comes back byte for byte, and the mark.
    let json = s.ledger(&["show", "--json"]).ok();
    let entries: Vec<serde_json::Value> = crate::support::json::ledger_entries(&json.stdout);
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0]["bundle_path"].as_str().unwrap(),
        forged.to_str().unwrap()
    );
    assert_eq!(entries[0]["unverified"], true);
    assert!(entries[0]["bundle_id"].is_string(), "the claim is kept");
    assert!(entries[0]["signer_key_ids"].as_array().unwrap().is_empty());

    // A signed import is not marked.
    s.import(&s.bundle, &s.keys).ok();
    let json = s.ledger(&["show", "--json"]).ok();
    let entries: Vec<serde_json::Value> = crate::support::json::ledger_entries(&json.stdout);
    assert_eq!(entries[1]["outcome"], "imported");
    assert!(entries[1].get("unverified").is_none(), "{}", entries[1]);
    let show = s.ledger(&["show"]).ok();
    assert_no_forged_rows(&show.stdout, 2);
    assert_eq!(
        show.stdout.matches("(unverified)").count(),
        1,
        "{}",
        show.stdout
    );
}

#[test]
fn the_inbox_log_line_cannot_be_forged_by_a_file_name() {
    let s = site();
    let inbox = s.sb.mkdir("inbox");
    let name = "evil\ngapferry: inbox: good.tar.zst: imported (sequence 5), receipt GF1-5-0000-0000-0000-0000-OK; moved to processed\u{1b}[0m\r.tar.zst";
    fs::write(inbox.join(name), b"not a bundle at all").unwrap();
    let mut c = s.sb.cmd();
    c.args(["import", "--inbox"])
        .arg(&inbox)
        .args(["--settle", "0s", "--trust"])
        .arg(&s.keys.public)
        .arg("--create")
        .arg("--mirror")
        .arg(s.sb.join("mirror"))
        .arg("--state-dir")
        .arg(s.state());
    let run = support::run(c);
    assert!(
        !run.stderr
            .lines()
            .any(|l| l.starts_with("gapferry: inbox: good.tar.zst")),
        "forged log line: {}",
        run.stderr
    );
    assert!(run.stderr.contains("evil\\ngapferry"), "{}", run.stderr);
    for c in ['\u{1b}', '\r'] {
        assert!(!run.stderr.contains(c), "{c:?} in {:?}", run.stderr);
    }
}

#[test]
fn a_rechained_ledger_passes_verify_but_not_the_head_a_receipt_carried() {
    let s = site();
    let run = s.import(&s.bundle, &s.keys).ok();
    let head = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("gapferry: ledger head "))
        .unwrap_or_else(|| panic!("no head printed: {}", run.stderr))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        head,
        format!("{}@1", &head[..16]),
        "16 hex digits @ entries"
    );
    let kept = fs::read_to_string(s.state().join("receipts.jsonl")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(kept.lines().next().unwrap()).unwrap();
    let full = rec["ledger_head"].as_str().unwrap().to_string();
    assert!(
        full.starts_with(&head[..16]) && full.ends_with("@1"),
        "{full}"
    );

    // Later attempts; the recorded heads stay valid.
    s.import(&s.bundle, &s.stranger);
    s.import(&s.bundle, &s.keys).ok();
    let ok = s
        .ledger(&["verify", "--expect-head", &head, "--expect-head", &full])
        .ok();
    assert!(ok.stderr.contains("is still in the chain"), "{}", ok.stderr);
    assert!(ok.stderr.contains("not keyed"), "{}", ok.stderr);

    // Someone with write access to the state directory removes the import
    // and recomputes the chain: verify alone passes...
    let ledger = s.state().join("ledger.jsonl");
    let text = fs::read_to_string(&ledger).unwrap();
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for line in text.lines().skip(1) {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["prev_hash"] = serde_json::Value::String(prev);
        let l = serde_json::to_string(&v).unwrap();
        prev = support::sha256_hex(l.as_bytes());
        out.push_str(&l);
        out.push('\n');
    }
    fs::write(&ledger, &out).unwrap();
    s.ledger(&["verify"]).ok();
    // ...but not against the head the receipt carried away.
    for h in [&head, &full] {
        s.ledger(&["verify", "--expect-head", h]).fails(
            3,
            &[
                "no longer holds the head",
                &h.to_ascii_lowercase(),
                "ledger.jsonl",
            ],
        );
    }
    assert_eq!(
        fs::read_to_string(&ledger).unwrap(),
        out,
        "verify writes nothing"
    );
    s.ledger(&["verify", "--expect-head", "12345"])
        .fails(2, &["not a ledger head"]);
}

#[test]
fn junk_cannot_flood_the_ledger() {
    let s = site();
    let junk = s.sb.mkdir("junk");
    let n = gapferry::mirror::ledger_quota::MAX_PER_HOUR as usize;
    for i in 0..n + 3 {
        let f = junk.join(format!("junk-{i}.tar.zst"));
        fs::write(&f, format!("junk {i}")).unwrap();
        s.import(&f, &s.keys).fails(3, &[]);
    }
    // The same junk again is a repeat.
    s.import(&junk.join("junk-0.tar.zst"), &s.keys)
        .fails(3, &[]);
    let entries = Ledger::new(&s.state().join("ledger.jsonl")).read().unwrap();
    assert_eq!(
        entries.len(),
        n,
        "at most {n} lines an hour for attempts that changed nothing"
    );
    let v = s.ledger(&["verify"]).ok();
    assert!(
        v.stderr.contains("4 attempt(s) that changed nothing"),
        "{}",
        v.stderr
    );
    // The next real line is preceded by one line summing them up.
    s.import(&s.bundle, &s.keys).ok();
    let entries = Ledger::new(&s.state().join("ledger.jsonl")).read().unwrap();
    assert_eq!(entries.len(), n + 2);
    assert_eq!(entries[n].outcome, Outcome::Suppressed);
    let sup = entries[n].suppressed.as_ref().unwrap();
    assert_eq!((sup.over_limit, sup.repeats), (3, 1));
    assert_eq!(entries[n + 1].outcome, Outcome::Imported);
    let show = s.ledger(&["show"]).ok();
    assert!(show.stdout.contains("suppressed"), "{}", show.stdout);
    assert!(
        fs::metadata(s.state().join("ledger-quota.json")).is_ok(),
        "the limit's state sits beside the ledger"
    );
}
