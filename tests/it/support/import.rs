//! The mirror-and-state fixture of the import integration tests
//! ([`Fx`]): synthetic download folders, keys, bundles (through the binary,
//! or crafted through the library when the case cannot be made with
//! `export`) and running `import`, on the runner, [`Run`], [`Keys`] and
//! tree digests of the parent module (re-exported here for the tests that
//! glob-import this module).
//!
//! Every fixture lives in one temporary directory; children run with their
//! working directory inside it, so "nothing created outside the mirror and
//! the state dir" is one digest of that directory minus the state dir.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use super::{
    assert_no_staging, assert_trees_eq, content_digest, content_digest_except, Keys, Run,
    TreeDigest,
};
use std::time::{Duration, SystemTime};

use gapferry::bundle::writer::{self, BundleSpec, SourceFile, WriteOptions};
use gapferry::keys::SecretKey;
use gapferry::manifest::Item;
use gapferry::mde::zipcheck::tiny_zip;
use gapferry::progress::NoProgress;
use gapferry::safepath::SafePath;
use sha2::{Digest, Sha256};

/// Default size of a synthetic `updates.zip` payload (kept small: tests are fast).
pub const PAYLOAD: usize = 2048;

/// One synthetic download folder: `(layout path, engine, definitions)`,
/// e.g. `("linux/production/arch_x86_64", "1.1.24080.9", "1.417.30.0")`.
pub type Folder<'a> = (&'a str, &'a str, &'a str);

/// The temporary world of one test.
#[derive(Debug)]
pub struct Fx {
    pub tmp: tempfile::TempDir,
    /// The temporary directory itself (canonical).
    pub root: PathBuf,
    pub mirror: PathBuf,
    pub state: PathBuf,
    /// Working directory of every child.
    pub work: PathBuf,
    /// The exporting side's sequence state.
    pub export_state: PathBuf,
    n: std::cell::Cell<u32>,
}

impl Default for Fx {
    fn default() -> Self {
        Self::new()
    }
}

