//! Import policy through the binary: trust sets and thresholds, channel,
//! expiry, future-dated bundles, rollback by sequence and by versions,
//! `--allow-downgrade`, the same bundle again, one sequence with two
//! manifests, and a carried manifest.json that disagrees with the signed
//! item. Every refusal asserts the exit code, the message, and that nothing
//! but the state dir changed.

use crate::support;

use std::fs;
use std::time::{Duration, SystemTime};

use support::import::*;

const LX: &str = "linux/production/arch_x86_64";
const LA: &str = "linux/production/arch_arm64";
const DAY: Duration = Duration::from_secs(86400);

#[test]
fn trust_directory_and_threshold() {
    let fx = Fx::new();
    let a = fx.key("a");
    let b = fx.key("b");
    let trust = fx.root.join("trusted");
    fs::create_dir_all(&trust).unwrap();
    fs::copy(&a.public, trust.join("a.pub")).unwrap();
    fs::copy(&b.public, trust.join("b.pub")).unwrap();
    fs::write(trust.join("README.txt"), "not a key, ignored").unwrap();
    let dl = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let one = fx.export(&dl, "one", &[&a], &[]);
    let dl2 = fx.download("v2", &[(LX, "1.1.1.0", "1.400.2.0")]);
    let two = fx.export(&dl2, "two", &[&a, &b], &[]);

    // One signer where two are required: policy.
    let before = fx.snapshot();
    fx.import(&one, &[&trust], &["--threshold", "2"]).expect(
        4,
        &[
            "threshold not met",
            "1 distinct trusted signature(s), 2 required",
        ],
    );
    fx.assert_unchanged(&before);
    assert!(fx.mirror_is_empty());

    // More than the trust set can ever give: usage.
    fx.import(&two, &[&trust], &["--threshold", "3"])
        .expect(2, &["--threshold 3", "2 trusted key(s)"]);
    fx.assert_unchanged(&before);

    let r = fx.import(&two, &[&trust], &["--threshold", "2", "--json"]);
    r.expect(0, &[]);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mut signers: Vec<String> = report["signers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    signers.sort();
    let mut want = vec![a.id().to_string(), b.id().to_string()];
    want.sort();
    assert_eq!(signers, want);
    assert_same_files(&fx.mirror.join(LX), &dl2.join(LX));

    // A single trusted key file among several --trust also works.
    let dl3 = fx.download("v3", &[(LX, "1.1.1.0", "1.400.3.0")]);
    let three = fx.export(&dl3, "three", &[&b], &[]);
    fx.import(&three, &[&a.public, &b.public], &[]).ok();
    assert_same_files(&fx.mirror.join(LX), &dl3.join(LX));
}

#[test]
fn untrusted_signer_is_rejected() {
    let fx = Fx::new();
    let good = fx.key("good");
    let evil = fx.key("evil");
    let dl = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let b = fx.export(&dl, "evil", &[&evil], &[]);
    let before = fx.snapshot();
    fx.import(&b, &[&good.public], &[]).expect(
        3,
        &[
            "bundle rejected",
            "no signature by a trusted key",
            &evil.id().to_string(),
            &good.id().to_string(),
            "--trust",
        ],
    );
    fx.assert_unchanged(&before);
    assert!(fx.mirror_is_empty());
}

#[test]
fn wrong_channel_is_refused() {
    let fx = Fx::new();
    let k = fx.key("k");
    let dl = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let b = fx.export(&dl, "lab", &[&k], &["--channel", "lab"]);
    let before = fx.snapshot();
    fx.import(&b, &[&k.public], &[])
        .expect(4, &["channel \"lab\"", "accepts \"default\"", "--channel"]);
    fx.assert_unchanged(&before);
    fx.import(&b, &[&k.public], &["--channel", "other"])
        .expect(4, &["channel \"lab\""]);
    fx.assert_unchanged(&before);
    fx.import(&b, &[&k.public], &["--channel", "lab"]).ok();
    assert_same_files(&fx.mirror.join(LX), &dl.join(LX));
}

#[test]
fn expired_is_refused_unless_allowed() {
    let fx = Fx::new();
    let k = fx.key("k");
    let now = SystemTime::now();
    let mut c = Craft::new(100).item(LX, "1.1.1.0", "1.400.1.0");
    c.created = now - 2 * DAY;
    c.expires = now - DAY;
    let files = folder_files(LX, "1.1.1.0", "1.400.1.0");
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    let b = fx.craft("expired", &[&k], c, &files);
    let before = fx.snapshot();
    fx.import(&b, &[&k.public], &[])
        .expect(4, &["refused by policy", "expired at", "--allow-expired"]);
    fx.assert_unchanged(&before);
    // --allow-downgrade is no substitute.
    fx.import(&b, &[&k.public], &["--allow-downgrade"])
        .expect(4, &["expired at"]);
    fx.assert_unchanged(&before);
    fx.import(&b, &[&k.public], &["--allow-expired"]).ok();
    assert_eq!(
        served_versions(&fx.mirror.join(LX)),
        ("1.1.1.0".into(), "1.400.1.0".into())
    );
}

#[test]
fn created_far_in_the_future_is_refused() {
    let fx = Fx::new();
    let k = fx.key("k");
    let now = SystemTime::now();
    let files = folder_files(LX, "1.1.1.0", "1.400.1.0");
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    let mut c = Craft::new(200).item(LX, "1.1.1.0", "1.400.1.0");
    c.created = now + 2 * DAY;
    c.expires = now + 30 * DAY;
    let future = fx.craft("future", &[&k], c, &files);
    let before = fx.snapshot();
    for extra in [&[][..], &["--allow-expired", "--allow-downgrade"][..]] {
        fx.import(&future, &[&k.public], extra)
            .expect(4, &["more than 24 hours in the future", "clock"]);
        fx.assert_unchanged(&before);
    }
    // An hour of clock skew is tolerated.
    let mut c = Craft::new(201).item(LX, "1.1.1.0", "1.400.1.0");
    c.created = now + Duration::from_secs(3600);
    c.expires = now + 30 * DAY;
    let skewed = fx.craft("skewed", &[&k], c, &files);
    fx.import(&skewed, &[&k.public], &[]).ok();
}

#[test]
fn replayed_older_sequence_is_refused() {
    let fx = Fx::new();
    let k = fx.key("k");
    let v1 = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let v2 = fx.download("v2", &[(LX, "1.1.2.0", "1.400.2.0")]);
    // b0: an older bundle this mirror never imported (a replay from
    // another site, or one that arrived too late).
    let b0 = fx.export(&v1, "b0", &[&k], &["--sequence", "500"]);
    let b1 = fx.export(&v1, "b1", &[&k], &["--sequence", "1000"]);
    let b2 = fx.export(&v2, "b2", &[&k], &["--sequence", "2000"]);
    fx.import(&b1, &[&k.public], &[]).ok();
    fx.import(&b2, &[&k.public], &[]).ok();
    let before = fx.snapshot();
    fx.import(&b0, &[&k.public], &[]).expect(
        4,
        &[
            "sequence 500 is below 2000",
            "definitions 1.400.1.0 are older than the served 1.400.2.0",
            "--allow-downgrade",
        ],
    );
    fx.assert_unchanged(&before);
    let last = ledger(&fx.state).pop().unwrap();
    assert_eq!(last["outcome"], "refused");
    assert_eq!(last["sequence"], 500);
    // b1 again, late (a diode delivering twice): accepted once, superseded
    // since: "already imported", nothing published.
    fx.import(&b1, &[&k.public], &[]).ok();
    fx.assert_unchanged(&before);
    assert_eq!(
        ledger(&fx.state).pop().unwrap()["outcome"],
        "already_imported"
    );

    // A lower sequence with the same versions is still a replay.
    let v2b = fx.download("v2b", &[(LX, "1.1.2.0", "1.400.2.0")]);
    let other_state = fx.root.join("other-export-state");
    let low = fx.export(
        &v2b,
        "low",
        &[&k],
        &[
            "--state-dir",
            other_state.to_str().unwrap(),
            "--sequence",
            "1500",
        ],
    );
    let before = fx.snapshot();
    fx.import(&low, &[&k.public], &[])
        .expect(4, &["sequence 1500 is below 2000"]);
    fx.assert_unchanged(&before);
}

#[test]
fn older_definitions_or_engine_with_higher_sequence_are_refused() {
    let fx = Fx::new();
    let k = fx.key("k");
    let v = fx.download("v", &[(LX, "1.1.5.0", "1.400.10.0")]);
    let b = fx.export(&v, "b", &[&k], &[]);
    fx.import(&b, &[&k.public], &[]).ok();

    // Numerically older (.9 < .10), though lexically "newer".
    let old_def = fx.download("od", &[(LX, "1.1.6.0", "1.400.9.0")]);
    let b_od = fx.export(&old_def, "od", &[&k], &[]);
    let before = fx.snapshot();
    fx.import(&b_od, &[&k.public], &[]).expect(
        4,
        &[
            "linux/production/arch_x86_64: definitions 1.400.9.0 are older than the served 1.400.10.0",
        ],
    );
    fx.assert_unchanged(&before);

    let old_eng = fx.download("oe", &[(LX, "1.1.4.0", "1.400.10.0")]);
    let b_oe = fx.export(&old_eng, "oe", &[&k], &[]);
    let before = fx.snapshot();
    fx.import(&b_oe, &[&k.public], &[]).expect(
        4,
        &["engine 1.1.4.0 is older than the served 1.1.5.0 (same definitions)"],
    );
    fx.assert_unchanged(&before);

    // Newer definitions with an older engine are an upgrade.
    let up = fx.download("up", &[(LX, "1.1.4.0", "1.400.11.0")]);
    let b_up = fx.export(&up, "up", &[&k], &[]);
    fx.import(&b_up, &[&k.public], &[]).ok();
    assert_same_files(&fx.mirror.join(LX), &up.join(LX));
}

#[test]
fn versions_on_disk_count_when_the_state_is_new() {
    // A mirror filled before gapferry (or by Microsoft's script): what its
    // manifest.json says is what is served.
    let fx = Fx::new();
    let k = fx.key("k");
    let dir = fx.mirror.join(LX);
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("manifest.json"),
        folder_manifest("1.1.5.0", "1.400.10.0"),
    )
    .unwrap();
    fs::write(dir.join("updates.zip"), b"whatever was there").unwrap();
    let old = fx.download("old", &[(LX, "1.1.5.0", "1.400.9.0")]);
    let b = fx.export(&old, "old", &[&k], &[]);
    let before = fx.snapshot();
    fx.import(&b, &[&k.public], &[]).expect(
        4,
        &["definitions 1.400.9.0 are older than the served 1.400.10.0"],
    );
    fx.assert_unchanged(&before);
}

