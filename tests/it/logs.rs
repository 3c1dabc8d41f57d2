//! One line per event from the inbox job and fetch (`--log-format`), and the
//! automatic choice of the key=value form when stderr is the systemd
//! journal (`JOURNAL_STREAM`). A hostile file name (a newline followed by a
//! forged event) must stay inside its own line in every form.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::fetch_mock::{gapferry, Mock, Release};
use crate::support::import::Fx;
use crate::support::Run;

const X64: &str = "linux/production/arch_x86_64";
const HOSTILE: &str = "evil\nlevel=error event=inbox.bundle outcome=imported\u{1b}[2K.tar.zst";

/// An inbox with one good bundle and one junk file with a hostile name.
fn inbox(fx: &Fx) -> (PathBuf, PathBuf) {
    let k = fx.key("k");
    let rel = fx.releases(&k, &[X64], 1..=1);
    let dir = fx.root.join("inbox");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(&rel[0].1, dir.join("good.tar.zst")).unwrap();
    fs::write(dir.join(HOSTILE), b"not a bundle").unwrap();
    (dir, k.public.clone())
}

fn inbox_cmd(fx: &Fx, dir: &Path, trust: &Path) -> Command {
    let mut c = fx.cmd();
    c.arg("import")
        .arg("--inbox")
        .arg(dir)
        .args(["--settle", "0s", "--trust"])
        .arg(trust)
        .arg("--mirror")
        .arg(&fx.mirror)
        .arg("--state-dir")
        .arg(&fx.state)
        .env_remove("JOURNAL_STREAM");
    c
}

/// Splits a kv line into its keys and raw values, honouring quotes.
fn kv(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        value.push(c);
                        value.push(chars.next().unwrap());
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
            chars.next(); // the space
        } else {
            value = chars.by_ref().take_while(|c| *c != ' ').collect();
        }
        out.push((key, value));
    }
    out
}

#[test]
fn inbox_kv_lines_keep_a_hostile_name_in_its_field() {
    let fx = Fx::new();
    let (dir, trust) = inbox(&fx);
    let mut c = inbox_cmd(&fx, &dir, &trust);
    c.args(["--log-format", "kv"]);
    let r = fx.run(c);
    assert_eq!(r.code, 3, "{r:#?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "one line per bundle: {r:#?}");
    let mut outcomes = Vec::new();
    for l in &lines {
        assert!(!l.contains('\u{1b}'), "{l}");
        let pairs = kv(l);
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(&keys[..3], ["time", "level", "event"], "{l}");
        assert_eq!(pairs[2].1, "inbox.bundle");
        assert_eq!(keys.iter().filter(|k| **k == "outcome").count(), 1, "{l}");
        assert_eq!(*keys.last().unwrap(), "msg");
        let get = |k: &str| pairs.iter().find(|(x, _)| x == k).unwrap().1.clone();
        outcomes.push((get("bundle"), get("outcome"), get("level")));
        // The sentence is escaped once, like the fields (not \\n).
        assert!(get("msg").starts_with(&get("bundle")), "{}", get("msg"));
    }
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            (
                r"evil\nlevel=error event=inbox.bundle outcome=imported\u{1b}[2K.tar.zst"
                    .to_string(),
                "rejected".to_string(),
                "warning".to_string()
            ),
            (
                "good.tar.zst".to_string(),
                "imported".to_string(),
                "info".to_string()
            ),
        ]
    );
}

