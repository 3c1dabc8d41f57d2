//! The rule by which a policy version succeeds another (TUF's): version
//! N+1 holds only when a threshold of version N's root keys **and** a
//! threshold of its own root keys signed it, and versions go up by one.
//! The first version a mirror adopts must be signed by a threshold of the
//! root keys pinned on its command line (and of its own).
//!
//! [`advance`] walks carried versions from what a mirror has adopted and
//! returns the versions to adopt; it decides nothing about bundles and
//! writes nothing.

use super::{Roots, SignedPolicy};

/// What [`advance`] found in the carried versions.
#[derive(Debug, Clone, Default)]
pub struct Advance {
    /// Newer versions that hold, in order; the last is the new authority.
    pub adopted: Vec<SignedPolicy>,
    /// Carried versions older than (or equal to) the adopted one: ignored.
    pub ignored: Vec<u64>,
}

/// Walks `carried` (ascending versions) from `adopted` (or, on a mirror
/// that has adopted none yet, from the `pins`). `Err` is why the carried
/// chain must be rejected: a forged version, an equal version that differs
/// from the adopted one, a gap, or versions out of order. On `Err` nothing
/// is adopted, not even the versions before the bad one.
pub fn advance(
    pins: &Roots,
    adopted: Option<&SignedPolicy>,
    carried: &[SignedPolicy],
) -> Result<Advance, String> {
    for w in carried.windows(2) {
        if w[1].version() != w[0].version() + 1 {
            return Err(format!(
                "carried versions {} and {} do not follow one another (versions go up by one)",
                w[0].version(),
                w[1].version()
            ));
        }
    }
    let mut out = Advance::default();
    let mut current: Option<SignedPolicy> = adopted.cloned();
    for p in carried {
        match &current {
            Some(c) if p.version() < c.version() => out.ignored.push(p.version()),
            Some(c) if p.version() == c.version() => {
                if p.bytes != c.bytes {
                    return Err(format!(
                        "the carried version {} differs from the version {} this mirror adopted \
                         (sha256 {} here, {} adopted): one of them is forged",
                        p.version(),
                        c.version(),
                        p.sha256,
                        c.sha256
                    ));
                }
                out.ignored.push(p.version());
            }
            Some(c) if p.version() > c.version() + 1 => {
                return Err(format!(
                    "the carried version {} cannot be checked: this mirror has adopted version {} \
                     and versions {} to {} are missing; export with --trust-policy naming the \
                     folder that holds the whole chain",
                    p.version(),
                    c.version(),
                    c.version() + 1,
                    p.version() - 1
                ));
            }
            Some(c) => {
                p.require_roots(&c.policy.roots(), &format!("version {}'s", c.version()))?;
                p.require_roots(&p.policy.roots(), "its own")?;
                out.adopted.push(p.clone());
                current = Some(p.clone());
            }
            None => {
                p.require_roots(pins, "the pinned (--trust-root)")?;
                p.require_roots(&p.policy.roots(), "its own")?;
                out.adopted.push(p.clone());
                current = Some(p.clone());
            }
        }
    }
    Ok(out)
}

/// Checks a chain about to be carried (`export --trust-policy`): its first
/// version signed by a threshold of its own roots, each later one by the
/// previous version's roots and its own. A mirror still checks it all
/// again from its pins; this only catches an unsigned or half-signed
/// policy before it travels.
pub fn check_carried(chain: &[SignedPolicy]) -> Result<(), String> {
    let Some((first, rest)) = chain.split_first() else {
        return Ok(());
    };
    first.require_roots(&first.policy.roots(), "its own")?;
    advance(&first.policy.roots(), Some(first), rest).map(drop)
}
