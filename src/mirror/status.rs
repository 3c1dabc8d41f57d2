//! `gapferry status`: what each arch folder of a mirror serves, whether it
//! still matches what was imported, whether n-1 exists, and how old and how
//! close to expiry it is. Read-only: it never takes the import lock and never
//! writes.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::setcheck;
use super::state::{State, StateDir};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing (no n-1 yet, bundle expired).
    Warning,
    /// Endpoints may be served something nobody imported (exit 1).
    Problem,
}

/// One thing status noticed.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

/// One arch folder.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub slot: crate::profile::UnitKey,
    pub dir: PathBuf,
    /// Versions from the folder's own manifest.json.
    pub engine_version: Option<String>,
    pub definition_version: Option<String>,
    pub bundle_id: Option<String>,
    pub channel: Option<String>,
    pub sequence: Option<u64>,
    pub imported_at: Option<String>,
    /// Seconds since the import.
    pub age_seconds: Option<u64>,
    pub expires: Option<String>,
    pub expired: bool,
    /// Every served file matches the size and SHA-256 recorded at import.
    pub files_match: Option<bool>,
    pub back_exists: bool,
    pub back_definition_version: Option<String>,
    /// Every n-1 file matches what was imported (null when n-1 has no
    /// record); `rollback` refuses an n-1 that does not.
    pub back_files_match: Option<bool>,
    pub findings: Vec<Finding>,
}

/// The `--json` output of status.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorStatus {
    pub mirror: PathBuf,
    pub state_dir: PathBuf,
    pub slots: Vec<SlotStatus>,
    /// True when any finding is a problem (or nothing is served).
    pub problems: bool,
    /// How many findings are problems (nothing served counts as one).
    pub problem_count: usize,
    /// How many findings are warnings.
    pub warning_count: usize,
    /// The trust policy a root-pinned mirror follows (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_policy: Option<TrustStatus>,
    /// What the last `import --inbox` pass with this state directory left
    /// waiting (absent when no inbox pass ran here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbox: Option<super::inbox::waiting::Waiting>,
}

/// The adopted trust policy in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct TrustStatus {
    pub version: u64,
    pub expires: String,
    /// Whole days until it expires (0 once expired).
    pub days_left: u64,
    pub expired: bool,
    /// Expired, or expiring within 30 days: imports warn, and refuse once
    /// it has expired.
    pub warning: Option<String>,
    pub adopted_at: String,
}

fn trust_status(state: &State, now: SystemTime) -> Option<TrustStatus> {
    let a = state.trust.as_ref()?;
    let p = a.load().ok()?;
    let days_left = p.policy.days_left(now);
    let expired = p.policy.expired(now);
    let warning = if expired {
        Some(format!(
            "trust policy version {} expired at {}: new bundles are refused until a newer version arrives (or with --allow-expired-policy)",
            p.version(),
            p.policy.expires
        ))
    } else if days_left < crate::trustpolicy::WARN_DAYS {
        Some(format!(
            "trust policy version {} expires in {days_left} day(s), at {}: have the root key holders sign a new version and carry it",
            p.version(),
            p.policy.expires
        ))
    } else {
        None
    };
    Some(TrustStatus {
        version: p.version(),
        expires: p.policy.expires.to_string(),
        days_left,
        expired,
        warning,
        adopted_at: a.adopted_at.to_string(),
    })
}

fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((n, hex::encode(h.finalize())))
}

