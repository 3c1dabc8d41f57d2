//! `gapferry import` lays the bundle out where endpoints look: the mirror
//! layout with n-1 rotation, world-readable modes whatever the umask, the
//! `--platform`/`--ring` filters, and `--target` for one platform and ring.

use crate::support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use support::import::*;

const LX: &str = "linux/production/arch_x86_64";
const LA: &str = "linux/production/arch_arm64";
const MX: &str = "mac/production/arch_x86_64";
const PX: &str = "linux/preview/arch_x86_64";

/// Runs `c` under `sh -c 'umask 077; exec gapferry ...'`.
fn with_umask_077(c: &Command) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("umask 077; exec \"$0\" \"$@\"")
        .arg(c.get_program())
        .args(c.get_args());
    if let Some(d) = c.get_current_dir() {
        sh.current_dir(d);
    }
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh
}

/// Every folder under `dir` (itself included) is 0755 and every file 0644.
#[track_caller]
fn assert_world_readable(dir: &Path) {
    let mut n = 0;
    for e in walkdir::WalkDir::new(dir) {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
        let want = if e.file_type().is_dir() { 0o755 } else { 0o644 };
        assert_eq!(mode, want, "{} is {mode:o}", e.path().display());
        n += 1;
    }
    assert!(n > 1, "{} is empty", dir.display());
}

fn import_077(fx: &Fx, bundle: &Path, key: &Keys, extra: &[&str]) -> Run {
    let mut c = fx.import_cmd(bundle, &[&key.public], extra);
    c.arg("--mirror")
        .arg(&fx.mirror)
        .arg("--state-dir")
        .arg(&fx.state);
    fx.run(with_umask_077(&c))
}

