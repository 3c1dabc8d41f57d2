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
    /// An `s3://` mirror: its objects are looked at with HEAD (size and
    /// the SHA-256 stored with each object) and its index files read
    /// with GET.
    S3(&'a super::s3mirror::S3Mirror),
}

impl Served<'_> {
    /// The mirror as the report names it.
    pub fn name(&self) -> PathBuf {
        match self {
            Served::Mirror(p) | Served::Target(p) => p.to_path_buf(),
            Served::S3(m) => PathBuf::from(m.location().to_string()),
        }
    }

    fn tree(&self) -> setcheck::Tree<'_> {
        match self {
            Served::S3(m) => setcheck::Tree::S3(m),
            _ => setcheck::Tree::Fs,
        }
    }

    /// Whether the folder `dir` exists (holds an object, in a store).
    fn exists(&self, dir: &Path) -> bool {
        match self {
            Served::S3(m) => m
                .rel_of(dir)
                .is_some_and(|rel| m.folder_exists(&rel).unwrap_or(false)),
            _ => dir.is_dir(),
        }
    }

    /// How to name `dir` in the report.
    fn show(&self, dir: &Path) -> PathBuf {
        match self {
            Served::S3(m) => m.show(dir),
            _ => dir.to_path_buf(),
        }
    }

    /// What the folder says it serves (a store's index files are read
    /// into a temporary folder first; a profile without index files is
    /// judged by its record alone).
    fn read_versions(
        &self,
        profile: &dyn crate::profile::Profile,
        dir: &Path,
    ) -> Option<Result<crate::profile::Versions, String>> {
        let Served::S3(m) = self else {
            return Some(profile.read_versions(dir));
        };
        if profile.index_files().is_empty() {
            return None;
        }
        let rel = m.rel_of(dir)?;
        let fetched = (|| {
            let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
            for name in profile.index_files() {
                let key = format!("{rel}/{name}");
                match m.client().get_bytes(&key, 1 << 20) {
                    Ok(Some(b)) => {
                        std::fs::write(tmp.path().join(name), b).map_err(|e| e.to_string())?
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            profile
                .read_versions(tmp.path())
                .map_err(|e| e.replace(&tmp.path().display().to_string(), &m.client().url_of(&rel)))
        })();
        Some(fetched)
    }
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
            Served::S3(m) => Some((
                profile,
                key,
                place.dir_in(m.shadow_root()),
                place.back_dir_in(m.shadow_root()),
            )),
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
        let dir_exists = served.exists(&dir);
        if !dir_exists && recorded.is_none() {
            continue;
        }
        let mut findings = Vec::new();
        let mut problem = |m: String| {
            findings.push(Finding {
                severity: Severity::Problem,
                message: m,
            })
        };
        let fm = if dir_exists {
            match served.read_versions(profile, &dir) {
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => {
                    problem(e);
                    None
                }
                None => recorded.map(|r| r.versions()),
            }
        } else {
            problem(format!(
                "{} is missing, but the state says it is served",
                served.show(&dir).display()
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
            if !r.files.is_empty() && dir_exists {
                let mut ok = true;
                for f in &r.files {
                    let p = dir.join(&f.name);
                    let result = match &served {
                        Served::S3(m) => {
                            let depth = if check_hashes {
                                setcheck::Depth::Hashes
                            } else {
                                setcheck::Depth::Sizes
                            };
                            match m.check(&dir, std::slice::from_ref(f), depth) {
                                Ok(()) => Ok(true),
                                Err(setcheck::Mismatch {
                                    problem: setcheck::Problem::Unreadable(e),
                                    ..
                                }) => Err(e),
                                Err(_) => Ok(false),
                            }
                        }
                        _ if check_hashes => {
                            sha256_file(&p).map(|(n, h)| n == f.size && f.sha256 == h)
                        }
                        _ => std::fs::metadata(&p).map(|m| m.len() == f.size),
                    };
                    match result {
                        Ok(true) => {}
                        Ok(false) => {
                            ok = false;
                            problem(format!(
                                "{} differs from what was imported (size or SHA-256): tampering or bit rot; re-import the bundle or roll back",
                                served.show(&p).display()
                            ));
                        }
                        Err(e) => {
                            ok = false;
                            problem(format!("{}: {e}", served.show(&p).display()));
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
        let back_exists = served.exists(&back);
        let depth = if check_hashes {
            setcheck::Depth::Hashes
        } else {
            setcheck::Depth::Sizes
        };
        let back_files_match = state
            .back
            .get(&key)
            .filter(|r| back_exists && !r.files.is_empty())
            .map(|r| served.tree().check(&back, &r.files, depth));
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
                    served.show(&back).display()
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
        let back_definition_version = match &served {
            Served::S3(_) if back_exists => match served.read_versions(profile, &back) {
                Some(Ok(v)) => Some(v.definition_version),
                _ => state.back.get(&key).map(|b| b.definition_version.clone()),
            },
            Served::S3(_) => None,
            _ => profile
                .versions_on_disk(&back)
                .map(|m| m.definition_version),
        };
        slots.push(SlotStatus {
            slot: key.clone(),
            dir: served.show(&dir),
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
            back_definition_version,
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
        mirror: served.name(),
        state_dir: state_dir.to_path_buf(),
        slots,
        problems,
        problem_count,
        warning_count,
        trust_policy: trust_status(&state, now),
        inbox: super::inbox::waiting::read(state_dir),
    })
}
