//! `gapferry demo` runs the whole journey on a fresh folder and leaves a
//! mirror with n-1, a ledger that verifies, and bundles that verify; its
//! story is on stdout, and the commands it suggests run as printed.

use std::path::Path;

use crate::support::{command, gapferry};

/// Runs the demo in `dir` from the working folder `cwd`; returns stdout.
fn demo(dir: &Path, cwd: &Path) -> String {
    let out = command()
        .args(["demo", "--dir"])
        .arg(dir)
        .current_dir(cwd)
        .env_remove("CARGO_MANIFEST_DIR")
        .output()
        .unwrap();
    let story = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {err}\n{story}");
    assert!(err.is_empty(), "the story belongs on stdout: {err}");
    story
}

#[test]
fn demo_runs_end_to_end_and_can_be_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    for _ in 0..2 {
        let out = demo(&dir, tmp.path());
        assert!(out.contains("flipped byte: exit 3"), "{out}");
        assert!(
            out.contains("older definitions (a rollback): exit 4"),
            "{out}"
        );
        assert!(out.contains("already imported, nothing changes"), "{out}");
        assert!(out.contains("    receipt GF1-"), "{out}");
        assert!(out.contains("healthy (gapferry status exits 0)"), "{out}");
        assert!(
            out.contains("rolled back: definitions 1.419.200.0 -> 1.419.100.0"),
            "{out}"
        );
        assert!(
            out.contains("rolled forward: definitions 1.419.100.0 -> 1.419.200.0"),
            "{out}"
        );
        assert!(out.contains("adopts version 1"), "{out}");
        assert!(out.contains("version 2 adopted"), "{out}");
        assert!(
            out.contains("a bundle signed by the revoked key: exit 3")
                && out.contains("is revoked by trust policy version 2"),
            "{out}"
        );
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
    // The rotation step ran on a mirror of its own, pinned to root keys.
    let rotated = dir.join("rotation/mirror/linux/production/arch_x86_64/manifest.json");
    let served = std::fs::read_to_string(rotated).unwrap();
    assert!(served.contains("1.419.400.0"), "{served}");
    gapferry()
        .args(["trust", "show", "--state-dir"])
        .arg(dir.join("rotation/state"))
        .assert()
        .success()
        .stdout(predicates::str::contains("trust policy version 2"));
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

/// The "try next" commands name this binary in a form that runs from where
/// the demo ran (here its absolute path: not on PATH, not under cargo), and
/// the obvious next step, export download/ and import it into the demo
/// mirror, succeeds: download/ holds a newer release, not an older one.
#[test]
fn demo_try_next_commands_run_as_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = demo(&dir, tmp.path());
    let bin = std::fs::canonicalize(crate::support::BIN).unwrap();
    let lines: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Done."))
        .filter(|l| l.starts_with("  ") && !l.trim_start().starts_with('('))
        .collect();
    let ours: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.trim_start().starts_with(&*bin.to_string_lossy()))
        .collect();
    assert!(ours.len() >= 5, "commands without the binary's path: {out}");
    assert!(!out.contains("  gapferry "), "{out}");
    let run = |verb: &str| {
        let line = ours
            .iter()
            .find(|l| l.contains(&format!(" {verb} ")))
            .unwrap_or_else(|| panic!("no {verb} suggested: {out}"));
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(line.trim())
            .current_dir(tmp.path())
            .env_remove("GAPFERRY_STATE_DIR")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "{line}:\n{text}");
        text
    };
    run("export");
    let imported = run("import");
    assert!(imported.contains("1.419.300.0"), "{imported}");
    let served =
        std::fs::read_to_string(dir.join("mirror/linux/production/arch_x86_64/manifest.json"))
            .unwrap();
    assert!(served.contains("1.419.300.0"), "{served}");
    let status = run("status");
    assert!(status.contains("1.419.300.0"), "{status}");
    run("rollback");
    run("ledger");
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

/// Run by `cargo run` from the checkout (cargo sets CARGO_MANIFEST_DIR to
/// the folder it runs in), the demo suggests `cargo run -- ...`.
#[test]
fn demo_under_cargo_run_suggests_cargo_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = command()
        .args(["demo", "--dir", "demo"])
        .current_dir(tmp.path())
        .env("CARGO_MANIFEST_DIR", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let story = String::from_utf8_lossy(&out.stdout);
    assert!(story.contains("\n  cargo run -- export --from "), "{story}");
    assert!(story.contains("`cargo run -- inspect "), "{story}");
}

/// `gapferry demo | head`: the demo stops quietly when its reader goes.
#[test]
fn demo_into_a_closed_pipe_stops_quietly() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = command()
        .args(["demo", "--dir"])
        .arg(tmp.path().join("demo"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The read end is dropped here: later lines meet a closed pipe.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}
