//! keygen -> export -> inspect -> verify through the real binary, and the
//! export options that shape a bundle (signers, sequence, expiry, filters).

use crate::support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::{json, tree_digest, FakeRelease, Sandbox};

fn rfc3339(s: &str) -> std::time::SystemTime {
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

fn inspect_json(sb: &Sandbox, bundle: &std::path::Path) -> json::Inspect {
    let r = sb
        .run(["inspect".as_ref(), bundle.as_os_str(), "--json".as_ref()])
        .ok();
    json::parse(&r.stdout)
}

#[test]
fn keygen_export_inspect_verify_round_trip() {
    let sb = Sandbox::new();
    let key = sb.keygen("signer");
    let releases = support::standard_releases();
    let from = sb.download_folder("download", &releases);
    // n-1 copies are never carried.
    releases[0].write_back_into(&from);
    let from_before = tree_digest(&from);
    let out_dir = sb.mkdir("out");
    let bundle = out_dir.join("defs.tar.zst");

    let r = sb.export(&from, &[&key], &bundle, &[]);
    assert!(
        r.stderr.contains("wrote") && r.stderr.contains("signed by"),
        "{r:#?}"
    );
    assert!(r.stdout.is_empty(), "human output goes to stderr: {r:#?}");
    assert_eq!(tree_digest(&from), from_before, "export changed its source");
    let names: Vec<String> = fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["defs.tar.zst"], "temporary files left behind");
    // 0644 minus the umask, like any ordinary output file (never 0600).
    let probe = sb.join("umask-probe");
    fs::write(&probe, b"").unwrap();
    let umask_allows = fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
    fs::remove_file(&probe).unwrap();
    assert_eq!(
        fs::metadata(&bundle).unwrap().permissions().mode() & 0o777,
        0o644 & umask_allows,
        "a bundle is readable by the courier and the import job"
    );

    // inspect without trust: everything but a verdict on the signature.
    let id = key.id().to_string();
    let r = sb.run(["inspect".as_ref(), bundle.as_os_str()]).ok();
    for needle in [
        "bundle id",
        "channel      default",
        &id,
        "not checked",
        "linux/production/arch_x86_64",
        "linux/production/arch_arm64",
        "mac/production/arch_x86_64",
        "1.419.100.0",
        &support::sha256_hex(&releases[2].updates_zip()),
    ] {
        assert!(
            r.stdout.contains(needle),
            "inspect lacks {needle:?}: {r:#?}"
        );
    }
    assert!(!r.stdout.contains("_back"), "{r:#?}");

    let r = sb
        .run([
            "inspect".as_ref(),
            bundle.as_os_str(),
            "--trust".as_ref(),
            key.public.as_os_str(),
        ])
        .ok();
    assert!(
        r.stdout.contains(&format!("key {id}  trusted, valid")),
        "{r:#?}"
    );
    // The items table lines up whatever the platform's name length.
    let columns: Vec<usize> = r
        .stdout
        .lines()
        .filter_map(|l| l.find(" engine "))
        .collect();
    assert_eq!(columns.len(), releases.len(), "{r:#?}");
    assert!(columns.iter().all(|&c| c == columns[0]), "{r:#?}");

    let info = inspect_json(&sb, &bundle);
    let mut want = Vec::new();
    for rel in &releases {
        for (path, data) in rel.payload() {
            want.push(json::File {
                sha256: support::sha256_hex(&data),
                size: data.len() as u64,
                path,
            });
        }
    }
    assert_eq!(info.files, want, "files, in layout order, n-1 never");
    assert_eq!(info.items.len(), 3);
    assert_eq!(info.items[1].arch, "arm64");
    assert_eq!(info.items[1].engine_version, "1.1.24090.4");
    assert_eq!(info.profile, "mde");
    assert_eq!(info.format, "gapferry-bundle/1");
    assert!(!info.expired);

    let r = sb.verify(&bundle, &[&key.public], &[]).ok();
    assert!(r.stderr.contains("is valid"), "{r:#?}");
    assert!(r.stderr.contains(&info.bundle_id), "{r:#?}");
}