#[test]
fn allow_downgrade_imports_and_is_recorded() {
    let fx = Fx::new();
    let k = fx.key("k");
    let v1 = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let v2 = fx.download("v2", &[(LX, "1.1.2.0", "1.400.2.0")]);
    let b1 = fx.export(&v1, "b1", &[&k], &[]);
    let b2 = fx.export(&v2, "b2", &[&k], &[]);
    fx.import(&b1, &[&k.public], &[]).ok();
    fx.import(&b2, &[&k.public], &[]).ok();
    fx.import(&b1, &[&k.public], &["--allow-downgrade"])
        .expect(0, &["downgrade allowed", "1.400.1.0"]);
    assert_same_files(&fx.mirror.join(LX), &v1.join(LX));
    assert_same_files(
        &fx.mirror.join("linux/production_back/arch_x86_64"),
        &v2.join(LX),
    );
    let last = ledger(&fx.state).pop().unwrap();
    assert_eq!(last["outcome"], "imported");
    assert_eq!(last["allow_downgrade"], true);
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.contains("--allow-downgrade")
            && reason.contains("definitions 1.400.1.0 are older than the served 1.400.2.0")
            && reason.contains("sequence"),
        "{reason}"
    );
    assert_eq!(
        last["slots"][0]["before"]["definition_version"],
        "1.400.2.0"
    );
    assert_eq!(last["slots"][0]["after"]["definition_version"], "1.400.1.0");
}

