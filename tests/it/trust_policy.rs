//! The signed trust policy end to end through the binary: `trust
//! init|edit|sign|show`, `export --trust-policy`, root-pinned `import`
//! adopting carried versions (rotation, revocation, forgery, replay, root
//! rotation, expiry), and what `verify`, `inspect` and `status` show.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::support::import::{Fx, Keys, Run};
use crate::support::json;

const UNIT: &str = "linux/production/arch_x86_64";

/// One test's world: roots R1, R2, R3, signers K1, K2, K3, and the policy
/// chain folder `policy/` (1.json, 2.json, ...).
struct World {
    fx: Fx,
    r1: Keys,
    r2: Keys,
    r3: Keys,
    k1: Keys,
    k2: Keys,
    k3: Keys,
    chain: PathBuf,
    n: std::cell::Cell<u32>,
}

impl World {
    fn new() -> World {
        let fx = Fx::new();
        let chain = fx.root.join("policy");
        fs::create_dir_all(&chain).unwrap();
        World {
            r1: fx.key("r1"),
            r2: fx.key("r2"),
            r3: fx.key("r3"),
            k1: fx.key("k1"),
            k2: fx.key("k2"),
            k3: fx.key("k3"),
            chain,
            fx,
            n: std::cell::Cell::new(0),
        }
    }