#[test]
fn keygen_refuses_to_overwrite_without_force() {
    let sb = Sandbox::new();
    let key = sb.keygen("k");
    let mode = fs::metadata(&key.secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret key must be private");
    let text = fs::read_to_string(&key.secret).unwrap();
    assert!(text.starts_with("untrusted comment: "), "{text}");
    let pubtext = fs::read_to_string(&key.public).unwrap();
    assert!(pubtext.contains(&key.id().to_string()), "{pubtext}");

    let before = tree_digest(sb.path());
    let args = |extra: &[&str]| {
        let mut v: Vec<std::ffi::OsString> = vec![
            "keygen".into(),
            "--unencrypted".into(),
            "--secret-key".into(),
            key.secret.clone().into(),
            "--public-key".into(),
            key.public.clone().into(),
        ];
        v.extend(extra.iter().map(|s| s.into()));
        v
    };
    sb.run(args(&[])).fails(2, &["already exists", "--force"]);
    assert_eq!(tree_digest(sb.path()), before);

    // Only the public key exists: still refused, and no secret key is created.
    let other = sb.join("keys/new.key");
    sb.run([
        "keygen".as_ref(),
        "--unencrypted".as_ref(),
        "--secret-key".as_ref(),
        other.as_os_str(),
        "--public-key".as_ref(),
        key.public.as_os_str(),
    ])
    .fails(2, &["already exists", "k.pub"]);
    assert_eq!(tree_digest(sb.path()), before);

    sb.run(args(&["--force"])).ok();
    assert_ne!(fs::read_to_string(&key.secret).unwrap(), text, "a new key");
    let mode = fs::metadata(&key.secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn two_signers_and_a_threshold_of_two() {
    let sb = Sandbox::new();
    let a = sb.keygen("a");
    let b = sb.keygen("b");
    let c = sb.keygen("c");
    let from = sb.download_folder("dl", &[FakeRelease::new("linux", "production", "x86_64")]);
    let both = sb.join("both.tar.zst");
    let r = sb.export(&from, &[&a, &b], &both, &["--json"]);
    let e: json::Export = json::parse(&r.stdout);
    let mut signers = e.signers.clone();
    signers.sort();
    let mut want = vec![a.id().to_string(), b.id().to_string()];
    want.sort();
    assert_eq!(signers, want);

    // A trust directory with all three keys (*.pub only).
    let trust = sb.join("keys");
    sb.verify(&both, &[&trust], &["--threshold", "2"]).ok();
    sb.verify(&both, &[&a.public, &b.public], &["--threshold", "2"])
        .ok();
    let before = tree_digest(sb.path());
    // Two of three trusted keys signed; three are required.
    sb.verify(&both, &[&trust], &["--threshold", "3"])
        .fails(4, &["threshold not met", "2 distinct", "3 required"]);
    // Only one of the signers is trusted.
    sb.verify(&both, &[&a.public, &c.public], &["--threshold", "2"])
        .fails(4, &["threshold not met", "1 distinct"]);
    // A threshold above the trust set is a usage error, found before reading.
    sb.verify(&both, &[&a.public], &["--threshold", "2"])
        .fails(2, &["--threshold 2", "1 trusted key"]);
    sb.verify(&both, &[&a.public], &["--threshold", "0"])
        .fails(2, &["--threshold"]);

    // The same key given twice to export is refused.
    let twice = sb.join("twice.tar.zst");
    let mut cmd = sb.cmd();
    cmd.arg("export")
        .arg("--from")
        .arg(&from)
        .arg("--out")
        .arg(&twice)
        .arg("--secret-key")
        .arg(&a.secret)
        .arg("--secret-key")
        .arg(&a.secret);
    support::run(cmd).fails(2, &["same key"]);
    assert_eq!(tree_digest(sb.path()), before, "refusals change nothing");
}

#[test]
fn sequence_strictly_increases_per_channel() {
    let sb = Sandbox::new();
    let k = sb.keygen("k");
    let from = sb.download_folder("dl", &[FakeRelease::new("mac", "production", "arm64")]);
    let state = sb.join("seq-state");
    let export = |name: &str, channel: &str| -> json::Export {
        let out = sb.join(name);
        let r = sb.export(
            &from,
            &[&k],
            &out,
            &[
                "--json",
                "--channel",
                channel,
                "--state-dir",
                state.to_str().unwrap(),
            ],
        );
        json::parse(&r.stdout)
    };
    // --quiet: nothing on stderr, nothing on stdout.
    let quiet = sb.export(
        &from,
        &[&k],
        &sb.join("quiet.tar.zst"),
        &["--quiet", "--state-dir", state.to_str().unwrap()],
    );
    assert!(
        quiet.stderr.is_empty() && quiet.stdout.is_empty(),
        "{quiet:#?}"
    );
    let s1 = export("1.tar.zst", "site-a");
    let s2 = export("2.tar.zst", "site-a");
    let s3 = export("3.tar.zst", "site-a");
    assert!(s1.sequence < s2.sequence && s2.sequence < s3.sequence);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Sequences follow the clock while it is sane.
    assert!(s1.sequence + 3600 > now && s1.sequence <= now + 5, "{s1:?}");
    let other = export("4.tar.zst", "site-b");
    assert_eq!(other.channel, "site-b");
    assert!(other.sequence <= s3.sequence, "channels count separately");
    assert!(state.join("export-sequences.json").is_file());

    // A jump ahead with --sequence is kept; the next one continues above it.
    let out = sb.join("5.tar.zst");
    let want = s3.sequence + 1000;
    let want_s = want.to_string();
    sb.export(
        &from,
        &[&k],
        &out,
        &[
            "--channel",
            "site-a",
            "--state-dir",
            state.to_str().unwrap(),
            "--sequence",
            &want_s,
        ],
    );
    let s6 = export("6.tar.zst", "site-a");
    assert_eq!(s6.sequence, want + 1);

    // --sequence not above the last one is refused, no bundle written.
    let out = sb.join("7.tar.zst");
    let before = tree_digest(sb.path());
    let mut cmd = sb.cmd();
    cmd.arg("export")
        .arg("--from")
        .arg(&from)
        .arg("--out")
        .arg(&out)
        .arg("--secret-key")
        .arg(&k.secret)
        .args(["--channel", "site-a", "--state-dir"])
        .arg(&state)
        .args(["--sequence", &want_s]);
    support::run(cmd).fails(1, &["not above", "site-a"]);
    assert_eq!(tree_digest(sb.path()), before, "no bundle, state unchanged");

    // GAPFERRY_STATE_DIR is honoured when --state-dir is absent.
    let a = sb.join("env1.tar.zst");
    let b = sb.join("env2.tar.zst");
    let ea: json::Export = json::parse(&sb.export(&from, &[&k], &a, &["--json"]).stdout);
    let eb: json::Export = json::parse(&sb.export(&from, &[&k], &b, &["--json"]).stdout);
    assert!(ea.sequence < eb.sequence);
    assert!(sb.state_dir().join("export-sequences.json").is_file());
}

#[test]
fn expires_in_sets_the_expiry() {
    let sb = Sandbox::new();
    let k = sb.keygen("k");
    let from = sb.download_folder("dl", &[FakeRelease::new("linux", "preview", "x86_64")]);
    let check = |name: &str, extra: &[&str], want: Duration| {
        let out = sb.join(name);
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let e: json::Export = json::parse(&sb.export(&from, &[&k], &out, &args).stdout);
        let lived = rfc3339(&e.expires)
            .duration_since(rfc3339(&e.created))
            .unwrap();
        assert_eq!(lived, want, "{e:?}");
        let info = inspect_json(&sb, &out);
        assert_eq!(info.expires, e.expires);
        assert_eq!(info.created, e.created);
    };
    check("default.tar.zst", &[], Duration::from_secs(30 * 86400));
    check(
        "12h.tar.zst",
        &["--expires-in", "12h"],
        Duration::from_secs(12 * 3600),
    );
    check(
        "2d.tar.zst",
        &["--expires-in", "2days"],
        Duration::from_secs(2 * 86400),
    );

    let out = sb.join("short.tar.zst");
    let before = tree_digest(sb.path());
    let mut cmd = sb.cmd();
    cmd.arg("export")
        .arg("--from")
        .arg(&from)
        .arg("--out")
        .arg(&out)
        .arg("--secret-key")
        .arg(&k.secret)
        .args(["--expires-in", "10s"]);
    support::run(cmd).fails(2, &["--expires-in"]);
    let mut cmd = sb.cmd();
    cmd.arg("export")
        .arg("--from")
        .arg(&from)
        .arg("--out")
        .arg(&out)
        .arg("--secret-key")
        .arg(&k.secret)
        .args(["--expires-in", "soon"]);
    support::run(cmd).fails(2, &["--expires-in"]);
    // A bare number names units that would be accepted, not seconds.
    let mut cmd = sb.cmd();
    cmd.arg("export")
        .arg("--from")
        .arg(&from)
        .arg("--out")
        .arg(&out)
        .arg("--secret-key")
        .arg(&k.secret)
        .args(["--expires-in", "30"]);
    let r = support::run(cmd).fails(2, &["--expires-in", "no unit", "30d", "at least 1m"]);
    assert!(!r.stderr.contains("30sec"), "{}", r.stderr);
    assert_eq!(tree_digest(sb.path()), before);
}

#[test]
fn platform_and_ring_filters() {
    let sb = Sandbox::new();
    let k = sb.keygen("k");
    let releases = [
        FakeRelease::new("linux", "production", "x86_64"),
        FakeRelease::new("linux", "preview", "x86_64"),
        FakeRelease::new("mac", "production", "arm64"),
        FakeRelease::new("mac", "preview", "x86_64"),
    ];
    let from = sb.download_folder("dl", &releases);
    let carried = |name: &str, filters: &[&str]| -> Vec<String> {
        let out = sb.join(name);
        let e: json::Export = json::parse(
            &sb.export(&from, &[&k], &out, &[&["--json"], filters].concat())
                .stdout,
        );
        let info = inspect_json(&sb, &out);
        let slots: Vec<String> = e
            .items
            .iter()
            .map(|i| format!("{}/{}/{}", i.platform, i.ring, i.arch))
            .collect();
        // The files are exactly the carried folders' two files each.
        let want_files: Vec<String> = slots
            .iter()
            .flat_map(|s| {
                let (p, rest) = s.split_once('/').unwrap();
                let (r, a) = rest.split_once('/').unwrap();
                ["updates.zip", "manifest.json"].map(|f| format!("{p}/{r}/arch_{a}/{f}"))
            })
            .collect();
        let files: Vec<String> = info.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(files, want_files);
        slots
    };
    assert_eq!(
        carried("all.tar.zst", &[]),
        [
            "linux/production/x86_64",
            "linux/preview/x86_64",
            "mac/production/arm64",
            "mac/preview/x86_64"
        ]
    );
    assert_eq!(
        carried(
            "linux-preview.tar.zst",
            &["--platform", "linux", "--ring", "preview"]
        ),
        ["linux/preview/x86_64"]
    );
    assert_eq!(
        carried("mac.tar.zst", &["--platform", "mac"]),
        ["mac/production/arm64", "mac/preview/x86_64"]
    );
    assert_eq!(
        carried(
            "prod.tar.zst",
            &[
                "--platform",
                "linux",
                "--platform",
                "mac",
                "--ring",
                "production"
            ]
        ),
        ["linux/production/x86_64", "mac/production/arm64"]
    );
    let before = tree_digest(sb.path());
    let mut cmd = sb.cmd();
    cmd.arg("export")
        .arg("--from")
        .arg(&from)
        .arg("--out")
        .arg(sb.join("win.tar.zst"))
        .arg("--secret-key")
        .arg(&k.secret)
        .args(["--platform", "solaris"]);
    support::run(cmd).fails(2, &["solaris"]);
    assert_eq!(tree_digest(sb.path()), before);
    // windows is a platform of its own bundle: this folder has none of it.
    let mut cmd = sb.cmd();
    cmd.arg("export")
        .arg("--from")
        .arg(&from)
        .arg("--out")
        .arg(sb.join("win.tar.zst"))
        .arg("--secret-key")
        .arg(&k.secret)
        .args(["--platform", "windows"]);
    support::run(cmd).fails(1, &["nothing to carry", "windows/<arch>/mpam-fe.exe"]);
    assert_eq!(tree_digest(sb.path()), before);
}

/// Deterministic incompressible bytes (xorshift), so a bundle has a
/// payload of many zstd blocks without a random-number crate.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[test]
fn inspect_reads_only_the_head() {
    let sb = Sandbox::new();
    let key = sb.keygen("k");
    let rel = FakeRelease::new("linux", "production", "x86_64");
    let from = sb.download_folder("dl", std::slice::from_ref(&rel));
    let zip = gapferry::mde::zipcheck::tiny_zip("mpavdlta.vdm", &noise(3 << 20, 7));
    fs::write(from.join(rel.rel()).join("updates.zip"), &zip).unwrap();
    let bundle = sb.join("big.tar.zst");
    sb.export(&from, &[&key], &bundle, &[]);
    let full = fs::read(&bundle).unwrap();
    assert!(full.len() > 3 << 20, "the payload is incompressible");

    // Cut the bundle at 512 KiB: the head is intact, the payload is not.
    let cut = sb.join("cut.tar.zst");
    fs::write(&cut, &full[..512 * 1024]).unwrap();
    let before = tree_digest(sb.path());
    let r = sb
        .run([
            "inspect".as_ref(),
            cut.as_os_str(),
            "--trust".as_ref(),
            key.public.as_os_str(),
        ])
        .ok();
    assert!(r.stdout.contains("trusted, valid"), "{r:#?}");
    assert!(r.stdout.contains(&support::sha256_hex(&zip)), "{r:#?}");
    sb.verify(&cut, &[&key.public], &[])
        .fails(3, &["cut.tar.zst", "truncated"]);
    assert_eq!(tree_digest(sb.path()), before);

    // A crafted bundle whose zstd frame is broken (a reserved block type)
    // well after the head: inspect never decodes that far, verify does.
    let (mut m, mut payload) = support::craft::mde_manifest(&[rel]);
    payload[0].1 = zip.clone();
    m.files = support::craft::files_for(&payload);
    let tar = support::craft::Parts::signed(&m, &payload, &[&key.secret_key()]).tar_bytes();
    let mut frame = support::craft::zstd_raw_frame(&tar, 0);
    // Raw blocks of 128 KiB: the block header of block 6 is at
    // 6 (frame header) + 6 * (3 + 128 KiB).
    let at = 6 + 6 * (3 + 128 * 1024);
    assert!(at + 3 < frame.len());
    frame[at] |= 0b110; // block type 3: reserved, a decoding error
    let broken = sb.join("broken.tar.zst");
    fs::write(&broken, &frame).unwrap();
    let before = tree_digest(sb.path());
    let info = inspect_json(&sb, &broken);
    assert_eq!(info.files[0].sha256, support::sha256_hex(&zip));
    sb.verify(&broken, &[&key.public], &[])
        .fails(3, &["broken.tar.zst", "damaged compressed data"]);
    assert_eq!(tree_digest(sb.path()), before);
}

#[test]
fn inspect_with_trust_shows_each_signers_status() {
    let sb = Sandbox::new();
    let a = sb.keygen("a");
    let b = sb.keygen("b");
    let c = sb.keygen("c");
    let from = sb.download_folder("dl", &[FakeRelease::new("mac", "preview", "arm64")]);
    let bundle = sb.join("ab.tar.zst");
    sb.export(&from, &[&a, &b], &bundle, &[]);
    let (ia, ib) = (a.id().to_string(), b.id().to_string());

    let r = sb
        .run([
            "inspect".as_ref(),
            bundle.as_os_str(),
            "--trust".as_ref(),
            a.public.as_os_str(),
            "--trust".as_ref(),
            c.public.as_os_str(),
        ])
        .ok();
    assert!(
        r.stdout.contains(&format!("key {ia}  trusted, valid")),
        "{r:#?}"
    );
    assert!(
        r.stdout
            .contains(&format!("key {ib}  not in the trust set")),
        "{r:#?}"
    );

    // A trusted key id whose signature does not verify is shown as such
    // (inspect reports; verify refuses).
    let mut p = support::craft::Parts::mde(
        &[FakeRelease::new("mac", "preview", "arm64")],
        &[&a.secret_key()],
    );
    p.manifest_bytes.insert(1, b' ');
    let bad = sb.join("bad.tar.zst");
    p.write(&bad);
    let r = sb
        .run([
            "inspect".as_ref(),
            bad.as_os_str(),
            "--trust".as_ref(),
            a.public.as_os_str(),
        ])
        .ok();
    assert!(
        r.stdout.contains(&format!(
            "key {ia}  INVALID: signature by key {ia} does not match"
        )),
        "{r:#?}"
    );
}
