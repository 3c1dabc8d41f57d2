//! `gapferry fetch` through the real binary against an in-process mock of
//! Microsoft's fwlink endpoints. Every failure case checks the exit code,
//! the message, and that the download folder is byte-for-byte unchanged.

use crate::support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde::Deserialize;

use support::fetch_mock::{gapferry, Fault, Mock, Release, TestCa, PROXY_VARS};
use support::{attacker_flock, Run};

/// `gapferry fetch` into `dir` from `mock`, with fast retries.
fn fetch(mock: &Mock, dir: &Path) -> Command {
    let mut c = gapferry();
    c.arg("fetch")
        .arg("--download-folder")
        .arg(dir)
        .args(["--upstream", &mock.base])
        .args(["--retry-delay", "10ms"]);
    c
}

fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().unwrap();
    Run::from_output(out)
}

/// A run the test kills on purpose: the signal that ended it (None when it
/// exited) and its exit code otherwise, with stderr.
fn run_killable(cmd: &mut Command) -> (Option<i32>, Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    let out = cmd.output().unwrap();
    (
        out.status.signal(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file and folder under `dir` with its bytes (folders map to None).
fn snapshot(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else {
                out.insert(rel, Some(fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn manifest(dir: &Path, rel: &str) -> serde_json::Value {
    serde_json::from_slice(&fs::read(dir.join(rel).join("manifest.json")).unwrap()).unwrap()
}

fn zip_text(dir: &Path, rel: &str) -> String {
    String::from_utf8_lossy(&fs::read(dir.join(rel).join("updates.zip")).unwrap()).into_owned()
}

fn assert_no_temp_files(dir: &Path) {
    for path in snapshot(dir).keys() {
        assert!(!path.contains(".gapferry-fetch-"), "left behind: {path}");
        assert!(!path.ends_with(".swap"), "left behind: {path}");
        assert!(!path.contains(".gapferry-staging-"), "left behind: {path}");
    }
}

const X64: &str = "linux/production/arch_x86_64";

/// What a fetch that failed leaves in a folder that was empty: its private
/// lock file, empty and mode 0600 (nothing else, and no package).
fn only_the_lock(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    use std::os::unix::fs::PermissionsExt;
    let lock = dir.join(gapferry::mde::fetch::LOCK_FILE);
    assert_eq!(
        fs::symlink_metadata(&lock).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    BTreeMap::from([(
        gapferry::mde::fetch::LOCK_FILE.to_string(),
        Some(Vec::new()),
    )])
}

/// One slot fetched, then the release moves on to `next`: the starting
/// point of the failure tests.
fn fetched_once(next: Release) -> (Mock, tempfile::TempDir, BTreeMap<String, Option<Vec<u8>>>) {
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.100.0"));
    let dir = tempfile::tempdir().unwrap();
    let r = run(fetch(&mock, dir.path()).args(["--platform", "linux", "--arch", "x86_64"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    mock.with(|s| s.default = Some(next));
    let before = snapshot(dir.path());
    (mock, dir, before)
}

// The --json document, read back strictly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct JsonReport {
    schema_version: u32,
    ok: bool,
    error: Option<crate::support::json::Error>,
    download_folder: String,
    upstream: String,
    updated: usize,
    unchanged: usize,
    failed: usize,
    items: Vec<JsonItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct JsonItem {
    platform: String,
    ring: String,
    arch: String,
    path: String,
    outcome: String,
    engine_version: Option<String>,
    definition_version: Option<String>,
    previous: Option<JsonVersions>,
    backed_up: bool,
    bytes: u64,
    sha256: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonVersions {
    engine_version: String,
    definition_version: String,
}

#[test]
fn first_fetch_lays_out_the_folder() {
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.184.0"));
    let dir = tempfile::tempdir().unwrap();
    let r = run(fetch(&mock, dir.path()).arg("--json"));
    assert_eq!(r.code, 0, "{}", r.stderr);

    let rels = [
        "linux/production/arch_x86_64",
        "linux/production/arch_arm64",
        "mac/production/arch_x86_64",
        "mac/production/arch_arm64",
    ];
    for rel in rels {
        let m = manifest(dir.path(), rel);
        assert_eq!(
            m,
            serde_json::json!({"EngineVersion": "1.1.24080.9", "DefinitionVersion": "1.419.184.0"})
        );
        let key = rel.replace("/arch_", "/");
        assert!(zip_text(dir.path(), rel).contains(&format!("slot {key} ")));
        assert!(zip_text(dir.path(), rel).starts_with("PK\u{3}\u{4}"));
    }
    let all = snapshot(dir.path());
    assert!(!all
        .keys()
        .any(|k| k.contains("preview") || k.contains("_back")));
    assert_no_temp_files(dir.path());

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path().join(X64)), 0o755);
        assert_eq!(mode(dir.path().join(X64).join("updates.zip")), 0o644);
        assert_eq!(mode(dir.path().join(X64).join("manifest.json")), 0o644);
    }

    // The query strings are the ones Microsoft's script builds.
    let reqs = mock.with(|s| s.requests.clone());
    for q in [
        "/fwlink/?linkid=2144709&action=info",
        "/fwlink/?linkid=2144709",
        "/fwlink/?linkid=2144709&arch=arm64&action=info",
        "/fwlink/?linkid=2120136&arch=arm64",
    ] {
        assert!(reqs.iter().any(|r| r == q), "{q} not in {reqs:?}");
    }

    let j: JsonReport = serde_json::from_str(&r.stdout).unwrap();
    assert!(j.ok);
    assert_eq!((j.updated, j.unchanged, j.failed), (4, 0, 0));
    assert_eq!(j.items.len(), 4);
    let first = &j.items[0];
    assert_eq!(first.path, X64);
    assert_eq!(first.outcome, "updated");
    assert_eq!(first.definition_version.as_deref(), Some("1.419.184.0"));
    assert!(first.previous.is_none() && !first.backed_up && first.error.is_none());
    assert!(first.bytes > 4096);
    let zip = fs::read(dir.path().join(X64).join("updates.zip")).unwrap();
    assert_eq!(first.bytes, zip.len() as u64);
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&zip))
    };
    assert_eq!(first.sha256.as_deref(), Some(digest.as_str()));
    assert!(
        r.stderr.contains(&format!("sha256 {digest}")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("4 updated, 0 unchanged, 0 failed"),
        "{}",
        r.stderr
    );
}

#[test]
fn unchanged_versions_download_nothing() {
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.184.0"));
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run(&mut fetch(&mock, dir.path())).code, 0);
    let hits = mock.package_hits();
    assert_eq!(hits, 4);
    let before = snapshot(dir.path());

    let r = run(fetch(&mock, dir.path()).arg("--json"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(mock.package_hits(), hits, "nothing downloaded");
    assert_eq!(snapshot(dir.path()), before);
    assert!(
        r.stderr.contains(&format!("{X64}: unchanged")),
        "{}",
        r.stderr
    );
    let j: JsonReport = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!((j.updated, j.unchanged, j.failed), (0, 4, 0));
    assert!(j
        .items
        .iter()
        .all(|i| i.outcome == "unchanged" && i.bytes == 0));
}

#[test]
fn new_version_rotates_the_previous_set_into_back() {
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.100.0"));
    let dir = tempfile::tempdir().unwrap();
    let only = ["--platform", "linux", "--arch", "x86_64"];
    assert_eq!(run(fetch(&mock, dir.path()).args(only)).code, 0);
    let first_zip = fs::read(dir.path().join(X64).join("updates.zip")).unwrap();

    mock.with(|s| s.default = Some(Release::new("1.1.24090.1", "1.419.200.0")));
    let r = run(fetch(&mock, dir.path()).args(only).arg("--json"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let back = "linux/production_back/arch_x86_64";
    assert_eq!(
        manifest(dir.path(), X64)["DefinitionVersion"],
        "1.419.200.0"
    );
    assert_eq!(
        manifest(dir.path(), back)["DefinitionVersion"],
        "1.419.100.0"
    );
    assert_eq!(
        fs::read(dir.path().join(back).join("updates.zip")).unwrap(),
        first_zip
    );
    assert!(zip_text(dir.path(), X64).contains("definitions 1.419.200.0"));
    let j: JsonReport = serde_json::from_str(&r.stdout).unwrap();
    let prev = j.items[0].previous.as_ref().unwrap();
    assert_eq!(prev.definition_version, "1.419.100.0");
    assert_eq!(prev.engine_version, "1.1.24080.9");
    assert!(j.items[0].backed_up);
    assert!(r
        .stderr
        .contains("previous set kept in linux/production_back/arch_x86_64"));

    // n-2 goes away; only n and n-1 stay.
    mock.with(|s| s.default = Some(Release::new("1.1.24090.1", "1.419.300.0")));
    assert_eq!(run(fetch(&mock, dir.path()).args(only)).code, 0);
    assert_eq!(
        manifest(dir.path(), X64)["DefinitionVersion"],
        "1.419.300.0"
    );
    assert_eq!(
        manifest(dir.path(), back)["DefinitionVersion"],
        "1.419.200.0"
    );
    assert_no_temp_files(dir.path());

    // --no-backup replaces without touching _back.
    let back_before = snapshot(&dir.path().join("linux/production_back"));
    mock.with(|s| s.default = Some(Release::new("1.1.24090.1", "1.419.400.0")));
    assert_eq!(
        run(fetch(&mock, dir.path()).args(only).arg("--no-backup")).code,
        0
    );
    assert_eq!(
        manifest(dir.path(), X64)["DefinitionVersion"],
        "1.419.400.0"
    );
    assert_eq!(
        snapshot(&dir.path().join("linux/production_back")),
        back_before
    );
    assert_no_temp_files(dir.path());
}

#[test]
fn version_change_between_the_two_info_reads_downloads_again() {
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.100.0"));
    mock.with(|s| s.next_after_package = Some(Release::new("1.1.24080.9", "1.419.101.0")));
    let dir = tempfile::tempdir().unwrap();
    let r = run(fetch(&mock, dir.path()).args(["--platform", "linux", "--arch", "x86_64"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(mock.package_hits(), 2);
    // manifest.json and updates.zip describe the same release.
    assert_eq!(
        manifest(dir.path(), X64)["DefinitionVersion"],
        "1.419.101.0"
    );
    assert!(zip_text(dir.path(), X64).contains("definitions 1.419.101.0"));
    assert!(
        r.stderr.contains("during the download; downloading again"),
        "{}",
        r.stderr
    );
    assert_no_temp_files(dir.path());
}

#[test]
fn a_release_that_keeps_moving_fails_and_keeps_the_previous_set() {
    let (mock, dir, before) = fetched_once(Release::new("1.1.24080.9", "1.419.200.0"));
    mock.with(|s| s.bump_every_package = true);
    let r = run(fetch(&mock, dir.path()).args(["--platform", "linux", "--arch", "x86_64"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("changed release 4 times"), "{}", r.stderr);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn http_500_fails_after_retries_and_keeps_the_previous_set() {
    let (mock, dir, before) = fetched_once(Release::new("1.1.24080.9", "1.419.200.0"));
    let hits = mock.package_hits();
    mock.with(|s| s.package_fault = Some((Fault::Status(500), None)));
    let r = run(fetch(&mock, dir.path()).args([
        "--platform",
        "linux",
        "--arch",
        "x86_64",
        "--retries",
        "2",
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(mock.package_hits() - hits, 3, "one try and two retries");
    assert!(
        r.stderr.contains("answered HTTP 500 (3 attempts)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("{}?linkid=2144709", mock.base)),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("try again later"), "{}", r.stderr);
    assert!(r.stderr.contains("FAILED"), "{}", r.stderr);
    assert!(r.stderr.contains("1 of 1 items failed"), "{}", r.stderr);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_transient_503_is_retried() {
    let (mock, dir, _) = fetched_once(Release::new("1.1.24080.9", "1.419.200.0"));
    mock.with(|s| s.package_fault = Some((Fault::Status(503), Some(1))));
    let r = run(fetch(&mock, dir.path()).args(["--platform", "linux", "--arch", "x86_64"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("retrying in"), "{}", r.stderr);
    assert_eq!(
        manifest(dir.path(), X64)["DefinitionVersion"],
        "1.419.200.0"
    );
}

#[test]
fn an_html_page_with_200_is_not_a_package() {
    let (mock, dir, before) = fetched_once(Release::new("1.1.24080.9", "1.419.200.0"));
    let hits = mock.package_hits();
    mock.with(|s| s.package_fault = Some((Fault::Html, None)));
    let r = run(fetch(&mock, dir.path()).args(["--platform", "linux", "--arch", "x86_64"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("did not send a zip package"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("text/html"), "{}", r.stderr);
    assert!(r.stderr.contains("<!DOCTYPE html>"), "{}", r.stderr);
    assert_eq!(mock.package_hits() - hits, 1, "an HTML page is not retried");
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn an_html_info_page_is_not_version_info() {
    let (mock, dir, before) = fetched_once(Release::new("1.1.24080.9", "1.419.200.0"));
    mock.with(|s| s.info_fault = Some((Fault::Html, None)));
    let r = run(fetch(&mock, dir.path()).args(["--platform", "linux", "--arch", "x86_64"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("did not return Defender version info"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("&action=info"), "{}", r.stderr);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_truncated_body_is_retried_then_fails() {
    let (mock, dir, before) = fetched_once(Release::new("1.1.24080.9", "1.419.200.0"));
    let hits = mock.package_hits();
    mock.with(|s| s.package_fault = Some((Fault::Truncate, None)));
    let r = run(fetch(&mock, dir.path()).args([
        "--platform",
        "linux",
        "--arch",
        "x86_64",
        "--retries",
        "1",
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("broke off after"), "{}", r.stderr);
    assert!(r.stderr.contains("(2 attempts)"), "{}", r.stderr);
    assert_eq!(mock.package_hits() - hits, 2);
    assert_eq!(snapshot(dir.path()), before);

    // One truncated answer, then a good one: success.
    mock.with(|s| s.package_fault = Some((Fault::Truncate, Some(1))));
    let r = run(fetch(&mock, dir.path()).args(["--platform", "linux", "--arch", "x86_64"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        manifest(dir.path(), X64)["DefinitionVersion"],
        "1.419.200.0"
    );
}

#[test]
fn a_hanging_server_times_out() {
    let (mock, dir, before) = fetched_once(Release::new("1.1.24080.9", "1.419.200.0"));
    let only = ["--platform", "linux", "--arch", "x86_64"];
    let fast = ["--timeout", "300ms", "--retries", "0"];

    mock.with(|s| s.info_fault = Some((Fault::Hang, None)));
    let r = run(fetch(&mock, dir.path()).args(only).args(fast));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no answer from"), "{}", r.stderr);
    assert!(r.stderr.contains("raise --timeout"), "{}", r.stderr);
    assert_eq!(snapshot(dir.path()), before);

    mock.with(|s| {
        s.info_fault = None;
        s.package_fault = Some((Fault::HangMidBody, None));
    });
    let r = run(fetch(&mock, dir.path()).args(only).args(fast));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no answer from"), "{}", r.stderr);
    assert!(r.stderr.contains("linkid=2144709"), "{}", r.stderr);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_package_over_the_cap_is_refused() {
    let (mock, dir, before) = fetched_once(Release::new("1.1.24080.9", "1.419.200.0"));
    let only = ["--platform", "linux", "--arch", "x86_64"];
    let r = run(fetch(&mock, dir.path())
        .args(only)
        .args(["--max-package-size", "2KiB"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("over the cap of 2048"), "{}", r.stderr);
    assert!(r.stderr.contains("--max-package-size"), "{}", r.stderr);
    assert_eq!(snapshot(dir.path()), before);

    // Without Content-Length the cap holds while streaming.
    mock.with(|s| s.package_fault = Some((Fault::NoLength, None)));
    let r = run(fetch(&mock, dir.path())
        .args(only)
        .args(["--max-package-size", "2KiB"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("larger than the cap of 2048"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshot(dir.path()), before);

    // ... and a close-delimited body under the cap is fine.
    let r = run(fetch(&mock, dir.path()).args(only));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn failures_are_per_item_and_the_rest_still_update() {
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.100.0"));
    let dir = tempfile::tempdir().unwrap();
    mock.with(|s| {
        s.releases.insert(
            "mac/production/arm64".into(),
            Release::new("1.1.24080.9", "not-a-version"),
        )
    });
    let r = run(fetch(&mock, dir.path()).arg("--json"));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let j: JsonReport = serde_json::from_str(&r.stdout).unwrap();
    assert!(!j.ok);
    assert_eq!((j.updated, j.unchanged, j.failed), (3, 0, 1));
    let bad = j.items.iter().find(|i| i.outcome == "failed").unwrap();
    assert_eq!(bad.path, "mac/production/arch_arm64");
    assert!(bad.error.as_ref().unwrap().contains("<signatures>"));
    assert!(!dir.path().join("mac/production/arch_arm64").exists());
}

#[test]
fn settings_json_is_read_like_microsofts_script() {
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.100.0"));
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("wdav-update");
    let log = dir.path().join("logs/mdatp_offline_updates.log");
    fs::create_dir_all(log.parent().unwrap()).unwrap();
    fs::write(&log, "earlier run\n").unwrap();
    let settings = dir.path().join("settings.json");
    fs::write(
        &settings,
        serde_json::json!({
            "downloadFolder": folder,
            "downloadLinuxUpdates": true,
            "downloadMacUpdates": false,
            "downloadPreviewUpdates": true,
            "backupPreviousUpdates": false,
            "logFilePath": log,
            "downloadWindowsUpdates": true,
        })
        .to_string(),
    )
    .unwrap();
    let mut cmd = gapferry();
    cmd.arg("fetch").arg("--settings").arg(&settings).args([
        "--upstream",
        &mock.base,
        "--retry-delay",
        "10ms",
    ]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for rel in [
        "linux/production/arch_x86_64",
        "linux/production/arch_arm64",
        "linux/preview/arch_x86_64",
        "linux/preview/arch_arm64",
    ] {
        assert_eq!(manifest(&folder, rel)["EngineVersion"], "1.1.24080.9");
    }
    assert!(!folder.join("mac").exists());
    assert!(mock
        .with(|s| s.requests.clone())
        .iter()
        .any(|r| r == "/fwlink/?linkid=2144709&arch=arm64&engRing=3&sigRing=1&action=info"));
    assert!(
        r.stderr.contains("unknown key \"downloadWindowsUpdates\""),
        "{}",
        r.stderr
    );

    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("earlier run\n"),
        "log was truncated: {text}"
    );
    assert!(
        text.contains("linux/preview/arch_arm64: updated to engine 1.1.24080.9"),
        "{text}"
    );

    // backupPreviousUpdates false: a new release leaves no _back.
    mock.with(|s| s.default = Some(Release::new("1.1.24080.9", "1.419.101.0")));
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!folder.join("linux/production_back").exists());
    assert_eq!(
        manifest(&folder, "linux/preview/arch_x86_64")["DefinitionVersion"],
        "1.419.101.0"
    );
    let text2 = fs::read_to_string(&log).unwrap();
    assert!(text2.starts_with(&text), "log was not appended to");

    // Filters narrow what settings.json selects; asking for more is an error.
    let r = run(gapferry()
        .arg("fetch")
        .arg("--settings")
        .arg(&settings)
        .args(["--upstream", &mock.base, "--platform", "mac"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("leave nothing"), "{}", r.stderr);
}

#[test]
fn usage_errors_exit_2_and_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(gapferry().arg("fetch"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--download-folder DIR or --settings"),
        "{}",
        r.stderr
    );

    let r = run(gapferry()
        .arg("fetch")
        .arg("--download-folder")
        .arg(dir.path().join("d"))
        .args(["--upstream", "ftp://example.com/"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("ftp://example.com/"), "{}", r.stderr);

    let settings = dir.path().join("settings.json");
    fs::write(&settings, r#"{"downloadFolder": "/nonexistent/x"}"#).unwrap();
    let r = run(gapferry().arg("fetch").arg("--settings").arg(&settings));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("neither downloadLinuxUpdates nor downloadMacUpdates"),
        "{}",
        r.stderr
    );

    let r = run(gapferry()
        .arg("fetch")
        .arg("--settings")
        .arg(dir.path().join("missing.json")));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("missing.json"), "{}", r.stderr);

    let r = run(gapferry().args(["fetch", "--download-folder", "x", "--platform", "solaris"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!Path::new("x").exists());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only settings.json"
    );
}

#[test]
fn unreachable_upstream_fails_every_item_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    // Bind and drop a listener so the port is (almost certainly) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = run(gapferry()
        .arg("fetch")
        .arg("--download-folder")
        .arg(dir.path())
        .args(["--upstream", &format!("http://127.0.0.1:{port}/fwlink/")])
        .args(["--retries", "1", "--retry-delay", "10ms", "--json"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("cannot reach"), "{}", r.stderr);
    assert!(r.stderr.contains("HTTPS_PROXY"), "{}", r.stderr);
    let j: JsonReport = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j.failed, 4);
    assert_eq!(snapshot(dir.path()), only_the_lock(dir.path()));
}

#[test]
fn a_second_fetch_on_the_same_folder_is_refused() {
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.100.0"));
    let dir = tempfile::tempdir().unwrap();
    let lock = gapferry::mde::fetch::lock_download_folder(dir.path())
        .unwrap()
        .expect("tmp filesystems can lock");
    let r = run(&mut fetch(&mock, dir.path()));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("another gapferry fetch"), "{}", r.stderr);
    assert_eq!(mock.with(|s| s.requests.len()), 0);
    drop(lock);
    assert_eq!(run(&mut fetch(&mock, dir.path())).code, 0);
}

#[test]
fn another_local_user_can_stop_no_fetch() {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("note: not root; skipping a test that needs a second local user");
        return;
    }
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.100.0"));
    let t = tempfile::tempdir().unwrap();
    // A download folder other users may read, as an HTTP server needs.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = t.path().join("wdav");
    let only = ["--platform", "linux", "--arch", "x86_64"];
    let r = run(fetch(&mock, &dir).args(only));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lock = dir.join(gapferry::mde::fetch::LOCK_FILE);
    assert_eq!(
        fs::symlink_metadata(&lock).unwrap().permissions().mode() & 0o7777,
        0o600
    );

    // The folder is readable, so another user can flock it: harmless now.
    let (mut folder_holder, said) = attacker_flock(&dir);
    assert_eq!(said, "held", "nobody could not even open {}", dir.display());
    // The lock file is not: nobody cannot open it, let alone hold it.
    let (mut lock_holder, said) = attacker_flock(&lock);
    assert_eq!(said, "denied 13", "nobody could open {}", lock.display());
    let _ = lock_holder.wait();

    mock.with(|s| s.default = Some(Release::new("1.1.24080.9", "1.419.200.0")));
    let r = run(fetch(&mock, &dir).args(only));
    folder_holder.kill().unwrap();
    folder_holder.wait().unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(zip_text(&dir, X64).contains("definitions 1.419.200.0"));

    // A lock file planted as a symbolic link is refused, naming it.
    fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &lock).unwrap();
    let before = snapshot(&dir);
    let r = run(fetch(&mock, &dir).args(only));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains(".gapferry-fetch.lock"), "{}", r.stderr);
    assert_eq!(snapshot(&dir), before);
}

/// The definitions version of the set in `rel`, checking the set is whole
/// (its manifest and its updates.zip name the same release).
fn whole_set(dir: &Path, rel: &str) -> String {
    let v = manifest(dir, rel)["DefinitionVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        zip_text(dir, rel).contains(&format!("definitions {v}")),
        "{rel} mixes two sets"
    );
    v
}

#[test]
fn a_fetch_killed_at_any_publish_step_is_recovered_and_never_loses_the_old_set() {
    use gapferry::faults::{CRASH_STEPS, ENV_CRASH_AT, ENV_FORCE_FALLBACK};
    let only = ["--platform", "linux", "--arch", "x86_64"];
    let back = "linux/production_back/arch_x86_64";
    for fallback in [false, true] {
        for step in CRASH_STEPS {
            let case = format!("{step} (fallback: {fallback})");
            let mock = Mock::start(Release::new("1.1.24080.9", "1.419.100.0"));
            let dir = tempfile::tempdir().unwrap();
            assert_eq!(run(fetch(&mock, dir.path()).args(only)).code, 0);
            mock.with(|s| s.default = Some(Release::new("1.1.24080.9", "1.419.200.0")));
            assert_eq!(run(fetch(&mock, dir.path()).args(only)).code, 0);
            mock.with(|s| s.default = Some(Release::new("1.1.24080.9", "1.419.300.0")));

            let mut killed = fetch(&mock, dir.path());
            killed.args(only).env(ENV_CRASH_AT, step);
            if fallback {
                killed.env(ENV_FORCE_FALLBACK, "1");
            }
            let (signal, code, stderr) = run_killable(&mut killed);
            // Every step is reached but the fallback's, unless it is forced.
            let reached = fallback || !step.ends_with("-aside");
            if reached {
                assert_eq!(signal, Some(9), "{case}: not SIGKILLed: {stderr}");
            } else {
                assert_eq!(code, Some(0), "{case}: {stderr}");
            }
            // Right after the kill: the served folder holds one whole set,
            // the old or the new, and n-1 one whole older set; only the
            // two-rename windows of the fallback may leave one of them
            // missing until the next run.
            if dir.path().join(X64).exists() {
                let v = whole_set(dir.path(), X64);
                assert!(v == "1.419.200.0" || v == "1.419.300.0", "{case}: {v}");
            } else {
                assert!(fallback && *step == "fallback-aside", "{case}: missing");
            }
            if dir.path().join(back).exists() {
                let v = whole_set(dir.path(), back);
                assert!(v == "1.419.100.0" || v == "1.419.200.0", "{case}: {v}");
            } else {
                assert!(fallback && *step == "back-aside", "{case}: n-1 missing");
            }

            // The next run recovers: the new set current, the old one n-1.
            let r = run(fetch(&mock, dir.path()).args(only));
            assert_eq!(r.code, 0, "{case}: {}", r.stderr);
            assert_eq!(whole_set(dir.path(), X64), "1.419.300.0", "{case}");
            assert_eq!(whole_set(dir.path(), back), "1.419.200.0", "{case}");
            assert_no_temp_files(dir.path());
        }
    }
}

#[test]
fn leftovers_of_a_killed_run_are_removed() {
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.100.0"));
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("linux/production/.gapferry-fetch-abc123");
    fs::create_dir_all(&stale).unwrap();
    fs::write(stale.join("updates.zip"), "half a download").unwrap();
    let r = run(fetch(&mock, dir.path()).args(["--platform", "linux"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!stale.exists());
    assert!(
        r.stderr.contains("left by an interrupted run"),
        "{}",
        r.stderr
    );
    assert_no_temp_files(dir.path());
}

#[test]
fn a_damaged_local_set_is_replaced() {
    let (mock, dir, _) = fetched_once(Release::new("1.1.24080.9", "1.419.100.0"));
    // Same release upstream, but the local zip is gone: download again.
    fs::remove_file(dir.path().join(X64).join("updates.zip")).unwrap();
    let r = run(fetch(&mock, dir.path()).args(["--platform", "linux", "--arch", "x86_64"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("has no updates.zip"), "{}", r.stderr);
    assert!(zip_text(dir.path(), X64).contains("definitions 1.419.100.0"));
    // The incomplete set was not kept as n-1.
    assert!(!dir.path().join("linux/production_back").exists());
}

#[test]
fn the_library_reports_the_same_outcomes() {
    use gapferry::mde::fetch::{fetch as run_fetch, FetchOptions, FetchPlan, SlotOutcome};
    use gapferry::mde::upstream::HttpConfig;
    use gapferry::mde::{Arch, Platform};
    use gapferry::progress::NoProgress;

    // The library honours proxy variables; this test talks to 127.0.0.1.
    if PROXY_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
        eprintln!("skipped: a proxy variable is set");
        return;
    }
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.100.0"));
    let dir = tempfile::tempdir().unwrap();
    let plan = FetchPlan::from_options(&FetchOptions {
        download_folder: Some(dir.path().to_path_buf()),
        platforms: vec![Platform::Mac],
        arches: vec![Arch::Arm64],
        upstream: Some(mock.base.clone()),
        http: HttpConfig {
            retry_delay: std::time::Duration::from_millis(10),
            ..HttpConfig::default()
        },
        ..FetchOptions::default()
    })
    .unwrap();
    let report = run_fetch(&plan, &NoProgress).unwrap();
    assert!(!report.failed());
    assert_eq!(report.items.len(), 1);
    assert!(matches!(
        report.items[0].outcome,
        SlotOutcome::Updated { .. }
    ));
    let again = run_fetch(&plan, &NoProgress).unwrap();
    assert!(matches!(
        again.items[0].outcome,
        SlotOutcome::Unchanged { .. }
    ));
}

#[test]
fn an_html_page_left_by_microsofts_script_is_replaced() {
    let (mock, dir, _) = fetched_once(Release::new("1.1.24080.9", "1.419.100.0"));
    // Same release upstream, but the script once saved an error page.
    fs::write(
        dir.path().join(X64).join("updates.zip"),
        "<html><body>502 Bad Gateway</body></html>",
    )
    .unwrap();
    let r = run(fetch(&mock, dir.path()).args(["--platform", "linux", "--arch", "x86_64"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("is not a valid zip"), "{}", r.stderr);
    assert!(zip_text(dir.path(), X64).contains("definitions 1.419.100.0"));
    assert!(!dir.path().join("linux/production_back").exists());
}

// TLS trust and redirects: the upstream is https on 127.0.0.1 with a
// certificate from a CA made in the test, which neither the built-in roots
// nor the system's store know.

const RELEASE_1: (&str, &str) = ("1.1.24080.9", "1.419.100.0");

/// One linux x86_64 item from `mock`, no retries unless the caller adds some.
fn fetch_one(mock: &Mock, dir: &Path) -> Command {
    let mut c = fetch(mock, dir);
    c.args(["--platform", "linux", "--arch", "x86_64"]);
    c
}

#[test]
fn tls_from_an_unknown_ca_fails_naming_the_url_and_ca_cert() {
    let ca = TestCa::new("gapferry test CA (unknown)");
    let mock = Mock::start_tls(Release::new(RELEASE_1.0, RELEASE_1.1), &ca);
    assert!(mock.base.starts_with("https://127.0.0.1:"), "{}", mock.base);
    let dir = tempfile::tempdir().unwrap();
    let r = run(fetch_one(&mock, dir.path()).args(["--retries", "2", "--json"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let url = format!("{}?linkid=2144709&action=info", mock.base);
    assert!(
        r.stderr
            .contains(&format!("cannot verify the TLS certificate of {url}")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--ca-cert FILE"), "{}", r.stderr);
    // A certificate problem is not retried, and no request got through.
    assert!(!r.stderr.contains("retrying"), "{}", r.stderr);
    assert_eq!(mock.request_count(), 0);
    let j: JsonReport = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j.failed, 1);
    assert!(j.items[0]
        .error
        .as_deref()
        .is_some_and(|e| e.contains("certificate") && e.contains(&url)));
    assert_eq!(snapshot(dir.path()), only_the_lock(dir.path()));
}

#[test]
fn ca_cert_trusts_a_private_ca_and_only_for_that_run() {
    let ca = TestCa::new("gapferry test CA (proxy)");
    let mock = Mock::start_tls(Release::new(RELEASE_1.0, RELEASE_1.1), &ca);
    let keys = tempfile::tempdir().unwrap();
    let pem = ca.write_pem(keys.path());
    let dir = tempfile::tempdir().unwrap();
    let r = run(fetch_one(&mock, dir.path()).arg("--ca-cert").arg(&pem));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        manifest(dir.path(), X64),
        serde_json::json!({"EngineVersion": RELEASE_1.0, "DefinitionVersion": RELEASE_1.1})
    );
    assert!(zip_text(dir.path(), X64).contains("slot linux/production/x86_64 "));
    assert!(
        r.stderr
            .contains(&format!("trusting 1 CA certificate from {}", pem.display())),
        "{}",
        r.stderr
    );

    // Without the flag the same server is refused and the set stays.
    mock.with(|s| s.default = Some(Release::new(RELEASE_1.0, "1.419.200.0")));
    let before = snapshot(dir.path());
    let r = run(&mut fetch_one(&mock, dir.path()));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot verify the TLS certificate"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshot(dir.path()), before);

    // A bundle file with other certificates and a key around it works too.
    let other = TestCa::new("gapferry test CA (other)");
    let bundle = keys.path().join("bundle.pem");
    fs::write(
        &bundle,
        format!(
            "# corporate bundle\n{}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{}",
            other.ca_pem, ca.ca_pem
        ),
    )
    .unwrap();
    let r = run(fetch_one(&mock, dir.path()).arg("--ca-cert").arg(&bundle));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("trusting 2 CA certificates"),
        "{}",
        r.stderr
    );
    assert_eq!(
        manifest(dir.path(), X64)["DefinitionVersion"],
        "1.419.200.0"
    );
}

#[test]
fn the_system_certificate_store_is_trusted() {
    // SSL_CERT_FILE stands in for the system's store (as for OpenSSL and
    // curl), so the test does not have to install a CA on the machine.
    let ca = TestCa::new("gapferry test CA (system)");
    let mock = Mock::start_tls(Release::new(RELEASE_1.0, RELEASE_1.1), &ca);
    let keys = tempfile::tempdir().unwrap();
    let pem = ca.write_pem(keys.path());
    let dir = tempfile::tempdir().unwrap();
    let r = run(fetch_one(&mock, dir.path()).env("SSL_CERT_FILE", &pem));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(manifest(dir.path(), X64)["DefinitionVersion"], RELEASE_1.1);
}

#[test]
fn an_https_redirect_to_plain_http_is_refused() {
    let ca = TestCa::new("gapferry test CA (redirect)");
    let keys = tempfile::tempdir().unwrap();
    let pem = ca.write_pem(keys.path());
    let good = Mock::start_tls(Release::new(RELEASE_1.0, RELEASE_1.1), &ca);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        run(fetch_one(&good, dir.path()).arg("--ca-cert").arg(&pem)).code,
        0
    );
    let before = snapshot(dir.path());

    // The attacker's plain-http server offers a newer release; fwlink (or a
    // proxy rewriting its answer) redirects there.
    let evil = Mock::start(Release::new("9.9.9.9", "9.999.999.0"));
    good.with(|s| s.redirect_origin = Some(evil.origin()));
    let hits_before = good.request_count();
    let r = run(fetch_one(&good, dir.path())
        .arg("--ca-cert")
        .arg(&pem)
        .args(["--retries", "3", "--json"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let from = format!("{}?linkid=2144709&action=info", good.base);
    let to = format!("{}/info/linux/production/x86_64", evil.origin());
    assert!(
        r.stderr
            .contains(&format!("refused the redirect from {from} to {to}")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("downgrades https to plain http"),
        "{}",
        r.stderr
    );
    assert_eq!(evil.request_count(), 0, "the downgrade was followed");
    assert_eq!(good.request_count() - hits_before, 1, "not retried");
    let j: JsonReport = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!((j.ok, j.failed), (false, 1));
    assert_eq!(snapshot(dir.path()), before);
    assert_no_temp_files(dir.path());

    // A redirect to another https server is followed as before.
    let cdn = Mock::start_tls(Release::new(RELEASE_1.0, "1.419.300.0"), &ca);
    good.with(|s| s.redirect_origin = Some(cdn.origin()));
    let r = run(fetch_one(&good, dir.path()).arg("--ca-cert").arg(&pem));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        manifest(dir.path(), X64)["DefinitionVersion"],
        "1.419.300.0"
    );
    assert!(cdn.request_count() >= 2);
}

#[test]
fn plain_http_to_another_machine_is_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("d");
    for url in [
        "http://updates.example.com/fwlink/",
        "http://10.1.2.3:8080/fwlink/",
    ] {
        let r = run(gapferry()
            .arg("fetch")
            .arg("--download-folder")
            .arg(&target)
            .args(["--upstream", url]));
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("{url} is not a usable upstream URL: plain http")),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("pass an https:// URL"), "{}", r.stderr);
    }
    assert!(!target.exists());
}

#[test]
fn ca_cert_files_that_hold_no_usable_certificate_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("d");
    let missing = dir.path().join("missing.pem");
    let text = dir.path().join("notes.txt");
    fs::write(&text, "this is not a certificate\n").unwrap();
    let der = dir.path().join("ca.der");
    fs::write(&der, [0x30u8, 0x82, 0x01, 0x0a, 0x02, 0x01]).unwrap();
    let bad_base64 = dir.path().join("bad-base64.pem");
    fs::write(
        &bad_base64,
        "-----BEGIN CERTIFICATE-----\n!!!! not base64 !!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let not_x509 = dir.path().join("not-x509.pem");
    fs::write(
        &not_x509,
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let key_only = dir.path().join("key-only.pem");
    fs::write(
        &key_only,
        "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let good = dir.path().join("good.pem");
    fs::write(&good, TestCa::new("gapferry test CA (good)").ca_pem).unwrap();

    for (file, why) in [
        (&missing, "cannot read CA certificate file"),
        (&text, "holds no -----BEGIN CERTIFICATE----- block"),
        (&der, "holds no -----BEGIN CERTIFICATE----- block"),
        (&bad_base64, "certificate 1 is not valid PEM"),
        (
            &not_x509,
            "certificate 1 is not a usable X.509 CA certificate",
        ),
        (&key_only, "holds no -----BEGIN CERTIFICATE----- block"),
    ] {
        // A good file first: the bad one is still found and named.
        let r = run(gapferry()
            .arg("fetch")
            .arg("--download-folder")
            .arg(&target)
            .args(["--upstream", "https://127.0.0.1:1/fwlink/"])
            .arg("--ca-cert")
            .arg(&good)
            .arg("--ca-cert")
            .arg(file));
        assert_eq!(r.code, 2, "{}: {}", file.display(), r.stderr);
        assert!(
            r.stderr.contains(&file.display().to_string()),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains(why), "{}: {}", why, r.stderr);
        assert!(r.stderr.contains("--ca-cert"), "{}", r.stderr);
        assert!(
            !r.stderr.contains(&good.display().to_string()),
            "{}",
            r.stderr
        );
    }
    assert!(!target.exists());
}

#[test]
fn a_tls_inspecting_proxy_works_with_its_ca_and_only_with_it() {
    // Microsoft's own URL through HTTPS_PROXY: the proxy (on 127.0.0.1)
    // forges go.microsoft.com's certificate with the corporate CA.
    let ca = TestCa::new("Corp inspecting proxy CA");
    let (mock, proxy) = Mock::start_inspecting_proxy(Release::new(RELEASE_1.0, RELEASE_1.1), &ca);
    assert_eq!(mock.base, "https://go.microsoft.com/fwlink/");
    let keys = tempfile::tempdir().unwrap();
    let pem = ca.write_pem(keys.path());
    let dir = tempfile::tempdir().unwrap();

    let r = run(fetch_one(&mock, dir.path()).env("HTTPS_PROXY", &proxy));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "cannot verify the TLS certificate of https://go.microsoft.com/fwlink/?linkid=2144709&action=info: UnknownIssuer (through the proxy named by HTTPS_PROXY)"
        ),
        "{}",
        r.stderr
    );
    let requests = mock.with(|s| s.requests.clone());
    assert_eq!(
        requests,
        ["CONNECT go.microsoft.com:443"],
        "nothing sent past the handshake"
    );
    assert_eq!(snapshot(dir.path()), only_the_lock(dir.path()));

    let r = run(fetch_one(&mock, dir.path())
        .env("HTTPS_PROXY", &proxy)
        .arg("--ca-cert")
        .arg(&pem));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(manifest(dir.path(), X64)["DefinitionVersion"], RELEASE_1.1);
    let requests = mock.with(|s| s.requests.clone());
    assert!(
        requests.contains(&"/fwlink/?linkid=2144709&action=info".to_string())
            && requests.contains(&"/pkg/linux/production/x86_64/updates.zip".to_string()),
        "{requests:?}"
    );
}
