//! The `windows` profile end to end through the binary: synthetic
//! `mpam-fe.exe` packages (a PE with a version resource and an
//! Authenticode-shaped signature, written by `gapferry::windows::pe_fake`)
//! fetched from a loopback stand-in for Microsoft's link, exported beside
//! an `mde` bundle, verified, imported into one mirror and into a share
//! folder, shown by status, rolled back; and the hostile packages (an HTML
//! page, no version, no signature, an older version).

use std::path::{Path, PathBuf};

use gapferry::windows::pe_fake::{parse_version, FakePackage};
use gapferry::windows::WinArch;

use crate::support;
use support::win_standin::StandIn;

fn package(arch: WinArch, version: &str) -> Vec<u8> {
    FakePackage::signed(arch, parse_version(version).unwrap()).build()
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    key: support::Keys,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let key = support::keygen(&root, "k");
        Env {
            _tmp: tmp,
            root,
            key,
        }
    }

    fn p(&self, s: &str) -> PathBuf {
        self.root.join(s)
    }

    /// Writes `dl/windows/<arch>/mpam-fe.exe` for each (arch, bytes).
    fn download(&self, dl: &str, packages: &[(WinArch, Vec<u8>)]) -> PathBuf {
        let dl = self.p(dl);
        for (arch, bytes) in packages {
            let d = dl.join("windows").join(arch.as_str());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("mpam-fe.exe"), bytes).unwrap();
        }
        dl
    }

    fn export(&self, dl: &Path, out: &str, platform: Option<&str>) -> support::Run {
        let mut c = support::command();
        c.args(["export", "--quiet", "--from"])
            .arg(dl)
            .arg("--secret-key")
            .arg(self.p("k.key"))
            .arg("--out")
            .arg(self.p(out))
            .arg("--state-dir")
            .arg(self.p("export-state"));
        if let Some(p) = platform {
            c.args(["--platform", p]);
        }
        support::Run::from_output(c.output().unwrap())
    }

    fn import(&self, bundle: &str, dest: &[&str]) -> support::Run {
        let mut c = support::command();
        c.arg("import")
            .arg(self.p(bundle))
            .arg("--quiet")
            .arg("--trust")
            .arg(self.p("k.pub"))
            .args(dest)
            .arg("--create")
            .arg("--state-dir")
            .arg(self.p(if dest.contains(&"--share") {
                "share-state"
            } else {
                "state"
            }));
        support::Run::from_output(c.output().unwrap())
    }

    fn mirror(&self) -> String {
        self.p("mirror").display().to_string()
    }

    fn served_version(&self, rel: &str) -> String {
        let bytes = std::fs::read(self.p(rel)).unwrap();
        gapferry::windows::pe::analyze(&bytes).unwrap().version
    }
}

