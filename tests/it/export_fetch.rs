//! `gapferry export --fetch` through the real binary against the in-process
//! mock of Microsoft's fwlink endpoints: fetch then export in one command,
//! no bundle at all when any fetch item failed, and fetch flags refused
//! without `--fetch`.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

use support::fetch_mock::{gapferry, Fault, Mock, Release};
use support::Run;

fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().unwrap();
    Run::from_output(out)
}

/// A scratch area with an unencrypted key pair and a state folder.
struct Site {
    tmp: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let site = Site {
            tmp: tempfile::tempdir().unwrap(),
        };
        let r = run(gapferry()
            .arg("keygen")
            .arg("--secret-key")
            .arg(site.secret())
            .arg("--public-key")
            .arg(site.public())
            .arg("--unencrypted"));
        assert_eq!(r.code, 0, "{}", r.stderr);
        site
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }
    fn secret(&self) -> PathBuf {
        self.path("signer.key")
    }
    fn public(&self) -> PathBuf {
        self.path("signer.pub")
    }
    fn downloads(&self) -> PathBuf {
        self.path("wdav-update")
    }

    /// `gapferry export --fetch` from `mock` into the download folder, with
    /// fast retries, writing `out`.
    fn export_fetch(&self, mock: &Mock, out: &Path) -> Command {
        let mut c = gapferry();
        c.arg("export")
            .arg("--fetch")
            .arg("--from")
            .arg(self.downloads())
            .arg("--secret-key")
            .arg(self.secret())
            .arg("--out")
            .arg(out)
            .arg("--state-dir")
            .arg(self.path("state"))
            .args(["--upstream", &mock.base])
            .args(["--retry-delay", "10ms"]);
        c
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn fetch_then_export_in_one_command() {
    let site = Site::new();
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.184.0"));
    let out = site.path("bundle.tar.zst");
    let r = run(site.export_fetch(&mock, &out).arg("--json"));
    assert_eq!(r.code, 0, "{}", r.stderr);

    let doc = json(&r.stdout);
    let keys: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, ["export", "fetch", "ok", "schema_version"]);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["fetch"]["failed"], 0);
    assert_eq!(doc["fetch"]["updated"], 4);
    assert_eq!(doc["fetch"]["failed"], 0);
    let items = doc["export"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    for item in items {
        assert_eq!(item["ring"], "production");
        assert_eq!(item["engine_version"], "1.1.24080.9");
        assert_eq!(item["definition_version"], "1.419.184.0");
    }
    assert!(mock.package_hits() >= 4);

    // The folder is laid out as fetch lays it out, and the bundle carries it.
    let m: Value = json(
        &fs::read_to_string(
            site.downloads()
                .join("mac/production/arch_arm64/manifest.json"),
        )
        .unwrap(),
    );
    assert_eq!(m["DefinitionVersion"], "1.419.184.0");
    let v = run(gapferry()
        .arg("verify")
        .arg(&out)
        .arg("--trust")
        .arg(site.public()));
    assert_eq!(v.code, 0, "{}", v.stderr);

    // A second run with nothing new downloads nothing and still exports.
    let hits = mock.package_hits();
    let out2 = site.path("bundle2.tar.zst");
    let r = run(site.export_fetch(&mock, &out2).arg("--quiet"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(mock.package_hits(), hits);
    assert!(out2.is_file());
}

#[test]
fn a_failed_fetch_item_exports_nothing() {
    let site = Site::new();
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.184.0"));
    mock.with(|s| s.package_fault = Some((Fault::Status(500), None)));
    let out = site.path("bundle.tar.zst");
    let r = run(site.export_fetch(&mock, &out).args([
        "--retries",
        "0",
        "--platform",
        "linux",
        "--json",
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("nothing was exported") && r.stderr.contains("bundle.tar.zst"),
        "{}",
        r.stderr
    );
    let doc = json(&r.stdout);
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["error"]["exit_code"], 1);
    assert!(doc["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nothing was exported"));
    assert_eq!(doc["fetch"]["failed"], 2);
    assert_eq!(doc["export"], Value::Null);
    // No bundle, no temp file beside it, no sequence used up.
    let names: Vec<String> = fs::read_dir(site.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("bundle")),
        "left behind: {names:?}"
    );
    assert!(!site.path("state").join("export-sequences.json").exists());
}

#[test]
fn a_partial_failure_keeps_the_old_bundle_away_too() {
    // One slot fails, the other succeeds: still no export, exit 1.
    let site = Site::new();
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.184.0"));
    mock.with(|s| s.package_fault = Some((Fault::Html, Some(1))));
    let out = site.path("bundle.tar.zst");
    let r = run(site
        .export_fetch(&mock, &out)
        .args(["--retries", "0", "--platform", "linux"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("1 of 2 fetch items failed"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn settings_json_decides_what_is_fetched_and_carried() {
    let site = Site::new();
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.184.0"));
    // A previous full fetch left mac folders behind.
    let r = run(gapferry()
        .arg("fetch")
        .arg("--download-folder")
        .arg(site.downloads())
        .args(["--upstream", &mock.base, "--quiet"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(site.downloads().join("mac/production/arch_x86_64").is_dir());

    let settings = site.path("settings.json");
    fs::write(
        &settings,
        r#"{"downloadFolder": "/nonexistent/overridden-by-from",
            "downloadLinuxUpdates": true, "downloadMacUpdates": false,
            "downloadPreviewUpdates": false, "backupPreviousUpdates": true}"#,
    )
    .unwrap();
    mock.with(|s| s.default = Some(Release::new("1.1.24090.1", "1.419.200.0")));
    let out = site.path("bundle.tar.zst");
    let r = run(site
        .export_fetch(&mock, &out)
        .arg("--settings")
        .arg(&settings)
        .arg("--json"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc = json(&r.stdout);
    assert_eq!(doc["fetch"]["updated"], 2);
    let items = doc["export"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{items:?}");
    for item in items {
        assert_eq!(item["platform"], "linux");
        assert_eq!(item["definition_version"], "1.419.200.0");
    }
    // --from won over settings.json's downloadFolder; n-1 kept.
    assert!(site
        .downloads()
        .join("linux/production_back/arch_x86_64/updates.zip")
        .is_file());
    assert!(!Path::new("/nonexistent/overridden-by-from").exists());
}

#[test]
fn fetch_flags_need_fetch() {
    let site = Site::new();
    let out = site.path("bundle.tar.zst");
    for flags in [
        &["--upstream", "http://127.0.0.1:9/fwlink/"][..],
        &["--no-backup"][..],
        &["--retries", "1"][..],
    ] {
        let r = run(gapferry()
            .arg("export")
            .arg("--from")
            .arg(site.downloads())
            .arg("--secret-key")
            .arg(site.secret())
            .arg("--out")
            .arg(&out)
            .args(flags));
        assert_eq!(r.code, 2, "{flags:?}: {}", r.stderr);
        assert!(r.stderr.contains("--fetch"), "{}", r.stderr);
        assert!(!out.exists());
    }
}

#[test]
fn bad_settings_fail_before_any_download() {
    let site = Site::new();
    let mock = Mock::start(Release::new("1.1.24080.9", "1.419.184.0"));
    let settings = site.path("settings.json");
    fs::write(&settings, r#"{"downloadLinuxUpdates": false}"#).unwrap();
    let r = run(site
        .export_fetch(&mock, &site.path("bundle.tar.zst"))
        .arg("--settings")
        .arg(&settings));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("settings.json"), "{}", r.stderr);
    assert_eq!(mock.with(|s| s.requests.len()), 0);
}