    fn gf(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Run {
        let mut c = self.fx.cmd();
        for a in args {
            c.arg(a);
        }
        self.fx.run(c)
    }

    fn version(&self, n: u64) -> PathBuf {
        self.chain.join(format!("{n}.json"))
    }

    /// `trust init` of v1 with roots R1+R2 (2 of 2), the signers given,
    /// and `extra` (threshold, expiry...); unsigned.
    fn init(&self, signers: &[&Keys], extra: &[&str]) -> Run {
        let mut c = self.fx.cmd();
        c.args(["trust", "init", "--root"])
            .arg(&self.r1.public)
            .arg("--root")
            .arg(&self.r2.public)
            .args(["--root-threshold", "2"]);
        for k in signers {
            c.arg("--signer").arg(&k.public);
        }
        c.args(extra).arg("--out").arg(self.version(1));
        self.fx.run(c)
    }

    /// v1: roots R1+R2 (2 of 2), signer K1, signed by both roots.
    fn init_v1(&self, expires_in: &str) {
        self.init(
            &[&self.k1],
            &["--threshold", "1", "--expires-in", expires_in],
        )
        .ok();
        self.sign(1, &self.r1).ok();
        self.sign(1, &self.r2).ok();
    }

    fn sign(&self, n: u64, key: &Keys) -> Run {
        self.gf(&[
            &"trust",
            &"sign",
            &self.version(n),
            &"--secret-key",
            &key.secret,
        ])
    }

    /// `trust edit <n-1>.json --out <n>.json ARGS`.
    fn edit(&self, n: u64, args: &[&str]) {
        let mut c = self.fx.cmd();
        c.args(["trust", "edit"])
            .arg(self.version(n - 1))
            .arg("--out")
            .arg(self.version(n))
            .args(args);
        self.fx.run(c).ok();
    }

    /// A fresh bundle signed by `keys`, carrying `policy` (a file or the
    /// chain folder) when given; `extra` goes to export.
    fn bundle(&self, keys: &[&Keys], policy: Option<&Path>, extra: &[&str]) -> PathBuf {
        let n = self.n.get() + 1;
        self.n.set(n);
        let (eng, def) = (format!("1.1.{n}.0"), format!("1.400.{n}.0"));
        let dl = self.fx.download(&format!("v{n}"), &[(UNIT, &eng, &def)]);
        let mut args: Vec<&str> = extra.to_vec();
        let p;
        if let Some(policy) = policy {
            p = policy.display().to_string();
            args.push("--trust-policy");
            args.push(&p);
        }
        self.fx.export(&dl, &format!("b{n}"), keys, &args)
    }

    fn import_pinned(
        &self,
        bundle: &Path,
        roots: &[&Keys],
        threshold: &str,
        extra: &[&str],
    ) -> Run {
        let mut c = self.fx.cmd();
        c.arg("import").arg(bundle);
        for r in roots {
            c.arg("--trust-root").arg(&r.public);
        }
        c.args(["--root-threshold", threshold])
            .arg("--mirror")
            .arg(&self.fx.mirror)
            .arg("--state-dir")
            .arg(&self.fx.state)
            .args(extra);
        self.fx.run(c)
    }

    /// Import pinned to R1+R2, 2 of 2.
    fn import(&self, bundle: &Path) -> Run {
        self.import_pinned(bundle, &[&self.r1, &self.r2], "2", &[])
    }

    fn adopted(&self) -> serde_json::Value {
        let mut c = self.fx.cmd();
        c.args(["trust", "show", "--json", "--state-dir"])
            .arg(&self.fx.state);
        json::parse(&self.fx.run(c).ok().stdout)
    }

    fn adopted_version(&self) -> u64 {
        self.adopted()["version"].as_u64().unwrap()
    }

    fn ledger(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.fx.state.join("ledger.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Scenarios 1 and 2's start: v1 carried and adopted, then v2 (K2
    /// instead of K1, signed by R1+R2) carried by a bundle of K2 and adopted.
    fn at_v2(&self) {
        self.init_v1("1y");
        let b1 = self.bundle(&[&self.k1], Some(&self.version(1)), &[]);
        self.import(&b1).ok();
        let k1 = self.k1.id().to_string();
        self.edit(
            2,
            &[
                "--add-signer",
                self.k2.public.to_str().unwrap(),
                "--remove-signer",
                &k1,
            ],
        );
        self.sign(2, &self.r1).ok();
        self.sign(2, &self.r2).ok();
        let b2 = self.bundle(&[&self.k2], Some(&self.chain), &[]);
        self.import(&b2).ok();
        assert_eq!(self.adopted_version(), 2);
    }
}

#[test]
fn scenario_1_a_mirror_pinned_to_two_offline_roots_adopts_the_carried_v1() {
    let w = World::new();
    w.init_v1("1y");
    // The policy's signatures are stock minisign signatures of its bytes.
    let sig = w.chain.join(format!("1.json.{}.minisig", w.r1.id()));
    assert!(sig.is_file());
    // Stock minisign checks it, and shows the trusted comment readers require.
    let o = std::process::Command::new("minisign")
        .arg("-Vm")
        .arg(w.version(1))
        .arg("-x")
        .arg(&sig)
        .arg("-p")
        .arg(&w.r1.public)
        .output()
        .expect("the minisign binary is needed (apt-get install minisign)");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("gapferry trust version:1 expires:"), "{out}");
    // And refuses it once the policy is changed by one byte.
    let edited = w.fx.root.join("edited.json");
    let mut bytes = fs::read(w.version(1)).unwrap();
    bytes.insert(1, b' ');
    fs::write(&edited, bytes).unwrap();
    let o = std::process::Command::new("minisign")
        .arg("-Vm")
        .arg(&edited)
        .arg("-x")
        .arg(&sig)
        .arg("-p")
        .arg(&w.r1.public)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let show = w.gf(&[&"trust", &"show", &w.version(1), &"--json"]).ok();
    let s = json::parse::<serde_json::Value>(&show.stdout);
    assert_eq!(s["version"], 1);
    assert_eq!(s["own_roots_met"], true);
    assert_eq!(s["signed_by"].as_array().unwrap().len(), 2);

    let b1 = w.bundle(&[&w.k1], Some(&w.version(1)), &[]);
    // A second signature by the same root is refused.
    w.sign(1, &w.r1).fails(2, &["already signed"]);
    // inspect shows the carried policy.
    let mut c = w.fx.cmd();
    c.arg("inspect").arg(&b1).arg("--json");
    let i: json::Inspect = json::parse(&w.fx.run(c).ok().stdout);
    assert_eq!(i.trust_policy.len(), 1);
    assert_eq!(i.trust_policy[0].version, 1);
    assert_eq!(i.trust_policy[0].root_threshold, 2);
    assert_eq!(
        i.trust_policy[0].signer_keys[0].key_id,
        w.k1.id().to_string()
    );
    assert_eq!(i.trust_policy[0].signed_by.len(), 2);

    let r = w.import(&b1).ok();
    assert!(
        r.stderr.contains("adopted trust policy version 1"),
        "{r:#?}"
    );
    let a = w.adopted();
    assert_eq!(a["version"], 1);
    assert_eq!(a["pinned_threshold"], 2);
    let last = w.ledger().pop().unwrap();
    assert_eq!(last["outcome"], "imported");
    assert_eq!(
        last["trust_updated"]["old_version"],
        serde_json::Value::Null
    );
    assert_eq!(last["trust_updated"]["new_version"], 1);
    assert!(fs::read_to_string(w.fx.mirror.join(UNIT).join("manifest.json")).is_ok());

    // verify from the pins says which policy the signature counted under.
    let mut c = w.fx.cmd();
    c.arg("verify")
        .arg(&b1)
        .args(["--trust-root"])
        .arg(&w.r1.public)
        .arg("--trust-root")
        .arg(&w.r2.public)
        .args(["--root-threshold", "2", "--json"]);
    let v: json::Verify = json::parse(&w.fx.run(c).ok().stdout);
    assert_eq!(v.counted_under_policy, Some(1));
    assert_eq!(v.trust_policy[0].version, 1);
    assert_eq!(v.signers, vec![w.k1.id().to_string()]);
}

#[test]
fn a_policy_signed_below_the_pinned_threshold_is_neither_exported_nor_adopted() {
    let w = World::new();
    let out = w.version(1);
    w.init(&[&w.k1], &[]).ok();
    w.sign(1, &w.r1).ok();
    // A key that is not a root cannot sign it.
    w.sign(1, &w.k1).fails(2, &["not a root of version 1"]);
    let dl = w.fx.download("half", &[(UNIT, "1.1.1.0", "1.400.1.0")]);
    let (r, _) = w.fx.try_export(
        &dl,
        "half",
        &[&w.k1],
        &["--trust-policy", out.to_str().unwrap()],
    );
    r.fails(2, &["1 of its own root keys", "gapferry trust sign"]);
    // A bundle without a policy on a fresh root-pinned mirror: rejected.
    let plain = w.bundle(&[&w.k1], None, &[]);
    w.import(&plain)
        .fails(3, &["carries no trust policy", "--trust-policy"]);
    assert!(!w.fx.mirror.join(UNIT).exists());
}

#[test]
fn scenario_2_rotation_k2_replaces_k1_and_k1_alone_is_refused_after() {
    let w = World::new();
    w.at_v2();
    let last = w.ledger().pop().unwrap();
    assert_eq!(last["trust_updated"]["old_version"], 1);
    assert_eq!(last["trust_updated"]["new_version"], 2);
    let changes: Vec<String> = last["trust_updated"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert!(
        changes.contains(&format!("signer added {}", w.k2.id())),
        "{changes:?}"
    );
    assert!(
        changes.contains(&format!("signer removed {}", w.k1.id())),
        "{changes:?}"
    );
    // b3 signed by K1 alone: no signature by a key the adopted policy lists
    // (exit 3, as a bundle signed by an untrusted key).
    let b3 = w.bundle(&[&w.k1], None, &[]);
    let before = w.fx.snapshot();
    w.import(&b3).fails(
        3,
        &[
            "no signature by a trusted key",
            "trust policy version 2",
            "trust edit --add-signer",
        ],
    );
    w.fx.assert_unchanged(&before);
    // K1 signing with K2: K2 alone counts, and suffices.
    let b4 = w.bundle(&[&w.k1, &w.k2], None, &[]);
    w.import(&b4).ok();
    // --trust on a root-pinned mirror is refused: it would undo the rotation.
    let b5 = w.bundle(&[&w.k1], None, &[]);
    w.fx.import(&b5, &[&w.k1.public], &[])
        .fails(2, &["follows trust policy version 2", "--trust-root"]);
}

#[test]
fn scenario_3_revocation_applies_to_bundles_already_in_flight() {
    let w = World::new();
    w.at_v2();
    // Exported by K2 before the revocation, still on a courier's stick.
    let in_flight = w.bundle(&[&w.k2], None, &[]);
    w.edit(
        3,
        &[
            "--add-signer",
            w.k3.public.to_str().unwrap(),
            "--revoke",
            &w.k2.id().to_string(),
        ],
    );
    w.sign(3, &w.r1).ok();
    w.sign(3, &w.r2).ok();
    let b = w.bundle(&[&w.k3], Some(&w.chain), &[]);
    w.import(&b).ok();
    assert_eq!(w.adopted_version(), 3);
    let a = w.adopted();
    assert_eq!(a["revoked"][0], w.k2.id().to_string());
    let changes = w.ledger().pop().unwrap()["trust_updated"]["changes"].clone();
    assert!(changes
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(format!("revoked {}", w.k2.id()))));
    let before = w.fx.snapshot();
    w.import(&in_flight).fails(
        3,
        &[&format!(
            "key {} is revoked by trust policy version 3",
            w.k2.id()
        )],
    );
    w.fx.assert_unchanged(&before);
    // And a new bundle by the revoked key, carrying the whole chain too.
    let later = w.bundle(&[&w.k2], Some(&w.chain), &[]);
    w.import(&later).fails(3, &["revoked"]);
}

#[test]
fn scenario_4_a_forged_v3_is_rejected_and_a_replayed_v1_ignored() {
    let w = World::new();
    w.at_v2();
    // v3 signed by R1 alone, in a copy of the chain.
    let forged = w.fx.root.join("forged");
    fs::create_dir_all(&forged).unwrap();
    for e in fs::read_dir(&w.chain).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), forged.join(e.file_name())).unwrap();
    }
    let mut c = w.fx.cmd();
    c.args(["trust", "edit"])
        .arg(forged.join("2.json"))
        .arg("--out")
        .arg(forged.join("3.json"))
        .arg("--add-signer")
        .arg(&w.k3.public);
    w.fx.run(c).ok();
    let mut c = w.fx.cmd();
    c.args(["trust", "sign"])
        .arg(forged.join("3.json"))
        .arg("--secret-key")
        .arg(&w.r1.secret);
    w.fx.run(c).ok();
    // export refuses to carry it; a bundle crafted around export is
    // rejected by the mirror.
    let dl = w.fx.download("forged", &[(UNIT, "1.1.50.0", "1.400.50.0")]);
    let (r, _) = w.fx.try_export(
        &dl,
        "forged",
        &[&w.k3],
        &["--trust-policy", forged.to_str().unwrap()],
    );
    r.fails(2, &["version 3"]);
    let bundle = craft_with_policy(&w, &forged, &[&w.k3], "forged-b");
    let before = w.fx.snapshot();
    w.import(&bundle)
        .fails(3, &["carried trust policy", "version 3", "stays version 2"]);
    w.fx.assert_unchanged(&before);
    assert_eq!(w.adopted_version(), 2);
    let last = w.ledger().pop().unwrap();
    assert_eq!(last["outcome"], "rejected");
    assert!(last.get("trust_updated").is_none());

    // A replayed v1 (valid, older): ignored; the bundle counts under v2.
    let replay = w.bundle(&[&w.k2], Some(&w.version(1)), &[]);
    let r = w.import(&replay).ok();
    assert!(
        r.stderr.contains("counted under trust policy version 2"),
        "{r:#?}"
    );
    assert_eq!(w.adopted_version(), 2);
    // An equal version with other bytes, even validly signed: rejected.
    let other = w.fx.root.join("other");
    fs::create_dir_all(&other).unwrap();
    let mut c = w.fx.cmd();
    c.args(["trust", "edit"])
        .arg(w.version(1))
        .arg("--out")
        .arg(other.join("2.json"))
        .args(["--expires-in", "200d"]);
    w.fx.run(c).ok();
    for r in [&w.r1, &w.r2] {
        let mut c = w.fx.cmd();
        c.args(["trust", "sign"])
            .arg(other.join("2.json"))
            .arg("--secret-key")
            .arg(&r.secret)
            .arg("--previous")
            .arg(w.version(1));
        w.fx.run(c).ok();
    }
    let b = w.bundle(&[&w.k2], Some(&other.join("2.json")), &[]);
    w.import(&b).fails(3, &["differs from the version 2"]);
    assert_eq!(w.adopted_version(), 2);
}

