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

/// Man pages as a reader expects them: every option's value placeholder in
/// the synopsis, the footer `gapferry <version>` (not the subcommand's
/// name), no `EXTRA` section, and the exit codes on every page, unfilled
/// and unhyphenated so the table is not reflowed mid-word.
#[test]
fn man_pages_read_like_man_pages() {
    let dir = tempfile::tempdir().unwrap();
    let r = gapferry()
        .args(["generate", "man", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let version = format!("\"gapferry {}\"", env!("CARGO_PKG_VERSION"));
    let mut pages = 0;
    for e in fs::read_dir(dir.path()).unwrap() {
        let path = e.unwrap().path();
        let text = fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        pages += 1;
        let th = text.lines().find(|l| l.starts_with(".TH ")).unwrap();
        assert!(th.contains(&version), "{name}: {th}");
        assert!(!text.contains(".SH EXTRA"), "{name}");
        assert!(text.contains(".SH \"EXIT STATUS\"\n.nf\n"), "{name}");
        assert!(text.contains("\n.nh\n"), "{name}: hyphenation on");
        assert_eq!(
            text.matches(".ds Aq \\(aq").count(),
            1,
            "{name}: the preamble repeated"
        );
    }
    assert!(pages >= 12, "{pages} pages");
    let import = fs::read_to_string(dir.path().join("gapferry-import.1")).unwrap();
    let synopsis = import
        .split(".SH SYNOPSIS\n")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap();
    for part in [
        "[\\-\\-mirror <DIR>]",
        "[\\-\\-lock\\-wait <DURATION>]",
        "[\\-\\-platform <P>...]",
        "\\-\\-trust <K>...",
        "[BUNDLE]",
    ] {
        assert!(synopsis.contains(part), "{part} not in {synopsis}");
    }
    assert!(import.contains("refused by policy"), "import's exit codes");
    let status = fs::read_to_string(dir.path().join("gapferry-status.1")).unwrap();
    assert!(status.contains("a problem was found"), "status's own codes");
    let ledger = fs::read_to_string(dir.path().join("gapferry-ledger-verify.1")).unwrap();
    assert!(
        ledger.contains("the hash chain is broken"),
        "ledger's codes"
    );
    // The rendered page keeps the table lines whole.
    if let Ok(out) = std::process::Command::new("man")
        .args(["-l"])
        .arg(dir.path().join("gapferry-import.1"))
        .env("MANWIDTH", "80")
        .env("MAN_KEEP_FORMATTING", "0")
        .output()
    {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(
                    "3  bundle rejected (signature, integrity, unsafe or malformed content)"
                ),
                "{text}"
            );
        }
    }
}

/// Completions offer the values of --platform, --ring and --arch (not file
/// names) and never the hidden `generate`.
#[test]
fn completions_offer_values_and_hide_generate() {
    let dir = tempfile::tempdir().unwrap();
    let r = gapferry()
        .args(["generate", "completions", "bash", "zsh", "fish", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // How each script names a subcommand, shown with `demo`.
    for (f, form) in [
        ("gapferry.bash", "gapferry,{})"),
        ("_gapferry", "({})"),
        ("gapferry.fish", "-a \"{}\""),
    ] {
        let text = fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(text.contains(&form.replace("{}", "demo")), "{f}: {form}");
        assert!(
            !text.contains(&form.replace("{}", "generate")),
            "{f} completes the hidden generate"
        );
    }
    let bash = fs::read_to_string(dir.path().join("gapferry.bash")).unwrap();
    for (flag, values) in [
        ("--platform", "linux mac windows"),
        ("--ring", "production preview"),
        ("--arch", "x86_64 arm64 x64 x86"),
    ] {
        let want = format!("{flag})\n                    COMPREPLY=($(compgen -W \"{values}\"");
        assert!(bash.contains(&want), "{flag} does not offer {values}");
    }
    let fish = fs::read_to_string(dir.path().join("gapferry.fish")).unwrap();
    let rollback_platform = fish
        .lines()
        .find(|l| l.contains("using_subcommand rollback") && l.contains("-l platform"))
        .unwrap();
    assert!(rollback_platform.contains("-f -a"), "{rollback_platform}");
    assert!(rollback_platform.contains("linux"), "{rollback_platform}");
}

/// Help placeholders are the short documented ones (`<DURATION>`, `<DIR>`,
/// `<P>`...), never a field name such as `<EXPIRES_IN>` or `<ARCHES>`.
#[test]
fn help_placeholders_are_not_field_names() {
    for cmd in [
        &["keygen"][..],
        &["fetch"],
        &["export"],
        &["inspect"],
        &["verify"],
        &["import"],
        &["status"],
        &["rollback"],
        &["ledger", "show"],
        &["ledger", "verify"],
        &["endpoint-config"],
        &["demo"],
    ] {
        let out = gapferry().args(cmd).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        for word in help.split('<').skip(1) {
            let name = word.split('>').next().unwrap_or("");
            let placeholder =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_');
            assert!(
                !(placeholder && name.contains('_')),
                "{cmd:?}: <{name}> in\n{help}"
            );
        }
    }
}
