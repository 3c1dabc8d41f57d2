//! `gapferry demo` runs the whole journey on a fresh folder and leaves a
//! mirror with n-1, a ledger that verifies, and bundles that verify.

use crate::support::gapferry;

#[test]
fn demo_runs_end_to_end_and_can_be_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    for _ in 0..2 {
        let out = gapferry()
            .args(["demo", "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "demo failed: {err}");
        assert!(err.contains("flipped byte: exit 3"), "{err}");
        assert!(
            err.contains("older definitions (a rollback): exit 4"),
            "{err}"
        );
        assert!(err.contains("already imported, nothing changes"), "{err}");
    }
    let mirror = dir.join("mirror");
    for p in ["linux", "mac"] {
        for a in ["x86_64", "arm64"] {
            for ring in ["production", "production_back"] {
                let d = mirror.join(p).join(ring).join(format!("arch_{a}"));
                assert!(d.join("updates.zip").is_file(), "{}", d.display());
                assert!(d.join("manifest.json").is_file(), "{}", d.display());
            }
        }
    }
    let served =
        std::fs::read_to_string(mirror.join("linux/production/arch_x86_64/manifest.json")).unwrap();
    assert!(served.contains("1.419.200.0"), "{served}");
    // The Windows unit: served in the mirror and in the share folder.
    for p in [
        mirror.join("windows/x64/mpam-fe.exe"),
        mirror.join("windows/x86/mpam-fe.exe"),
        dir.join("share/x64/mpam-fe.exe"),
    ] {
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let info = gapferry::windows::pe::analyze(&bytes).unwrap();
        assert_eq!(info.version, "1.419.200.0", "{}", p.display());
    }
    gapferry()
        .args(["ledger", "verify", "--state-dir"])
        .arg(dir.join("state"))
        .assert()
        .success();
    gapferry()
        .arg("verify")
        .arg(dir.join("bundles/demo-2.tar.zst"))
        .arg("--trust")
        .arg(dir.join("keys/demo.pub"))
        .assert()
        .success();
}

#[test]
fn demo_refuses_a_folder_that_is_not_a_demo() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("precious.txt"), b"keep me").unwrap();
    let out = gapferry()
        .args(["demo", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a gapferry demo folder"));
    assert_eq!(
        std::fs::read(tmp.path().join("precious.txt")).unwrap(),
        b"keep me"
    );
}