/// A bundle through the library carrying the chain in `folder` as it is
/// (export refuses a chain that does not hold), signed by `keys`.
fn craft_with_policy(w: &World, folder: &Path, keys: &[&Keys], name: &str) -> PathBuf {
    let chain = gapferry::trustpolicy::files::read_chain(folder).unwrap();
    craft_bundle(w, chain, keys, name)
}

/// A bundle through the library carrying `chain` in its head as given.
fn craft_bundle(
    w: &World,
    chain: Vec<gapferry::trustpolicy::SignedPolicy>,
    keys: &[&Keys],
    name: &str,
) -> PathBuf {
    use gapferry::bundle::writer::{write_bundle, BundleSpec, WriteOptions};
    let dl = w.fx.download(name, &[(UNIT, "1.1.60.0", "1.400.60.0")]);
    let collected = gapferry::mde::collect::collect(&dl, &[], &[]).unwrap();
    let c = gapferry::mde::collect::to_collection(&collected);
    let now = SystemTime::now();
    let spec = BundleSpec {
        bundle_id: format!("{name}-id"),
        channel: "default".into(),
        sequence: now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        created: now,
        expires: now + Duration::from_secs(86_400),
        producer: "gapferry-tests".into(),
        profile: c.profile.to_string(),
        items: c.items.clone(),
        files: c.files.clone(),
        trust: chain,
    };
    let out = w.fx.root.join("bundles").join(format!("{name}.tar.zst"));
    let sk: Vec<_> = keys.iter().map(|k| k.secret_key()).collect();
    let opts = WriteOptions {
        threads: 0,
        ..WriteOptions::default()
    };
    write_bundle(&spec, &sk, &out, &opts, &gapferry::progress::NoProgress).unwrap();
    out
}

