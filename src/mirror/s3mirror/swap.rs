//! `rollback` in the store: a journaled swap of a folder and its n-1
//! through a hidden folder, and the record of a swap an interrupted run
//! finished.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::super::state::ServedFile;
use super::{
    load_json, ordered, remove_extra, save_json, verify, JFile, S3Mirror, S3PublishError,
    JOURNAL_FORMAT, S3_SWAP_STEP,
};
use crate::durable;
use crate::faults::crash_point;
use crate::profile::Profile;
use crate::s3::S3Error;

/// A rollback whose swap in the store is complete.
#[derive(Debug, Clone)]
pub struct SwapDone {
    pub unit: String,
    /// (name, SHA-256) of what the unit's folder serves after the swap.
    pub now_served: Vec<(String, String)>,
}

impl SwapDone {
    /// Whether `files` (a state record) is what the folder now serves: if
    /// the state's n-1 record is, the swap is not recorded yet.
    pub fn serves(&self, files: &[ServedFile]) -> bool {
        !files.is_empty()
            && files.len() == self.now_served.len()
            && files.iter().all(|f| {
                self.now_served
                    .iter()
                    .any(|(n, h)| *n == f.name && f.sha256.as_str() == h)
            })
    }
}

/// The journal of a rollback in the store ([`S3Mirror::swap`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SwapJournal {
    format: u32,
    unit: String,
    location: String,
    current: String,
    back: String,
    tmp: String,
    current_files: Vec<JFile>,
    back_files: Vec<JFile>,
    /// 0: copy current to tmp; 1: back to current; 2: tmp to back; 3: done.
    phase: u32,
    /// n-1 is older than the served set: the index files go into the
    /// served folder first, so that it never announces more than its
    /// payload holds while it goes back.
    #[serde(default)]
    older: bool,
}

impl S3Mirror {
    fn swap_root(&self) -> PathBuf {
        self.state_dir.join("s3").join("swap")
    }

    /// Whether store folder `rel` holds any object.
    pub fn folder_exists(&self, rel: &str) -> Result<bool, S3PublishError> {
        Ok(!self.client.list(&format!("{rel}/"))?.is_empty())
    }

    /// `rollback` in the store: swaps the sets of store folders `current`
    /// and `back` through a hidden folder (`.gapferry-swap/<unit>/`), with
    /// a journal in the state directory so that a run killed at any step
    /// is finished by the next one. Each folder is written index files
    /// last, as a publish writes it.
    pub fn swap(
        &self,
        unit_key: &str,
        current: &str,
        back: &str,
        profile: &dyn Profile,
        older: bool,
    ) -> Result<(), S3PublishError> {
        let index = profile.index_files();
        let name = unit_key.replace('/', "_");
        let journal = SwapJournal {
            format: JOURNAL_FORMAT,
            unit: unit_key.to_string(),
            location: self.location().to_string(),
            current: current.to_string(),
            back: back.to_string(),
            tmp: format!(".gapferry-swap/{name}"),
            current_files: ordered(self.folder_objects(current)?, index),
            back_files: ordered(self.folder_objects(back)?, index),
            phase: 0,
            older,
        };
        let root = self.swap_root();
        durable::ensure_private_dir(&root).map_err(|source| S3PublishError::Local {
            path: root.clone(),
            source,
        })?;
        let path = root.join(format!("{name}.json"));
        save_json(&path, &journal)?;
        self.run_swap(&path)
    }

    pub(super) fn recover_swaps(&self) -> Result<Vec<SwapDone>, S3PublishError> {
        let root = self.swap_root();
        let Ok(entries) = fs::read_dir(&root) else {
            return Ok(Vec::new());
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        let mut done = Vec::new();
        for p in paths {
            self.run_swap(&p)?;
            let j: SwapJournal = load_json(&p)?;
            done.push(SwapDone {
                unit: j.unit,
                now_served: j
                    .back_files
                    .iter()
                    .map(|f| (f.name.clone(), f.sha256.clone()))
                    .collect(),
            });
        }
        Ok(done)
    }

    /// Removes the journal of a rollback whose swap is done and recorded.
    pub fn forget_swap(&self, unit_key: &str) -> Result<(), S3PublishError> {
        let path = self
            .swap_root()
            .join(format!("{}.json", unit_key.replace('/', "_")));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(S3PublishError::Local { path, source }),
        }
    }

    fn run_swap(&self, path: &Path) -> Result<(), S3PublishError> {
        let mut j: SwapJournal = load_json(path)?;
        if j.phase >= 3 {
            return Ok(());
        }
        if j.location != self.location().to_string() {
            return Err(S3PublishError::Journal {
                path: path.to_path_buf(),
                dir: path.to_path_buf(),
                reason: format!("it belongs to {}, not {}", j.location, self.location()),
            });
        }
        let copy_all = |files: &[JFile], from: &str, to: &str, cond: bool, index_first: bool| {
            let order: Vec<&JFile> = if index_first {
                files.iter().rev().collect()
            } else {
                files.iter().collect()
            };
            for f in order {
                let src = format!("{from}/{}", f.name);
                let dst = format!("{to}/{}", f.name);
                let etag = if cond { f.etag.as_deref() } else { None };
                match self.client.copy(&src, &dst, etag) {
                    Ok(info) => verify(&self.client, &dst, &info, f)?,
                    Err(S3Error::Precondition { .. }) => {
                        return Err(S3PublishError::Changed {
                            url: self.client.url_of(&src),
                            location: self.location().to_string(),
                        })
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            remove_extra(&self.client, to, files)
        };
        while j.phase < 3 {
            match j.phase {
                0 => copy_all(&j.current_files, &j.current, &j.tmp, true, false)?,
                1 => copy_all(&j.back_files, &j.back, &j.current, false, j.older)?,
                _ => copy_all(&j.current_files, &j.tmp, &j.back, false, false)?,
            }
            j.phase += 1;
            save_json(path, &j)?;
            crash_point(S3_SWAP_STEP);
        }
        for f in &j.current_files {
            self.client.delete(&format!("{}/{}", j.tmp, f.name))?;
        }
        // The journal stays (phase 3) until the caller has recorded the
        // swap in the state: see `forget_swap`.
        Ok(())
    }
}
