use std::time::{Duration, SystemTime};

use super::chain::advance;
use super::*;
use crate::keys::SecretKey;

fn in_days(d: u64) -> Timestamp {
    Timestamp::from_time(SystemTime::now() + Duration::from_secs(d * 86_400))
}

pub(crate) fn policy(
    version: u64,
    roots: &[&SecretKey],
    root_threshold: usize,
    signers: &[&SecretKey],
) -> TrustPolicy {
    let pubs = |ks: &[&SecretKey]| ks.iter().map(|k| k.public()).collect::<Vec<_>>();
    let mut p = TrustPolicy::initial(
        &pubs(roots),
        root_threshold,
        &pubs(signers),
        1,
        in_days(365),
    );
    p.version = version;
    p
}

pub(crate) fn signed(p: &TrustPolicy, by: &[&SecretKey]) -> SignedPolicy {
    let mut s = SignedPolicy::parse(p.to_bytes()).unwrap();
    for k in by {
        let sig = s.sign(k);
        s.add_signature(sig).unwrap();
    }
    s
}

fn pins(keys: &[&SecretKey], threshold: usize) -> Roots {
    Roots {
        keys: keys.iter().map(|k| k.public()).collect(),
        threshold,
    }
}

struct K {
    r1: SecretKey,
    r2: SecretKey,
    r3: SecretKey,
    k1: SecretKey,
    k2: SecretKey,
}

fn keys() -> K {
    K {
        r1: SecretKey::generate(),
        r2: SecretKey::generate(),
        r3: SecretKey::generate(),
        k1: SecretKey::generate(),
        k2: SecretKey::generate(),
    }
}

#[test]
fn round_trip_and_strict_parse() {
    let k = keys();
    let p = policy(1, &[&k.r1, &k.r2], 2, &[&k.k1]);
    let bytes = p.to_bytes();
    assert_eq!(TrustPolicy::parse(&bytes).unwrap(), p);
    let text = String::from_utf8(bytes).unwrap();
    let dup = text.replacen("\"version\": 1,", "\"version\": 1,\n  \"version\": 2,", 1);
    assert!(TrustPolicy::parse(dup.as_bytes())
        .unwrap_err()
        .contains("duplicate"));
    let unknown = text.replacen("\"version\": 1,", "\"version\": 1,\n  \"extra\": 2,", 1);
    assert!(TrustPolicy::parse(unknown.as_bytes())
        .unwrap_err()
        .contains("unknown field"));
    let other = text.replace("gapferry-trust/1", "gapferry-trust/2");
    assert!(TrustPolicy::parse(other.as_bytes())
        .unwrap_err()
        .contains("cannot read"));
    let mut bad = p.clone();
    bad.root.threshold = 3;
    assert!(bad.check().unwrap_err().contains("root threshold 3"));
    let mut bad = p.clone();
    bad.signers.threshold = 0;
    assert!(bad.check().is_err());
    let mut bad = p.clone();
    bad.revoked.push(k.r2.key_id);
    assert!(bad.check().unwrap_err().contains("not revoked"));
    let mut bad = p.clone();
    bad.revoked.push(k.k1.key_id);
    assert!(bad
        .check()
        .unwrap_err()
        .contains("signer keys that are not revoked"));
    let mut bad = p.clone();
    bad.root.keys.push(bad.root.keys[0].clone());
    assert!(bad.check().unwrap_err().contains("twice"));
    let mut big = p.clone();
    big.signers.keys[0].channels = Some(vec!["x".repeat(70 * 1024)]);
    assert!(TrustPolicy::parse(&big.to_bytes())
        .unwrap_err()
        .contains("more than"));
}