#[test]
fn scenario_5_root_rotation_needs_the_old_and_the_new_roots() {
    let w = World::new();
    w.at_v2();
    w.edit(
        3,
        &[
            "--add-root",
            w.r3.public.to_str().unwrap(),
            "--remove-root",
            &w.r2.id().to_string(),
        ],
    );
    // Only the new roots R1 + R3.
    w.sign(3, &w.r1).ok();
    w.sign(3, &w.r3).ok();
    let b = craft_with_policy(&w, &w.chain, &[&w.k2], "new-roots-only");
    w.import(&b)
        .fails(3, &["version 2's root keys", "stays version 2"]);
    assert_eq!(w.adopted_version(), 2);
    // R2 (a root of v2, no longer of v3) adds its signature: `trust sign`
    // finds 2.json beside 3.json and accepts it.
    let r = w.sign(3, &w.r2).ok();
    assert!(r.stderr.contains("(met)"), "{r:#?}");
    let b = w.bundle(&[&w.k2], Some(&w.chain), &[]);
    w.import(&b).ok();
    assert_eq!(w.adopted_version(), 3);
    let roots = w.adopted()["root_keys"].clone();
    assert!(roots
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(w.r3.id().to_string())));
    // The bootstrap pins still open the mirror, and so do the new roots;
    // a mix that is neither is a usage error.
    let b = w.bundle(&[&w.k2], None, &[]);
    w.import_pinned(&b, &[&w.r1, &w.r3], "2", &[]).ok();
    let b = w.bundle(&[&w.k2], None, &[]);
    w.import_pinned(&b, &[&w.r2, &w.r3], "2", &[])
        .fails(2, &["neither the roots this mirror was first pinned to"]);
    w.import(&b).ok();
}

