//! The journaled publish of one unit into the store and its recovery
//! (the module docs of [`super`]): the journal on disk, n-1 copied first,
//! payload before index files, each object verified.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::super::state::ServedFile;
use super::{
    content_type, load_json, ordered, remove_extra, save_json, verify, JFile, S3Mirror,
    S3PublishError, StagedObjects, SwapDone, JOURNAL_FORMAT,
};
use crate::durable;
use crate::faults::crash_point;
use crate::profile::{Placement, Profile};
use crate::progress::Observer;
use crate::s3::S3Error;

/// What publishing one unit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Published {
    /// Whether the replaced set was copied to n-1.
    pub rotated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    format: u32,
    location: String,
    unit: String,
    current: String,
    back: String,
    /// The new set, in upload order (index files last).
    new: Vec<JFile>,
    /// What the folder held when the publish was decided, in copy order.
    old: Vec<JFile>,
    /// Copy the old set to n-1 (false: it was found damaged, or empty).
    keep_old: bool,
    back_done: bool,
    tag: String,
    /// File name -> the object under [`STAGING_PREFIX`] holding it,
    /// uploaded while the bundle was read; copied into place (a local
    /// file is uploaded when its staged object is missing).
    #[serde(default)]
    staged_objects: std::collections::BTreeMap<String, String>,
}

/// What [`S3Mirror::recover`] finished.
#[derive(Debug, Clone, Default)]
pub struct S3Recovered {
    /// Store folders whose interrupted publish it completed.
    pub published: Vec<String>,
    /// Rollbacks whose swap is done in the store.
    pub swaps: Vec<SwapDone>,
}