#[test]
fn root_signatures_count_distinct_valid_keys_and_forgeries_are_errors() {
    let k = keys();
    let p = policy(1, &[&k.r1, &k.r2], 2, &[&k.k1]);
    let s = signed(&p, &[&k.r1, &k.k1]);
    let roots = p.roots();
    assert_eq!(s.root_signers(&roots).unwrap(), vec![k.r1.key_id]);
    assert!(s
        .require_roots(&roots, "its own")
        .unwrap_err()
        .contains("1 of its own"));
    let s = signed(&p, &[&k.r1, &k.r2]);
    assert_eq!(s.require_roots(&roots, "its own").unwrap().len(), 2);
    // A signature over other bytes, labelled as a root: an error.
    let mut other = p.clone();
    other.signers.threshold = 1;
    other.expires = in_days(10);
    let mut forged = signed(&p, &[&k.r1]);
    let sig = signed(&other, &[&k.r2]).signatures.remove(0);
    forged.add_signature(sig).unwrap();
    assert!(forged.root_signers(&roots).is_err());
    // A valid signature whose trusted comment describes another version.
    let mut wrong_comment = SignedPolicy::parse(p.to_bytes()).unwrap();
    let sig = Signature::sign(&k.r1, &wrong_comment.bytes, "gapferry trust version:9");
    wrong_comment.add_signature(sig).unwrap();
    assert!(wrong_comment
        .root_signers(&roots)
        .unwrap_err()
        .contains("trusted comment"));
    // Duplicates refused.
    let mut s = signed(&p, &[&k.r1]);
    let again = s.sign(&k.r1);
    assert!(s
        .add_signature(again)
        .unwrap_err()
        .contains("already signed"));
}

#[test]
fn the_chain_needs_old_and_new_roots() {
    let k = keys();
    let pins = pins(&[&k.r1, &k.r2], 2);
    let v1 = signed(&policy(1, &[&k.r1, &k.r2], 2, &[&k.k1]), &[&k.r1, &k.r2]);
    let a = advance(&pins, None, std::slice::from_ref(&v1)).unwrap();
    assert_eq!(a.adopted.len(), 1);
    // v1 signed by one pinned root only: refused on bootstrap.
    let weak = signed(&policy(1, &[&k.r1, &k.r2], 2, &[&k.k1]), &[&k.r1]);
    assert!(advance(&pins, None, &[weak])
        .unwrap_err()
        .contains("pinned"));

    // Rotation of a signer: v2 by R1+R2.
    let v2 = signed(&policy(2, &[&k.r1, &k.r2], 2, &[&k.k2]), &[&k.r1, &k.r2]);
    let a = advance(&pins, Some(&v1), &[v1.clone(), v2.clone()]).unwrap();
    assert_eq!(a.ignored, vec![1]);
    assert_eq!(
        a.adopted.iter().map(|p| p.version()).collect::<Vec<_>>(),
        vec![2]
    );
    // From nothing, the whole chain: v1 by the pins, v2 by v1's roots.
    let a = advance(&pins, None, &[v1.clone(), v2.clone()]).unwrap();
    assert_eq!(a.adopted.len(), 2);

    // v3 by R1 alone: forged.
    let v3_weak = signed(&policy(3, &[&k.r1, &k.r2], 2, &[&k.k2]), &[&k.r1]);
    assert!(advance(&pins, Some(&v2), &[v3_weak]).is_err());
    // Replayed v1 after v2: ignored.
    let a = advance(&pins, Some(&v2), std::slice::from_ref(&v1)).unwrap();
    assert!(a.adopted.is_empty());
    assert_eq!(a.ignored, vec![1]);
    // Equal version, different bytes, even validly signed: rejected.
    let v2_other = signed(&policy(2, &[&k.r1, &k.r2], 2, &[&k.k1]), &[&k.r1, &k.r2]);
    assert!(advance(&pins, Some(&v2), &[v2_other])
        .unwrap_err()
        .contains("differs"));

    // Root rotation: v3 replaces R2 with R3.
    let p3 = policy(3, &[&k.r1, &k.r3], 2, &[&k.k2]);
    let both = signed(&p3, &[&k.r1, &k.r2, &k.r3]);
    assert_eq!(advance(&pins, Some(&v2), &[both]).unwrap().adopted.len(), 1);
    let new_only = signed(&p3, &[&k.r1, &k.r3]);
    assert!(advance(&pins, Some(&v2), &[new_only])
        .unwrap_err()
        .contains("version 2's"));
    let old_only = signed(&p3, &[&k.r1, &k.r2]);
    assert!(advance(&pins, Some(&v2), &[old_only])
        .unwrap_err()
        .contains("its own"));

    // A gap: v4 without v3.
    let v4 = signed(&policy(4, &[&k.r1, &k.r2], 2, &[&k.k2]), &[&k.r1, &k.r2]);
    assert!(advance(&pins, Some(&v2), std::slice::from_ref(&v4))
        .unwrap_err()
        .contains("missing"));
    // Out of order.
    assert!(advance(&pins, None, &[v2, v1])
        .unwrap_err()
        .contains("follow"));
}