#[test]
fn scenario_7_expiry_warns_then_refuses_unless_overridden() {
    let w = World::new();
    w.init_v1("10d");
    let b1 = w.bundle(&[&w.k1], Some(&w.version(1)), &[]);
    let r = w.import(&b1).ok();
    assert!(
        r.stderr
            .contains("warning: trust policy version 1 expires in 9 day(s)"),
        "{r:#?}"
    );
    let mut c = w.fx.cmd();
    c.arg("status")
        .arg("--mirror")
        .arg(&w.fx.mirror)
        .arg("--state-dir")
        .arg(&w.fx.state);
    let s = w.fx.run(c).ok();
    assert!(
        s.stdout.contains("trust policy version 1") && s.stdout.contains("9 days left"),
        "{s:#?}"
    );
    let mut c = w.fx.cmd();
    c.arg("status")
        .arg("--mirror")
        .arg(&w.fx.mirror)
        .arg("--state-dir")
        .arg(&w.fx.state)
        .arg("--json");
    let j: serde_json::Value = json::parse(&w.fx.run(c).ok().stdout);
    assert_eq!(j["trust_policy"]["days_left"], 9);
    assert!(j["trust_policy"]["warning"].is_string());

    // An expired policy (made through the library: the CLI will not write
    // one) carried to a fresh mirror.
    let w = World::new();
    let expired = expired_policy(&w);
    // export carries it (the mirror decides); the mirror refuses it.
    let b = w.bundle(&[&w.k1], Some(&expired), &[]);
    let before = w.fx.snapshot();
    w.import(&b).fails(
        4,
        &["trust policy version 1 expired", "--allow-expired-policy"],
    );
    w.fx.assert_unchanged(&before);
    let r = w.import(&b).code;
    assert_eq!(r, 4);
    let r = w
        .import_pinned(&b, &[&w.r1, &w.r2], "2", &["--allow-expired-policy"])
        .ok();
    assert!(r.stderr.contains("expired at"), "{r:#?}");
    let last = w.ledger().pop().unwrap();
    assert_eq!(last["outcome"], "imported");
    assert!(last["reason"]
        .as_str()
        .unwrap()
        .contains("used with --allow-expired-policy"));
}

fn expired_policy(w: &World) -> PathBuf {
    use gapferry::timestamp::Timestamp;
    use gapferry::trustpolicy::{files, SignedPolicy, TrustPolicy};
    let mut p = TrustPolicy::initial(
        &[w.r1.public_key(), w.r2.public_key()],
        2,
        &[w.k1.public_key()],
        1,
        Timestamp::from_time(SystemTime::now() - Duration::from_secs(3600)),
    );
    p.version = 1;
    let path = w.version(1);
    files::write_policy(&path, &p.to_bytes()).unwrap();
    let s = SignedPolicy::parse(p.to_bytes()).unwrap();
    for r in [&w.r1, &w.r2] {
        files::write_signature(&path, &s.sign(&r.secret_key())).unwrap();
    }
    path
}

#[test]
fn a_newer_policy_in_a_refused_bundle_is_not_adopted() {
    let w = World::new();
    w.init_v1("1y");
    let b1 = w.bundle(&[&w.k1], Some(&w.version(1)), &[]);
    w.import(&b1).ok();
    w.edit(2, &["--add-signer", w.k2.public.to_str().unwrap()]);
    w.sign(2, &w.r1).ok();
    w.sign(2, &w.r2).ok();
    // Valid v2, but the bundle is for another channel: refused, and the
    // policy it carries is not adopted (adoption is part of the import).
    let b = w.bundle(&[&w.k1], Some(&w.chain), &["--channel", "lab"]);
    w.import(&b).fails(4, &["channel"]);
    assert_eq!(w.adopted_version(), 1);
    let b = w.bundle(&[&w.k2], Some(&w.chain), &[]);
    w.import(&b).ok();
    assert_eq!(w.adopted_version(), 2);
}

#[test]
fn damaged_trust_entries_are_rejected_from_the_head() {
    use gapferry::trustpolicy::SignedPolicy;
    let w = World::new();
    w.init_v1("1y");
    let mut chain = gapferry::trustpolicy::files::read_chain(&w.version(1)).unwrap();
    // The bytes no longer parse as a policy.
    chain[0] = SignedPolicy {
        bytes: b"{\"format\": \"gapferry-trust/1\"}".to_vec(),
        ..chain[0].clone()
    };
    let bundle = craft_bundle(&w, chain, &[&w.k1], "bad");
    let mut c = w.fx.cmd();
    c.arg("inspect").arg(&bundle);
    w.fx.run(c)
        .fails(3, &["gapferry/trust/1.json", "missing field"]);
}

/// Version `n` of a policy padded with JSON whitespace to exactly `size`
/// bytes (a policy's bytes are what is signed: padding is allowed).
fn padded(w: &World, n: u64, size: usize) -> gapferry::trustpolicy::SignedPolicy {
    use gapferry::trustpolicy::{SignedPolicy, TrustPolicy};
    let mut p = TrustPolicy::initial(
        &[w.r1.public_key()],
        1,
        &[w.k1.public_key()],
        1,
        gapferry::timestamp::Timestamp::from_time(
            SystemTime::now() + Duration::from_secs(86_400 * 30),
        ),
    );
    p.version = n;
    let mut bytes = p.to_bytes();
    assert!(bytes.len() <= size);
    bytes.resize(size, b' ');
    let mut s = SignedPolicy::parse(bytes).unwrap();
    let sig = s.sign(&w.r1.secret_key());
    s.add_signature(sig).unwrap();
    s
}

