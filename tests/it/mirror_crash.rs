//! Crash safety of staging and publish: a child process (this test binary
//! run again) publishes two arch folders and SIGKILLs itself at every crash
//! step the publish module defines; after each kill every arch folder must
//! hold a complete set, and the next run must recover and then publish.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gapferry::mde::{Arch, Platform, Ring, Slot};
use gapferry::mirror::publish::{
    self, recover, Destination, PublishOptions, Staging, CRASH_STEPS, ENV_CRASH_AFTER_BYTES,
    ENV_CRASH_AT, ENV_FORCE_FALLBACK,
};
use gapferry::mirror::state::StateDir;

const CHILD: &str = "GAPFERRY_TEST_CHILD_PUBLISH";
const ZIP_SIZE: usize = 256 * 1024;

fn slots() -> [Slot; 2] {
    [Arch::X86_64, Arch::Arm64].map(|arch| Slot {
        platform: Platform::Linux,
        ring: Ring::Production,
        arch,
    })
}

/// Big enough to take several writes, distinct per version.
fn zip_bytes(v: &str) -> Vec<u8> {
    let mut b = format!("zip {v}\n").into_bytes();
    b.resize(ZIP_SIZE, v.as_bytes()[0]);
    b
}

/// What an import does on the mirror side: lock, recover, stage, publish.
fn run_import(root: &Path, state: &Path, version: Option<&str>) {
    let opts = PublishOptions::from_env();
    let sd = StateDir::open(state).unwrap();
    let _lock = sd.lock(Duration::from_secs(10)).unwrap();
    for area in publish::mirror_areas(root) {
        recover(&area, &opts).unwrap();
    }
    let Some(v) = version else { return };
    let mut staging = Staging::new(opts);
    let mut staged = Vec::new();
    for slot in slots() {
        let dest = Destination::in_mirror(root, &slot.placement()).unwrap();
        let s = staging.stage(&dest).unwrap();
        let mut f = s.create_file("updates.zip").unwrap();
        let zip = zip_bytes(v);
        for chunk in zip.chunks(64 * 1024) {
            std::io::Write::write_all(&mut f, chunk).unwrap();
        }
        f.finish().unwrap();
        s.write_file("manifest.json", format!("man {v}").as_bytes())
            .unwrap();
        staged.push(s);
    }
    for s in staged {
        staging.publish(s, &format!("bundle-{v}")).unwrap();
    }
}

/// The entry point of the child process; a no-op in a normal test run.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut it = spec.split('|');
    let root = PathBuf::from(it.next().unwrap());
    let state = PathBuf::from(it.next().unwrap());
    let version = it.next().filter(|v| !v.is_empty());
    run_import(&root, &state, version);
}

/// Runs the child; true when it completed, false when it was SIGKILLed.
fn child(root: &Path, state: &Path, version: &str, env: &[(&str, &str)]) -> bool {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "mirror_crash::child_entry",
        "--test-threads=1",
        "--quiet",
    ])
    .env(
        CHILD,
        format!("{}|{}|{}", root.display(), state.display(), version),
    )
    .env_remove(ENV_CRASH_AT)
    .env_remove(ENV_CRASH_AFTER_BYTES)
    .env_remove(ENV_FORCE_FALLBACK);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    match out.status.signal() {
        Some(9) => false,
        _ => {
            assert!(
                out.status.success(),
                "child failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            true
        }
    }
}

/// The version a folder holds completely, `None` when it is missing; panics
/// on a mixed, partial or polluted folder.
fn read_set(dir: &Path) -> Option<String> {
    if !dir.exists() {
        return None;
    }
    let man = fs::read_to_string(dir.join("manifest.json")).unwrap();
    let v = man.strip_prefix("man ").unwrap().to_string();
    assert_eq!(
        fs::read(dir.join("updates.zip")).unwrap(),
        zip_bytes(&v),
        "mixed or partial set in {}",
        dir.display()
    );
    assert_eq!(fs::read_dir(dir).unwrap().count(), 2, "{}", dir.display());
    Some(v)
}

