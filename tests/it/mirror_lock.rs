//! One import at a time, across processes: a child process (this test
//! binary run again) holds the import lock; the parent waits a bounded time
//! and fails with a message naming the lock file and the holder's pid.
//!
//! And nobody else can stop imports or read what the tool keeps: another
//! local user (`nobody`, through `setpriv`) cannot open the lock, holding a
//! `flock` on the world-readable mirror root stops nothing, the state
//! directory and its files are private whatever the umask, and a password
//! file others can read is refused. Tests needing a second user are skipped
//! with a note when not run as root (CI runs as root).

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gapferry::error::{Classify, ExitKind};
use gapferry::mirror::lock::LockError;
use gapferry::mirror::state::StateDir;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use support::attacker_flock;
use support::import::*;

const CHILD: &str = "GAPFERRY_TEST_CHILD_LOCK";

/// Child: take the lock, say so, hold it until told to release.
#[test]
fn child_entry() {
    let Ok(dir) = std::env::var(CHILD) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let sd = StateDir::open(&dir.join("state")).unwrap();
    let _lock = sd.lock(Duration::from_secs(5)).unwrap();
    fs::write(dir.join("ready.tmp"), std::process::id().to_string()).unwrap();
    fs::rename(dir.join("ready.tmp"), dir.join("ready")).unwrap();
    let start = Instant::now();
    while !dir.join("release").exists() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

// The callers wait for the returned child.
#[allow(clippy::zombie_processes)]
fn spawn_holder(dir: &Path) -> (Child, u32) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "mirror_lock::child_entry",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD, dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Ok(pid) = fs::read_to_string(dir.join("ready")) {
            if !pid.is_empty() {
                return (child, pid.parse().unwrap());
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child never took the lock");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn second_process_times_out_naming_the_holder_then_gets_the_lock() {
    let t = tempfile::tempdir().unwrap();
    let (mut holder, pid) = spawn_holder(t.path());
    let sd = StateDir::open(&t.path().join("state")).unwrap();

    let start = Instant::now();
    let err = sd.lock(Duration::from_millis(500)).unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert!(matches!(err, LockError::Held { .. }));
    assert_eq!(err.exit_kind(), ExitKind::Operational);
    let msg = err.to_string();
    assert!(msg.contains(&sd.lock_path().display().to_string()), "{msg}");
    assert!(msg.contains(&format!("pid {pid}")), "{msg}");
    assert!(msg.contains("another gapferry import"), "{msg}");

    // A waiter with enough patience gets it once the holder finishes.
    fs::write(t.path().join("release"), b"").unwrap();
    let lock = sd.lock(Duration::from_secs(30)).unwrap();
    assert!(holder.wait().unwrap().success());
    drop(lock);
}

#[test]
fn a_killed_holder_releases_the_lock() {
    let t = tempfile::tempdir().unwrap();
    let (mut holder, _) = spawn_holder(t.path());
    let sd = StateDir::open(&t.path().join("state")).unwrap();
    assert!(
        matches!(sd.lock(Duration::ZERO), Err(LockError::Held { .. })),
        "the live holder keeps the lock"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The stale lock file (with the dead pid in it) is harmless.
    assert!(sd.lock_path().exists());
    sd.lock(Duration::from_secs(5)).unwrap();
}

// ------------------------------------------------- another local user

const LX: &str = "linux/production/arch_x86_64";

/// Whether a second local user is available (we run as root).
fn second_user() -> bool {
    if !is_root() {
        eprintln!("note: not root, skipping a test that needs a second local user");
        return false;
    }
    true
}

/// An imported mirror and a newer bundle for it, under a root folder other
/// users may enter (as `/var/lib` is).
fn imported_mirror() -> (Fx, Keys, PathBuf) {
    let fx = Fx::new();
    fs::set_permissions(&fx.root, fs::Permissions::from_mode(0o755)).unwrap();
    let k = fx.key("k");
    let mut bundles = fx.chain(&k, LX, 1..=2);
    let b2 = bundles.pop().unwrap();
    fx.import_all(&bundles, &[&k.public]);
    (fx, k, b2)
}

fn rollback(fx: &Fx) -> support::import::Run {
    let mut c = fx.cmd();
    c.args([
        "rollback",
        "--platform",
        "linux",
        "--ring",
        "production",
        "--arch",
        "x86_64",
    ])
    .args(["--lock-wait", "1s", "--mirror"])
    .arg(&fx.mirror)
    .arg("--state-dir")
    .arg(&fx.state);
    fx.run(c)
}

#[test]
fn another_user_cannot_open_the_state_lock() {
    if !second_user() {
        return;
    }
    let (fx, k, b2) = imported_mirror();
    let lock = fx.state.join("lock");
    let (mut attacker, said) = attacker_flock(&lock);
    let r = fx.import(&b2, &[&k.public], &["--lock-wait", "1s"]);
    let _ = attacker.kill();
    let _ = attacker.wait();
    assert_eq!(r.code, 0, "{r:#?}");
    assert_eq!(served_versions(&fx.mirror.join(LX)).1, "1.400.2.0");
    assert_eq!(said, "denied 13", "nobody could open {}", lock.display());
}

#[test]
fn holding_the_mirror_root_stops_neither_import_nor_rollback() {
    if !second_user() {
        return;
    }
    let (fx, k, b2) = imported_mirror();
    let (mut attacker, said) = attacker_flock(&fx.mirror);
    assert_eq!(said, "held", "the mirror root is world-readable by design");
    let r = fx.import(&b2, &[&k.public], &["--lock-wait", "1s"]);
    let rb = rollback(&fx);
    let _ = attacker.kill();
    let _ = attacker.wait();
    assert_eq!(r.code, 0, "{r:#?}");
    assert_eq!(rb.code, 0, "{rb:#?}");
    assert_eq!(served_versions(&fx.mirror.join(LX)).1, "1.400.1.0");
}

#[test]
fn a_state_directory_of_another_user_is_refused_and_a_shared_one_made_private() {
    if !second_user() {
        return;
    }
    let (fx, k, b2) = imported_mirror();
    // An older gapferry left the folder 0755 and the lock 0644 (anyone could
    // have opened it before the upgrade): fixed, and the lock replaced.
    fs::set_permissions(&fx.state, fs::Permissions::from_mode(0o755)).unwrap();
    let lock = fx.state.join("lock");
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o644)).unwrap();
    let old_ino = fs::metadata(&lock).unwrap().ino();
    let v3 = fx.download("v3", &[(LX, "1.1.3.0", "1.400.3.0")]);
    let b3 = fx.export(&v3, "b3", &[&k], &["--sequence", "300"]);
    fx.import(&b2, &[&k.public], &[]).ok();
    assert_eq!(fs::metadata(&fx.state).unwrap().mode() & 0o7777, 0o700);
    let meta = fs::metadata(&lock).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_ne!(
        meta.ino(),
        old_ino,
        "the lock another user may hold open is replaced"
    );

    // Owned by someone else: refused, nothing changed.
    std::os::unix::fs::chown(&fx.state, Some(65534), Some(65534)).unwrap();
    let before = fx.snapshot();
    let state_before = content_digest(&fx.state);
    let r = fx.import(&b3, &[&k.public], &[]);
    r.expect(
        1,
        &[
            fx.state.to_str().unwrap(),
            "refusing the state directory",
            "owned by uid 65534",
            "state directory of your own",
        ],
    );
    fx.assert_unchanged(&before);
    assert_trees_eq(&state_before, &content_digest(&fx.state));
}

/// Runs `c` under `sh -c 'umask 000; exec ...'`.
fn with_umask_000(c: &Command) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
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

#[track_caller]
fn assert_mode(path: &Path, want: u32) {
    let mode = fs::symlink_metadata(path).unwrap().mode() & 0o7777;
    assert_eq!(mode, want, "{} is {mode:04o}", path.display());
}

#[test]
fn modes_do_not_depend_on_the_umask() {
    let fx = Fx::new();
    let k = fx.key("k");
    let dl = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    // Export: the sequence counter's folder and files.
    let out = fx.root.join("bundles/b1.tar.zst");
    let mut c = fx.cmd();
    c.args(["export", "--quiet", "--from"])
        .arg(&dl)
        .arg("--out")
        .arg(&out)
        .arg("--secret-key")
        .arg(&k.secret)
        .arg("--state-dir")
        .arg(&fx.export_state);
    let r = fx.run(with_umask_000(&c));
    assert_eq!(r.code, 0, "{r:#?}");
    assert_mode(&fx.export_state, 0o700);
    assert_mode(&fx.export_state.join("export-sequences.json"), 0o600);
    assert_mode(&fx.export_state.join("export-sequences.lock"), 0o600);

    // Import: the state directory and everything in it.
    let mut c = fx.import_cmd(&out, &[&k.public], &[]);
    c.arg("--mirror")
        .arg(&fx.mirror)
        .arg("--state-dir")
        .arg(&fx.state);
    let r = fx.run(with_umask_000(&c));
    assert_eq!(r.code, 0, "{r:#?}");
    assert_mode(&fx.state, 0o700);
    for f in ["state.json", "ledger.jsonl", "receipts.jsonl", "lock"] {
        assert_mode(&fx.state.join(f), 0o600);
    }
    // The served tree keeps its documented modes.
    for e in walkdir::WalkDir::new(&fx.mirror) {
        let e = e.unwrap();
        let want = if e.file_type().is_dir() { 0o755 } else { 0o644 };
        assert_mode(e.path(), want);
    }

    // Key: the secret key 0600, the public key 0644.
    let pw = fx.root.join("pw");
    fs::write(&pw, "correct horse\n").unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = fx.cmd();
    c.arg("keygen")
        .arg("--secret-key")
        .arg(fx.root.join("keys/e.key"))
        .arg("--public-key")
        .arg(fx.root.join("keys/e.pub"))
        .arg("--password-file")
        .arg(&pw);
    let r = fx.run(with_umask_000(&c));
    assert_eq!(r.code, 0, "{r:#?}");
    assert_mode(&fx.root.join("keys/e.key"), 0o600);
    assert_mode(&fx.root.join("keys/e.pub"), 0o644);
}

#[test]
fn a_password_file_others_can_read_is_refused() {
    let fx = Fx::new();
    let pw = fx.root.join("pw");
    fs::write(&pw, "correct horse\n").unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o644)).unwrap();
    let keygen = |name: &str| {
        let mut c = fx.cmd();
        c.arg("keygen")
            .arg("--secret-key")
            .arg(fx.root.join(format!("keys/{name}.key")))
            .arg("--public-key")
            .arg(fx.root.join(format!("keys/{name}.pub")))
            .arg("--password-file")
            .arg(&pw);
        fx.run(c)
    };
    let fix = format!("chmod 600 {}", pw.display());
    keygen("a").expect(2, &["can be read or written by other users", "0644", &fix]);
    assert!(!fx.root.join("keys/a.key").exists());
    assert!(!fx.root.join("keys/a.pub").exists());

    // Fixed as told, the same file makes a key, which export then opens;
    // loosened again, export refuses it before signing anything.
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    keygen("a").ok();
    let dl = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let export = |name: &str| {
        let mut c = fx.cmd();
        c.args(["export", "--quiet", "--from"])
            .arg(&dl)
            .arg("--out")
            .arg(fx.root.join(format!("bundles/{name}.tar.zst")))
            .arg("--secret-key")
            .arg(fx.root.join("keys/a.key"))
            .arg("--password-file")
            .arg(&pw)
            .arg("--state-dir")
            .arg(&fx.export_state);
        fx.run(c)
    };
    export("ok").ok();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o640)).unwrap();
    export("no").expect(2, &[&fix]);
    assert!(!fx.root.join("bundles/no.tar.zst").exists());
}
