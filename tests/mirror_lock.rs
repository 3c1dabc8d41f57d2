//! One import at a time, across processes: a child process (this test
//! binary run again) holds the import lock; the parent waits a bounded time
//! and fails with a message naming the lock file and the holder's pid.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gapferry::error::{Classify, ExitKind};
use gapferry::mirror::lock::LockError;
use gapferry::mirror::state::StateDir;

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
        .args(["--exact", "child_entry", "--test-threads=1", "--quiet"])
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
    assert!(sd.lock(Duration::ZERO).is_err());
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The stale lock file (with the dead pid in it) is harmless.
    assert!(sd.lock_path().exists());
    sd.lock(Duration::from_secs(5)).unwrap();
}