impl Fx {
    pub fn new() -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let work = root.join("work");
        fs::create_dir_all(&work).unwrap();
        fs::create_dir_all(root.join("keys")).unwrap();
        fs::create_dir_all(root.join("bundles")).unwrap();
        // An import publishes only into an existing mirror root (or with
        // --create), as an operator's mirror is made once.
        fs::create_dir_all(root.join("mirror")).unwrap();
        Fx {
            mirror: root.join("mirror"),
            state: root.join("state"),
            export_state: root.join("export-state"),
            work,
            root,
            tmp,
            n: std::cell::Cell::new(0),
        }
    }

    /// A `gapferry` command run from the work folder, with a clean
    /// environment as far as gapferry cares.
    pub fn cmd(&self) -> Command {
        let mut c = super::command();
        c.current_dir(&self.work)
            .env("HOME", self.root.join("home"))
            .env("XDG_STATE_HOME", self.root.join("home/.state"));
        c
    }

    pub fn run(&self, mut c: Command) -> Run {
        Run::from_output(c.output().unwrap())
    }

    /// `gapferry keygen --unencrypted` into `keys/<name>.{key,pub}`.
    pub fn key(&self, name: &str) -> Keys {
        super::keygen(&self.root.join("keys"), name)
    }

    /// A download folder `dl/<name>` as Microsoft's script leaves it.
    pub fn download(&self, name: &str, folders: &[Folder<'_>]) -> PathBuf {
        self.download_sized(name, folders, PAYLOAD)
    }

    /// Like [`download`](Self::download) with `size` bytes of zip content.
    pub fn download_sized(&self, name: &str, folders: &[Folder<'_>], size: usize) -> PathBuf {
        let dir = self.root.join("dl").join(name);
        for (rel, eng, def) in folders {
            let d = dir.join(rel);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("updates.zip"), zip_for(rel, eng, def, size)).unwrap();
            fs::write(d.join("manifest.json"), folder_manifest(eng, def)).unwrap();
        }
        dir
    }

    /// The scenario builder of the mirror tests, "v1, v2, ... exported":
    /// for each `n` in `ns`, a download folder `v<n>` holding `rel` at engine
    /// `1.1.<n>.0` and definitions `1.400.<n>.0`, exported by `key` as
    /// `b<n>` with `--sequence <n * 100>`. Returns the bundles in order;
    /// [`Fx::import_all`] imports them.
    pub fn chain(&self, key: &Keys, rel: &str, ns: RangeInclusive<u32>) -> Vec<PathBuf> {
        ns.map(|n| {
            let (eng, def) = (format!("1.1.{n}.0"), format!("1.400.{n}.0"));
            let dl = self.download(&format!("v{n}"), &[(rel, &eng, &def)]);
            let seq = (u64::from(n) * 100).to_string();
            self.export(&dl, &format!("b{n}"), &[key], &["--sequence", &seq])
        })
        .collect()
    }

    /// The same chain over several units at once, exported with the
    /// exporter's own sequence (so bundles made later in a test stay newer):
    /// download folder `vN` (engine 1.1.N.0, definitions 1.400.N.0 in every
    /// unit of `rels`) and its bundle `bN`, for each N in `ns`.
    pub fn releases(
        &self,
        key: &Keys,
        rels: &[&str],
        ns: RangeInclusive<u32>,
    ) -> Vec<(PathBuf, PathBuf)> {
        ns.map(|n| {
            let (eng, def) = (format!("1.1.{n}.0"), format!("1.400.{n}.0"));
            let units: Vec<(&str, &str, &str)> = rels
                .iter()
                .map(|r| (*r, eng.as_str(), def.as_str()))
                .collect();
            let dl = self.download(&format!("v{n}"), &units);
            let b = self.export(&dl, &format!("b{n}"), &[key], &[]);
            (dl, b)
        })
        .collect()
    }

    /// Imports `bundles` in order into the mirror, trusting `trust`,
    /// insisting on exit 0 for each.
    pub fn import_all(&self, bundles: &[PathBuf], trust: &[&Path]) {
        for b in bundles {
            self.import(b, trust, &[]).ok();
        }
    }

    /// Exports `from` into `bundles/<name>.tar.zst`; `extra` may hold
    /// `--sequence`, `--expires-in`, `--channel`, another `--state-dir`, ...
    pub fn export(&self, from: &Path, name: &str, keys: &[&Keys], extra: &[&str]) -> PathBuf {
        let r = self.try_export(from, name, keys, extra);
        r.0.ok();
        r.1
    }

    pub fn try_export(
        &self,
        from: &Path,
        name: &str,
        keys: &[&Keys],
        extra: &[&str],
    ) -> (Run, PathBuf) {
        let out = self.root.join("bundles").join(format!("{name}.tar.zst"));
        let mut c = self.cmd();
        c.arg("export")
            .arg("--from")
            .arg(from)
            .arg("--out")
            .arg(&out);
        for k in keys {
            c.arg("--secret-key").arg(&k.secret);
        }
        if !extra.contains(&"--state-dir") {
            c.arg("--state-dir").arg(&self.export_state);
        }
        c.args(extra).arg("--quiet");
        (self.run(c), out)
    }

    /// `gapferry import BUNDLE --trust ...` with `extra` arguments only
    /// (the caller names the mirror or target and the state dir).
    pub fn import_cmd(&self, bundle: &Path, trust: &[&Path], extra: &[&str]) -> Command {
        let mut c = self.cmd();
        c.arg("import").arg(bundle);
        for t in trust {
            c.arg("--trust").arg(t);
        }
        c.args(extra);
        c
    }

    /// `gapferry import BUNDLE --trust ... --mirror <mirror> --state-dir <state> extra...`.
    pub fn import(&self, bundle: &Path, trust: &[&Path], extra: &[&str]) -> Run {
        let mut c = self.import_cmd(bundle, trust, extra);
        c.arg("--mirror")
            .arg(&self.mirror)
            .arg("--state-dir")
            .arg(&self.state);
        self.run(c)
    }

    /// Everything under the temporary directory except the state dir:
    /// the mirror, the bundles, the keys, the work folder, and anything a
    /// child might create beside them.
    pub fn snapshot(&self) -> TreeDigest {
        content_digest_except(&self.root, &[&self.state])
    }

    /// Asserts that nothing but the state dir changed since `before`, and
    /// that no staging folder is left anywhere.
    #[track_caller]
    pub fn assert_unchanged(&self, before: &TreeDigest) {
        let after = self.snapshot();
        assert_trees_eq(before, &after);
        assert_no_staging(&self.root);
    }

    /// True while nothing was published: the mirror root (made by
    /// [`Fx::new`]) is still empty.
    pub fn mirror_is_empty(&self) -> bool {
        fs::read_dir(&self.mirror).unwrap().next().is_none()
    }

    /// A fresh unique name (bundles, folders).
    pub fn unique(&self, stem: &str) -> String {
        let n = self.n.get() + 1;
        self.n.set(n);
        format!("{stem}-{n}")
    }

    /// Writes a bundle through the library, for cases `export` cannot make
    /// (a `created` in the future, items that disagree with the payload).
    /// `files` are `(payload path, bytes)` in bundle order.
    pub fn craft(
        &self,
        name: &str,
        keys: &[&Keys],
        c: Craft,
        files: &[(&str, Vec<u8>)],
    ) -> PathBuf {
        let src = self.root.join("craft-src").join(name);
        let mut sources = Vec::new();
        for (i, (rel, bytes)) in files.iter().enumerate() {
            let p = src.join(format!("{i}"));
            fs::create_dir_all(&src).unwrap();
            fs::write(&p, bytes).unwrap();
            sources.push(SourceFile {
                path: SafePath::new(rel).unwrap(),
                source: p,
            });
        }
        let spec = BundleSpec {
            bundle_id: format!("crafted-{name}"),
            channel: c.channel,
            sequence: c.sequence,
            created: c.created,
            expires: c.expires,
            producer: "gapferry-tests".into(),
            profile: "mde".into(),
            items: c.items,
            files: sources,
            trust: Vec::new(),
        };
        let sk: Vec<SecretKey> = keys.iter().map(|k| k.secret_key()).collect();
        let out = self.root.join("bundles").join(format!("{name}.tar.zst"));
        let opts = WriteOptions {
            threads: 0,
            ..WriteOptions::default()
        };
        writer::write_bundle(&spec, &sk, &out, &opts, &NoProgress).unwrap();
        out
    }
}