#[test]
fn mirror_layout_modes_and_back_rotation() {
    let fx = Fx::new();
    let key = fx.key("k");
    let [(v1, b1), (v2, b2), (v3, b3)]: [_; 3] =
        fx.releases(&key, &[LX, LA], 1..=3).try_into().unwrap();

    // First import into a mirror that does not exist yet, under umask 077.
    import_077(&fx, &b1, &key, &[]).expect(0, &["1.400.1.0"]);
    assert_world_readable(&fx.mirror);
    for rel in [LX, LA] {
        assert_same_files(&fx.mirror.join(rel), &v1.join(rel));
    }
    assert!(!fx.mirror.join("linux/production_back").exists());

    // Folders the bundle does not carry, and a stray file in a ring folder.
    let mac = fx.mirror.join(MX);
    fs::create_dir_all(&mac).unwrap();
    fs::write(mac.join("updates.zip"), b"mac bytes").unwrap();
    fs::write(
        mac.join("manifest.json"),
        folder_manifest("9.9.9.9", "9.9.9.9"),
    )
    .unwrap();
    fs::create_dir_all(fx.mirror.join("linux/preview_back/arch_arm64")).unwrap();
    fs::write(fx.mirror.join("linux/production/README"), b"ops notes").unwrap();
    let untouched = |fx: &Fx| {
        let mut t = content_digest(&fx.mirror.join("mac"));
        t.extend(
            content_digest(&fx.mirror.join("linux/preview_back"))
                .into_iter()
                .map(|(k, v)| (format!("pb{k}"), v)),
        );
        t.insert(
            "readme".into(),
            format!(
                "{:?}",
                fs::read(fx.mirror.join("linux/production/README")).ok()
            ),
        );
        t
    };
    let others = untouched(&fx);

    // Second import: v1 moves to production_back.
    import_077(&fx, &b2, &key, &[]).expect(0, &["1.400.1.0 -> 1.1.2.0 / 1.400.2.0"]);
    for rel in [LX, LA] {
        assert_same_files(&fx.mirror.join(rel), &v2.join(rel));
        let back = rel.replace("production", "production_back");
        assert_same_files(&fx.mirror.join(&back), &v1.join(rel));
    }
    assert_world_readable(&fx.mirror.join("linux/production_back"));
    assert_world_readable(&fx.mirror.join(LX));
    assert_trees_eq(&others, &untouched(&fx));

    // Third: v2 becomes n-1, v1 is gone.
    import_077(&fx, &b3, &key, &[]).ok();
    for rel in [LX, LA] {
        assert_same_files(&fx.mirror.join(rel), &v3.join(rel));
        let back = rel.replace("production", "production_back");
        assert_same_files(&fx.mirror.join(&back), &v2.join(rel));
    }
    assert_world_readable(&fx.mirror.join("linux/production_back"));
    assert_trees_eq(&others, &untouched(&fx));
    assert_no_staging(&fx.root);
    let names: Vec<_> = fs::read_dir(fx.mirror.join("linux"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        names,
        ["preview_back", "production", "production_back"],
        "nothing else beside the ring folders"
    );
}

#[test]
fn platform_and_ring_filters() {
    let fx = Fx::new();
    let key = fx.key("k");
    let dl = fx.download(
        "all",
        &[
            (LX, "1.1.1.0", "1.400.1.0"),
            (PX, "1.1.1.0", "1.401.1.0"),
            (MX, "1.1.1.0", "1.400.1.0"),
        ],
    );
    let b = fx.export(&dl, "all", &[&key], &[]);

    fx.import(&b, &[&key.public], &["--platform", "mac"]).ok();
    assert_same_files(&fx.mirror.join(MX), &dl.join(MX));
    assert!(!fx.mirror.join("linux").exists());

    fx.import(
        &b,
        &[&key.public],
        &["--platform", "linux", "--ring", "preview"],
    )
    .ok();
    assert_same_files(&fx.mirror.join(PX), &dl.join(PX));
    assert!(!fx.mirror.join("linux/production").exists());

    // The rest of the same bundle, later: only the missing folder is written.
    let before_mac = content_digest(&fx.mirror.join("mac"));
    let before_pre = content_digest(&fx.mirror.join("linux/preview"));
    fx.import(&b, &[&key.public], &[]).ok();
    assert_same_files(&fx.mirror.join(LX), &dl.join(LX));
    assert_trees_eq(&before_mac, &content_digest(&fx.mirror.join("mac")));
    assert_trees_eq(
        &before_pre,
        &content_digest(&fx.mirror.join("linux/preview")),
    );
    assert!(!fx.mirror.join("mac/production_back").exists());
    // Now every carried folder serves it: already imported.
    fx.import(&b, &[&key.public], &[])
        .expect(0, &["already imported"]);
}

#[test]
fn filters_matching_nothing_are_a_usage_error() {
    let fx = Fx::new();
    let key = fx.key("k");
    let dl = fx.download("l", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let b = fx.export(&dl, "l", &[&key], &[]);
    fx.import(&b, &[&key.public], &[]).ok();
    let before = fx.snapshot();
    for filter in [
        &["--platform", "mac"][..],
        &["--ring", "preview"][..],
        &["--platform", "linux", "--ring", "preview"][..],
    ] {
        fx.import(&b, &[&key.public], filter).expect(
            2,
            &[
                "no carried folder matches --platform/--ring",
                "linux/production/arch_x86_64",
            ],
        );
        fx.assert_unchanged(&before);
    }
    // Unknown names are refused by the parser.
    fx.import(&b, &[&key.public], &["--platform", "solaris"])
        .expect(2, &["solaris"]);
    fx.assert_unchanged(&before);
    // A known platform this bundle does not carry matches nothing.
    fx.import(&b, &[&key.public], &["--platform", "windows"])
        .expect(2, &["no carried folder matches"]);
    fx.assert_unchanged(&before);
}

#[test]
fn target_publishes_one_platform_and_ring() {
    let fx = Fx::new();
    let key = fx.key("k");
    let [(v1, b1), (v2, b2)]: [_; 2] = fx.releases(&key, &[LX, LA], 1..=2).try_into().unwrap();
    let served = fx.root.join("srv");
    fs::create_dir_all(&served).unwrap();
    let target = served.join("mde-linux");
    let state = fx.root.join("tstate");
    let import = |b: &Path| {
        let mut c = fx.import_cmd(b, &[&key.public], &["--create"]);
        c.arg("--target")
            .arg(&target)
            .arg("--state-dir")
            .arg(&state);
        fx.run(with_umask_077(&c))
    };

    import(&b1).ok();
    for arch in ["arch_x86_64", "arch_arm64"] {
        assert_same_files(&target.join(arch), &v1.join("linux/production").join(arch));
    }
    assert_world_readable(&target);
    assert!(fx.mirror_is_empty(), "nothing in a mirror root");

    import(&b2).ok();
    let back = served.join("mde-linux_back");
    for arch in ["arch_x86_64", "arch_arm64"] {
        assert_same_files(&target.join(arch), &v2.join("linux/production").join(arch));
        assert_same_files(&back.join(arch), &v1.join("linux/production").join(arch));
    }
    assert_world_readable(&back);
    let mut names: Vec<_> = fs::read_dir(&served)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["mde-linux", "mde-linux_back"]);
}

#[test]
fn target_needs_one_platform_and_ring() {
    let fx = Fx::new();
    let key = fx.key("k");
    let dl = fx.download(
        "two",
        &[(LX, "1.1.1.0", "1.400.1.0"), (MX, "1.1.1.0", "1.400.1.0")],
    );
    let b = fx.export(&dl, "two", &[&key], &[]);
    let target = fx.root.join("srv/mac-prod");
    let state = fx.root.join("tstate");
    let run = |extra: &[&str]| {
        let mut c = fx.import_cmd(&b, &[&key.public], extra);
        c.arg("--create")
            .arg("--target")
            .arg(&target)
            .arg("--state-dir")
            .arg(&state);
        fx.run(c)
    };
    let before = content_digest_except(&fx.root, &[&state]);
    run(&[]).expect(
        2,
        &[
            "--target",
            "one platform and ring",
            "--platform",
            "--ring",
            "linux/production/arch_x86_64",
            "mac/production/arch_x86_64",
        ],
    );
    assert_trees_eq(&before, &content_digest_except(&fx.root, &[&state]));
    assert!(!fx.root.join("srv").exists());

    run(&["--platform", "mac", "--ring", "production"]).ok();
    assert_same_files(&target.join("arch_x86_64"), &dl.join(MX));
    assert_eq!(
        fs::read_dir(&target).unwrap().count(),
        1,
        "only the mac folder"
    );
}

#[test]
fn target_must_name_a_folder() {
    let fx = Fx::new();
    let key = fx.key("k");
    let dl = fx.download("l", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let b = fx.export(&dl, "l", &[&key], &[]);
    let before = fx.snapshot();
    for t in ["srv/x/..", "/"] {
        let mut c = fx.import_cmd(&b, &[&key.public], &["--target", t]);
        c.arg("--state-dir").arg(&fx.state);
        fx.run(c).expect(2, &[t, "cannot be published to"]);
        fx.assert_unchanged(&before);
        assert!(
            !fx.state.exists(),
            "nothing before the arguments are checked"
        );
    }
}
