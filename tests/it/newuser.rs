//! The mistakes a new user makes, and what gapferry says: a typo in the
//! mirror path, key files that cannot be read or are the wrong kind, where
//! the state and ledger are, and the messages that name the fix. Each test
//! asserts the key phrase of a message, not its whole text.

use std::fs;

use crate::support::craft;
use crate::support::import::Fx;

const REL: &str = "linux/production/arch_x86_64";

/// One key and one bundle `b1` of `REL`.
fn one_bundle(fx: &Fx) -> (crate::support::Keys, std::path::PathBuf) {
    let k = fx.key("k");
    let dl = fx.download("v1", &[(REL, "1.1.1.0", "1.400.1.0")]);
    let b = fx.export(&dl, "b1", &[&k], &[]);
    (k, b)
}

#[test]
fn import_into_a_missing_mirror_is_refused_unless_create() {
    let fx = Fx::new();
    let (k, b) = one_bundle(&fx);
    let typo = fx.root.join("mde-mirorr");
    let before = fx.snapshot();
    let r = fx.run({
        let mut c = fx.import_cmd(&b, &[&k.public], &[]);
        c.arg("--mirror")
            .arg(&typo)
            .arg("--state-dir")
            .arg(&fx.state);
        c
    });
    r.expect(2, &["mde-mirorr", "does not exist", "--create"]);
    assert!(!typo.exists(), "the typo was created");
    fx.assert_unchanged(&before);

    // --json still prints one report saying so.
    let r = fx.run({
        let mut c = fx.import_cmd(&b, &[&k.public], &["--json"]);
        c.arg("--mirror")
            .arg(&typo)
            .arg("--state-dir")
            .arg(&fx.state);
        c
    });
    assert_eq!(r.code, 2, "{r:?}");
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(rep["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not exist"));

    // --target too.
    let r = fx.run({
        let mut c = fx.import_cmd(&b, &[&k.public], &[]);
        c.arg("--target")
            .arg(typo.join("linux/production"))
            .arg("--state-dir")
            .arg(&fx.state);
        c
    });
    r.expect(2, &["--target", "does not exist", "--create"]);
    assert!(!typo.exists());

    // A file where the mirror should be.
    fs::write(fx.root.join("file"), b"x").unwrap();
    let r = fx.run({
        let mut c = fx.import_cmd(&b, &[&k.public], &[]);
        c.arg("--mirror")
            .arg(fx.root.join("file"))
            .arg("--state-dir")
            .arg(&fx.state);
        c
    });
    r.expect(2, &["not a folder"]);

    // --create starts a new mirror.
    let r = fx.run({
        let mut c = fx.import_cmd(&b, &[&k.public], &["--create"]);
        c.arg("--mirror")
            .arg(&typo)
            .arg("--state-dir")
            .arg(&fx.state);
        c
    });
    assert_eq!(r.code, 0, "{r:?}");
    assert!(typo.join(REL).join("updates.zip").is_file());
}

#[test]
fn status_on_a_missing_folder_says_it_does_not_exist() {
    let fx = Fx::new();
    let mut c = fx.cmd();
    c.args(["status", "--mirror"])
        .arg(fx.root.join("nowhere"))
        .arg("--state-dir")
        .arg(&fx.state);
    let r = fx.run(c);
    r.expect(2, &["nowhere", "does not exist"]);
    assert!(!r.stdout.contains("nothing is served"), "{r:?}");
    // rollback too, without suggesting an --arch that is not there either.
    let mut c = fx.cmd();
    c.args([
        "rollback",
        "--platform",
        "linux",
        "--ring",
        "production",
        "--mirror",
    ])
    .arg(fx.root.join("nowhere"))
    .arg("--state-dir")
    .arg(&fx.state);
    let r = fx.run(c);
    r.expect(2, &["nowhere", "does not exist"]);
    assert!(!r.stderr.contains("--arch"), "{r:?}");
    assert!(!fx.root.join("nowhere").exists());
}

#[test]
fn import_and_status_name_the_state_directory() {
    let fx = Fx::new();
    let (k, b) = one_bundle(&fx);
    let r = fx.import(&b, &[&k.public], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let state = fx.state.display().to_string();
    assert!(
        r.stderr.contains(&format!("state and ledger in {state}")),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("gapferry ledger show --state-dir"),
        "{r:?}"
    );

    let mut c = fx.cmd();
    c.args(["status", "--mirror"])
        .arg(&fx.mirror)
        .arg("--state-dir")
        .arg(&fx.state);
    let r = fx.run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("state directory: {state}")),
        "{r:?}"
    );
}

