//! The README's command blocks, run as written.
//!
//! Convention: a code block (indented by four spaces, or fenced with
//! three backticks) is run when the line just before it (blank lines
//! aside) is the HTML comment `<!-- readme-test -->`. Unmarked blocks are
//! skipped: they need the network (`fetch`), run forever (`--watch`), need
//! a build tool (`cargo deb`) or show placeholder values. A marker may name
//! a fixture step to run first, `<!-- readme-test before: NAME -->`, one
//! of [`before`]'s names.
//!
//! The marked blocks run in file order, each as one `bash -eu -o pipefail`
//! script, in one sandbox shared by all of them (a block sees what the
//! blocks before it made): the working folder is `ROOT/work`; the
//! absolute paths the README uses under `/srv`, `/secure`, `/media`,
//! `/etc/gapferry`, `/etc/opt` and `/var/lib/gapferry` are moved under
//! `ROOT` by rewriting the block's text; `gapferry` on PATH is the binary
//! under test, and `sudo` runs its arguments as they are. The sandbox
//! starts with what the README assumes exists: a download folder in
//! `/srv/mde-updates` (as `fetch` leaves it), the password file
//! `/secure/pw`, the folders `/srv/outbox` and `/media/usb`, and Defender's
//! settings folder `/etc/opt/microsoft/mdatp/managed`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use gapferry::keys::{KeyId, PublicKey};

use crate::support::{self, FakeRelease};

const MARKER: &str = "<!-- readme-test";

/// The absolute paths of the README moved into the sandbox.
const MOVED: &[&str] = &[
    "/srv/",
    "/secure/",
    "/media/",
    "/etc/gapferry/",
    "/etc/opt/",
    "/var/lib/gapferry",
];

/// One marked block: its first line number (1-based), its fixture step,
/// and its text.
#[derive(Debug)]
struct Block {
    line: usize,
    before: Option<String>,
    script: String,
}

/// The marked blocks of `text`, in order.
fn marked_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        if !l.starts_with(MARKER) {
            i += 1;
            continue;
        }
        let inner = l
            .strip_prefix(MARKER)
            .and_then(|r| r.strip_suffix("-->"))
            .unwrap_or_else(|| panic!("README line {}: malformed marker {l:?}", i + 1))
            .trim();
        let before = match inner {
            "" => None,
            _ => Some(
                inner
                    .strip_prefix("before:")
                    .unwrap_or_else(|| panic!("README line {}: unknown marker {l:?}", i + 1))
                    .trim()
                    .to_string(),
            ),
        };
        i += 1;
        while i < lines.len() && lines[i].trim().is_empty() {
            i += 1;
        }
        let start = i;
        let mut body = Vec::new();
        if lines
            .get(i)
            .is_some_and(|l| l.trim_start().starts_with("```"))
        {
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                body.push(lines[i].to_string());
                i += 1;
            }
            i += 1;
        } else {
            while i < lines.len() && lines[i].starts_with("    ") {
                body.push(lines[i][4..].to_string());
                i += 1;
            }
        }
        assert!(
            !body.is_empty(),
            "README line {}: a marker with no code block after it",
            start
        );
        out.push(Block {
            line: start + 1,
            before,
            script: body.join("\n"),
        });
    }
    out
}

