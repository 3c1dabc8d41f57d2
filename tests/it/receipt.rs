//! Import receipts: `import` prints a phone-sized receipt and keeps it in
//! the state directory; `inspect BUNDLE --receipt TEXT` on the online side
//! says whether it names that bundle (0), another one (1), or is no receipt (2).

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};

use support::{standard_releases, FakeRelease, Keys, Sandbox};

struct Setup {
    sb: Sandbox,
    keys: Keys,
    bundle: PathBuf,
}

fn setup() -> Setup {
    let sb = Sandbox::new();
    let keys = sb.keygen("k");
    let from = sb.download_folder("dl", &standard_releases());
    let bundle = sb.join("b.tar.zst");
    sb.export(&from, &[&keys], &bundle, &[]);
    Setup { sb, keys, bundle }
}

impl Setup {
    fn import(&self, bundle: &Path) -> support::Run {
        let mirror = self.sb.join("mirror");
        let state = self.sb.join("state");
        self.sb
            .run([
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
            .ok()
    }

    fn check(&self, bundle: &Path, receipt: &str, extra: &[&str]) -> support::Run {
        let mut c = self.sb.cmd();
        c.arg("inspect")
            .arg(bundle)
            .arg("--receipt")
            .arg(receipt)
            .args(extra);
        support::run(c)
    }
}

/// The receipt on an import's stderr.
fn receipt_of(run: &support::Run) -> String {
    let line = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("gapferry: receipt "))
        .unwrap_or_else(|| panic!("no receipt printed: {run:#?}"));
    line.split_whitespace().next().unwrap().to_string()
}

fn manifest_sha(s: &Setup) -> (u64, String) {
    let run =
        s.sb.run(["inspect".as_ref(), s.bundle.as_os_str(), "--json".as_ref()])
            .ok();
    let i: support::json::Inspect = support::json::parse(&run.stdout);
    (i.sequence, i.manifest_sha256)
}

#[test]
fn import_prints_and_keeps_a_short_receipt() {
    let s = setup();
    let (seq, sha) = manifest_sha(&s);
    let first = receipt_of(&s.import(&s.bundle));
    let hex = &sha[..16];
    assert_eq!(
        first,
        format!(
            "GF1-{seq}-{}-{}-{}-{}-OK",
            &hex[..4],
            &hex[4..8],
            &hex[8..12],
            &hex[12..]
        )
    );
    assert!(first.len() <= 45, "short enough to read out: {first}");
    let again = receipt_of(&s.import(&s.bundle));
    assert_eq!(again, first.replace("-OK", "-DUP"));

    let kept = fs::read_to_string(s.sb.join("state/receipts.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = kept
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["receipt"], first.as_str());
    assert_eq!(lines[0]["outcome"], "OK");
    assert_eq!(lines[0]["manifest_sha256"], sha.as_str());
    assert_eq!(lines[0]["sequence"], seq);
    assert_eq!(lines[1]["receipt"], again.as_str());
    assert_eq!(lines[1]["outcome"], "DUP");
}

#[test]
fn a_refused_import_gets_no_receipt() {
    let s = setup();
    let stranger = s.sb.keygen("stranger");
    let mut c = s.sb.cmd();
    c.arg("import")
        .arg(&s.bundle)
        .arg("--trust")
        .arg(&stranger.public)
        .arg("--create")
        .arg("--mirror")
        .arg(s.sb.join("mirror"))
        .arg("--state-dir")
        .arg(s.sb.join("state"));
    let run = support::run(c).fails(3, &["no signature by a trusted key"]);
    assert!(!run.stderr.contains("receipt"), "{run:#?}");
    assert!(!s.sb.join("state/receipts.jsonl").exists());
}

#[test]
fn inspect_receipt_matches_the_bundle_it_names() {
    let s = setup();
    let receipt = receipt_of(&s.import(&s.bundle));
    let run = s.check(&s.bundle, &receipt, &[]).ok();
    assert!(run.stderr.contains("matches"), "{run:#?}");
    // As read over the phone: lower case, spaces, no dashes.
    let spoken = receipt.replace('-', " ").to_lowercase();
    s.check(&s.bundle, &spoken, &[]).ok();
    let run = s.check(&s.bundle, &receipt, &["--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["matches"], true);
    assert_eq!(v["outcome"], "imported");
    assert_eq!(v["expected"], receipt.as_str());
}

#[test]
fn inspect_receipt_of_another_bundle_does_not_match() {
    let s = setup();
    let receipt = receipt_of(&s.import(&s.bundle));
    // A newer bundle of other definitions: its receipt differs.
    let from2 =
        s.sb.download_folder(
            "dl2",
            &[FakeRelease::new("linux", "production", "x86_64")
                .versions("1.1.24100.1", "1.419.200.0")],
        );
    let other = s.sb.join("other.tar.zst");
    s.sb.export(&from2, &[&s.keys], &other, &[]);
    let run = s.check(&other, &receipt, &[]);
    run.fails(1, &["does NOT match", "other.tar.zst", "read it again"]);
    // One misheard hex digit.
    let pos = receipt.len() - 4;
    let mut misheard = receipt.clone().into_bytes();
    misheard[pos] = if misheard[pos] == b'0' { b'1' } else { b'0' };
    let misheard = String::from_utf8(misheard).unwrap();
    s.check(&s.bundle, &misheard, &[])
        .fails(1, &["does NOT match"]);
    let run = s.check(&s.bundle, &misheard, &["--json"]);
    assert_eq!(run.code, 1);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["matches"], false);
}

#[test]
fn inspect_receipt_refuses_text_that_is_no_receipt() {
    let s = setup();
    s.check(&s.bundle, "GF1-12-abcd-OK", &[])
        .fails(2, &["not a gapferry receipt", "--receipt"]);
}

#[test]
fn receipt_of_a_split_bundle() {
    let s = setup();
    let from = s.sb.join("dl");
    s.sb.mkdir("vol");
    let out = s.sb.join("vol/s.tar.zst");
    s.sb.export(&from, &[&s.keys], &out, &["--split", "400"]);
    let receipt = receipt_of(&s.import(&s.sb.join("vol")));
    s.check(&s.sb.join("vol/s.tar.zst.001"), &receipt, &[]).ok();
    s.check(&s.bundle, &receipt, &[])
        .fails(1, &["does NOT match"]);
}

#[test]
fn import_json_carries_the_receipt_and_stderr_stays_quiet() {
    let s = setup();
    let mut c = s.sb.cmd();
    c.arg("import")
        .arg(&s.bundle)
        .arg("--trust")
        .arg(&s.keys.public)
        .arg("--create")
        .arg("--mirror")
        .arg(s.sb.join("mirror"))
        .arg("--state-dir")
        .arg(s.sb.join("state"))
        .arg("--json");
    let run = support::run(c).ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let receipt = v["receipt"].as_str().expect("a receipt in --json");
    assert!(receipt.starts_with("GF1-") && receipt.ends_with("-OK"));
    assert!(!run.stderr.contains("receipt"), "{run:#?}");
    s.check(&s.bundle, receipt, &[]).ok();
}
