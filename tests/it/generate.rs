//! The hidden `gapferry generate` subcommand (man pages, shell completions)
//! and the build details of `--version`, through the real binary.

use std::fs;

use crate::support::gapferry;

#[test]
fn man_pages_generate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man/man1");
    let r = gapferry()
        .args(["generate", "man", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let top = fs::read_to_string(out.join("gapferry.1")).unwrap();
    assert!(top.contains(".TH gapferry 1"), "{top}");
    assert!(top.contains("endpoint\\-config"), "subcommands listed");
    for page in [
        "gapferry-export.1",
        "gapferry-fetch.1",
        "gapferry-endpoint-config.1",
    ] {
        let text = fs::read_to_string(out.join(page)).unwrap();
        assert!(text.contains(".SH SYNOPSIS"), "{page}");
    }
    let export = fs::read_to_string(out.join("gapferry-export.1")).unwrap();
    assert!(export.contains("\\-\\-fetch"), "export --fetch documented");
    // The hidden subcommand gets no page, and nothing else is left behind.
    let names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".1")), "{names:?}");
}

#[test]
fn bash_completions_generate() {
    let dir = tempfile::tempdir().unwrap();
    let r = gapferry()
        .args(["generate", "completions", "bash", "zsh", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let bash = dir.path().join("gapferry.bash");
    let text = fs::read_to_string(&bash).unwrap();
    assert!(text.contains("complete -F _gapferry"), "{text}");
    for word in ["endpoint-config", "export", "--fetch", "--check"] {
        assert!(text.contains(word), "{word} not completed");
    }
    assert!(dir.path().join("_gapferry").is_file());
    // The script is valid bash.
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&bash)
        .status()
        .unwrap();
    assert!(syntax.success());
}

#[test]
fn generate_needs_a_shell_and_stays_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let r = gapferry()
        .args(["generate", "completions", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    let help = gapferry().arg("--help").output().unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("generate"));
}

#[test]
fn version_has_build_details() {
    let r = gapferry().arg("--version").output().unwrap();
    assert!(r.status.success());
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        text.starts_with(&format!("gapferry {}\n", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    for field in ["commit:", "target:", "profile:", "compiler:"] {
        assert!(text.contains(field), "{field} missing: {text}");
    }
    // -V stays one line, for scripts.
    let r = gapferry().arg("-V").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        format!("gapferry {}\n", env!("CARGO_PKG_VERSION"))
    );
}