fn inspect(w: &World, bundle: &Path) -> Run {
    let mut c = w.fx.cmd();
    c.arg("inspect").arg(bundle);
    w.fx.run(c)
}

#[test]
fn limits_policy_64_kib_and_trust_entries_256_kib() {
    let w = World::new();
    // One policy of exactly 64 KiB is read; one byte more is refused.
    let b = craft_bundle(&w, vec![padded(&w, 1, 65_536)], &[&w.k1], "p64k");
    inspect(&w, &b).ok();
    let mut over = padded(&w, 1, 65_536);
    over.bytes.push(b' ');
    let b = craft_bundle(&w, vec![over], &[&w.k1], "p64k1");
    inspect(&w, &b).fails(3, &["gapferry/trust/1.json is larger than 65536 bytes"]);
    // Trust entries of exactly 256 KiB with headers and padding: four
    // versions of 65 024 bytes (127 blocks) and no signatures.
    let chain = |last: usize| {
        (1..=4)
            .map(|n| {
                let mut p = padded(&w, n, if n == 4 { last } else { 65_024 });
                p.signatures.clear();
                p
            })
            .collect::<Vec<_>>()
    };
    let b = craft_bundle(&w, chain(65_024), &[&w.k1], "t256k");
    inspect(&w, &b).ok();
    let b = craft_bundle(&w, chain(65_025), &[&w.k1], "t256k1");
    inspect(&w, &b).fails(3, &["the trust entries take more than 262144 bytes"]);
}

#[test]
fn limits_at_most_8_carried_versions() {
    let w = World::new();
    let chain = |n: u64| (1..=n).map(|v| padded(&w, v, 1024)).collect::<Vec<_>>();
    let b = craft_bundle(&w, chain(8), &[&w.k1], "eight");
    inspect(&w, &b).ok();
    let b = craft_bundle(&w, chain(9), &[&w.k1], "nine");
    inspect(&w, &b).fails(3, &["more than 8 trust policy versions"]);
    // Out of order in the head.
    let mut c = chain(2);
    c.swap(0, 1);
    let b = craft_bundle(&w, c, &[&w.k1], "swapped");
    inspect(&w, &b).fails(3, &["follows version 2"]);
}

#[test]
fn the_inbox_adopts_too_and_trust_and_trust_root_do_not_mix() {
    let w = World::new();
    w.init_v1("1y");
    let inbox = w.fx.root.join("inbox");
    fs::create_dir_all(&inbox).unwrap();
    let b1 = w.bundle(&[&w.k1], Some(&w.version(1)), &[]);
    fs::copy(&b1, inbox.join("b1.tar.zst")).unwrap();
    let mut c = w.fx.cmd();
    c.arg("import")
        .arg("--inbox")
        .arg(&inbox)
        .args(["--settle", "0s", "--trust-root"])
        .arg(&w.r1.public)
        .arg("--trust-root")
        .arg(&w.r2.public)
        .args(["--root-threshold", "2", "--mirror"])
        .arg(&w.fx.mirror)
        .arg("--state-dir")
        .arg(&w.fx.state);
    w.fx.run(c).ok();
    assert!(inbox.join("processed/b1.tar.zst").is_file());
    assert_eq!(w.adopted_version(), 1);
    // ledger show names the event.
    let mut c = w.fx.cmd();
    c.args(["ledger", "show", "--state-dir"]).arg(&w.fx.state);
    let r = w.fx.run(c).ok();
    assert!(
        r.stdout
            .contains("trust_updated: policy version (none) -> 1")
            || r.stderr
                .contains("trust_updated: policy version (none) -> 1"),
        "{r:#?}"
    );

    let b = w.bundle(&[&w.k1], None, &[]);
    let mut c = w.fx.import_cmd(&b, &[&w.k1.public], &[]);
    c.arg("--trust-root")
        .arg(&w.r1.public)
        .args(["--root-threshold", "1", "--mirror"])
        .arg(&w.fx.mirror);
    w.fx.run(c).fails(2, &["--trust-root"]);
    // --trust-root without --root-threshold.
    let mut c = w.fx.cmd();
    c.arg("import")
        .arg(&b)
        .arg("--trust-root")
        .arg(&w.r1.public)
        .arg("--mirror")
        .arg(&w.fx.mirror)
        .arg("--state-dir")
        .arg(&w.fx.state);
    w.fx.run(c).fails(2, &["--root-threshold"]);
}

