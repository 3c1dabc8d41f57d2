//! Records build details for `gapferry --version`: the git commit
//! (`GAPFERRY_GIT_COMMIT` if set, as packagers building from a tarball do,
//! else `git rev-parse`, else "unknown"), the target triple, the profile and
//! the compiler. Nothing else belongs here: man pages and completions come
//! from the hidden `gapferry generate` subcommand.

use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=GAPFERRY_GIT_COMMIT");
    let commit = std::env::var("GAPFERRY_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves (commit, checkout); works in worktrees.
            if let Some(log) = run("git", &["rev-parse", "--git-path", "logs/HEAD"]) {
                println!("cargo:rerun-if-changed={log}");
            }
            run("git", &["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = run(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=GAPFERRY_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=GAPFERRY_BUILD_TARGET={target}");
    println!("cargo:rustc-env=GAPFERRY_BUILD_PROFILE={profile}");
    println!("cargo:rustc-env=GAPFERRY_BUILD_RUSTC={rustc}");
}