#[test]
fn same_bundle_again_changes_nothing() {
    let fx = Fx::new();
    let k = fx.key("k");
    let [(v1, b1), (_, b2)]: [_; 2] = fx.releases(&k, &[LX, LA], 1..=2).try_into().unwrap();
    fx.import(&b1, &[&k.public], &[]).ok();
    fx.import(&b2, &[&k.public], &[]).ok();
    let before = fx.snapshot();
    let n = ledger(&fx.state).len();
    fx.import(&b2, &[&k.public], &[])
        .expect(0, &["already imported", "nothing to do"]);
    fx.assert_unchanged(&before);
    let entries = ledger(&fx.state);
    assert_eq!(entries.len(), n + 1);
    let last = entries.last().unwrap();
    assert_eq!(last["outcome"], "already_imported");
    assert!(last["slots"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["after"].is_null()));
    // n-1 is still v1: the repeat did not rotate anything.
    assert_same_files(
        &fx.mirror.join("linux/production_back/arch_x86_64"),
        &v1.join(LX),
    );
}

#[test]
fn one_sequence_with_two_manifests_is_rejected() {
    let fx = Fx::new();
    let k = fx.key("k");
    let v1 = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let v2 = fx.download("v2", &[(LX, "1.1.2.0", "1.400.2.0")]);
    let s1 = fx.root.join("exporter-1");
    let s2 = fx.root.join("exporter-2");
    let b1 = fx.export(
        &v1,
        "b1",
        &[&k],
        &["--state-dir", s1.to_str().unwrap(), "--sequence", "777"],
    );
    let b2 = fx.export(
        &v2,
        "b2",
        &[&k],
        &["--state-dir", s2.to_str().unwrap(), "--sequence", "777"],
    );
    fx.import(&b1, &[&k.public], &[]).ok();
    let before = fx.snapshot();
    for extra in [&[][..], &["--allow-downgrade"][..]] {
        fx.import(&b2, &[&k.public], extra).expect(
            3,
            &[
                "already accepted sequence 777",
                "two different bundles carry one sequence number",
            ],
        );
        fx.assert_unchanged(&before);
    }
    assert_eq!(ledger(&fx.state).pop().unwrap()["outcome"], "rejected");
}