/// `script` with the README's absolute paths moved under `root`: a path
/// is moved where it starts a word (after a space, `=`, `(` or a quote).
fn moved_into(script: &str, root: &Path) -> String {
    let root = root.display().to_string();
    let mut out = String::with_capacity(script.len());
    let mut rest = script;
    'scan: while !rest.is_empty() {
        let at_word_start = out
            .chars()
            .last()
            .is_none_or(|c| c.is_whitespace() || "=(\"'".contains(c));
        if at_word_start {
            for p in MOVED {
                if rest.starts_with(p) {
                    out.push_str(&root);
                    out.push_str(p);
                    rest = &rest[p.len()..];
                    continue 'scan;
                }
            }
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The sandbox the blocks run in.
struct Sandbox {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    bin: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let work = root.join("work");
        let bin = root.join("bin");
        for d in [
            &work,
            &bin,
            &root.join("srv/outbox"),
            &root.join("media/usb"),
            &root.join("etc/opt/microsoft/mdatp/managed"),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        std::os::unix::fs::symlink(support::BIN, bin.join("gapferry")).unwrap();
        fs::write(bin.join("sudo"), "#!/bin/sh\nexec \"$@\"\n").unwrap();
        fs::set_permissions(bin.join("sudo"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(root.join("secure")).unwrap();
        fs::write(root.join("secure/pw"), "correct horse battery staple\n").unwrap();
        fs::set_permissions(root.join("secure/pw"), fs::Permissions::from_mode(0o600)).unwrap();
        let s = Sandbox {
            _tmp: tmp,
            root,
            work,
            bin,
        };
        s.release("1.419.100.0");
        s
    }

    /// `/srv/mde-updates` holding linux/production (both arches) at
    /// `definitions`, as `fetch` would leave it.
    fn release(&self, definitions: &str) {
        let dl = self.root.join("srv/mde-updates");
        let _ = fs::remove_dir_all(&dl);
        for arch in ["x86_64", "arm64"] {
            FakeRelease::new("linux", "production", arch)
                .versions("1.1.24090.4", definitions)
                .write_into(&dl);
        }
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.work)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("HOME", self.root.join("home"))
            .env("GAPFERRY_STATE_DIR", self.root.join("var/lib/gapferry"))
            .env_remove("XDG_STATE_HOME")
            .env_remove("CARGO_MANIFEST_DIR")
            .env("NO_COLOR", "1");
        for v in support::PROXY_VARS {
            c.env_remove(v);
        }
        c
    }

    /// Runs gapferry in the sandbox, asserting success.
    fn gapferry(&self, args: &[&str]) {
        let out = self.command(support::BIN).args(args).output().unwrap();
        assert!(out.status.success(), "gapferry {args:?}: {out:?}");
    }

    fn path(&self, p: &str) -> String {
        format!("{}{p}", self.root.display())
    }

    /// The fixture steps a marker can name.
    fn before(&self, name: &str) {
        match name {
            // A newer release exported and imported, so the mirror has n-1.
            "newer-release" => {
                self.release("1.419.200.0");
                let out = self.path("/srv/outbox/newer.tar.zst");
                self.gapferry(&[
                    "export",
                    "--quiet",
                    "--from",
                    &self.path("/srv/mde-updates"),
                    "--secret-key",
                    &self.path("/secure/online.key"),
                    "--password-file",
                    &self.path("/secure/pw"),
                    "--out",
                    &out,
                ]);
                self.gapferry(&[
                    "import",
                    "--quiet",
                    &out,
                    "--trust",
                    &self.path("/etc/gapferry/trusted/"),
                    "--mirror",
                    &self.path("/srv/mde-mirror"),
                ]);
            }
            // work/bundle.tar.zst signed by a second key before the online
            // key: a glob over the signatures picks the wrong one.
            "two-signer-bundle" if self.work.join("bundle.tar.zst").exists() => {}
            "two-signer-bundle" => {
                let online = PublicKey::from_file(&self.work.join("online.pub")).unwrap();
                let k = key_sorting_before(&self.work.join("second"), online.key_id);
                self.gapferry(&[
                    "export",
                    "--quiet",
                    "--from",
                    &self.path("/srv/mde-updates"),
                    "--secret-key",
                    &k.secret.display().to_string(),
                    "--secret-key",
                    &self.path("/secure/online.key"),
                    "--password-file",
                    &self.path("/secure/pw"),
                    "--force",
                    "--out",
                    &self.work.join("bundle.tar.zst").display().to_string(),
                ]);
            }
            other => panic!("unknown fixture step {other:?} in a README marker"),
        }
    }
}

fn readme() -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

#[test]
fn readme_command_blocks_run_as_written() {
    let blocks = marked_blocks(&readme());
    // Removing markers would make this test pass by running nothing.
    assert!(blocks.len() >= 9, "{} marked blocks", blocks.len());
    let sb = Sandbox::new();
    for b in &blocks {
        if let Some(step) = &b.before {
            sb.before(step);
        }
        let script = moved_into(&b.script, &sb.root);
        let out = sb
            .command("bash")
            .args(["-eu", "-o", "pipefail", "-c"])
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README block at line {} failed ({}):\n{}\n--- stdout\n{}\n--- stderr\n{}",
            b.line,
            out.status,
            b.script,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The blocks did what they say: a served mirror with n-1.
    for rel in [
        "linux/production/arch_x86_64",
        "linux/production_back/arch_x86_64",
    ] {
        assert!(
            sb.root
                .join("srv/mde-mirror")
                .join(rel)
                .join("updates.zip")
                .is_file(),
            "{rel}"
        );
    }
}

/// A new key in `dir` whose id sorts before `id`, so its signature file
/// comes first in `signatures/*.minisig`.
fn key_sorting_before(dir: &Path, id: KeyId) -> support::Keys {
    for n in 0..64 {
        let k = support::keygen(dir, &format!("second-{n}"));
        if k.id().to_string() < id.to_string() {
            return k;
        }
    }
    panic!("64 keys and none sorts before {id}");
}

/// The old auditor command, a glob over the signatures, fails on a bundle
/// with two signers (when the other signer's file comes first), which is
/// why the README picks the file by key id.
#[test]
fn a_signature_glob_fails_with_two_signers() {
    let sb = Sandbox::new();
    let k = support::keygen(&sb.root.join("secure"), "online");
    fs::copy(&k.public, sb.work.join("online.pub")).unwrap();
    let second = key_sorting_before(&sb.work.join("second"), k.id());
    sb.gapferry(&[
        "export",
        "--quiet",
        "--from",
        &sb.path("/srv/mde-updates"),
        "--secret-key",
        &second.secret.display().to_string(),
        "--secret-key",
        &k.secret.display().to_string(),
        "--out",
        &sb.work.join("bundle.tar.zst").display().to_string(),
    ]);
    let glob = "mkdir x && zstd -dc bundle.tar.zst | tar -x -C x\n\
                minisign -Vm x/gapferry/manifest.json -x x/gapferry/signatures/*.minisig -p online.pub";
    let out = sb
        .command("bash")
        .args(["-eu", "-o", "pipefail", "-c", glob])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the glob worked: {out:?}");
}

#[test]
fn markers_are_parsed_and_paths_moved() {
    let text = "text\n<!-- readme-test -->\n\n    a /srv/x \\\n        --b=/secure/k\n\nprose\n\
                <!-- readme-test before: step -->\n```bash\nc \"/media/usb\"\n```\n\
                    unmarked /srv/y\n";
    let b = marked_blocks(text);
    assert_eq!(b.len(), 2, "{b:?}");
    assert_eq!(b[0].script, "a /srv/x \\\n    --b=/secure/k");
    assert_eq!(b[0].line, 4);
    assert_eq!(b[1].before.as_deref(), Some("step"));
    assert_eq!(b[1].script, "c \"/media/usb\"");
    let root = Path::new("/R");
    assert_eq!(
        moved_into("a /srv/x --b=/secure/k http://h/srv/ (/etc/opt/m)", root),
        "a /R/srv/x --b=/R/secure/k http://h/srv/ (/R/etc/opt/m)"
    );
}