/// Where the served folders are.
#[derive(Debug, Clone, Copy)]
pub enum Served<'a> {
    /// A mirror root: each unit at its placement.
    Mirror(&'a Path),
    /// One folder of leaves (`import --target` or `--share`): the units its
    /// state records, at `<dir>/<leaf>`, n-1 in `<dir>_back/<leaf>`.
    Target(&'a Path),
}

/// Looks at every slot of a mirror that is served or recorded.
pub fn status(
    mirror: &Path,
    state_dir: &Path,
    check_hashes: bool,
) -> Result<MirrorStatus, super::state::StateError> {
    status_at(Served::Mirror(mirror), state_dir, check_hashes)
}

/// [`status`] of a mirror or of a `--target`/`--share` folder.
pub fn status_at(
    served: Served<'_>,
    state_dir: &Path,
    check_hashes: bool,
) -> Result<MirrorStatus, super::state::StateError> {
    let state = match StateDir::existing(state_dir) {
        Ok(d) => d.load()?,
        Err(_) => State::default(),
    };
    let now = SystemTime::now();
    let mut slots = Vec::new();
    let units = crate::profile::all()
        .iter()
        .flat_map(|p| p.all_units().into_iter().map(move |u| (*p, u)))
        .filter_map(|(profile, (key, place))| match served {
            Served::Mirror(m) => Some((profile, key, place.dir_in(m), place.back_dir_in(m))),
            Served::Target(t) => {
                // A target holds leaves of any group: only what its state
                // recorded is known to be there.
                state.served(&key)?;
                let dir = t.join(&place.leaf);
                let back = super::publish::back_of(&dir)?;
                Some((profile, key, dir, back))
            }
        });
    for (profile, key, dir, back) in units {
        let recorded = state.served(&key);
        if !dir.exists() && recorded.is_none() {
            continue;
        }
        let mut findings = Vec::new();
        let mut problem = |m: String| {
            findings.push(Finding {
                severity: Severity::Problem,
                message: m,
            })
        };
        let fm = if dir.is_dir() {
            match profile.read_versions(&dir) {
                Ok(m) => Some(m),
                Err(e) => {
                    problem(e);
                    None
                }
            }
        } else {
            problem(format!(
                "{} is missing, but the state says it is served",
                dir.display()
            ));
            None
        };
        let mut files_match = None;
        if let Some(r) = recorded {
            if let Some(m) = &fm {
                if m.engine_version != r.engine_version
                    || m.definition_version != r.definition_version
                {
                    problem(format!(
                        "serves engine {} definitions {}, but gapferry imported engine {} definitions {}",
                        m.engine_version, m.definition_version, r.engine_version, r.definition_version
                    ));
                }
            }
            if !r.files.is_empty() && dir.is_dir() {
                let mut ok = true;
                for f in &r.files {
                    let p = dir.join(&f.name);
                    let result = if check_hashes {
                        sha256_file(&p).map(|(n, h)| n == f.size && f.sha256 == h)
                    } else {
                        std::fs::metadata(&p).map(|m| m.len() == f.size)
                    };
                    match result {
                        Ok(true) => {}
                        Ok(false) => {
                            ok = false;
                            problem(format!(
                                "{} differs from what was imported (size or SHA-256): tampering or bit rot; re-import the bundle or roll back",
                                p.display()
                            ));
                        }
                        Err(e) => {
                            ok = false;
                            problem(format!("{}: {e}", p.display()));
                        }
                    }
                }
                files_match = Some(ok);
            }
        } else if fm.is_some() {
            findings.push(Finding {
                severity: Severity::Warning,
                message: "not imported by gapferry (no record in the state directory)".into(),
            });
        }
        let back_exists = back.is_dir();
        let depth = if check_hashes {
            setcheck::Depth::Hashes
        } else {
            setcheck::Depth::Sizes
        };
        let back_files_match = state
            .back
            .get(&key)
            .filter(|r| back_exists && !r.files.is_empty())
            .map(|r| setcheck::check(&back, &r.files, depth));
        if let Some(Err(m)) = &back_files_match {
            findings.push(Finding {
                severity: Severity::Warning,
                message: format!(
                    "n-1 no longer matches what was imported ({m}): `gapferry rollback` refuses it \
                     (unless --force); the next import of a newer bundle replaces it"
                ),
            });
        }
        let back_files_match = back_files_match.map(|r| r.is_ok());
        if !back_exists {
            findings.push(Finding {
                severity: Severity::Warning,
                message: format!(
                    "no n-1 set at {} (there is nothing to roll back to)",
                    back.display()
                ),
            });
        }
        let expires = recorded.and_then(|r| r.expires.clone());
        let expired = expires.as_ref().is_some_and(|t| t.time() <= now);
        if expired {
            findings.push(Finding {
                severity: Severity::Warning,
                message: format!(
                    "the served bundle expired at {}; new definitions have not arrived (a frozen feed?)",
                    expires.as_ref().map_or("", |t| t.as_str())
                ),
            });
        }
        let age_seconds = recorded
            .and_then(|r| now.duration_since(r.imported_at.time()).ok())
            .map(|d| d.as_secs());
        slots.push(SlotStatus {
            slot: key.clone(),
            dir,
            engine_version: fm.as_ref().map(|m| m.engine_version.clone()),
            definition_version: fm.as_ref().map(|m| m.definition_version.clone()),
            bundle_id: recorded
                .and_then(|r| r.bundle_id.as_ref())
                .map(|b| b.to_string()),
            channel: recorded.and_then(|r| r.channel.clone()),
            sequence: recorded.and_then(|r| r.sequence),
            imported_at: recorded.map(|r| r.imported_at.to_string()),
            age_seconds,
            expires: expires.map(|t| t.to_string()),
            expired,
            files_match,
            back_exists,
            back_definition_version: profile
                .versions_on_disk(&back)
                .map(|m| m.definition_version),
            back_files_match,
            findings,
        });
    }
    // An empty mirror serves nothing: monitoring must hear about it.
    let count = |sev: Severity| {
        slots
            .iter()
            .flat_map(|s| &s.findings)
            .filter(|f| f.severity == sev)
            .count()
    };
    let problem_count = count(Severity::Problem) + usize::from(slots.is_empty());
    let warning_count = count(Severity::Warning);
    let problems = problem_count > 0;
    Ok(MirrorStatus {
        mirror: match served {
            Served::Mirror(p) | Served::Target(p) => p.to_path_buf(),
        },
        state_dir: state_dir.to_path_buf(),
        slots,
        problems,
        problem_count,
        warning_count,
        trust_policy: trust_status(&state, now),
        inbox: super::inbox::waiting::read(state_dir),
    })
}
