//! `--mirror s3://BUCKET/PREFIX` end to end against a real Garage on
//! loopback (tests/it/support/garage.rs): first and newer imports with
//! n-1, rollback, a crash at every step of the publish, concurrent
//! importers, a second state directory, the store going away mid-import,
//! endpoints polling the web endpoint throughout a series of imports, the
//! inbox, status and the clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gapferry::mirror::s3mirror::{S3_CRASH_STEPS, S3_SWAP_STEP};
use gapferry::s3::Client;

use crate::support::crash::{assert_success, back_of, Version, World, CRASH_AT, SLOTS};
use crate::support::garage::{Garage, BUCKET};

/// One `s3://` site: a prefix in the Garage bucket and a state directory.
struct Site<'a> {
    env: Vec<(&'static str, String)>,
    config: gapferry::s3::Config,
    world: &'a World,
    prefix: String,
    state: PathBuf,
}

impl<'a> Site<'a> {
    fn new(garage: &Garage, world: &'a World, name: &str) -> Self {
        Site {
            env: garage.env(),
            config: garage.config(),
            world,
            prefix: name.to_string(),
            state: world.tmp.path().join(format!("state-{name}")),
        }
    }

    fn url(&self) -> String {
        format!("s3://{BUCKET}/{}", self.prefix)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = crate::support::command();
        cmd.args(args)
            .arg("--mirror")
            .arg(self.url())
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--s3-path-style")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn import_cmd(&self, bundle: &Path, env: &[(&str, &str)]) -> Command {
        let mut cmd = self.cmd(&["import"]);
        cmd.arg(bundle)
            .arg("--trust")
            .arg(&self.world.key.public)
            .arg("--quiet");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn import(&self, v: &Version, env: &[(&str, &str)]) -> Output {
        self.import_cmd(&v.bundle, env).output().unwrap()
    }

    fn import_ok(&self, v: &Version) {
        let out = self.import(v, &[]);
        assert_success(&out, &format!("import v{} into {}", v.n, self.url()));
    }

    fn client(&self) -> Client {
        Client::new(self.config.clone(), self.url().parse().unwrap()).unwrap()
    }

    fn get(&self, rel: &str) -> Option<Vec<u8>> {
        self.client().get_bytes(rel, 1 << 30).unwrap()
    }

    /// Which version store folder `rel` (slot `i`) holds: None when it
    /// holds nothing; panics on anything but one complete imported set.
    fn set_in(&self, rel: &str, i: usize, versions: &[&Version]) -> Option<u32> {
        self.set_in_with(rel, i, versions, false)
    }

    /// [`Site::set_in`]; `partial`: an n-1 folder being written may hold
    /// only its payload so far (index files are copied last).
    fn set_in_with(
        &self,
        rel: &str,
        i: usize,
        versions: &[&Version],
        partial: bool,
    ) -> Option<u32> {
        let mut names: Vec<String> = self
            .client()
            .list(&format!("{rel}/"))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k.rsplit('/').next().unwrap().to_string())
            .collect();
        if names.is_empty() {
            return None;
        }
        names.sort();
        if partial && names == ["updates.zip"] {
            let zip = self.get(&format!("{rel}/updates.zip")).unwrap();
            let z = versions
                .iter()
                .find(|v| v.files[i].0 == zip)
                .unwrap_or_else(|| panic!("{rel}: updates.zip is no imported version"));
            return Some(z.n);
        }
        assert_eq!(
            names,
            ["manifest.json", "updates.zip"],
            "{rel} in {}",
            self.url()
        );
        let manifest = self.get(&format!("{rel}/manifest.json")).unwrap();
        let zip = self.get(&format!("{rel}/updates.zip")).unwrap();
        let v = versions
            .iter()
            .find(|v| v.files[i].1 == manifest)
            .unwrap_or_else(|| panic!("{rel}: manifest.json is no imported version"));
        let z = versions
            .iter()
            .find(|v| v.files[i].0 == zip)
            .unwrap_or_else(|| panic!("{rel}: updates.zip is no imported version"));
        // The index is never ahead of the payload it describes.
        assert!(
            v.n <= z.n,
            "{rel}: manifest.json of v{} announces more than updates.zip of v{}",
            v.n,
            z.n
        );
        Some(v.n)
    }