#[test]
fn estate_in_one_mirror_export_verify_import_status_rollback() {
    let env = Env::new();
    // One download folder holds the linux set and the Windows packages.
    let dl = env.download(
        "dl1",
        &[
            (WinArch::X64, package(WinArch::X64, "1.421.100.0")),
            (WinArch::X86, package(WinArch::X86, "1.421.100.0")),
        ],
    );
    let rel = "linux/production/arch_x86_64";
    let d = dl.join(rel);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("updates.zip"),
        support::import::zip_for(rel, "1.1.1.1", "1.2.3.0", 2000),
    )
    .unwrap();
    std::fs::write(
        d.join("manifest.json"),
        support::import::folder_manifest("1.1.1.1", "1.2.3.0"),
    )
    .unwrap();

    // The courier run: the mde bundle ignores windows/, the windows one
    // carries only windows/.
    env.export(&dl, "mde1.tar.zst", None).ok();
    env.export(&dl, "win1.tar.zst", Some("windows")).ok();
    let inspect = support::Run::from_output(
        support::command()
            .args(["inspect", "--json"])
            .arg(env.p("win1.tar.zst"))
            .output()
            .unwrap(),
    )
    .ok();
    let doc: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(doc["profile"], "windows", "{doc}");
    let items = doc["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{doc}");
    assert_eq!(items[0]["arch"], "x64");
    assert_eq!(items[0]["definition_version"], "1.421.100.0");
    // --packages reads the payload: each package's version and signer.
    let run = support::Run::from_output(
        support::command()
            .args(["inspect", "--packages", "--json"])
            .arg(env.p("win1.tar.zst"))
            .output()
            .unwrap(),
    )
    .ok();
    // Read back through the documented shape (unknown fields denied).
    let doc: support::json::Inspect = serde_json::from_str(&run.stdout).unwrap();
    let packages = doc.packages.expect("packages with --packages");
    assert_eq!(packages.len(), 2, "{packages:?}");
    assert_eq!(packages[0].path, "windows/x64/mpam-fe.exe");
    assert_eq!(packages[0].version.as_deref(), Some("1.421.100.0"));
    assert_eq!(packages[0].authenticode, "digest matches");
    assert!(
        packages[1]
            .signer_subject
            .as_deref()
            .unwrap()
            .contains("CN=Test Windows Publisher"),
        "{packages:?}"
    );
    let run = support::Run::from_output(
        support::command()
            .args(["inspect", "--packages"])
            .arg(env.p("win1.tar.zst"))
            .output()
            .unwrap(),
    )
    .ok();
    assert!(run.stdout.contains("windows/x86"), "{run:#?}");
    assert!(run.stdout.contains("CN=Test Windows Publisher"), "{run:#?}");
    support::Run::from_output(
        support::command()
            .args(["inspect", "--packages"])
            .arg(env.p("mde1.tar.zst"))
            .output()
            .unwrap(),
    )
    .fails(2, &["\"mde\" bundle"]);
    support::Run::from_output(
        support::command()
            .arg("verify")
            .arg(env.p("win1.tar.zst"))
            .arg("--trust")
            .arg(env.p("k.pub"))
            .output()
            .unwrap(),
    )
    .ok();

    let m = env.mirror();
    env.import("mde1.tar.zst", &["--mirror", &m]).ok();
    env.import("win1.tar.zst", &["--mirror", &m]).ok();
    assert_eq!(
        env.served_version("mirror/windows/x64/mpam-fe.exe"),
        "1.421.100.0"
    );
    assert_eq!(
        env.served_version("mirror/windows/x86/mpam-fe.exe"),
        "1.421.100.0"
    );
    assert!(env.p("mirror").join(rel).join("updates.zip").is_file());
    assert!(!env.p("mirror/windows/arm64").exists());

    // v2 for x64 only: v1 becomes n-1.
    let dl2 = env.download(
        "dl2",
        &[(WinArch::X64, package(WinArch::X64, "1.421.200.0"))],
    );
    env.export(&dl2, "win2.tar.zst", Some("windows")).ok();
    env.import("win2.tar.zst", &["--mirror", &m]).ok();
    assert_eq!(
        env.served_version("mirror/windows/x64/mpam-fe.exe"),
        "1.421.200.0"
    );
    assert_eq!(
        env.served_version("mirror/windows_back/x64/mpam-fe.exe"),
        "1.421.100.0"
    );

    // Status lists both profiles' units with their versions.
    let out = support::command()
        .args(["status", "--json", "--mirror"])
        .arg(env.p("mirror"))
        .arg("--state-dir")
        .arg(env.p("state"))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let slots = status["slots"].as_array().unwrap();
    let find = |k: &str| slots.iter().find(|s| s["slot"] == k).cloned();
    let x64 = find("windows/x64").expect("windows/x64 in status");
    assert_eq!(x64["definition_version"], "1.421.200.0", "{x64}");
    assert_eq!(x64["back_definition_version"], "1.421.100.0", "{x64}");
    assert_eq!(x64["files_match"], true, "{x64}");
    assert!(find("windows/x86").is_some(), "{status}");
    assert!(find(rel).is_some(), "{status}");
    assert_eq!(out.status.code(), Some(0), "{status}");

    // Rollback of windows/x64 serves v1 again; importing v2 once more is
    // refused as withdrawn.
    support::Run::from_output(
        support::command()
            .args([
                "rollback",
                "--platform",
                "windows",
                "--arch",
                "x64",
                "--mirror",
            ])
            .arg(env.p("mirror"))
            .arg("--state-dir")
            .arg(env.p("state"))
            .output()
            .unwrap(),
    )
    .ok();
    assert_eq!(
        env.served_version("mirror/windows/x64/mpam-fe.exe"),
        "1.421.100.0"
    );
    env.import("win2.tar.zst", &["--mirror", &m]).fails(4, &[]);
    // The ledger holds every change.
    support::Run::from_output(
        support::command()
            .args(["ledger", "verify", "--state-dir"])
            .arg(env.p("state"))
            .output()
            .unwrap(),
    )
    .ok();
}