#[test]
fn inbox_json_lines_round_trip_the_name() {
    let fx = Fx::new();
    let (dir, trust) = inbox(&fx);
    let mut c = inbox_cmd(&fx, &dir, &trust);
    c.args(["--log-format", "json"]);
    let r = fx.run(c);
    assert_eq!(r.code, 3, "{r:#?}");
    let events: Vec<serde_json::Value> = r
        .stderr
        .lines()
        .map(|l| {
            assert!(!l.contains('\u{1b}'), "{l}");
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .collect();
    assert_eq!(events.len(), 2, "{r:#?}");
    let bad = events.iter().find(|e| e["outcome"] == "rejected").unwrap();
    assert_eq!(bad["bundle"], HOSTILE);
    assert!(
        bad["msg"].as_str().unwrap().starts_with(HOSTILE),
        "the sentence holds the raw name: {}",
        bad["msg"]
    );
    assert_eq!(bad["exit_code"], 3);
    assert_eq!(bad["event"], "inbox.bundle");
    assert!(bad["moved_to"].as_str().unwrap().contains("rejected"));
    let good = events.iter().find(|e| e["outcome"] == "imported").unwrap();
    assert_eq!(good["bundle"], "good.tar.zst");
    assert!(good["receipt"].is_string());
    assert!(good["ledger_head"].is_string());
}

/// Runs `c` with stderr going to a file, as systemd connects a service to
/// the journal, and `JOURNAL_STREAM` naming that file (or not).
fn with_journal(mut c: Command, fx: &Fx, names_stderr: bool) -> (i32, String) {
    let log = fx.root.join(if names_stderr { "journal" } else { "other" });
    let f = fs::File::create(&log).unwrap();
    let other = fs::metadata(&fx.root).unwrap();
    let meta = f.metadata().unwrap();
    let stream = if names_stderr {
        format!("{}:{}", meta.dev(), meta.ino())
    } else {
        format!("{}:{}", other.dev(), other.ino())
    };
    let status = c
        .env("JOURNAL_STREAM", stream)
        .stderr(Stdio::from(f))
        .status()
        .unwrap();
    (status.code().unwrap(), fs::read_to_string(&log).unwrap())
}

#[test]
fn auto_is_kv_under_the_journal_only() {
    let fx = Fx::new();
    let (dir, trust) = inbox(&fx);
    let (code, text) = with_journal(inbox_cmd(&fx, &dir, &trust), &fx, false);
    assert_eq!(code, 3);
    assert!(
        text.lines().all(|l| l.starts_with("gapferry: inbox: ")),
        "JOURNAL_STREAM names another file: text\n{text}"
    );
    // The junk was moved to rejected/ and the good bundle to processed/;
    // put both back for the second pass.
    fs::rename(dir.join("rejected").join(HOSTILE), dir.join(HOSTILE)).unwrap();
    let (code, text) = with_journal(inbox_cmd(&fx, &dir, &trust), &fx, true);
    assert_eq!(code, 3);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("time=") && text.contains(" event=inbox.bundle "),
        "stderr is the journal: kv\n{text}"
    );
}

#[test]
fn fetch_json_lines() {
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.100.0"));
    let dir = tempfile::tempdir().unwrap();
    let out = gapferry()
        .arg("fetch")
        .arg("--download-folder")
        .arg(dir.path())
        .args(["--upstream", &mock.base])
        .args(["--platform", "linux", "--arch", "x86_64"])
        .args(["--log-format", "json"])
        .output()
        .unwrap();
    let r = Run::from_output(out);
    assert_eq!(r.code, 0, "{r:#?}");
    let events: Vec<serde_json::Value> = r
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(events
        .iter()
        .all(|e| e["time"].is_string() && e["level"].is_string() && e["msg"].is_string()));
    assert!(events.iter().any(|e| e["event"] == "fetch.log"));
    let items: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "fetch.item")
        .collect();
    assert_eq!(items.len(), 1, "{r:#?}");
    assert_eq!(items[0]["path"], X64);
    assert_eq!(items[0]["outcome"], "updated");
    assert_eq!(items[0]["definition_version"], "1.419.100.0");
    let done: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "fetch.done")
        .collect();
    assert_eq!(done.len(), 1, "{r:#?}");
    assert_eq!(done[0]["updated"], 1);
    assert_eq!(done[0]["failed"], 0);
    assert_eq!(
        events.last().unwrap()["event"],
        "fetch.done",
        "the counts come last"
    );
    assert!(
        !r.stderr.contains("fetch summary"),
        "no multi-line block in the event forms"
    );
}

#[test]
fn bad_log_format_is_a_usage_error() {
    let fx = Fx::new();
    let mut c = fx.cmd();
    c.args(["fetch", "--log-format", "xml", "--download-folder", "x"]);
    fx.run(c)
        .fails(2, &["xml", "possible values: auto, text, kv, json"]);
}