/// Items of `LX` saying engine/definitions `item`, payload manifest.json saying `carried`.
fn mismatched(
    fx: &Fx,
    name: &str,
    k: &Keys,
    seq: u64,
    item: (&str, &str),
    carried: (&str, &str),
) -> std::path::PathBuf {
    let c = Craft::new(seq).item(LX, item.0, item.1);
    let files = [
        (
            format!("{LX}/updates.zip"),
            zip_for(LX, item.0, item.1, PAYLOAD),
        ),
        (
            format!("{LX}/manifest.json"),
            folder_manifest(carried.0, carried.1),
        ),
    ];
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    fx.craft(name, &[k], c, &files)
}

#[test]
fn carried_manifest_json_must_match_the_signed_item() {
    let fx = Fx::new();
    let k = fx.key("k");
    // Into an empty mirror: no folder may appear.
    let b = mismatched(
        &fx,
        "m1",
        &k,
        10,
        ("1.1.9.0", "1.400.9.0"),
        ("1.1.1.0", "1.400.1.0"),
    );
    let before = fx.snapshot();
    fx.import(&b, &[&k.public], &[]).expect(
        3,
        &[
            "bundle rejected",
            "linux/production/arch_x86_64/manifest.json says engine 1.1.1.0 definitions 1.400.1.0",
            "the signed item says engine 1.1.9.0 definitions 1.400.9.0",
        ],
    );
    fx.assert_unchanged(&before);
    assert!(
        fx.mirror_is_empty(),
        "the rejected import wrote into the mirror"
    );

    // Into a served mirror: the old set stays, n-1 untouched.
    let v = fx.download("v", &[(LX, "1.1.5.0", "1.400.5.0")]);
    let good = fx.export(&v, "good", &[&k], &[]);
    fx.import(&good, &[&k.public], &[]).ok();
    let b = mismatched(
        &fx,
        "m2",
        &k,
        // Above the export's sequence (the clock), within a day of created.
        now_secs().0 + 3600,
        ("1.1.6.0", "1.400.6.0"),
        ("1.1.6.0", "1.400.60.0"),
    );
    let before = fx.snapshot();
    fx.import(&b, &[&k.public], &[]).expect(
        3,
        &["manifest.json says engine 1.1.6.0 definitions 1.400.60.0"],
    );
    fx.assert_unchanged(&before);
    assert_same_files(&fx.mirror.join(LX), &v.join(LX));
}

#[test]
fn same_bundle_again_restores_a_folder_that_no_longer_serves_it() {
    // "Already imported" must mean the mirror still serves it: a folder
    // removed or damaged by hand since is published again.
    let fx = Fx::new();
    let k = fx.key("k");
    let v1 = fx.download(
        "v1",
        &[(LX, "1.1.1.0", "1.400.1.0"), (LA, "1.1.1.0", "1.400.1.0")],
    );
    let b1 = fx.export(&v1, "b1", &[&k], &[]);
    fx.import(&b1, &[&k.public], &[]).ok();

    fs::remove_dir_all(fx.mirror.join(LX)).unwrap();
    fx.import(&b1, &[&k.public], &[])
        .expect(0, &["imported bundle", "(none) -> 1.1.1.0 / 1.400.1.0"]);
    assert_same_files(&fx.mirror.join(LX), &v1.join(LX));

    fs::write(fx.mirror.join(LA).join("updates.zip"), b"<html>404</html>").unwrap();
    fx.import(&b1, &[&k.public], &[])
        .expect(0, &["imported bundle"]);
    assert_same_files(&fx.mirror.join(LA), &v1.join(LA));
    assert_same_files(&fx.mirror.join(LX), &v1.join(LX));

    // Now it really is served: nothing to do.
    let before = fx.snapshot();
    fx.import(&b1, &[&k.public], &[])
        .expect(0, &["already imported"]);
    fx.assert_unchanged(&before);
}