#[test]
fn unreadable_key_files_are_usage_errors() {
    let fx = Fx::new();
    let (k, b) = one_bundle(&fx);
    let missing = fx.root.join("keys/missing.pub");

    // --trust of verify and import: exit 2, as a malformed key file.
    let mut c = fx.cmd();
    c.arg("verify").arg(&b).arg("--trust").arg(&missing);
    fx.run(c)
        .expect(2, &["missing.pub", "cannot read key file"]);
    fx.import(&b, &[&missing], &[])
        .expect(2, &["missing.pub", "cannot read key file"]);

    // --secret-key of export.
    let dl = fx.download("v2", &[(REL, "1.1.2.0", "1.400.2.0")]);
    let (r, out) = fx.try_export(
        &dl,
        "b2",
        &[&crate::support::Keys {
            secret: fx.root.join("keys/missing.key"),
            public: k.public.clone(),
        }],
        &[],
    );
    r.expect(2, &["missing.key", "cannot read key file"]);
    assert!(!out.exists());

    // A key file that cannot be read for lack of permission (unless root,
    // who reads everything).
    if !rustix::process::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        let locked = fx.root.join("keys/locked.pub");
        fs::copy(&k.public, &locked).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        let mut c = fx.cmd();
        c.arg("verify").arg(&b).arg("--trust").arg(&locked);
        fx.run(c).expect(2, &["locked.pub", "permissions"]);
    }
}

#[test]
fn a_signature_file_given_as_a_key_says_so() {
    let fx = Fx::new();
    let (k, b) = one_bundle(&fx);
    let sig = fx.root.join("keys/manifest.json.minisig");
    fs::write(
        &sig,
        craft::signature_file(&k.secret_key(), b"data", "a trusted comment"),
    )
    .unwrap();
    let mut c = fx.cmd();
    c.arg("verify").arg(&b).arg("--trust").arg(&sig);
    let r = fx.run(c);
    r.expect(2, &["manifest.json.minisig", "signature file", ".pub"]);
    assert!(!r.stderr.contains("extra lines"), "{r:?}");
}

#[test]
fn export_into_a_missing_folder_says_create_it_before_any_password() {
    let fx = Fx::new();
    let dl = fx.download("v1", &[(REL, "1.1.1.0", "1.400.1.0")]);
    // An encrypted key and no terminal: the folder is checked first, so
    // the message is about the folder, not the password.
    let pw = fx.root.join("keys/pw");
    fs::write(&pw, b"correct horse\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut c = fx.cmd();
    c.args(["keygen", "--secret-key"])
        .arg(fx.root.join("keys/enc.key"))
        .arg("--public-key")
        .arg(fx.root.join("keys/enc.pub"))
        .arg("--password-file")
        .arg(&pw);
    assert_eq!(fx.run(c).code, 0);
    let mut c = fx.cmd();
    c.arg("export")
        .arg("--from")
        .arg(&dl)
        .arg("--secret-key")
        .arg(fx.root.join("keys/enc.key"))
        .arg("--out")
        .arg(fx.root.join("outbox/b.tar.zst"))
        .arg("--state-dir")
        .arg(&fx.export_state);
    let r = fx.run(c);
    r.expect(2, &["outbox", "does not exist", "create it"]);
    assert!(!r.stderr.contains("password"), "{r:?}");
    assert!(!r.stderr.contains(".partial"), "{r:?}");
    assert!(!fx.root.join("outbox").exists());
}

#[test]
fn a_file_that_is_not_zstd_is_not_a_gapferry_bundle() {
    let fx = Fx::new();
    let k = fx.key("k");
    let junk = fx.root.join("bundles/holiday-photos.tar.zst");
    fs::write(&junk, b"PK\x03\x04 this is a zip, not a bundle").unwrap();
    let mut c = fx.cmd();
    c.arg("verify").arg(&junk).arg("--trust").arg(&k.public);
    let r = fx.run(c);
    r.expect(3, &["holiday-photos.tar.zst", "not a gapferry bundle"]);
    assert!(!r.stderr.contains("tar header"), "{r:?}");
}

#[test]
fn a_damaged_manifest_says_copy_it_again() {
    let fx = Fx::new();
    let k = fx.key("k");
    let mut parts = craft::Parts::mde(
        &[crate::support::FakeRelease::new(
            "linux",
            "production",
            "x86_64",
        )],
        &[&k.secret_key()],
    );
    // One flipped bit turns a quote into something JSON cannot read, as a
    // bad sector or a truncated copy would.
    let at = parts
        .manifest_bytes
        .iter()
        .rposition(|&b| b == b'"')
        .unwrap();
    parts.manifest_bytes[at] ^= 0x01;
    let b = fx.root.join("bundles/damaged.tar.zst");
    parts.write(&b);
    let mut c = fx.cmd();
    c.arg("verify").arg(&b).arg("--trust").arg(&k.public);
    fx.run(c).expect(
        3,
        &["invalid manifest", "damaged in transit", "copy it again"],
    );
}

#[test]
fn the_lock_message_names_lock_wait_and_a_readable_wait() {
    let fx = Fx::new();
    let (k, b) = one_bundle(&fx);
    let sd = gapferry::mirror::state::StateDir::open(&fx.state).unwrap();
    let _lock = sd.lock(std::time::Duration::from_secs(5)).unwrap();
    let r = fx.import(&b, &[&k.public], &["--lock-wait", "0s"]);
    r.expect(
        1,
        &["another gapferry import", "--lock-wait", "under a second"],
    );
    assert!(!r.stderr.contains("ns)"), "{r:?}");
    assert!(fx.mirror_is_empty());
}

#[test]
fn the_inbox_names_settle_for_files_it_leaves_alone() {
    let fx = Fx::new();
    let (k, b) = one_bundle(&fx);
    let inbox = fx.root.join("inbox");
    fs::create_dir(&inbox).unwrap();
    fs::copy(&b, inbox.join("b1.tar.zst")).unwrap();
    let mut c = fx.cmd();
    c.arg("import")
        .arg("--inbox")
        .arg(&inbox)
        .arg("--settle")
        .arg("1h")
        .arg("--trust")
        .arg(&k.public)
        .arg("--mirror")
        .arg(&fx.mirror)
        .arg("--state-dir")
        .arg(&fx.state);
    let r = fx.run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("b1.tar.zst: left alone"), "{r:?}");
    assert!(r.stderr.contains("--settle"), "{r:?}");
    assert!(fx.mirror_is_empty());
}