#[test]
fn import_share_publishes_arch_folders_and_refuses_a_downgrade() {
    let env = Env::new();
    let dl1 = env.download(
        "dl1",
        &[(WinArch::X64, package(WinArch::X64, "1.421.300.0"))],
    );
    env.export(&dl1, "new.tar.zst", Some("windows")).ok();
    let dl0 = env.download(
        "dl0",
        &[(WinArch::X64, package(WinArch::X64, "1.421.299.0"))],
    );
    env.export(&dl0, "old.tar.zst", Some("windows")).ok();
    let share = env.p("share").display().to_string();
    env.import("new.tar.zst", &["--share", &share]).ok();
    // The client appends the arch folder itself: \\server\share\x64\mpam-fe.exe.
    assert_eq!(env.served_version("share/x64/mpam-fe.exe"), "1.421.300.0");
    // The older package, although exported later (higher sequence), is
    // refused on the package's version.
    let run = env.import("old.tar.zst", &["--share", &share]);
    run.expect(4, &["1.421.299.0"]);
    assert_eq!(env.served_version("share/x64/mpam-fe.exe"), "1.421.300.0");
    assert!(!env.p("share_back/x64").exists());

    // A newer one: the share's n-1 goes beside the share, not into it.
    let dl2 = env.download(
        "dl2",
        &[(WinArch::X64, package(WinArch::X64, "1.421.301.0"))],
    );
    env.export(&dl2, "newer.tar.zst", Some("windows")).ok();
    env.import("newer.tar.zst", &["--share", &share]).ok();
    assert_eq!(env.served_version("share/x64/mpam-fe.exe"), "1.421.301.0");
    assert_eq!(
        env.served_version("share_back/x64/mpam-fe.exe"),
        "1.421.300.0"
    );
    let names: Vec<String> = std::fs::read_dir(env.p("share"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["x64".to_string()],
        "only arch folders in the share"
    );

    // status and rollback of the share folder.
    let out = support::command()
        .args(["status", "--json", "--share", &share, "--state-dir"])
        .arg(env.p("share-state"))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{status}");
    let slots = status["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 1, "{status}");
    assert_eq!(slots[0]["slot"], "windows/x64");
    assert_eq!(slots[0]["definition_version"], "1.421.301.0");
    assert_eq!(slots[0]["back_definition_version"], "1.421.300.0");
    assert_eq!(slots[0]["files_match"], true, "{status}");
    support::Run::from_output(
        support::command()
            .args([
                "rollback",
                "--platform",
                "windows",
                "--share",
                &share,
                "--state-dir",
            ])
            .arg(env.p("share-state"))
            .output()
            .unwrap(),
    )
    .ok();
    assert_eq!(env.served_version("share/x64/mpam-fe.exe"), "1.421.300.0");
    assert_eq!(
        env.served_version("share_back/x64/mpam-fe.exe"),
        "1.421.301.0"
    );
    support::Run::from_output(
        support::command()
            .args([
                "rollback",
                "--platform",
                "linux",
                "--ring",
                "production",
                "--share",
                &share,
            ])
            .output()
            .unwrap(),
    )
    .fails(2, &["--platform windows"]);
}

#[test]
fn share_refuses_an_mde_bundle() {
    let env = Env::new();
    let dl = env.p("dl");
    let rel = "linux/production/arch_x86_64";
    std::fs::create_dir_all(dl.join(rel)).unwrap();
    std::fs::write(
        dl.join(rel).join("updates.zip"),
        support::import::zip_for(rel, "1.1.1.1", "1.2.3.0", 2000),
    )
    .unwrap();
    std::fs::write(
        dl.join(rel).join("manifest.json"),
        support::import::folder_manifest("1.1.1.1", "1.2.3.0"),
    )
    .unwrap();
    env.export(&dl, "mde.tar.zst", None).ok();
    let share = env.p("share").display().to_string();
    env.import("mde.tar.zst", &["--share", &share])
        .fails(2, &["linux/production/arch_x86_64"]);
    assert!(!env.p("share").join("arch_x86_64").exists());
}

#[test]
fn export_refuses_hostile_packages_naming_the_file() {
    let env = Env::new();
    let html = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>".to_vec();
    let mut unsigned = FakePackage::signed(WinArch::X64, [1, 421, 5, 0]);
    unsigned.signer = None;
    let mut no_version = unsigned.clone();
    no_version.version = None;
    no_version.signer = Some("Test".into());
    let mut tampered = package(WinArch::X64, "1.421.5.0");
    tampered[0x500] ^= 0xff;
    let wrong_arch = package(WinArch::X86, "1.421.5.0");
    for (name, bytes, needle) in [
        ("html", html, "HTML page"),
        (
            "unsigned",
            unsigned.build(),
            "no embedded Authenticode signature",
        ),
        ("noversion", no_version.build(), "no version resource"),
        ("tampered", tampered, "digest does not match"),
        ("wrongarch", wrong_arch, "not x64"),
    ] {
        let dl = env.download(name, &[(WinArch::X64, bytes)]);
        let out = format!("{name}.tar.zst");
        env.export(&dl, &out, Some("windows"))
            .fails(1, &[needle, "windows/x64/mpam-fe.exe"]);
        assert!(!env.p(&out).exists(), "{name}: a bundle was written");
    }
    // Mixing profiles in one export is a usage error.
    let dl = env.download("ok", &[(WinArch::X64, package(WinArch::X64, "1.421.5.0"))]);
    support::Run::from_output(
        support::command()
            .args([
                "export",
                "--platform",
                "windows",
                "--platform",
                "linux",
                "--from",
            ])
            .arg(&dl)
            .arg("--secret-key")
            .arg(env.p("k.key"))
            .arg("--out")
            .arg(env.p("mixed.tar.zst"))
            .output()
            .unwrap(),
    )
    .fails(2, &["own bundle"]);
}

fn fetch(env: &Env, s: &StandIn, arches: &[&str]) -> support::Run {
    let mut c = support::command();
    c.args([
        "fetch",
        "--platform",
        "windows",
        "--retries",
        "0",
        "--upstream",
    ])
    .arg(&s.base)
    .arg("--download-folder")
    .arg(env.p("dl"));
    for a in arches {
        c.args(["--arch", a]);
    }
    support::Run::from_output(c.output().unwrap())
}

#[test]
fn fetch_windows_from_a_loopback_stand_in() {
    let env = Env::new();
    let s = StandIn::start();
    s.serve("x64", package(WinArch::X64, "1.421.10.0"));
    s.serve("arm64", package(WinArch::Arm64, "1.421.10.0"));
    fetch(&env, &s, &["x64", "arm64"]).ok();
    assert_eq!(
        env.served_version("dl/windows/x64/mpam-fe.exe"),
        "1.421.10.0"
    );
    assert_eq!(
        env.served_version("dl/windows/arm64/mpam-fe.exe"),
        "1.421.10.0"
    );
    assert!(s
        .hits
        .lock()
        .unwrap()
        .iter()
        .any(|t| t == "/fwlink/?LinkID=121721&arch=x64"));

    // Same version again: unchanged, nothing rotated.
    let run = fetch(&env, &s, &["x64"]).ok();
    assert!(run.stderr.contains("unchanged"), "{run:#?}");
    assert!(!env.p("dl/windows_back/x64").exists());

    // A newer one: swapped in, the old one kept as n-1.
    s.serve("x64", package(WinArch::X64, "1.421.11.0"));
    fetch(&env, &s, &["x64"]).ok();
    assert_eq!(
        env.served_version("dl/windows/x64/mpam-fe.exe"),
        "1.421.11.0"
    );
    assert_eq!(
        env.served_version("dl/windows_back/x64/mpam-fe.exe"),
        "1.421.10.0"
    );

    // Hostile answers fail the arch (exit 1) and leave the folder as it was.
    let mut unsigned = FakePackage::signed(WinArch::X64, [1, 421, 12, 0]);
    unsigned.signer = None;
    for (body, needle) in [
        (
            b"<html><body>proxy login</body></html>".to_vec(),
            "HTML page",
        ),
        (unsigned.build(), "no embedded Authenticode signature"),
        (
            package(WinArch::X64, "1.421.9.0"),
            "older than the 1.421.11.0",
        ),
        (
            package(WinArch::X64, "1.421.12.0")[..3000].to_vec(),
            "truncated",
        ),
    ] {
        s.serve("x64", body);
        fetch(&env, &s, &["x64"]).fails(1, &[needle, "arch=x64"]);
        assert_eq!(
            env.served_version("dl/windows/x64/mpam-fe.exe"),
            "1.421.11.0"
        );
    }
    // No staging left behind in the download folder.
    let leftovers: Vec<_> = std::fs::read_dir(env.p("dl"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".gapferry-staging")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The fetched folder exports as it is.
    env.export(&env.p("dl"), "w.tar.zst", Some("windows")).ok();
}

#[test]
fn fetch_windows_refuses_mixed_platforms_and_mde_arches() {
    let env = Env::new();
    let s = StandIn::start();
    let mut c = support::command();
    c.args([
        "fetch",
        "--platform",
        "windows",
        "--platform",
        "mac",
        "--upstream",
    ])
    .arg(&s.base)
    .arg("--download-folder")
    .arg(env.p("dl"));
    support::Run::from_output(c.output().unwrap()).fails(2, &["own bundle"]);
    fetch(&env, &s, &["x86_64"]).fails(2, &["x64, x86 or arm64"]);
    assert!(s.hits.lock().unwrap().is_empty());
}

#[test]
fn endpoint_config_windows_prints_and_checks() {
    let env = Env::new();
    let run = support::Run::from_output(
        support::command()
            .args([
                "endpoint-config",
                "--platform",
                "windows",
                "--share",
                r"\\fs01\defender",
            ])
            .output()
            .unwrap(),
    )
    .ok();
    assert!(
        run.stdout.contains(
            r"Set-MpPreference -SignatureDefinitionUpdateFileSharesSources '\\fs01\defender'"
        ),
        "{run:#?}"
    );
    assert!(run
        .stdout
        .contains("Set-MpPreference -SignatureFallbackOrder 'FileShares'"));
    assert!(run
        .stdout
        .contains("Define file shares for downloading security intelligence updates"));
    // The arch folder in the share is refused before anything is printed.
    support::Run::from_output(
        support::command()
            .args([
                "endpoint-config",
                "--platform",
                "windows",
                "--share",
                r"\\fs01\defender\x64",
            ])
            .output()
            .unwrap(),
    )
    .fails(2, &["architecture folder"]);

    // A client's Get-MpPreference, saved by Windows PowerShell's `>` (UTF-16LE).
    let bad = "\r\nSignatureDefinitionUpdateFileSharesSources : \\\\fs01\\defender\\x64\r\nSignatureFallbackOrder                        : MicrosoftUpdateServer|MMPC\r\n";
    let mut bytes = vec![0xff, 0xfe];
    bytes.extend(bad.encode_utf16().flat_map(|u| u.to_le_bytes()));
    std::fs::write(env.p("bad.txt"), bytes).unwrap();
    let check = |file: &str, json: bool| {
        let mut c = support::command();
        c.args(["endpoint-config", "--platform", "windows", "--check"])
            .arg(env.p(file));
        if json {
            c.arg("--json");
        }
        support::Run::from_output(c.output().unwrap())
    };
    check("bad.txt", false).fails(
        1,
        &[
            "architecture folder x64",
            r"fix: Set-MpPreference -SignatureDefinitionUpdateFileSharesSources '\\fs01\defender'",
            "does not include FileShares",
        ],
    );
    let good = r#"{"SignatureDefinitionUpdateFileSharesSources": "\\\\fs01\\defender", "SignatureFallbackOrder": "FileShares"}"#;
    std::fs::write(env.p("good.json"), good).unwrap();
    let run = check("good.json", true).ok();
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["format"], "json");
    std::fs::write(env.p("junk.txt"), "hello world\n").unwrap();
    check("junk.txt", false).fails(2, &["Get-MpPreference"]);
}

/// A `windows` bundle signed by `key` whose x64 item claims `claimed` and
/// carries `package`, crafted field by field (export would refuse it).
fn crafted_windows_bundle(key: &support::Keys, claimed: &str, package: Vec<u8>, out: &Path) {
    use gapferry::manifest::{Item, Manifest};
    use gapferry::timestamp::Timestamp;
    use std::time::{Duration, SystemTime};
    let payload = vec![("windows/x64/mpam-fe.exe".to_string(), package)];
    let now = SystemTime::now();
    let m = Manifest {
        format: gapferry::manifest::FORMAT.into(),
        bundle_id: "crafted-windows-0001".parse().unwrap(),
        channel: "default".into(),
        sequence: 1000,
        created: Timestamp::from_time(now - Duration::from_secs(3600)),
        expires: Timestamp::from_time(now + Duration::from_secs(86400)),
        producer: "gapferry-tests craft".into(),
        profile: "windows".into(),
        items: vec![Item {
            platform: "windows".into(),
            ring: "production".into(),
            arch: "x64".into(),
            engine_version: claimed.into(),
            definition_version: claimed.into(),
        }],
        files: support::craft::files_for(&payload),
    };
    support::craft::Parts::signed(&m, &payload, &[&key.secret_key()]).write(out);
}

#[test]
fn import_rejects_a_package_that_is_not_what_was_signed() {
    let env = Env::new();
    let m = env.mirror();
    for (name, package, needle) in [
        (
            "mismatch",
            package(WinArch::X64, "1.421.6.0"),
            "is version 1.421.6.0, but the signed item says 1.421.5.0",
        ),
        (
            "html",
            b"<!DOCTYPE html><html>captive portal</html>".to_vec(),
            "HTML page",
        ),
    ] {
        let bundle = format!("{name}.tar.zst");
        crafted_windows_bundle(&env.key, "1.421.5.0", package, &env.p(&bundle));
        env.import(&bundle, &["--mirror", &m])
            .fails(3, &[needle, "windows/x64"]);
        assert!(!env.p("mirror/windows/x64").exists());
        support::assert_no_staging(&env.p("mirror"));
    }
}

#[test]
fn export_fetch_windows_fetches_then_exports_only_when_every_package_came() {
    let env = Env::new();
    let s = StandIn::start();
    s.serve("x64", package(WinArch::X64, "1.421.30.0"));
    s.serve("x86", b"<html>proxy login</html>".to_vec());
    let run = |out: &str| {
        let mut c = support::command();
        c.args([
            "export",
            "--fetch",
            "--platform",
            "windows",
            "--json",
            "--retries",
            "0",
        ])
        .arg("--upstream")
        .arg(&s.base)
        .arg("--from")
        .arg(env.p("dl"))
        .arg("--secret-key")
        .arg(&env.key.secret)
        .arg("--out")
        .arg(env.p(out))
        .arg("--state-dir")
        .arg(env.p("export-state"));
        support::Run::from_output(c.output().unwrap())
    };
    let failed = run("a.tar.zst").fails(1, &["HTML page", "nothing was exported"]);
    let doc: serde_json::Value = serde_json::from_str(&failed.stdout).unwrap();
    assert_eq!(doc["ok"], false, "{doc}");
    assert_eq!(doc["fetch"]["items"][1]["outcome"], "failed", "{doc}");
    assert!(doc["export"].is_null(), "{doc}");
    assert!(!env.p("a.tar.zst").exists());

    s.serve("x86", package(WinArch::X86, "1.421.30.0"));
    let ok = run("b.tar.zst").ok();
    let doc: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(doc["fetch"]["items"][1]["outcome"], "updated", "{doc}");
    let items = doc["export"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{doc}");
    assert_eq!(items[1]["arch"], "x86");
    assert_eq!(items[1]["definition_version"], "1.421.30.0");
    assert!(env.p("b.tar.zst").is_file());
}

/// The `windows` placement stages in the mirror root itself: an import
/// killed at any publish step (with and without the exchange) leaves each
/// arch folder with a whole package, and the next run completes it.
#[test]
fn an_import_killed_at_any_step_leaves_whole_packages_and_is_completed() {
    let env = Env::new();
    let dl1 = env.download(
        "dl1",
        &[
            (WinArch::X64, package(WinArch::X64, "1.421.40.0")),
            (WinArch::X86, package(WinArch::X86, "1.421.40.0")),
        ],
    );
    env.export(&dl1, "v1.tar.zst", Some("windows")).ok();
    let dl2 = env.download(
        "dl2",
        &[
            (WinArch::X64, package(WinArch::X64, "1.421.41.0")),
            (WinArch::X86, package(WinArch::X86, "1.421.41.0")),
        ],
    );
    env.export(&dl2, "v2.tar.zst", Some("windows")).ok();
    for fallback in ["0", "1"] {
        let mut kills = 0;
        for step in gapferry::mirror::publish::CRASH_STEPS {
            let tag = format!("{step}-{fallback}");
            let m = env.p(&format!("m-{tag}")).display().to_string();
            let st = env.p(&format!("s-{tag}"));
            let import = |bundle: &str, crash: Option<&str>| {
                let mut c = support::command();
                c.arg("import")
                    .arg(env.p(bundle))
                    .args(["--quiet", "--trust"])
                    .arg(&env.key.public)
                    .args(["--mirror", &m, "--create", "--state-dir"])
                    .arg(&st)
                    .env(support::FORCE_FALLBACK, fallback);
                if let Some(s) = crash {
                    c.env(support::CRASH_AT, s);
                }
                c.output().unwrap()
            };
            assert!(import("v1.tar.zst", None).status.success(), "{tag}");
            let killed = import("v2.tar.zst", Some(step));
            if std::os::unix::process::ExitStatusExt::signal(&killed.status).is_some() {
                kills += 1;
            }
            for arch in ["x64", "x86"] {
                let path = env.p(&format!("m-{tag}/windows/{arch}"));
                if !path.exists() {
                    // The documented window of the two-rename fallback.
                    assert_eq!(fallback, "1", "{tag}: {arch} missing");
                    continue;
                }
                let v = env.served_version(&format!("m-{tag}/windows/{arch}/mpam-fe.exe"));
                assert!(v == "1.421.40.0" || v == "1.421.41.0", "{tag}: {arch} {v}");
            }
            // The next run recovers and ends with v2 served, v1 as n-1.
            let again = import("v2.tar.zst", None);
            assert!(again.status.success(), "{tag}: {killed:?} {again:?}");
            for arch in ["x64", "x86"] {
                assert_eq!(
                    env.served_version(&format!("m-{tag}/windows/{arch}/mpam-fe.exe")),
                    "1.421.41.0",
                    "{tag}"
                );
                assert_eq!(
                    env.served_version(&format!("m-{tag}/windows_back/{arch}/mpam-fe.exe")),
                    "1.421.40.0",
                    "{tag}"
                );
            }
            support::assert_no_staging(&env.p(&format!("m-{tag}")));
        }
        // Every step but the other mode's own was reached and killed.
        assert!(kills >= 6, "fallback {fallback}: only {kills} kills");
    }
}

/// The Windows group sits in the mirror root itself; a mirror root that is
/// a symbolic link (the operator's to place) still works.
#[test]
fn a_symlinked_mirror_root_takes_windows_packages() {
    let env = Env::new();
    let dl = env.download("dl", &[(WinArch::X64, package(WinArch::X64, "1.421.50.0"))]);
    env.export(&dl, "w.tar.zst", Some("windows")).ok();
    std::fs::create_dir(env.p("real")).unwrap();
    std::os::unix::fs::symlink(env.p("real"), env.p("link")).unwrap();
    let link = env.p("link").display().to_string();
    env.import("w.tar.zst", &["--mirror", &link]).ok();
    assert_eq!(
        env.served_version("real/windows/x64/mpam-fe.exe"),
        "1.421.50.0"
    );
}