/// A bundle crafted with one (stolen) trusted key at `sequence`, created at
/// `created` (whole seconds), carrying `LX` at definitions `def`.
fn crafted_at(
    fx: &Fx,
    k: &Keys,
    name: &str,
    sequence: u64,
    created: SystemTime,
    def: &str,
) -> std::path::PathBuf {
    let files = folder_files(LX, "1.1.1.0", def);
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    let mut c = Craft::new(sequence).item(LX, "1.1.1.0", def);
    c.created = created;
    c.expires = created + 30 * DAY;
    fx.craft(name, &[k], c, &files)
}

/// Whole seconds since the epoch, and that instant.
fn now_secs() -> (u64, SystemTime) {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (secs, SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Issue 11 item 6: one stolen trusted key signed `sequence = u64::MAX`,
/// `created = now`; it used to import and lock every honest bundle out of
/// the channel. Now refused by policy (exit 4) naming the bound and the fix;
/// nothing changes, and an honest bundle imports afterwards.
#[test]
fn fast_forward_to_u64_max_is_refused_and_honest_bundles_still_import() {
    let fx = Fx::new();
    let k = fx.key("k");
    let v1 = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let b1 = fx.export(&v1, "b1", &[&k], &[]);
    fx.import(&b1, &[&k.public], &[]).ok();

    let (_, now) = now_secs();
    let evil = crafted_at(&fx, &k, "max", u64::MAX, now, "1.400.9.0");
    let before = fx.snapshot();
    for extra in [&[][..], &["--allow-downgrade", "--allow-expired"][..]] {
        fx.import(&evil, &[&k.public], extra).expect(
            4,
            &[
                "refused by policy",
                &format!("sequence {}", u64::MAX),
                "more than 86400 seconds (one day) ahead of the bundle's created time",
                "export again without a hand-picked --sequence",
                "stolen",
            ],
        );
        fx.assert_unchanged(&before);
    }
    let last = ledger(&fx.state).pop().unwrap();
    assert_eq!(last["outcome"], "refused");
    assert_eq!(last["sequence"], u64::MAX);
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(fx.state.join("state.json")).unwrap()).unwrap();
    assert!(
        !state.to_string().contains(&u64::MAX.to_string()),
        "the refused sequence must not be recorded as accepted: {state}"
    );

    // The next honest export (sequence = the clock) imports.
    let v2 = fx.download("v2", &[(LX, "1.1.1.0", "1.400.2.0")]);
    let b2 = fx.export(&v2, "b2", &[&k], &[]);
    fx.import(&b2, &[&k.public], &[]).ok();
    assert_same_files(&fx.mirror.join(LX), &v2.join(LX));
}

/// The bound itself: `created` + 86 400 s is accepted, one more refused.
#[test]
fn sequence_at_the_one_day_bound_is_accepted_one_past_is_refused() {
    let fx = Fx::new();
    let k = fx.key("k");
    let (secs, now) = now_secs();
    let bound = secs + 86_400;
    let past = crafted_at(&fx, &k, "past", bound + 1, now, "1.400.1.0");
    let before = fx.snapshot();
    fx.import(&past, &[&k.public], &[]).expect(
        4,
        &[
            &format!("sequence {}", bound + 1),
            &format!("at most {bound} allowed"),
        ],
    );
    fx.assert_unchanged(&before);
    assert!(fx.mirror_is_empty());
    let at = crafted_at(&fx, &k, "at", bound, now, "1.400.1.0");
    fx.import(&at, &[&k.public], &[]).ok();
    assert_eq!(
        served_versions(&fx.mirror.join(LX)),
        ("1.1.1.0".into(), "1.400.1.0".into())
    );
}

/// `export` never writes a bundle that rule refuses: a `--sequence` more
/// than a day ahead is refused before anything is written or spent.
#[test]
fn export_refuses_a_sequence_importers_would_refuse() {
    let fx = Fx::new();
    let k = fx.key("k");
    let v1 = fx.download("v1", &[(LX, "1.1.1.0", "1.400.1.0")]);
    let (r, out) = fx.try_export(&v1, "far", &[&k], &["--sequence", &u64::MAX.to_string()]);
    r.expect(1, &["more than a day ahead", "leave --sequence out"]);
    assert!(!out.exists());
    // Without --sequence the counter was not advanced by the refusal.
    let b = fx.export(&v1, "ok", &[&k], &[]);
    fx.import(&b, &[&k.public], &[]).ok();
}