#[test]
fn an_import_killed_mid_publish_adopts_nothing_and_the_same_bundle_again_adopts() {
    let w = World::new();
    w.init_v1("1y");
    let b1 = w.bundle(&[&w.k1], Some(&w.version(1)), &[]);
    w.import(&b1).ok();
    w.edit(2, &["--add-signer", w.k2.public.to_str().unwrap()]);
    w.sign(2, &w.r1).ok();
    w.sign(2, &w.r2).ok();
    let b2 = w.bundle(&[&w.k2], Some(&w.chain), &[]);
    let mut c = w.fx.cmd();
    c.arg("import")
        .arg(&b2)
        .arg("--trust-root")
        .arg(&w.r1.public)
        .arg("--trust-root")
        .arg(&w.r2.public)
        .args(["--root-threshold", "2", "--mirror"])
        .arg(&w.fx.mirror)
        .arg("--state-dir")
        .arg(&w.fx.state)
        .env(crate::support::CRASH_AT, "current-swapped");
    let out = c.output().unwrap();
    assert!(
        !out.status.success(),
        "the crash hook should have killed it"
    );
    assert_eq!(w.adopted_version(), 1, "a killed import adopts nothing");
    // The same bundle again: recovery finishes the publish, the bundle is
    // already served, and its policy is adopted now, with its line.
    let r = w.import(&b2).ok();
    assert!(r.stderr.contains("already imported"), "{r:#?}");
    assert!(
        r.stderr.contains("adopted trust policy version 2 (was 1)"),
        "{r:#?}"
    );
    assert_eq!(w.adopted_version(), 2);
    let last = w.ledger().pop().unwrap();
    assert_eq!(last["outcome"], "already_imported");
    assert_eq!(last["trust_updated"]["new_version"], 2);
    let mut c = w.fx.cmd();
    c.args(["ledger", "verify", "--state-dir"]).arg(&w.fx.state);
    w.fx.run(c).ok();
    // And once more: nothing new to adopt, no trust_updated.
    w.import(&b2).ok();
    assert!(w.ledger().pop().unwrap().get("trust_updated").is_none());
}

