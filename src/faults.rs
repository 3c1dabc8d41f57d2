//! Fault injection for the crash and clock skew tests, and nothing else.
//!
//! The test suite kills imports at chosen points to prove that publishing
//! and the ledger recover from any crash. Those hooks read environment
//! variables, and an environment variable honoured by the shipped binary is
//! a way for anyone who can set one (a unit file, a wrapper script) to make
//! an import kill itself mid-publish or take the slower swap. So the hooks
//! exist only when the crate is built with the `fault-injection` feature,
//! which the test suite turns on (a dev-dependency of the crate on itself)
//! and `cargo build` / `cargo install` never do. Without the feature every
//! function here is an empty inline function and the variable names are not
//! in the binary at all; `.ci/run` checks that on a plain build.
//!
//! With the feature: `GAPFERRY_TEST_CRASH_AT=<step>` (or `<step>#<n>` for
//! the n-th time that step is reached in the process) makes the process
//! SIGKILL itself at that point; `GAPFERRY_TEST_CRASH_AFTER_BYTES=<n>` does
//! so once `n` payload bytes have been staged; `GAPFERRY_TEST_FORCE_FALLBACK=1`
//! makes publishing use the two-rename fallback;
//! `GAPFERRY_TEST_S3_CLOCK_OFFSET_SECS=<n>` signs S3 requests with a clock
//! `n` seconds off (the clock skew tests). Steps, in order:
//! [`CRASH_STEPS`], then `ledger-due` and `ledger-appended` from
//! `mirror::session::commit`.

/// Every publish crash step name, in the order a publish reaches them.
pub const CRASH_STEPS: &[&str] = &[
    "staging-created",
    "file-written",
    "journal-written",
    "fallback-aside",
    "current-swapped",
    "back-aside",
    "back-rotated",
    "cleaned",
];

/// Whether this build honours the fault-injection variables.
pub const ENABLED: bool = cfg!(feature = "fault-injection");

#[cfg(feature = "fault-injection")]
mod hooks {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    /// Environment variable that forces the no-exchange fallback.
    pub const ENV_FORCE_FALLBACK: &str = "GAPFERRY_TEST_FORCE_FALLBACK";
    /// Environment variable naming a crash step.
    pub const ENV_CRASH_AT: &str = "GAPFERRY_TEST_CRASH_AT";
    /// Environment variable naming a byte count after which to crash.
    pub const ENV_CRASH_AFTER_BYTES: &str = "GAPFERRY_TEST_CRASH_AFTER_BYTES";

    /// SIGKILLs the process if `GAPFERRY_TEST_CRASH_AT` names `step` (or
    /// `step#n` and this is the n-th time the step is reached).
    pub fn crash_point(step: &str) {
        let Some(want) = std::env::var_os(ENV_CRASH_AT) else {
            return;
        };
        let want = want.to_string_lossy();
        let (name, nth) = match want.split_once('#') {
            Some((n, k)) => (n, k.parse::<u32>().unwrap_or(1)),
            None => (want.as_ref(), 1),
        };
        if name != step {
            return;
        }
        static SEEN: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());
        let count = {
            let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
            let c = seen.entry(step.to_string()).or_insert(0);
            *c += 1;
            *c
        };
        if count == nth {
            die();
        }
    }

    /// SIGKILLs the process once `GAPFERRY_TEST_CRASH_AFTER_BYTES` payload
    /// bytes have been staged in it.
    pub fn crash_after_bytes(n: u64) {
        static TOTAL: AtomicU64 = AtomicU64::new(0);
        let Some(limit) = std::env::var_os(ENV_CRASH_AFTER_BYTES) else {
            return;
        };
        let Ok(limit) = limit.to_string_lossy().parse::<u64>() else {
            return;
        };
        if TOTAL.fetch_add(n, Ordering::SeqCst) + n >= limit {
            die();
        }
    }

    /// Environment variable shifting the clock S3 requests are signed
    /// with, in seconds (negative: behind).
    pub const ENV_S3_CLOCK_OFFSET: &str = "GAPFERRY_TEST_S3_CLOCK_OFFSET_SECS";

    /// The offset `GAPFERRY_TEST_S3_CLOCK_OFFSET_SECS` asks for (0 when
    /// unset or not a number).
    pub fn s3_clock_offset_secs() -> i64 {
        std::env::var(ENV_S3_CLOCK_OFFSET)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether `GAPFERRY_TEST_FORCE_FALLBACK=1` is set.
    pub fn force_fallback() -> bool {
        std::env::var_os(ENV_FORCE_FALLBACK).is_some_and(|v| v == "1")
    }

    fn die() -> ! {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort()
    }
}

#[cfg(feature = "fault-injection")]
pub use hooks::*;

/// Without the feature: never crashes.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_point(_step: &str) {}

/// Without the feature: never crashes.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_after_bytes(_n: u64) {}

/// Without the feature: S3 requests are signed with the real clock.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn s3_clock_offset_secs() -> i64 {
    0
}

/// Without the feature: publishing uses the exchange where it can.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn force_fallback() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_step_names_are_listed_without_separators() {
        for s in CRASH_STEPS {
            assert!(!s.contains('#'), "{s}");
        }
        // An unset or different step never fires.
        crash_point("no-such-step");
        crash_after_bytes(1);
    }
}