    /// (current, back) of every slot, requiring each folder to hold one
    /// complete version (index and payload of the same version).
    fn snapshot(&self, versions: &[&Version]) -> Vec<(Option<u32>, Option<u32>)> {
        self.snapshot_with(versions, false)
    }

    /// [`Site::snapshot`] of a store an import was killed in: n-1 folders
    /// may be part-way through their copy.
    fn snapshot_with(
        &self,
        versions: &[&Version],
        partial_back: bool,
    ) -> Vec<(Option<u32>, Option<u32>)> {
        SLOTS
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let cur = self.set_in(s, i, versions);
                let back = self.set_in_with(&back_of(s), i, versions, partial_back);
                (cur, back)
            })
            .collect()
    }

    fn state_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.state.join("state.json")).unwrap()).unwrap()
    }

    fn served_definitions(&self, slot: &str) -> Option<String> {
        self.state_json()["served"][slot]["definition_version"]
            .as_str()
            .map(str::to_string)
    }

    fn ledger_verify(&self) {
        let out = crate::support::command()
            .args(["ledger", "verify", "--state-dir"])
            .arg(&self.state)
            .output()
            .unwrap();
        assert_success(&out, "ledger verify");
    }
}

fn all(vs: &[Version]) -> Vec<&Version> {
    vs.iter().collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn first_and_newer_imports_keep_n_minus_1_and_status_checks_the_objects() {
    let g = Garage::start();
    let w = World::new();
    let vs = w.chain(1..=3, 4096);
    let site = Site::new(&g, &w, "fleet");
    site.import_ok(&vs[0]);
    assert_eq!(site.snapshot(&all(&vs)), vec![(Some(1), None); 4]);
    site.import_ok(&vs[1]);
    assert_eq!(site.snapshot(&all(&vs)), vec![(Some(2), Some(1)); 4]);
    // Again: already imported, nothing changes.
    site.import_ok(&vs[1]);
    site.import_ok(&vs[2]);
    assert_eq!(site.snapshot(&all(&vs)), vec![(Some(3), Some(2)); 4]);
    assert_eq!(
        site.served_definitions("linux/production/arch_x86_64")
            .as_deref(),
        Some("1.417.3.0")
    );
    // Older definitions (in a newer export) are refused and change nothing.
    let older = w.make_version(0, 4096);
    let out = site.import(&older, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(site.snapshot(&all(&vs)), vec![(Some(3), Some(2)); 4]);
    site.ledger_verify();
    // No staged objects, no journal, no local staging left behind.
    assert_eq!(site.client().list(".gapferry-staging/").unwrap(), vec![]);
    assert!(
        !site.state.join("s3/publish").exists()
            || std::fs::read_dir(site.state.join("s3/publish"))
                .unwrap()
                .next()
                .is_none()
    );

    // status: healthy, by HEAD and the stored SHA-256, versions from the
    // store's manifest.json.
    let out = site.cmd(&["status", "--json"]).output().unwrap();
    assert_success(&out, "status");
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["mirror"], site.url());
    let slot = st["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == "linux/production/arch_x86_64")
        .unwrap();
    assert_eq!(slot["files_match"], true);
    assert_eq!(slot["definition_version"], "1.417.3.0");
    assert_eq!(slot["back_definition_version"], "1.417.2.0");
    assert!(slot["dir"].as_str().unwrap().starts_with("s3://"));

    // An object changed behind gapferry's back is a problem.
    let c = site.client();
    let tmp = w.tmp.path().join("evil.zip");
    std::fs::write(&tmp, b"not the imported zip").unwrap();
    let sha = gapferry::sha256hex::Sha256Hex::of(b"not the imported zip");
    c.put_file(
        "linux/production/arch_x86_64/updates.zip",
        &tmp,
        sha.as_str(),
        "application/zip",
        &gapferry::progress::NoProgress,
    )
    .unwrap();
    let out = site.cmd(&["status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let both = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(both.contains("differs from what was imported"), "{}", both);
}

#[test]
fn rollback_swaps_with_n_minus_1_in_the_store_and_back() {
    let g = Garage::start();
    let w = World::new();
    let vs = w.chain(1..=2, 2048);
    let site = Site::new(&g, &w, "rb");
    site.import_ok(&vs[0]);
    site.import_ok(&vs[1]);
    let out = site
        .cmd(&["rollback", "--platform", "linux", "--ring", "production"])
        .output()
        .unwrap();
    assert_success(&out, "rollback");
    let snap = site.snapshot(&all(&vs));
    assert_eq!(snap[0], (Some(1), Some(2)));
    assert_eq!(snap[1], (Some(1), Some(2)));
    assert_eq!(snap[2], (Some(2), Some(1)), "mac untouched");
    assert_eq!(
        site.served_definitions("linux/production/arch_x86_64")
            .as_deref(),
        Some("1.417.1.0")
    );
    // The withdrawn bundle is refused.
    let out = site.import(&vs[1], &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    // Killed after each phase of the next rollback: the store keeps whole
    // sets meanwhile, and the next run finishes the swap, records it, and
    // leaves state and store agreeing (status finds no problem).
    for nth in 1..=3 {
        let step = format!("{S3_SWAP_STEP}#{nth}");
        let before = site.snapshot(&all(&vs));
        let out = site
            .cmd(&["rollback", "--platform", "linux", "--ring", "production"])
            .env(CRASH_AT, &step)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{step}: not killed");
        site.snapshot(&all(&vs));
        let out = site
            .cmd(&["rollback", "--platform", "linux", "--ring", "production"])
            .output()
            .unwrap();
        assert_success(&out, "rollback after a crash");
        // One rollback in all: the interrupted one finished, not undone.
        let after = site.snapshot(&all(&vs));
        for i in 0..2 {
            assert_eq!(after[i], (before[i].1, before[i].0), "{step}: slot {i}");
        }
        assert_eq!(after[2..], before[2..], "{step}: mac untouched");
        let out = site.cmd(&["status"]).output().unwrap();
        assert_success(&out, &format!("status after {step}"));
        let ledger = std::fs::read_to_string(site.state.join("ledger.jsonl")).unwrap();
        assert!(ledger.contains("interrupted before recording it"), "{step}");
    }
    site.ledger_verify();
}

#[test]
fn a_kill_at_every_publish_step_leaves_complete_sets_and_the_next_run_finishes() {
    let g = Garage::start();
    let w = World::new();
    // Small files are staged here and uploaded at publish; files of a part
    // or more go straight from the bundle into the store's staging folder.
    let small = w.chain(1..=3, 4096);
    let big = big_versions(&w, 11..=13, 9 << 20);
    for (kind, vs) in [("small", &small), ("streamed", &big)] {
        kill_at_every_step(&g, &w, kind, vs);
    }
}

fn kill_at_every_step(g: &Garage, w: &World, kind: &str, vs: &[Version]) {
    for step in S3_CRASH_STEPS {
        let site = Site::new(g, w, &format!("crash-{kind}-{step}"));
        site.import_ok(&vs[0]);
        let out = site.import(&vs[1], &[(CRASH_AT, step)]);
        assert!(
            !out.status.success(),
            "{step}: not killed: {}",
            stderr(&out)
        );
        // Whatever the instant: every served folder holds one complete
        // version, the index never ahead of its payload; n-1 only v1 (whole
        // or part-way through its copy) or nothing.
        let (n1, n2, n3) = (vs[0].n, vs[1].n, vs[2].n);
        for (cur, back) in site.snapshot_with(&all(vs), true) {
            assert!(cur == Some(n1) || cur == Some(n2), "{kind} {step}: {cur:?}");
            assert!(
                back.is_none() || back == Some(n1),
                "{kind} {step}: back {back:?}"
            );
        }
        // The state never claims what the store does not serve.
        assert_eq!(
            site.served_definitions("linux/production/arch_x86_64")
                .as_deref(),
            Some(vs[0].definition_version().as_str()),
            "{step}"
        );
        // The next run finishes the publish and records it; importing v2
        // again publishes the units the kill never reached.
        site.import_ok(&vs[1]);
        assert_eq!(
            site.snapshot(&all(vs)),
            vec![(Some(n2), Some(n1)); 4],
            "{step}"
        );
        site.import_ok(&vs[2]);
        assert_eq!(
            site.snapshot(&all(vs)),
            vec![(Some(n3), Some(n2)); 4],
            "{step}"
        );
        let ledger = std::fs::read_to_string(site.state.join("ledger.jsonl")).unwrap();
        assert!(ledger.contains("interrupted"), "{step}: {ledger}");
        assert_eq!(
            site.client().list(".gapferry-staging/").unwrap(),
            vec![],
            "{step}: staged objects left behind"
        );
        site.ledger_verify();
    }
}

#[test]
fn concurrent_importers_of_one_state_directory_take_turns() {
    let g = Garage::start();
    let w = World::new();
    let vs = w.chain(1..=3, 64 * 1024);
    let site = Site::new(&g, &w, "race");
    site.import_ok(&vs[0]);
    let a = site.import_cmd(&vs[1].bundle, &[]).spawn().unwrap();
    let b = site.import_cmd(&vs[2].bundle, &[]).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    // v3 always ends up served; v2 either went first or was refused as
    // older once v3 was in.
    assert!(b.status.success(), "{}", stderr(&b));
    assert!(
        matches!(a.status.code(), Some(0) | Some(4)),
        "{}",
        stderr(&a)
    );
    for (i, (cur, back)) in site.snapshot(&all(&vs)).into_iter().enumerate() {
        assert_eq!(cur, Some(3), "slot {i}");
        assert!(matches!(back, Some(1) | Some(2)), "slot {i}: {back:?}");
    }
    site.ledger_verify();
}

#[test]
fn a_prefix_belongs_to_one_state_directory() {
    let g = Garage::start();
    let w = World::new();
    let vs = w.chain(1..=2, 2048);
    let site = Site::new(&g, &w, "owned");
    site.import_ok(&vs[0]);
    let other = Site {
        state: w.tmp.path().join("another-state"),
        ..Site::new(&g, &w, "owned")
    };
    let out = other.import(&vs[1], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("claimed by another state directory"), "{e}");
    assert!(e.contains(".gapferry-claim"), "{e}");
    assert_eq!(site.snapshot(&all(&vs)), vec![(Some(1), None); 4]);
}

#[test]
fn the_store_going_away_mid_import_fails_cleanly_and_the_next_run_finishes() {
    let g = Garage::start();
    let w = World::new();
    // Staged here (under one part) and big enough that the uploads after
    // the journal are still running when the store goes.
    let vs = w.chain(1..=2, 7 << 20);
    let site = Site::new(&g, &w, "gone");
    site.import_ok(&vs[0]);
    // The store goes once the publish is decided (its journal written).
    let publish = site.state.join("s3/publish");
    import_until_the_store_goes(&g, &site, &vs[1], "a journal", || {
        std::fs::read_dir(&publish)
            .map(|rd| rd.flatten().any(|e| e.path().join("journal.json").exists()))
            .unwrap_or(false)
    });
    // Nothing recorded: the state still says v1.
    assert_eq!(
        site.served_definitions("linux/production/arch_x86_64")
            .as_deref(),
        Some("1.417.1.0")
    );
    g.restart();
    // The store serves complete sets, then the next run finishes v2.
    for (cur, _) in site.snapshot_with(&all(&vs), true) {
        assert!(matches!(cur, Some(1) | Some(2)));
    }
    site.import_ok(&vs[1]);
    assert_eq!(site.snapshot(&all(&vs)), vec![(Some(2), Some(1)); 4]);
    site.ledger_verify();
}

#[test]
fn endpoints_polling_the_web_endpoint_only_ever_get_imported_versions() {
    let g = Garage::start();
    let w = World::new();
    let vs = w.chain(1..=5, 256 * 1024);
    let site = Site::new(&g, &w, "poll");
    site.import_ok(&vs[0]);
    let stop = AtomicBool::new(false);
    let slot = SLOTS[0];
    let manifests: Vec<Vec<u8>> = vs.iter().map(|v| v.files[0].1.clone()).collect();
    let zips: Vec<Vec<u8>> = vs.iter().map(|v| v.files[0].0.clone()).collect();
    let prefix = site.prefix.clone();
    let polls = std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let mut polls = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // As an endpoint does: the manifest, then the package.
                let (ms, m) = g.web_get(&format!("{prefix}/{slot}/manifest.json"));
                let (zs, z) = g.web_get(&format!("{prefix}/{slot}/updates.zip"));
                assert_eq!(
                    (ms, zs),
                    (200, 200),
                    "a served object was missing during an import"
                );
                let mv = manifests
                    .iter()
                    .position(|x| *x == m)
                    .expect("manifest.json is an imported version");
                let zv = zips
                    .iter()
                    .position(|x| *x == z)
                    .expect("updates.zip is an imported version");
                assert!(
                    mv <= zv,
                    "manifest.json of v{} announced more than updates.zip of v{}",
                    mv + 1,
                    zv + 1
                );
                polls += 1;
            }
            polls
        });
        for v in &vs[1..] {
            site.import_ok(v);
        }
        stop.store(true, Ordering::Relaxed);
        poller.join().expect("the poller saw something it must not")
    });
    assert!(polls > 0);
    assert_eq!(site.snapshot(&all(&vs)), vec![(Some(5), Some(4)); 4]);
}