fn area_names(root: &Path) -> Vec<String> {
    let mut n: Vec<String> = fs::read_dir(root.join("linux"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// (current, back) version of each slot.
fn snapshot(root: &Path) -> Vec<(Option<String>, Option<String>)> {
    slots()
        .iter()
        .map(|s| (read_set(&s.dir_in(root)), read_set(&s.back_dir_in(root))))
        .collect()
}

fn crash_matrix(fallback: bool) {
    let fb = if fallback { "1" } else { "0" };
    let mut points: Vec<String> = Vec::new();
    for step in CRASH_STEPS {
        points.push(step.to_string());
        points.push(format!("{step}#2"));
    }
    for point in points {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("mirror");
        let state = t.path().join("state");
        for v in ["1", "2"] {
            assert!(child(&root, &state, v, &[(ENV_FORCE_FALLBACK, fb)]));
        }
        let completed = child(
            &root,
            &state,
            "3",
            &[(ENV_FORCE_FALLBACK, fb), (ENV_CRASH_AT, &point)],
        );
        let ctx = format!("crash at {point}, fallback {fallback}");
        let fallback_window =
            fallback && (point.starts_with("fallback-aside") || point.starts_with("back-aside"));
        let snap = snapshot(&root);
        if fallback_window {
            let missing = snap.iter().filter(|(c, b)| c.is_none() || b.is_none());
            assert_eq!(
                missing.count(),
                1,
                "{ctx}: the window shows one missing folder"
            );
        }
        for (cur, back) in snap {
            // The only instant a folder may be missing is inside the
            // documented fallback window.
            if !fallback_window {
                assert!(matches!(cur.as_deref(), Some("2" | "3")), "{ctx}: {cur:?}");
                assert!(
                    matches!(back.as_deref(), Some("1" | "2")),
                    "{ctx}: {back:?}"
                );
            }
        }
        // Only the fallback's steps never fire with exchange: then the
        // import simply finished.
        assert_eq!(
            completed,
            !fallback && point.contains("-aside"),
            "{ctx}: killed or not"
        );

        // Recovery alone: each slot is consistently old or new.
        assert!(child(&root, &state, "", &[(ENV_FORCE_FALLBACK, fb)]));
        for (cur, back) in snapshot(&root) {
            match cur.as_deref() {
                Some("3") => assert_eq!(back.as_deref(), Some("2"), "{ctx}"),
                Some("2") => assert_eq!(back.as_deref(), Some("1"), "{ctx}"),
                other => panic!("{ctx}: current {other:?} after recovery"),
            }
        }
        assert_eq!(
            area_names(&root),
            ["production", "production_back"],
            "{ctx}"
        );

        // And the next import completes.
        assert!(child(&root, &state, "4", &[(ENV_FORCE_FALLBACK, fb)]));
        for (cur, back) in snapshot(&root) {
            assert_eq!(cur.as_deref(), Some("4"), "{ctx}");
            assert!(matches!(back.as_deref(), Some("2" | "3")), "{ctx}");
        }
        assert_eq!(
            area_names(&root),
            ["production", "production_back"],
            "{ctx}"
        );
    }
}

#[test]
fn crash_at_every_step_with_exchange() {
    crash_matrix(false);
}

#[test]
fn crash_at_every_step_with_fallback() {
    crash_matrix(true);
}

#[test]
fn crash_in_the_middle_of_a_file() {
    for bytes in ["1", "100000", "300000"] {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("mirror");
        let state = t.path().join("state");
        assert!(child(&root, &state, "1", &[]));
        assert!(!child(
            &root,
            &state,
            "2",
            &[(ENV_CRASH_AFTER_BYTES, bytes)]
        ));
        for (cur, _) in snapshot(&root) {
            assert_eq!(cur.as_deref(), Some("1"));
        }
        // Leftover staging is visible until the next run...
        assert_eq!(area_names(&root).len(), 2, "{:?}", area_names(&root));
        assert!(child(&root, &state, "", &[]));
        // ...which removes it.
        assert_eq!(area_names(&root), ["production"]);
        assert!(child(&root, &state, "3", &[]));
        for (cur, back) in snapshot(&root) {
            assert_eq!((cur.as_deref(), back.as_deref()), (Some("3"), Some("1")));
        }
    }
}

/// Kills the child at pseudo-random times (seeded from the clock, printed
/// so a failure can be replayed by hand) and checks the invariant after
/// every kill.
#[test]
fn random_timed_kills() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    eprintln!("random_timed_kills seed {seed}");
    let mut x = seed | 1;
    let mut next = move || {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("mirror");
    let state = t.path().join("state");
    assert!(child(&root, &state, "1", &[]));
    assert!(child(&root, &state, "2", &[]));
    for round in 3..23 {
        let v = round.to_string();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "mirror_crash::child_entry",
            "--test-threads=1",
            "--quiet",
        ])
        .env(
            CHILD,
            format!("{}|{}|{}", root.display(), state.display(), v),
        )
        .env_remove(ENV_CRASH_AT)
        .env_remove(ENV_CRASH_AFTER_BYTES)
        .env_remove(ENV_FORCE_FALLBACK)
        .stdout(std::process::Stdio::null());
        let mut c = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_micros(next() % 40_000));
        let _ = c.kill();
        c.wait().unwrap();
        for (cur, back) in snapshot(&root) {
            assert!(cur.is_some() && back.is_some(), "seed {seed} round {round}");
        }
        assert!(child(&root, &state, "", &[]));
        for (cur, back) in snapshot(&root) {
            let (c, b): (u32, u32) = (
                cur.unwrap().parse().unwrap(),
                back.unwrap().parse().unwrap(),
            );
            assert!(c > b, "seed {seed} round {round}: current {c}, back {b}");
        }
        assert!(area_names(&root).len() == 2, "seed {seed} round {round}");
    }
}