impl S3Mirror {
    /// Publishes the staged unit folder `staged` (a shadow staging folder,
    /// every file written and synced) to the store folder `current`
    /// (n-1 `back`), as the module docs say. `keep_old`: copy the served
    /// set to n-1 first. `files`: the unit's files as hashed when staged.
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &self,
        profile: &dyn Profile,
        unit_key: &str,
        staged: &Path,
        place: &Placement,
        files: &[ServedFile],
        keep_old: bool,
        tag: &str,
        staged_objects: &StagedObjects,
        observer: &dyn Observer,
    ) -> Result<S3Published, S3PublishError> {
        let (current, back) = Self::rel_of_placement(place);
        let index = profile.index_files();
        let new = ordered(
            files
                .iter()
                .map(|f| JFile {
                    name: f.name.clone(),
                    size: f.size,
                    sha256: f.sha256.as_str().to_string(),
                    etag: None,
                })
                .collect(),
            index,
        );
        let dir = self.publish_root().join(unit_key.replace('/', "_"));
        let local = |path: &Path, source| S3PublishError::Local {
            path: path.to_path_buf(),
            source,
        };
        if dir.join("journal.json").exists() {
            // An earlier publish of this unit is unfinished (recovery runs
            // before every import, so only if it failed): finish it first.
            self.run_journal(&dir, observer)?;
        } else if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| local(&dir, e))?;
        }
        let old = ordered(self.folder_objects(&current)?, index);
        durable::ensure_private_dir(&self.publish_root())
            .map_err(|e| local(&self.publish_root(), e))?;
        durable::create_dir(&dir, durable::PRIVATE_DIR_MODE).map_err(|e| local(&dir, e))?;
        let files_dir = dir.join("files");
        fs::rename(staged, &files_dir).map_err(|e| local(staged, e))?;
        durable::sync_dir(&dir).map_err(|e| local(&dir, e))?;
        let journal = Journal {
            format: JOURNAL_FORMAT,
            location: self.location().to_string(),
            unit: unit_key.to_string(),
            current,
            back,
            new,
            keep_old: keep_old && !old.is_empty(),
            old,
            back_done: false,
            tag: tag.to_string(),
            staged_objects: staged_objects.of(unit_key),
        };
        save_journal(&dir, &journal)?;
        crash_point("s3-journal-written");
        let rotated = journal.keep_old;
        self.run_journal(&dir, observer)?;
        Ok(S3Published { rotated })
    }

    /// Finishes every publish and rollback an interrupted run left: the
    /// store folders whose publish it completed, and the rollbacks whose
    /// swap is done in the store (the caller records them in the state,
    /// [`SwapDone::serves`], then calls [`S3Mirror::forget_swap`]).
    pub fn recover(&self, observer: &dyn Observer) -> Result<S3Recovered, S3PublishError> {
        let swaps = self.recover_swaps()?;
        let root = self.publish_root();
        let entries = match fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.remove_orphan_staging()?;
                return Ok(S3Recovered {
                    published: Vec::new(),
                    swaps,
                });
            }
            Err(source) => return Err(S3PublishError::Local { path: root, source }),
        };
        let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        let mut done = Vec::new();
        for dir in dirs {
            if !dir.join("journal.json").exists() {
                // Killed between moving the files in and writing the
                // journal: nothing was written to the store.
                fs::remove_dir_all(&dir).map_err(|source| S3PublishError::Local {
                    path: dir.clone(),
                    source,
                })?;
                continue;
            }
            done.push(self.run_journal(&dir, observer)?);
        }
        self.remove_orphan_staging()?;
        Ok(S3Recovered {
            published: done,
            swaps,
        })
    }

    /// Steps 1-3 of a journaled publish, each skipped when already done.
    fn run_journal(&self, dir: &Path, observer: &dyn Observer) -> Result<String, S3PublishError> {
        let mut j = load_journal(dir)?;
        if j.location != self.location().to_string() {
            return Err(S3PublishError::Journal {
                path: dir.join("journal.json"),
                dir: dir.to_path_buf(),
                reason: format!("it belongs to {}, not {}", j.location, self.location()),
            });
        }
        if !j.back_done {
            if j.keep_old {
                self.copy_to_back(&j)?;
            }
            j.back_done = true;
            save_journal(dir, &j)?;
            crash_point("s3-back-done");
        }
        let files_dir = dir.join("files");
        for f in &j.new {
            let key = format!("{}/{}", j.current, f.name);
            let have = self.client.head(&key)?;
            if have.is_some_and(|h| h.size == f.size && h.sha256.as_deref() == Some(&f.sha256)) {
                continue;
            }
            // The staged object when it is there and whole (a server-side
            // copy), else the local file.
            let staged = match j.staged_objects.get(&f.name) {
                Some(sk) => self
                    .client
                    .head(sk)?
                    .filter(|h| h.size == f.size && h.sha256.as_deref() == Some(&f.sha256))
                    .map(|_| sk.clone()),
                None => None,
            };
            let local = files_dir.join(&f.name);
            if staged.is_none() && !local.exists() {
                // Streamed into the store and lost from its staging folder
                // since (removed by hand): this publish cannot be finished.
                // Every folder still holds whole objects (index files go
                // last); the state does not record it, so importing the
                // bundle again publishes it.
                fs::remove_dir_all(dir).map_err(|source| S3PublishError::Local {
                    path: dir.to_path_buf(),
                    source,
                })?;
                return Ok(j.current);
            }
            let info = match staged {
                Some(sk) => self.client.copy(&sk, &key, None)?,
                None => self.client.put_file(
                    &key,
                    &files_dir.join(&f.name),
                    &f.sha256,
                    content_type(&f.name),
                    observer,
                )?,
            };
            verify(&self.client, &key, &info, f)?;
            crash_point("s3-object-uploaded");
        }
        // Objects of the old set the new one does not have.
        remove_extra(&self.client, &j.current, &j.new)?;
        crash_point("s3-current-done");
        for sk in j.staged_objects.values() {
            self.client.delete(sk)?;
        }
        fs::remove_dir_all(dir).map_err(|source| S3PublishError::Local {
            path: dir.to_path_buf(),
            source,
        })?;
        let _ = durable::sync_dir(&self.publish_root());
        Ok(j.current)
    }

    /// Copies the old set to n-1, each object only if it is still the one
    /// recorded, then removes what n-1 held beyond it.
    fn copy_to_back(&self, j: &Journal) -> Result<(), S3PublishError> {
        for f in &j.old {
            let from = format!("{}/{}", j.current, f.name);
            let to = format!("{}/{}", j.back, f.name);
            match self.client.copy(&from, &to, f.etag.as_deref()) {
                Ok(info) => verify(&self.client, &to, &info, f)?,
                Err(S3Error::Precondition { .. }) => {
                    // The source changed. If n-1 already holds the recorded
                    // object (a run killed after this copy), go on.
                    let have = self.client.head(&to)?;
                    if !have
                        .is_some_and(|h| h.size == f.size && h.sha256.as_deref() == Some(&f.sha256))
                    {
                        return Err(S3PublishError::Changed {
                            url: self.client.url_of(&from),
                            location: self.location().to_string(),
                        });
                    }
                }
                Err(e) => return Err(e.into()),
            }
            crash_point("s3-back-copied");
        }
        remove_extra(&self.client, &j.back, &j.old)?;
        Ok(())
    }
}

fn save_journal(dir: &Path, j: &Journal) -> Result<(), S3PublishError> {
    save_json(&dir.join("journal.json"), j)
}

fn load_journal(dir: &Path) -> Result<Journal, S3PublishError> {
    let j: Journal = load_json(&dir.join("journal.json"))?;
    if j.format != JOURNAL_FORMAT {
        return Err(S3PublishError::Journal {
            path: dir.join("journal.json"),
            dir: dir.to_path_buf(),
            reason: format!("format {} is not {JOURNAL_FORMAT}", j.format),
        });
    }
    Ok(j)
}