#[test]
fn rollback_of_every_arch_suggests_arch_when_one_cannot() {
    let fx = Fx::new();
    let k = fx.key("k");
    // Two releases of x86_64 only: arm64 has nothing to roll back.
    let bundles = fx.chain(&k, REL, 1..=2);
    fx.import_all(&bundles, &[&k.public]);
    let rollback = |extra: &[&str]| {
        let mut c = fx.cmd();
        c.args([
            "rollback",
            "--platform",
            "linux",
            "--ring",
            "production",
            "--mirror",
        ])
        .arg(&fx.mirror)
        .arg("--state-dir")
        .arg(&fx.state)
        .args(extra);
        fx.run(c)
    };
    let before = fx.snapshot();
    let r = rollback(&[]);
    r.expect(
        1,
        &["arch_arm64", "nothing was rolled back", "--arch x86_64"],
    );
    fx.assert_unchanged(&before);
    let r = rollback(&["--arch", "x86_64"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("now serves definitions 1.400.1.0"),
        "{r:?}"
    );
}

/// `keygen` on a terminal: two different passwords are refused with
/// that reason alone (no advice about --password-file, which is for
/// scripts). The terminal is a pty made by python3's `pty` module.
#[test]
fn keygen_password_mismatch_says_only_that() {
    let fx = Fx::new();
    let script = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
answers = [b"first password\n", b"second password\n"]
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    if answers and out.count(b"assword") > 2 - len(answers):
        os.write(fd, answers.pop(0))
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(crate::support::BIN)
        .arg("keygen")
        .arg("--secret-key")
        .arg(fx.root.join("keys/t.key"))
        .arg("--public-key")
        .arg(fx.root.join("keys/t.pub"))
        .env("HOME", fx.root.join("home"))
        .output()
        .expect("python3 is needed for the terminal test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("the two passwords differ"), "{text}");
    assert!(!text.contains("--password-file"), "{text}");
    assert!(!fx.root.join("keys/t.key").exists());
}

/// Runs gapferry with its stdin, stdout and stderr on a terminal (a pty
/// made by python3's `pty` module); returns (exit code, everything shown).
fn on_a_terminal(fx: &Fx, args: &[&std::ffi::OsStr]) -> (i32, String) {
    let script = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
while True:
    try:
        chunk = os.read(fd, 65536)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(crate::support::BIN)
        .args(args)
        .current_dir(&fx.work)
        .env("HOME", fx.root.join("home"))
        .env_remove("GAPFERRY_STATE_DIR")
        .output()
        .expect("python3 is needed for the terminal tests");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The progress bar on a terminal: no empty `0 B/0 B` frame, and each
/// phase's frames only go forward (the hashing bar does not show again at
/// zero when writing starts).
#[test]
fn the_progress_bar_shows_each_phase_once_and_never_empty() {
    let fx = Fx::new();
    let k = fx.key("k");
    let dl = fx.download_sized("v1", &[(REL, "1.1.1.0", "1.400.1.0")], 4 << 20);
    let out = fx.root.join("bundles/bar.tar.zst");
    let (code, shown) = on_a_terminal(
        &fx,
        &[
            "export".as_ref(),
            "--from".as_ref(),
            dl.as_os_str(),
            "--secret-key".as_ref(),
            k.secret.as_os_str(),
            "--state-dir".as_ref(),
            fx.export_state.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ],
    );
    assert_eq!(code, 0, "{shown}");
    assert!(!shown.contains("0 B/0 B"), "an empty bar: {shown:?}");
    // Frames in order: (label, bytes done as shown).
    let mut frames: Vec<(String, String)> = Vec::new();
    for frame in shown.split(['\r', '\n']) {
        let frame = frame.replace("\u{1b}[2K", "");
        let Some((label, rest)) = frame.trim_start().split_once(" [") else {
            continue;
        };
        let Some(done) = rest.split_once("] ").and_then(|(_, r)| r.split('/').next()) else {
            continue;
        };
        if label.is_empty() || label.contains(' ') {
            continue;
        }
        frames.push((label.to_string(), done.to_string()));
    }
    let labels: Vec<&str> = {
        let mut l: Vec<&str> = frames.iter().map(|(l, _)| l.as_str()).collect();
        l.dedup();
        l
    };
    assert!(
        !labels.is_empty() && labels.iter().all(|l| ["hashing", "writing"].contains(l)),
        "{labels:?} in {shown:?}"
    );
    let mut seen = std::collections::HashSet::new();
    for l in &labels {
        assert!(
            seen.insert(*l),
            "{l} shown again after another phase: {labels:?}"
        );
    }
    // Within a phase, once bytes were shown done, it never shows 0 again.
    let mut started = std::collections::HashSet::new();
    for (label, done) in &frames {
        if done == "0 B" {
            assert!(!started.contains(label), "{label} restarted: {frames:?}");
        } else {
            started.insert(label.clone());
        }
    }
}

/// `status` says `[ok]` only for a folder with nothing to look at: a folder
/// with a warning (here: no n-1 yet) is tagged `[warning]`.
#[test]
fn status_tags_warnings_as_warnings() {
    let fx = Fx::new();
    let k = fx.key("k");
    let bundles = fx.chain(&k, REL, 1..=2);
    let status = || {
        let mut c = fx.cmd();
        c.args(["status", "--mirror"])
            .arg(&fx.mirror)
            .arg("--state-dir")
            .arg(&fx.state);
        fx.run(c)
    };
    fx.import_all(&bundles[..1], &[&k.public]);
    let r = status();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&format!("{REL}  [warning]")), "{r:?}");
    assert!(r.stdout.contains("  warning: "), "{r:?}");
    assert!(!r.stdout.contains("[ok]"), "{r:?}");
    fx.import_all(&bundles[1..], &[&k.public]);
    let r = status();
    assert!(r.stdout.contains(&format!("{REL}  [ok]")), "{r:?}");
}

/// A second rollback serves the newer set again and is recorded as a roll
/// forward, not as another rollback.
#[test]
fn a_roll_forward_is_recorded_as_one() {
    let fx = Fx::new();
    let k = fx.key("k");
    let bundles = fx.chain(&k, REL, 1..=2);
    fx.import_all(&bundles, &[&k.public]);
    for _ in 0..2 {
        let mut c = fx.cmd();
        c.args([
            "rollback",
            "--platform",
            "linux",
            "--ring",
            "production",
            "--arch",
            "x86_64",
            "--mirror",
        ])
        .arg(&fx.mirror)
        .arg("--state-dir")
        .arg(&fx.state);
        assert_eq!(fx.run(c).code, 0);
    }
    let mut c = fx.cmd();
    c.args(["ledger", "show", "--json", "--state-dir"])
        .arg(&fx.state);
    let r = fx.run(c);
    let entries: Vec<serde_json::Value> = crate::support::json::ledger_entries(&r.stdout);
    let outcomes: Vec<&str> = entries
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["imported", "imported", "rolled_back", "rolled_forward"]
    );
    let mut c = fx.cmd();
    c.args(["ledger", "show", "--state-dir"]).arg(&fx.state);
    let r = fx.run(c);
    assert!(r.stdout.contains("rolled_forward"), "{r:?}");
    assert!(r.stdout.contains("a roll forward"), "{r:?}");
}
