//! The packaged services run with least privilege: the systemd units name
//! the unprivileged `gapferry` user and the sandboxing that keeps it to the
//! inbox, the mirror and its state; the .deb creates that user; and the
//! importer really needs nothing more (an inbox pass as an unprivileged user
//! that owns only those folders imports the bundle).

use crate::support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{FakeRelease, Sandbox};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `KEY=value` lines of a unit's `[Service]` section (keys may repeat).
fn service_section(unit: &str) -> BTreeMap<String, Vec<String>> {
    let text = fs::read_to_string(repo(unit)).unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_service = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').expect("KEY=value");
        out.entry(k.to_string()).or_default().push(v.to_string());
    }
    out
}

fn one<'a>(s: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    let v = s.get(key).unwrap_or_else(|| panic!("{key}= is missing"));
    assert_eq!(v.len(), 1, "{key}= given more than once: {v:?}");
    &v[0]
}

/// The defaults of /etc/default/gapferry.
fn defaults() -> BTreeMap<String, String> {
    fs::read_to_string(repo("packaging/default-gapferry"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

const SANDBOXING: &[(&str, &str)] = &[
    ("User", "gapferry"),
    ("Group", "gapferry"),
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("RestrictSUIDSGID", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("RestrictNamespaces", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectControlGroups", "yes"),
    ("SystemCallArchitectures", "native"),
    ("StateDirectory", "gapferry"),
    ("StateDirectoryMode", "0700"),
    ("UMask", "0022"),
];

fn check_sandboxing(unit: &str) -> BTreeMap<String, Vec<String>> {
    let s = service_section(unit);
    for (k, want) in SANDBOXING {
        assert_eq!(one(&s, k), *want, "{unit}: {k}=");
    }
    assert!(
        s.get("SystemCallFilter")
            .is_some_and(|v| v.iter().any(|f| f == "@system-service")),
        "{unit}: SystemCallFilter=@system-service"
    );
    s
}

/// Writable paths, without systemd's `-` (ignore if missing) prefix.
fn writable(s: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    s.get("ReadWritePaths")
        .into_iter()
        .flatten()
        .flat_map(|v| v.split_whitespace())
        .map(|p| p.trim_start_matches('-').to_string())
        .collect()
}

#[test]
fn inbox_service_is_unprivileged_offline_and_writes_only_inbox_and_mirror() {
    let s = check_sandboxing("packaging/systemd/gapferry-inbox.service");
    assert_eq!(one(&s, "PrivateNetwork"), "yes");
    assert_eq!(one(&s, "IPAddressDeny"), "any");
    assert_eq!(one(&s, "RestrictAddressFamilies"), "AF_UNIX");
    // No shell in between: systemd expands ${VAR} itself, one word each.
    assert!(one(&s, "ExecStart").starts_with("/usr/bin/gapferry import "));
    // Exactly the default inbox and mirror; the state directory comes from
    // StateDirectory= (checked above).
    let d = defaults();
    assert_eq!(
        writable(&s),
        vec![d["GAPFERRY_INBOX"].clone(), d["GAPFERRY_MIRROR"].clone()]
    );
    assert_eq!(
        one(&s, "Environment"),
        "GAPFERRY_STATE_DIR=/var/lib/gapferry"
    );
    // One key=value line per event, found in the journal under one name.
    assert_eq!(one(&s, "SyslogIdentifier"), "gapferry");
    assert!(one(&s, "ExecStart").ends_with(" --log-format kv"));
}

#[test]
fn export_service_is_unprivileged_and_writes_only_download_and_outbox() {
    let s = check_sandboxing("packaging/systemd/gapferry-export.service");
    let d = defaults();
    assert_eq!(
        writable(&s),
        vec![
            d["GAPFERRY_DOWNLOAD_DIR"].clone(),
            d["GAPFERRY_OUTBOX"].clone()
        ]
    );
    let families = one(&s, "RestrictAddressFamilies");
    assert!(!families.contains("AF_PACKET"), "{families}");
    assert_eq!(one(&s, "SyslogIdentifier"), "gapferry");
    assert!(one(&s, "ExecStart").contains(" --log-format kv "));
}

/// `systemd-analyze security --offline` scores the units where it exists
/// (exposure 0-10; `--threshold` is in tenths and fails above it).
#[test]
fn systemd_analyze_scores_the_units_safe() {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    for (unit, threshold) in [
        ("gapferry-inbox.service", "10"),
        ("gapferry-export.service", "20"),
    ] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(format!("--threshold={threshold}"))
            .arg(repo("packaging/systemd").join(unit))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{unit} scores above {threshold}/100:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("Overall exposure level"), "{text}");
    }
}

#[test]
fn the_package_creates_the_service_user() {
    let cargo = fs::read_to_string(repo("Cargo.toml")).unwrap();
    assert!(cargo.contains(r#"maintainer-scripts = "packaging/debian/""#));
    assert!(cargo.contains(r#""usr/lib/sysusers.d/gapferry.conf""#));
    assert!(cargo.contains(r#""usr/lib/tmpfiles.d/gapferry.conf""#));
    let postinst = repo("packaging/debian/postinst");
    assert_eq!(fs::metadata(&postinst).unwrap().mode() & 0o111, 0o111);
    let text = fs::read_to_string(&postinst).unwrap();
    assert!(text.contains("systemd-sysusers gapferry.conf"));
    assert!(text.contains("adduser --system --group"));
    assert!(text.contains("#DEBHELPER#"));

    // sysusers.d, applied to an empty root where the tool exists.
    if !Command::new("systemd-sysusers")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped the sysusers run: systemd-sysusers is not installed");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join("etc")).unwrap();
    for f in ["passwd", "group", "shadow", "gshadow"] {
        fs::write(root.path().join("etc").join(f), "").unwrap();
    }
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(repo("packaging/sysusers-gapferry.conf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let passwd = fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("gapferry:"))
        .unwrap_or_else(|| panic!("no gapferry user in {passwd:?}"));
    let fields: Vec<&str> = line.split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid != 0 && uid < 1000, "a system user: {line}");
    assert_eq!(fields[5], "/var/lib/gapferry");
    assert_eq!(fields[6], "/usr/sbin/nologin");
}

/// The least privilege the units grant is enough: an unprivileged user that
/// owns only the inbox, the mirror and the state directory's parent imports
/// a bundle from the inbox.
#[test]
fn an_unprivileged_user_owning_only_its_folders_imports_from_the_inbox() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to switch to an unprivileged user");
        return;
    }
    const NOBODY: u32 = 65534;
    let sb = Sandbox::new();
    fs::set_permissions(sb.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let keys = sb.keygen("k");
    let from =
        sb.download_folder(
            "dl",
            &[FakeRelease::new("linux", "production", "x86_64")
                .versions("1.1.24090.4", "1.1.25010.1")],
        );
    let bundle = sb.join("b.tar.zst");
    sb.export(&from, &[&keys], &bundle, &[]).ok();

    let svc = sb.mkdir("svc");
    let inbox = sb.mkdir("svc/inbox");
    let mirror = sb.mkdir("svc/mirror");
    fs::copy(&bundle, inbox.join("b.tar.zst")).unwrap();
    for p in [&svc, &inbox, &mirror, &inbox.join("b.tar.zst")] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_gapferry"))
        .arg("import")
        .arg("--inbox")
        .arg(&inbox)
        .arg("--trust")
        .arg(&keys.public)
        .arg("--mirror")
        .arg(&mirror)
        .arg("--state-dir")
        .arg(svc.join("state"))
        .args(["--settle", "0s"])
        .env_clear()
        .env("HOME", "/nonexistent")
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unprivileged inbox pass failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let zip = mirror.join("linux/production/arch_x86_64/updates.zip");
    assert_eq!(fs::metadata(&zip).unwrap().uid(), NOBODY);
    assert!(inbox.join("processed").is_dir());
    assert_eq!(fs::metadata(svc.join("state")).unwrap().uid(), NOBODY);
}

/// `packaging/build-deb.sh` with `CARGO_TARGET_DIR` set: the binary is
/// taken from that folder (not ./target), staged stripped, with gzipped
/// man pages and completions, before `cargo deb --no-build`. A stand-in
/// `cargo` on PATH plays the build (copying the test binary where cargo
/// would put it) and records the `deb` call; the scripts run from a copy
/// of packaging/, so nothing is written into the checkout.
#[test]
fn build_deb_honours_cargo_target_dir_and_strips_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let checkout = tmp.path().join("checkout");
    fs::create_dir_all(checkout.join("packaging")).unwrap();
    for script in ["build-deb.sh", "stage-assets.sh"] {
        fs::copy(
            repo(&format!("packaging/{script}")),
            checkout.join("packaging").join(script),
        )
        .unwrap();
    }
    let bin_dir = tmp.path().join("bin");
    fs::create_dir(&bin_dir).unwrap();
    let log = tmp.path().join("cargo.log");
    let fake = format!(
        "#!/bin/sh\n\
         echo \"$@\" >> {log}\n\
         case \"$1\" in\n\
         build) mkdir -p \"$CARGO_TARGET_DIR/release\" && cp {bin} \"$CARGO_TARGET_DIR/release/gapferry\" ;;\n\
         deb) test -x target/assets/gapferry || exit 9 ;;\n\
         esac\n",
        log = log.display(),
        bin = support::BIN,
    );
    fs::write(bin_dir.join("cargo"), fake).unwrap();
    fs::set_permissions(bin_dir.join("cargo"), fs::Permissions::from_mode(0o755)).unwrap();
    let target = tmp.path().join("elsewhere");
    let out = Command::new(checkout.join("packaging/build-deb.sh"))
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let calls = fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        ["build --release --locked", "deb --no-build"]
    );
    let assets = checkout.join("target/assets");
    let staged = assets.join("gapferry");
    let sections = Command::new("readelf")
        .args(["-S", "--wide"])
        .arg(&staged)
        .output()
        .unwrap();
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(sections.contains(" .text "), "{sections}");
    // (.debug_gdb_scripts is loaded code, not debug information.)
    for gone in [" .debug_info ", " .debug_line ", " .symtab "] {
        assert!(!sections.contains(gone), "{gone} not stripped: {sections}");
    }
    assert!(
        fs::metadata(&staged).unwrap().len() < fs::metadata(support::BIN).unwrap().len(),
        "the staged binary is not smaller than the unstripped one"
    );
    for f in [
        "man/gapferry.1.gz",
        "man/gapferry-import.1.gz",
        "completions/gapferry.bash",
        "completions/_gapferry",
        "completions/gapferry.fish",
    ] {
        assert!(assets.join(f).is_file(), "{f} not staged");
    }
}

/// The package's control fields: a Maintainer with a name and an address.
#[test]
fn the_package_names_a_maintainer_with_an_address() {
    let cargo = fs::read_to_string(repo("Cargo.toml")).unwrap();
    let line = cargo
        .lines()
        .find(|l| l.starts_with("maintainer ="))
        .expect("[package.metadata.deb] maintainer");
    let value = line.split('"').nth(1).unwrap();
    let (name, rest) = value.split_once(" <").expect("Name <address>");
    assert!(!name.trim().is_empty(), "{value}");
    let addr = rest.strip_suffix('>').expect("Name <address>");
    let (user, host) = addr.split_once('@').expect("an address with @");
    assert!(!user.is_empty() && host.contains('.'), "{value}");
    assert!(cargo.contains(r#"["target/assets/gapferry", "usr/bin/", "755"]"#));
}
