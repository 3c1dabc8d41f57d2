//! `gapferry export` refuses download folders it cannot carry faithfully:
//! exit 1, a message naming the folder, and nothing written (no bundle, no
//! temporary file) in the output directory, the download folder untouched.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use support::{tree_digest, FakeRelease, Keys, Run, Sandbox};

struct Case {
    sb: Sandbox,
    key: Keys,
    from: PathBuf,
    out_dir: PathBuf,
}

impl Case {
    /// A download folder with one good linux/production/x86_64 release.
    fn new() -> Case {
        let sb = Sandbox::new();
        let key = sb.keygen("k");
        let from = sb.download_folder(
            "download",
            &[FakeRelease::new("linux", "production", "x86_64")],
        );
        let out_dir = sb.mkdir("out");
        Case {
            sb,
            key,
            from,
            out_dir,
        }
    }

    fn slot(&self) -> PathBuf {
        self.from.join("linux/production/arch_x86_64")
    }

    /// Runs export with `extra` and checks that nothing changed on disk
    /// (download folder, output directory, keys).
    fn refused(&self, extra: &[&str]) -> Run {
        self.refused_with(&self.key.secret, extra)
    }

    fn refused_with(&self, secret: &Path, extra: &[&str]) -> Run {
        let before = tree_digest(self.sb.path());
        let mut cmd = self.sb.cmd();
        cmd.arg("export")
            .arg("--from")
            .arg(&self.from)
            .arg("--secret-key")
            .arg(secret)
            .arg("--out")
            .arg(self.out_dir.join("b.tar.zst"))
            .arg("--state-dir")
            .arg(self.sb.join("export-state"))
            .args(extra);
        let r = support::run(cmd);
        assert_ne!(r.code, 0, "{r:#?}");
        let after = tree_digest(self.sb.path());
        // The sequence counter may have moved; nothing else may.
        let strip = |t: &support::TreeDigest| {
            t.iter()
                .filter(|(k, _)| !k.starts_with("export-state"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<support::TreeDigest>()
        };
        assert_eq!(strip(&after), strip(&before), "something changed on disk");
        assert!(
            fs::read_dir(&self.out_dir).unwrap().next().is_none(),
            "left something in the output directory"
        );
        r
    }
}

#[test]
fn missing_updates_zip() {
    let c = Case::new();
    fs::remove_file(c.slot().join("updates.zip")).unwrap();
    c.refused(&[])
        .fails(1, &["linux/production/arch_x86_64", "has no updates.zip"]);
}

#[test]
fn empty_updates_zip() {
    let c = Case::new();
    fs::write(c.slot().join("updates.zip"), b"").unwrap();
    c.refused(&[])
        .fails(1, &["linux/production/arch_x86_64", "updates.zip is empty"]);
}

#[test]
fn html_error_page_saved_as_updates_zip() {
    let c = Case::new();
    fs::write(
        c.slot().join("updates.zip"),
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\
          <body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n",
    )
    .unwrap();
    c.refused(&[])
        .fails(1, &["linux/production/arch_x86_64", "HTML", "not a zip"]);
}

#[test]
fn truncated_zip() {
    let c = Case::new();
    let zip = c.slot().join("updates.zip");
    let mut data = fs::read(&zip).unwrap();
    data.truncate(data.len() - 30);
    fs::write(&zip, data).unwrap();
    c.refused(&[]).fails(
        1,
        &["linux/production/arch_x86_64", "end-of-central-directory"],
    );
}

#[test]
fn missing_manifest_json() {
    let c = Case::new();
    fs::remove_file(c.slot().join("manifest.json")).unwrap();
    c.refused(&[])
        .fails(1, &["linux/production/arch_x86_64", "manifest.json"]);
}

#[test]
fn malformed_manifest_json() {
    for bad in [
        &b"{\"EngineVersion\": \"1.1.24090.4\""[..],
        b"<html>error</html>",
        b"{\"EngineVersion\": \"1.1.24090.4\"}",
        b"{\"EngineVersion\": \"latest\", \"DefinitionVersion\": \"1.419.1.0\"}",
        b"",
    ] {
        let c = Case::new();
        fs::write(c.slot().join("manifest.json"), bad).unwrap();
        c.refused(&[]).fails(
            1,
            &[
                "linux/production/arch_x86_64",
                "not a Defender manifest.json",
            ],
        );
    }
}

#[test]
fn one_bad_folder_spoils_the_export() {
    let c = Case::new();
    FakeRelease::new("mac", "production", "arm64").write_into(&c.from);
    fs::write(c.from.join("mac/production/arch_arm64/updates.zip"), b"").unwrap();
    c.refused(&[])
        .fails(1, &["mac/production/arch_arm64", "updates.zip is empty"]);
    // Filtering the bad folder out is the documented way round it.
    let out = c.out_dir.join("linux.tar.zst");
    c.sb.export(&c.from, &[&c.key], &out, &["--platform", "linux"]);
    assert!(out.is_file());
}

#[test]
fn empty_download_folder() {
    let c = Case::new();
    fs::remove_dir_all(&c.from).unwrap();
    fs::create_dir(&c.from).unwrap();
    c.refused(&[]).fails(1, &["download", "nothing to carry"]);
}

#[test]
fn only_back_folders() {
    let c = Case::new();
    let r = FakeRelease::new("linux", "production", "x86_64");
    r.write_back_into(&c.from);
    fs::remove_dir_all(c.slot()).unwrap();
    c.refused(&[]).fails(1, &["download", "nothing to carry"]);
}

#[test]
fn nothing_matches_the_filters() {
    let c = Case::new();
    c.refused(&["--platform", "mac"])
        .fails(1, &["download", "nothing to carry", "--platform mac"]);
    c.refused(&["--ring", "preview"])
        .fails(1, &["nothing to carry", "--ring preview"]);
}

#[test]
fn from_is_not_a_directory() {
    let c = Case::new();
    let mut cmd = c.sb.cmd();
    let missing = c.sb.join("no-such-folder");
    cmd.arg("export")
        .arg("--from")
        .arg(&missing)
        .arg("--secret-key")
        .arg(&c.key.secret)
        .arg("--out")
        .arg(c.out_dir.join("b.tar.zst"));
    support::run(cmd).fails(1, &["no-such-folder", "not a directory"]);
    assert!(fs::read_dir(&c.out_dir).unwrap().next().is_none());
}

#[test]
fn existing_out_without_force() {
    let c = Case::new();
    let out = c.out_dir.join("b.tar.zst");
    fs::write(&out, b"an older bundle").unwrap();
    let before = tree_digest(c.sb.path());
    let mut cmd = c.sb.cmd();
    cmd.arg("export")
        .arg("--from")
        .arg(&c.from)
        .arg("--secret-key")
        .arg(&c.key.secret)
        .arg("--out")
        .arg(&out);
    support::run(cmd).fails(1, &["b.tar.zst", "already exists", "--force"]);
    let after = tree_digest(c.sb.path());
    assert_eq!(after.get("out/b.tar.zst"), before.get("out/b.tar.zst"));
    assert_eq!(fs::read_dir(&c.out_dir).unwrap().count(), 1);

    c.sb.export(&c.from, &[&c.key], &out, &["--force"]);
    assert_ne!(fs::read(&out).unwrap(), b"an older bundle");
    c.sb.verify(&out, &[&c.key.public], &[]).ok();
    assert_eq!(fs::read_dir(&c.out_dir).unwrap().count(), 1);
}

#[test]
fn unusable_secret_keys() {
    let c = Case::new();
    let bad = c.sb.join("keys/garbage.key");
    fs::write(&bad, "untrusted comment: hello\nnot base64 at all\n").unwrap();
    c.refused_with(&bad, &[])
        .fails(2, &["garbage.key", "not a minisign secret key"]);

    // An encrypted key (algorithm bytes patched to "Sc") with no password
    // file and no terminal: refused before any key derivation.
    let text = fs::read_to_string(&c.key.secret).unwrap();
    let b64 = text.lines().nth(1).unwrap();
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    raw[2..4].copy_from_slice(b"Sc");
    let enc = c.sb.join("keys/enc.key");
    fs::write(
        &enc,
        format!(
            "untrusted comment: x\n{}\n",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ),
    )
    .unwrap();
    c.refused_with(&enc, &[])
        .fails(2, &["enc.key", "--password-file"]);
}