#[test]
fn signer_trust_applies_revocation_channels_and_not_after() {
    let k = keys();
    let mut p = policy(1, &[&k.r1], 1, &[&k.k1, &k.k2, &k.r3]);
    p.revoked.push(k.k1.key_id);
    p.signers.keys[1].channels = Some(vec!["lab".into()]);
    p.signers.keys[2].not_after = Some(Timestamp::from_time(
        SystemTime::now() - Duration::from_secs(60),
    ));
    p.check().unwrap();
    let (set, left_out) = p.signer_trust("lab", SystemTime::now());
    assert_eq!(set.ids().collect::<Vec<_>>(), vec![k.k2.key_id]);
    assert_eq!(left_out.len(), 2);
    let (set, _) = p.signer_trust("default", SystemTime::now());
    assert!(set.is_empty());
    assert!(left_out
        .iter()
        .any(|(id, why)| *id == k.k1.key_id && why.contains("revoked")));
}

#[test]
fn expiry() {
    let k = keys();
    let mut p = policy(1, &[&k.r1], 1, &[&k.k1]);
    let now = SystemTime::now();
    assert!(!p.expired(now));
    assert!(p.days_left(now) >= 364);
    p.expires = Timestamp::from_time(now - Duration::from_secs(1));
    assert!(p.expired(now));
    assert_eq!(p.days_left(now), 0);
}

#[test]
fn changes_name_what_moved() {
    let k = keys();
    let v1 = policy(1, &[&k.r1, &k.r2], 2, &[&k.k1]);
    let first = changes(None, &v1);
    assert!(first.contains(&format!("root added {}", k.r1.key_id)));
    assert!(first.contains(&format!("signer added {}", k.k1.key_id)));
    assert!(first.contains(&"root threshold 2".to_string()));
    let mut v2 = policy(2, &[&k.r1, &k.r3], 1, &[&k.k2]);
    v2.expires = v1.expires.clone();
    v2.revoked.push(k.k1.key_id);
    let c = changes(Some(&v1), &v2);
    for want in [
        format!("root added {}", k.r3.key_id),
        format!("root removed {}", k.r2.key_id),
        format!("signer added {}", k.k2.key_id),
        format!("signer removed {}", k.k1.key_id),
        format!("revoked {}", k.k1.key_id),
        "root threshold 2 -> 1".to_string(),
    ] {
        assert!(c.contains(&want), "{want} not in {c:?}");
    }
    assert!(!c.iter().any(|x| x.starts_with("expires")), "{c:?}");
    assert!(changes(Some(&v1), &v1).is_empty());
}

#[test]
fn changes_name_each_signer_rule() {
    let k = keys();
    let v1 = policy(1, &[&k.r1], 1, &[&k.k1, &k.k2]);
    let mut v2 = v1.clone();
    v2.version = 2;
    v2.signers.keys[0].channels = Some(vec!["lab".into(), "prod".into()]);
    v2.signers.keys[1].not_after = Some("2030-01-02T03:04:05Z".parse().unwrap());
    let c = changes(Some(&v1), &v2);
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(
        c.contains(&format!("signer {} channels lab,prod", k.k1.key_id)),
        "{c:?}"
    );
    assert!(
        c.contains(&format!(
            "signer {} not_after 2030-01-02T03:04:05Z",
            k.k2.key_id
        )),
        "{c:?}"
    );
    let back = changes(Some(&v2), &v1);
    assert!(
        back.contains(&format!("signer {} channels any", k.k1.key_id)),
        "{back:?}"
    );
    assert!(
        back.contains(&format!("signer {} not_after none", k.k2.key_id)),
        "{back:?}"
    );
    // A key added with rules names them beside its addition.
    let mut v3 = policy(3, &[&k.r1], 1, &[&k.k1, &k.k2, &k.r3]);
    v3.expires = v1.expires.clone();
    v3.signers.keys[2].channels = Some(vec!["lab".into()]);
    let c = changes(Some(&v1), &v3);
    assert!(
        c.contains(&format!("signer added {}", k.r3.key_id)),
        "{c:?}"
    );
    assert!(
        c.contains(&format!("signer {} channels lab", k.r3.key_id)),
        "{c:?}"
    );
}
