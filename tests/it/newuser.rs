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
    assert!(rep["error"].as_str().unwrap().contains("does not exist"));

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