/// The manifest fields of a crafted bundle.
#[derive(Debug, Clone)]
pub struct Craft {
    pub channel: String,
    pub sequence: u64,
    pub created: SystemTime,
    pub expires: SystemTime,
    pub items: Vec<Item>,
}

impl Craft {
    /// Channel "default", created now, expiring in a day, no items.
    pub fn new(sequence: u64) -> Craft {
        let now = SystemTime::now();
        Craft {
            channel: "default".into(),
            sequence,
            created: now,
            expires: now + Duration::from_secs(86400),
            items: Vec::new(),
        }
    }

    pub fn item(mut self, rel: &str, eng: &str, def: &str) -> Craft {
        let parts: Vec<&str> = rel.split('/').collect();
        self.items.push(Item {
            platform: parts[0].into(),
            ring: parts[1].into(),
            arch: parts[2].trim_start_matches("arch_").into(),
            engine_version: eng.into(),
            definition_version: def.into(),
        });
        self
    }
}

/// The payload files of one folder, for [`Fx::craft`].
pub fn folder_files(rel: &str, eng: &str, def: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            format!("{rel}/updates.zip"),
            zip_for(rel, eng, def, PAYLOAD),
        ),
        (format!("{rel}/manifest.json"), folder_manifest(eng, def)),
    ]
}

/// Microsoft's per-folder manifest.
pub fn folder_manifest(eng: &str, def: &str) -> Vec<u8> {
    format!("{{\"EngineVersion\": \"{eng}\", \"DefinitionVersion\": \"{def}\"}}").into_bytes()
}

/// A small valid zip whose bytes depend on the folder and versions, so two
/// versions never share an `updates.zip`.
pub fn zip_for(rel: &str, eng: &str, def: &str, size: usize) -> Vec<u8> {
    let seed = Sha256::digest(format!("{rel} {eng} {def}").as_bytes());
    let mut data = Vec::with_capacity(size);
    let mut block = seed.to_vec();
    while data.len() < size {
        data.extend_from_slice(&block);
        block = Sha256::digest(&block).to_vec();
    }
    data.truncate(size);
    tiny_zip("mpavdlta.vdm", &data)
}

/// The `(engine, definitions)` a served folder's manifest.json names.
pub fn served_versions(dir: &Path) -> (String, String) {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    (
        v["EngineVersion"].as_str().unwrap().to_string(),
        v["DefinitionVersion"].as_str().unwrap().to_string(),
    )
}

/// Asserts `dir` holds exactly the files the download folder `src` holds
/// (byte for byte), and nothing else.
#[track_caller]
pub fn assert_same_files(dir: &Path, src: &Path) {
    let a = content_digest(dir);
    let b = content_digest(src);
    let strip = |t: &TreeDigest| -> BTreeMap<String, String> {
        t.iter()
            .filter(|(_, v)| v.starts_with("file "))
            .map(|(k, v)| (k.clone(), v.split(' ').next_back().unwrap().to_string()))
            .collect()
    };
    assert_eq!(
        strip(&a),
        strip(&b),
        "{} vs {}",
        dir.display(),
        src.display()
    );
}

/// The ledger's entries as JSON values.
pub fn ledger(state: &Path) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(state.join("ledger.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Whether this process runs as root (for tests that need mounts).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