#[test]
fn signer_channels_and_not_after_apply_through_the_binary() {
    let w = World::new();
    let (k1, k2, k3) = (
        w.k1.id().to_string(),
        w.k2.id().to_string(),
        w.k3.id().to_string(),
    );
    let init = |extra: &[&str]| {
        let mut c = w.fx.cmd();
        c.args(["trust", "init", "--root"])
            .arg(&w.r1.public)
            .arg("--root")
            .arg(&w.r2.public)
            .args(["--root-threshold", "2", "--signer"])
            .arg(&w.k1.public)
            .arg("--signer")
            .arg(&w.k2.public)
            .arg("--out")
            .arg(w.version(1))
            .args(extra);
        w.fx.run(c)
    };
    // A key id that is not a signer is refused, naming it; nothing written.
    init(&["--signer-channels", &format!("{k3}=lab")]).fails(
        2,
        &[&format!(
            "--signer-channels {k3}: not a signer of version 1"
        )],
    );
    init(&["--signer-not-after", &format!("{k1}=soon")])
        .fails(2, &["--signer-not-after", &k1, "neither an RFC 3339 time"]);
    init(&["--signer-channels", &format!("{k1}=lab,no/pe")]).fails(2, &["--signer-channels", &k1]);
    assert!(!w.version(1).exists());
    // v1: K1 only for channel "lab", K2 anywhere.
    init(&["--signer-channels", &format!("{k1}=lab")]).ok();
    for r in [&w.r1, &w.r2] {
        w.sign(1, r).ok();
    }
    let b = w.bundle(&[&w.k2], Some(&w.version(1)), &[]);
    w.import(&b).ok();
    assert_eq!(w.adopted_version(), 1);
    // After adoption K1 counts on "lab" only.
    let b = w.bundle(&[&w.k1], Some(&w.version(1)), &[]);
    w.import(&b).fails(
        3,
        &[&format!(
            "key {k1} is not allowed to sign channel \"default\""
        )],
    );
    let b = w.bundle(&[&w.k1], Some(&w.version(1)), &["--channel", "lab"]);
    w.import_pinned(&b, &[&w.r1, &w.r2], "2", &["--channel", "lab"])
        .ok();
    // v2: K1's limit cleared, K2 ended an hour ago, K3 added for "lab"
    // until a year from now.
    let mut c = w.fx.cmd();
    c.args(["trust", "edit"])
        .arg(w.version(1))
        .arg("--out")
        .arg(w.version(2))
        .arg("--add-signer")
        .arg(&w.k3.public)
        .args(["--signer-channels", &format!("{k1}=")])
        .args(["--signer-channels", &format!("{k3}=lab")])
        .args(["--signer-not-after", &format!("{k2}=2020-01-01T00:00:00Z")])
        .args(["--signer-not-after", &format!("{k3}=365d")]);
    let edit = w.fx.run(c).ok();
    let named = [
        format!("signer {k1} channels any"),
        format!("signer {k2} not_after 2020-01-01T00:00:00Z"),
        format!("signer {k3} channels lab"),
        format!("signer {k3} not_after "),
    ];
    for n in &named {
        assert!(
            edit.stderr.contains(n.as_str()),
            "{n} not in {}",
            edit.stderr
        );
    }
    let mut c = w.fx.cmd();
    c.args(["trust", "show", "--json"]).arg(w.version(2));
    let shown: serde_json::Value = json::parse(&w.fx.run(c).ok().stdout);
    let rules = |id: &str| {
        shown["signer_keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == id)
            .unwrap()
            .clone()
    };
    assert!(rules(&k1).get("channels").is_none(), "{shown}");
    assert_eq!(rules(&k2)["not_after"], "2020-01-01T00:00:00Z");
    assert_eq!(rules(&k3)["channels"], serde_json::json!(["lab"]));
    let k3_end: gapferry::timestamp::Timestamp =
        rules(&k3)["not_after"].as_str().unwrap().parse().unwrap();
    assert!(k3_end.time() > SystemTime::now() + Duration::from_secs(300 * 86_400));
    // An unknown key id on edit is refused too, and nothing written.
    let mut c = w.fx.cmd();
    c.args(["trust", "edit"])
        .arg(w.version(2))
        .arg("--out")
        .arg(w.version(3))
        .args(["--signer-not-after", &format!("{}=30d", w.r1.id())]);
    w.fx.run(c).fails(
        2,
        &[&format!(
            "--signer-not-after {}: not a signer of version 3",
            w.r1.id()
        )],
    );
    assert!(!w.version(3).exists());
    for r in [&w.r1, &w.r2] {
        w.sign(2, r).ok();
    }
    // v2 rides in a bundle of K1 on the default channel: adopted, and the
    // ledger names the rule changes.
    let b = w.bundle(&[&w.k1], Some(&w.chain), &[]);
    w.import(&b).ok();
    assert_eq!(w.adopted_version(), 2);
    let last = w.ledger().pop().unwrap();
    let changes: Vec<String> = last["trust_updated"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert!(
        changes.contains(&format!("signer added {k3}")),
        "{changes:?}"
    );
    for n in &named {
        assert!(
            changes.iter().any(|c| c.starts_with(n.as_str())),
            "{n} not in {changes:?}"
        );
    }
    // K2 is past its not_after now; K3 counts on "lab" only.
    let b = w.bundle(&[&w.k2], Some(&w.chain), &[]);
    w.import(&b)
        .fails(3, &[&format!("key {k2} is past its not_after")]);
    let b = w.bundle(&[&w.k3], Some(&w.chain), &[]);
    w.import(&b).fails(
        3,
        &[&format!(
            "key {k3} is not allowed to sign channel \"default\""
        )],
    );
    let b = w.bundle(&[&w.k3], Some(&w.chain), &["--channel", "lab"]);
    w.import_pinned(&b, &[&w.r1, &w.r2], "2", &["--channel", "lab"])
        .ok();
}

#[test]
fn a_split_bundle_carries_the_policy_too() {
    let w = World::new();
    w.init_v1("1y");
    let dl =
        w.fx.download_sized("split", &[(UNIT, "1.1.80.0", "1.400.80.0")], 300_000);
    let p = w.version(1).display().to_string();
    let b = w.fx.export(
        &dl,
        "split",
        &[&w.k1],
        &["--split", "100000", "--trust-policy", &p],
    );
    let index = PathBuf::from(format!("{}.volumes.json", b.display()));
    assert!(index.is_file());
    w.import(&index).ok();
    assert_eq!(w.adopted_version(), 1);
}

/// Offline co-signing keeps the carried policy: a bundle exported by K1
/// with a policy asking for K1 and K2 (2 of 2) is refused until `gapferry
/// sign` adds K2's signature on another machine; the policy entries survive
/// the head rewrite and the mirror adopts them.
#[test]
fn a_co_signed_bundle_keeps_its_policy_and_meets_the_threshold() {
    let w = World::new();
    w.init(&[&w.k1, &w.k2], &["--threshold", "2", "--expires-in", "1y"])
        .ok();
    w.sign(1, &w.r1).ok();
    w.sign(1, &w.r2).ok();
    let b1 = w.bundle(&[&w.k1], Some(&w.version(1)), &[]);
    w.import(&b1).fails(4, &[]);
    assert!(w.fx.mirror_is_empty());

    let mut c = w.fx.cmd();
    c.arg("sign").arg(&b1).arg("--secret-key").arg(&w.k2.secret);
    w.fx.run(c).ok();
    let mut c = w.fx.cmd();
    c.arg("inspect").arg(&b1).arg("--json");
    let i: json::Inspect = json::parse(&w.fx.run(c).ok().stdout);
    assert_eq!(i.trust_policy.len(), 1, "the policy survives the rewrite");
    assert_eq!(i.trust_policy[0].signed_by.len(), 2);

    w.import(&b1).ok();
    assert_eq!(w.adopted_version(), 1);
    let last = w.ledger().pop().unwrap();
    assert_eq!(last["outcome"], "imported");
    let mut signers: Vec<String> = last["signer_key_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    signers.sort();
    let mut want = vec![w.k1.id().to_string(), w.k2.id().to_string()];
    want.sort();
    assert_eq!(signers, want);
}
