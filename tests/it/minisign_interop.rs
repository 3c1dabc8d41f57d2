//! Interoperability with the stock `minisign` binary (installed by .ci/run)
//! and the auditor's by-hand procedure of docs/FORMAT.md, run verbatim.
//!
//! Encrypted keys cost a 1 GiB, multi-second scrypt each; only the two
//! `encrypted_*` tests use them (two derivations each).

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::craft::{self, Parts};
use support::{FakeRelease, Keys, Sandbox};

const MINISIGN: &str = "minisign";

fn minisign(args: &[&std::ffi::OsStr], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(MINISIGN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the minisign binary is needed (apt-get install minisign; .ci/run does it)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[track_caller]
fn minisign_ok(args: &[&std::ffi::OsStr], stdin: &[u8]) -> String {
    let o = minisign(args, stdin);
    assert!(
        o.status.success(),
        "minisign {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

macro_rules! os {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new(&$a)),*] };
}

/// The bash block between the auditor-procedure markers of docs/FORMAT.md.
fn auditor_procedure() -> String {
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md"))
        .expect("docs/FORMAT.md");
    let start = doc
        .find("<!-- auditor-procedure:begin")
        .expect("begin marker in FORMAT.md");
    let end = doc[start..]
        .find("<!-- auditor-procedure:end -->")
        .expect("end marker in FORMAT.md")
        + start;
    let block = &doc[start..end];
    let open = block.find("```bash\n").expect("a ```bash fence") + "```bash\n".len();
    let close = block[open..].rfind("```").expect("closing fence") + open;
    block[open..close].to_string()
}

/// Runs the documented procedure on `bundle` with `pubkey`.
fn audit(sb: &Sandbox, bundle: &Path, pubkey: &Path) -> support::Run {
    let tmp = sb.mkdir("audit-tmp");
    let o = Command::new("bash")
        .arg("-c")
        .arg(auditor_procedure())
        .env("BUNDLE", bundle)
        .env("PUBKEY", pubkey)
        .env("TMPDIR", &tmp)
        .current_dir(sb.path())
        .output()
        .unwrap();
    support::Run::from_output(o)
}

fn one_release() -> Vec<FakeRelease> {
    vec![
        FakeRelease::new("linux", "production", "x86_64"),
        FakeRelease::new("mac", "production", "arm64"),
    ]
}

#[test]
fn auditor_procedure_from_format_md_accepts_a_gapferry_bundle() {
    let sb = Sandbox::new();
    let k = sb.keygen("signer");
    let other = sb.keygen("co-signer");
    let from = sb.download_folder("dl", &one_release());
    let bundle = sb.join("bundle.tar.zst");
    sb.export(&from, &[&k, &other], &bundle, &["--channel", "plant-3"]);

    let r = audit(&sb, &bundle, &k.public);
    assert_eq!(r.code, 0, "the documented procedure failed: {r:#?}");
    assert!(r.stdout.contains(&format!("key id {}", k.id())), "{r:#?}");
    assert!(
        r.stdout.contains("Trusted comment: gapferry bundle_id:")
            && r.stdout.contains("channel:plant-3"),
        "{r:#?}"
    );
    assert!(r.stdout.contains(": OK"), "sha256sum ran: {r:#?}");
    assert!(r.stdout.contains("4 files"), "{r:#?}");
    assert!(r.stdout.contains("bundle OK"), "{r:#?}");
    // With the co-signer's key too.
    let r = audit(&sb, &bundle, &other.public);
    assert_eq!(r.code, 0, "{r:#?}");
}

#[test]
fn auditor_procedure_catches_tampering() {
    // The procedure must be able to fail: each of these is refused by it
    // (and by gapferry verify).
    let sb = Sandbox::new();
    let k = sb.keygen("k");
    let sk = k.secret_key();
    let rel = one_release();
    let write = |name: &str, p: &Parts| -> PathBuf {
        let path = sb.join(name);
        p.write(&path);
        path
    };
    let good = write("good.tar.zst", &Parts::mde(&rel, &[&sk]));
    assert_eq!(audit(&sb, &good, &k.public).code, 0);

    let mut p = Parts::mde(&rel, &[&sk]);
    p.payload[0].1[30] ^= 1;
    let flipped = write("flipped.tar.zst", &p);
    let r = audit(&sb, &flipped, &k.public);
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(r.stdout.contains("FAILED"), "sha256sum caught it: {r:#?}");

    let mut p = Parts::mde(&rel, &[&sk]);
    p.manifest_bytes.insert(1, b' ');
    let edited = write("edited.tar.zst", &p);
    let r = audit(&sb, &edited, &k.public);
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(!r.stdout.contains("bundle OK"), "{r:#?}");

    let mut p = Parts::mde(&rel, &[&sk]);
    p.payload
        .push((craft::payload_name("linux/extra.sh"), b"echo hi\n".to_vec()));
    let extra = write("extra.tar.zst", &p);
    let r = audit(&sb, &extra, &k.public);
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(!r.stdout.contains("bundle OK"), "{r:#?}");

    let (m, payload) = craft::mde_manifest(&rel);
    let comment = m
        .trusted_comment()
        .replace("channel:default", "channel:other");
    let p = Parts::signed_bytes(m.to_bytes(), &comment, &payload, &[&sk]);
    let lying = write("lying.tar.zst", &p);
    let r = audit(&sb, &lying, &k.public);
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(r.stdout.contains("channel:other"), "{r:#?}");
    assert!(!r.stdout.contains("bundle OK"), "{r:#?}");

    // Signed by someone else: no signature file for the auditor's key.
    let stranger = sb.keygen("stranger");
    let r = audit(&sb, &good, &stranger.public);
    assert_ne!(r.code, 0, "{r:#?}");
    // It failed at the signature step, for the stranger's key.
    assert!(
        r.stdout.contains(&format!("key id {}", stranger.id())),
        "{r:#?}"
    );
    assert!(!r.stdout.contains("verified"), "{r:#?}");
    assert!(!r.stdout.contains("bundle OK"), "{r:#?}");

    for b in [&flipped, &edited, &extra, &lying] {
        assert_eq!(sb.verify(b, &[&k.public], &[]).code, 3);
    }
}

/// `minisign -G -W` (no password) into `root/keys/NAME.{key,pub}`.
fn minisign_keygen_unencrypted(sb: &Sandbox, name: &str) -> Keys {
    let dir = sb.mkdir("keys");
    let k = Keys {
        secret: dir.join(format!("{name}.key")),
        public: dir.join(format!("{name}.pub")),
    };
    minisign_ok(os!["-G", "-W", "-p", k.public, "-s", k.secret], b"");
    k
}

#[test]
fn minisign_key_signs_gapferry_bundles() {
    let sb = Sandbox::new();
    let k = minisign_keygen_unencrypted(&sb, "ms");
    let pubtext = fs::read_to_string(&k.public).unwrap();
    let minisign_id = pubtext
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    // minisign prints the id without leading zeros; gapferry always shows
    // 16 digits (DESIGN: <KEYID> is 16 upper-case hex digits).
    let shown_id = format!("{minisign_id:0>16}");
    assert_eq!(
        k.id().to_string(),
        shown_id,
        "key id display matches minisign's"
    );

    let from = sb.download_folder("dl", &one_release());
    let bundle = sb.join("b.tar.zst");
    let e: support::json::Export =
        support::json::parse(&sb.export(&from, &[&k], &bundle, &["--json"]).stdout);
    assert_eq!(e.signers.len(), 1);
    assert_eq!(e.signers[0], shown_id);
    sb.verify(&bundle, &[&k.public], &[]).ok();
    let r = sb
        .run([
            "inspect".as_ref(),
            bundle.as_os_str(),
            "--trust".as_ref(),
            k.public.as_os_str(),
        ])
        .ok();
    assert!(
        r.stdout
            .contains(&format!("key {shown_id}  trusted, valid")),
        "{r:#?}"
    );
    // And minisign itself checks the manifest gapferry signed with its key.
    assert_eq!(audit(&sb, &bundle, &k.public).code, 0);
}

#[test]
fn gapferry_key_works_with_stock_minisign() {
    let sb = Sandbox::new();
    let k = sb.keygen("gf");
    let file = sb.join("notes.txt");
    fs::write(&file, b"signed by a gapferry key with stock minisign\n").unwrap();
    let sig = sb.join("notes.txt.minisig");
    minisign_ok(
        os![
            "-S",
            "-s",
            k.secret,
            "-m",
            file,
            "-x",
            sig,
            "-t",
            "from the test"
        ],
        b"",
    );
    let out = minisign_ok(os!["-V", "-p", k.public, "-m", file, "-x", sig], b"");
    assert!(out.contains("Trusted comment: from the test"), "{out}");
    // The bare key line works with -P, as gapferry's keygen message implies.
    let line = fs::read_to_string(&k.public)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    minisign_ok(os!["-V", "-P", line, "-m", file, "-x", sig], b"");
    // gapferry parses minisign's signature of the file and checks it.
    let parsed = gapferry::sign::Signature::parse(&fs::read(&sig).unwrap()).unwrap();
    parsed
        .verify(&k.public_key(), &fs::read(&file).unwrap())
        .unwrap();
    // A wrong file fails in minisign (the check can fail).
    fs::write(&file, b"changed\n").unwrap();
    assert!(
        !minisign(os!["-V", "-p", k.public, "-m", file, "-x", sig], b"")
            .status
            .success()
    );
}

#[test]
fn manifest_signed_by_stock_minisign_verifies_in_gapferry() {
    let sb = Sandbox::new();
    let k = minisign_keygen_unencrypted(&sb, "ms");
    let rel = one_release();
    let (m, payload) = craft::mde_manifest(&rel);
    let manifest = sb.join("manifest.json");
    fs::write(&manifest, m.to_bytes()).unwrap();
    let sig = sb.join("manifest.json.minisig");
    minisign_ok(
        os![
            "-S",
            "-s",
            k.secret,
            "-m",
            manifest,
            "-x",
            sig,
            "-t",
            m.trusted_comment()
        ],
        b"",
    );
    let mut p = Parts::signed_bytes(m.to_bytes(), &m.trusted_comment(), &payload, &[]);
    p.signatures
        .push((craft::sig_name(k.id()), fs::read(&sig).unwrap()));
    let bundle = sb.join("ms-signed.tar.zst");
    p.write(&bundle);
    let r = sb.verify(&bundle, &[&k.public], &[]).ok();
    assert!(r.stderr.contains(&k.id().to_string()), "{r:#?}");

    // minisign's default trusted comment (timestamp and file name) does not
    // describe the manifest: rejected.
    let sig2 = sb.join("default-comment.minisig");
    minisign_ok(os!["-S", "-s", k.secret, "-m", manifest, "-x", sig2], b"");
    p.signatures[0].1 = fs::read(&sig2).unwrap();
    p.write(&bundle);
    let before = support::tree_digest(sb.path());
    sb.verify(&bundle, &[&k.public], &[])
        .fails(3, &["trusted comment", "does not describe this manifest"]);
    assert_eq!(support::tree_digest(sb.path()), before);
}

#[test]
fn encrypted_minisign_key_exports_with_password_file() {
    let sb = Sandbox::new();
    let dir = sb.mkdir("keys");
    let k = Keys {
        secret: dir.join("enc.key"),
        public: dir.join("enc.pub"),
    };
    // minisign reads the new password twice from stdin when it is not a terminal.
    minisign_ok(
        os!["-G", "-p", k.public, "-s", k.secret],
        b"correct horse\ncorrect horse\n",
    );
    assert!(fs::read_to_string(&k.secret)
        .unwrap()
        .contains("encrypted secret key"));
    let pw = sb.join("password");
    fs::write(&pw, "correct horse\n").unwrap();
    // Other users may not read a password file (gapferry refuses it).
    fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let from = sb.download_folder("dl", &one_release());
    let bundle = sb.join("b.tar.zst");
    sb.export(
        &from,
        &[&k],
        &bundle,
        &["--password-file", pw.to_str().unwrap()],
    );
    sb.verify(&bundle, &[&k.public], &[]).ok();
}

#[test]
fn encrypted_gapferry_key_signs_with_stock_minisign() {
    let sb = Sandbox::new();
    let dir = sb.mkdir("keys");
    let k = Keys {
        secret: dir.join("enc.key"),
        public: dir.join("enc.pub"),
    };
    let pw = sb.join("password");
    fs::write(&pw, "battery staple\n").unwrap();
    // Other users may not read a password file (gapferry refuses it).
    fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    sb.run([
        "keygen".as_ref(),
        "--password-file".as_ref(),
        pw.as_os_str(),
        "--secret-key".as_ref(),
        k.secret.as_os_str(),
        "--public-key".as_ref(),
        k.public.as_os_str(),
    ])
    .ok();
    let text = fs::read_to_string(&k.secret).unwrap();
    assert!(text.starts_with("untrusted comment: minisign encrypted secret key\n"));
    let file = sb.join("f.txt");
    fs::write(&file, b"data\n").unwrap();
    let sig = sb.join("f.txt.minisig");
    // minisign derives the key with the file's own scrypt parameters: a
    // successful signature proves gapferry encrypted it as minisign does.
    minisign_ok(
        os!["-S", "-s", k.secret, "-m", file, "-x", sig],
        b"battery staple\n",
    );
    minisign_ok(os!["-V", "-p", k.public, "-m", file, "-x", sig], b"");
}