#[test]
fn the_inbox_publishes_into_the_store() {
    let g = Garage::start();
    let w = World::new();
    let vs = w.chain(1..=2, 2048);
    let site = Site::new(&g, &w, "inbox");
    let inbox = w.tmp.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    for v in &vs {
        std::fs::copy(&v.bundle, inbox.join(v.bundle.file_name().unwrap())).unwrap();
    }
    let out = site
        .cmd(&["import"])
        .arg("--inbox")
        .arg(&inbox)
        .args(["--settle", "0s", "--trust"])
        .arg(&w.key.public)
        .output()
        .unwrap();
    assert_success(&out, "import --inbox");
    assert_eq!(site.snapshot(&all(&vs)), vec![(Some(2), Some(1)); 4]);
    assert!(inbox.join("processed").join("v2.tar.zst").exists());
}

#[test]
fn bad_credentials_a_missing_bucket_and_no_state_dir_are_named() {
    let g = Garage::start();
    let w = World::new();
    let vs = w.chain(1..=1, 1024);
    let site = Site::new(&g, &w, "errors");
    let out = site
        .import_cmd(
            &vs[0].bundle,
            &[(
                "AWS_SECRET_ACCESS_KEY",
                "0000000000000000000000000000000000000000000000000000000000000000",
            )],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused the credentials"),
        "{}",
        stderr(&out)
    );
    assert!(!site.state.join("state.json").exists(), "nothing recorded");

    let out = crate::support::command()
        .arg("import")
        .arg(&vs[0].bundle)
        .arg("--trust")
        .arg(&w.key.public)
        .args([
            "--mirror",
            "s3://no-such-bucket/x",
            "--s3-path-style",
            "--state-dir",
        ])
        .arg(w.tmp.path().join("s2"))
        .envs(g.env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-bucket"), "{}", stderr(&out));

    let out = crate::support::command()
        .arg("import")
        .arg(&vs[0].bundle)
        .arg("--trust")
        .arg(&w.key.public)
        .args(["--mirror", &site.url()])
        .envs(g.env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs --state-dir"),
        "{}",
        stderr(&out)
    );

    // Commands that find the state directory from the mirror ask for it.
    for cmd in [["ledger", "show"], ["trust", "show"]] {
        let out = crate::support::command()
            .args(cmd)
            .args(["--mirror", &site.url()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let e = stderr(&out);
        assert!(
            e.contains("is in object storage") && e.contains("pass --state-dir"),
            "{cmd:?}: {e}"
        );
    }
}

#[test]
fn a_damaged_payload_streamed_into_the_store_is_never_published() {
    let g = Garage::start();
    let w = World::new();
    let vs = big_versions(&w, 1..=2, 9 << 20);
    let site = Site::new(&g, &w, "damaged");
    site.import_ok(&vs[0]);
    // v2 with one byte of its compressed payload flipped, deep in the
    // first zip (after the head).
    let mut bytes = std::fs::read(&vs[1].bundle).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x40;
    let bad = w.tmp.path().join("v2-damaged.tar.zst");
    std::fs::write(&bad, &bytes).unwrap();
    let out = site.import_cmd(&bad, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(site.snapshot(&all(&vs)), vec![(Some(1), None); 4]);
    // The next run removes whatever the refused import had staged.
    site.import_ok(&vs[1]);
    assert_eq!(site.snapshot(&all(&vs)), vec![(Some(2), Some(1)); 4]);
    assert_eq!(site.client().list(".gapferry-staging/").unwrap(), vec![]);
}

#[test]
fn the_store_going_away_while_the_bundle_streams_in_changes_nothing() {
    let g = Garage::start();
    let w = World::new();
    let vs = big_versions(&w, 1..=2, 24 << 20);
    let site = Site::new(&g, &w, "gone-early");
    site.import_ok(&vs[0]);
    // The store goes once the first file is in its staging folder (three
    // more stream behind it).
    let c = site.client();
    import_until_the_store_goes(&g, &site, &vs[1], "a staged object", || {
        !c.list(".gapferry-staging/").unwrap().is_empty()
    });
    g.restart();
    // Nothing was decided: the store serves v1 alone, the state says so,
    // and no journal waits.
    assert_eq!(site.snapshot(&all(&vs)), vec![(Some(1), None); 4]);
    assert_eq!(
        site.served_definitions("linux/production/arch_x86_64")
            .as_deref(),
        Some("1.417.1.0")
    );
    assert!(std::fs::read_dir(site.state.join("s3/publish"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true));
    site.import_ok(&vs[1]);
    assert_eq!(site.snapshot(&all(&vs)), vec![(Some(2), Some(1)); 4]);
    assert_eq!(c.list(".gapferry-staging/").unwrap(), vec![]);
}

#[test]
fn status_writes_prometheus_metrics_of_an_s3_mirror_even_when_the_store_is_gone() {
    let g = Garage::start();
    let w = World::new();
    let vs = w.chain(1..=2, 2048);
    let site = Site::new(&g, &w, "metrics");
    site.import_ok(&vs[0]);
    site.import_ok(&vs[1]);
    let prom = w.tmp.path().join("gapferry.prom");
    let out = site
        .cmd(&["status"])
        .arg("--prometheus")
        .arg(&prom)
        .output()
        .unwrap();
    assert_success(&out, "status --prometheus");
    let text = std::fs::read_to_string(&prom).unwrap();
    for line in [
        r#"gapferry_unit_files_match{unit="linux/production/arch_x86_64"} 1"#,
        r#"gapferry_unit_previous_files_match{unit="mac/production/arch_arm64"} 1"#,
        "gapferry_mirror_problem 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    g.stop();
    let out = site
        .cmd(&["status"])
        .arg("--prometheus")
        .arg(&prom)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot reach the store"),
        "{}",
        stderr(&out)
    );
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.lines().any(|l| l == "gapferry_mirror_problem 1"),
        "{text}"
    );
}

/// Imports `v` and stops the store as soon as `reached` holds (polled);
/// the import must then fail (exit 1) saying it cannot reach the store.
fn import_until_the_store_goes(
    g: &Garage,
    site: &Site<'_>,
    v: &Version,
    what: &str,
    reached: impl Fn() -> bool,
) {
    let child = site
        .import_cmd(&v.bundle, &[])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !reached() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{what} never appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    g.stop();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot reach the store"),
        "{}",
        stderr(&out)
    );
}

/// Versions `ns` whose zips are about `size` bytes each (one zip made
/// once, told apart by its comment): at least one part, so they stream
/// straight into the store.
fn big_versions(w: &World, ns: std::ops::RangeInclusive<u32>, size: usize) -> Vec<Version> {
    let zip = crate::support::crash::big_zip(u64::from(*ns.start()), size);
    ns.map(|n| w.make_version_with(n, 0, Some(&zip))).collect()
}
