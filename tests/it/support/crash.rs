//! The world of the end-to-end import tests (`import_crash`,
//! `import_live`): numbered versions (Microsoft's layout, a valid zip and
//! `manifest.json` per arch folder) exported and imported through the real
//! binary, the scenario builder for "v1, v2, v3 exported and imported"
//! ([`World::chain`], [`World::import_all`]), and checks that every arch
//! folder holds one complete imported version. Runner, keys and staging
//! checks are the parent module's.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use gapferry::mde::zipcheck::tiny_zip;

pub use super::{staging_leftovers, Keys, CRASH_AFTER_BYTES, CRASH_AT, FORCE_FALLBACK};

/// The arch folders every test bundle carries, in the bundle's (and so the
/// publish's) order.
pub const SLOTS: [&str; 4] = [
    "linux/production/arch_x86_64",
    "linux/production/arch_arm64",
    "mac/production/arch_x86_64",
    "mac/production/arch_arm64",
];

/// The `_back` (n-1) folder of a slot.
pub fn back_of(slot: &str) -> String {
    let (ring_dir, arch) = slot.rsplit_once('/').unwrap();
    format!("{ring_dir}_back/{arch}")
}

/// Deterministic filler bytes (xorshift64), distinct per seed.
pub fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A zip of one stored member of `size` filler bytes, for
/// [`World::make_version_with`].
pub fn big_zip(seed: u64, size: usize) -> Vec<u8> {
    tiny_zip("mpam-fe.exe", &filler(seed, size))
}

/// `zip` (as [`tiny_zip`] makes it: no comment) with `comment` set as its
/// zip file comment (the end record's last field).
pub fn with_comment(zip: &[u8], comment: &str) -> Vec<u8> {
    let mut z = zip.to_vec();
    let len = z.len();
    assert_eq!(&z[len - 22..len - 18], b"PK\x05\x06", "no bare end record");
    z[len - 2..].copy_from_slice(&(comment.len() as u16).to_le_bytes());
    z.extend_from_slice(comment.as_bytes());
    z
}

/// One exported version: its download folder, its bundle and the exact
/// bytes of every arch folder's files.
#[derive(Debug, Clone)]
pub struct Version {
    /// 1-based number; definitions `1.417.<n>.0`, so higher is newer.
    pub n: u32,
    pub download: PathBuf,
    pub bundle: PathBuf,
    /// Per slot (as [`SLOTS`]): (updates.zip, manifest.json).
    pub files: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Version {
    pub fn definition_version(&self) -> String {
        format!("1.417.{}.0", self.n)
    }
}

/// A test world: keys, a sequence counter for exports, a mirror and its
/// state directory, all inside one temporary directory.
#[derive(Debug)]
pub struct World {
    pub tmp: tempfile::TempDir,
    /// The one signing key, `keys/test.{key,pub}`.
    pub key: Keys,
    pub export_state: PathBuf,
    pub mirror: PathBuf,
    pub state: PathBuf,
}

impl World {
    /// A world in a fast temporary directory (see [`fast_tempdir`]).
    pub fn new() -> Self {
        Self::in_dir(fast_tempdir())
    }

    /// A world in the ordinary temporary directory (usually a real disk,
    /// where every fsync costs a disk flush).
    pub fn on_disk() -> Self {
        Self::in_dir(tempfile::tempdir().unwrap())
    }

    fn in_dir(tmp: tempfile::TempDir) -> Self {
        let key = super::keygen(&tmp.path().join("keys"), "test");
        // Imports publish only into an existing mirror root (or --create).
        fs::create_dir_all(tmp.path().join("mirror")).unwrap();
        World {
            export_state: tmp.path().join("export-state"),
            mirror: tmp.path().join("mirror"),
            state: tmp.path().join("state"),
            key,
            tmp,
        }
    }

    /// The scenario builder: versions `ns` (e.g. `1..=3`) written as
    /// download folders of about `zip_size` bytes per zip and exported, in
    /// order (the exports' sequence numbers follow it). Import them with
    /// [`World::import_all`].
    pub fn chain(&self, ns: impl IntoIterator<Item = u32>, zip_size: usize) -> Vec<Version> {
        ns.into_iter()
            .map(|n| self.make_version(n, zip_size))
            .collect()
    }

    /// Imports `versions` in order with `env`, insisting on exit 0 for each.
    pub fn import_all(&self, versions: &[Version], env: &[(&str, &str)]) {
        for v in versions {
            self.import_ok(v, env);
        }
    }

    /// Writes a download folder for version `n` (every slot's updates.zip a
    /// valid zip of about `zip_size` bytes, distinct per version and slot)
    /// and exports it.
    pub fn make_version(&self, n: u32, zip_size: usize) -> Version {
        self.make_version_with(n, zip_size, None)
    }

    /// Same, but every updates.zip is `common` (a zip made once with
    /// [`big_zip`]) with a zip comment naming the version and slot, so
    /// that big versions are cheap to make and still differ in their bytes.
    pub fn make_version_with(&self, n: u32, zip_size: usize, common: Option<&[u8]>) -> Version {
        let download = self.tmp.path().join(format!("download-v{n}"));
        let mut files = Vec::new();
        for (i, slot) in SLOTS.iter().enumerate() {
            let dir = download.join(slot);
            fs::create_dir_all(&dir).unwrap();
            let seed = u64::from(n) * 16 + i as u64;
            let zip = match common {
                Some(c) => with_comment(c, &format!("gapferry test v{n} {slot}")),
                None => tiny_zip("mpam-fe.exe", &filler(seed, zip_size)),
            };
            let manifest = format!(
                "{{\"EngineVersion\": \"1.1.24080.9\", \"DefinitionVersion\": \"1.417.{n}.0\"}}"
            )
            .into_bytes();
            fs::write(dir.join("updates.zip"), &zip).unwrap();
            fs::write(dir.join("manifest.json"), &manifest).unwrap();
            files.push((zip, manifest));
        }
        let bundle = self.tmp.path().join(format!("v{n}.tar.zst"));
        let out = super::command()
            .arg("export")
            .arg("--from")
            .arg(&download)
            .arg("--secret-key")
            .arg(&self.key.secret)
            .arg("--out")
            .arg(&bundle)
            .arg("--state-dir")
            .arg(&self.export_state)
            .args(["--expires-in", "30d", "--quiet", "--force"])
            .output()
            .unwrap();
        assert_success(&out, &format!("export v{n}"));
        Version {
            n,
            download,
            bundle,
            files,
        }
    }

    /// Points the world at a fresh, empty mirror and state directory named
    /// `name` (and removes the previous ones).
    pub fn reset_site(&mut self, name: &str) {
        for d in [&self.mirror, &self.state] {
            if d.exists() {
                fs::remove_dir_all(d).unwrap();
            }
        }
        let site = self.tmp.path().join("sites").join(name);
        self.mirror = site.join("mirror");
        self.state = site.join("state");
        fs::create_dir_all(&self.mirror).unwrap();
    }

    /// `gapferry import BUNDLE --trust PUB --mirror M --state-dir S --quiet`
    /// with the test hooks cleared and `env` set; not yet run.
    pub fn import_cmd(&self, bundle: &Path, env: &[(&str, &str)]) -> Command {
        let mut cmd = super::command();
        cmd.arg("import")
            .arg(bundle)
            .arg("--trust")
            .arg(&self.key.public)
            .arg("--mirror")
            .arg(&self.mirror)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--quiet")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn import(&self, bundle: &Path, env: &[(&str, &str)]) -> Output {
        self.import_cmd(bundle, env).output().unwrap()
    }

    /// Imports and insists on exit 0.
    pub fn import_ok(&self, v: &Version, env: &[(&str, &str)]) -> Output {
        let out = self.import(&v.bundle, env);
        assert_success(&out, &format!("import v{}", v.n));
        out
    }

    /// `gapferry ledger verify` must pass.
    pub fn ledger_verify(&self) {
        let out = super::command()
            .args(["ledger", "verify", "--state-dir"])
            .arg(&self.state)
            .output()
            .unwrap();
        assert_success(&out, "ledger verify");
    }

    /// The parsed `state.json`.
    pub fn state_json(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.state.join("state.json")).unwrap()).unwrap()
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// A temporary directory on tmpfs (`/dev/shm`) when there is one, else the
/// ordinary one. A SIGKILL does not lose the page cache, so what a kill
/// leaves behind is the same on tmpfs as on a disk, while every import is
/// some 30 times faster without real fsyncs (power loss is what fsync is
/// for, and no test here can cut the power). `GAPFERRY_TEST_TMPDIR`
/// overrides the choice.
pub fn fast_tempdir() -> tempfile::TempDir {
    let base = std::env::var_os("GAPFERRY_TEST_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| {
            let shm = Path::new("/dev/shm");
            let probe = tempfile::Builder::new()
                .prefix("gapferry-probe-")
                .tempdir_in(shm)
                .ok()?;
            drop(probe);
            Some(shm.to_path_buf())
        })
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("gapferry-test-")
        .tempdir_in(base)
        .unwrap()
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Which of `versions` the arch folder `dir` holds: `None` when the folder
/// is missing; panics when it is anything but one complete set (a mixed,
/// partial or unknown set, extra or missing files, wrong modes).
pub fn set_in(dir: &Path, slot_index: usize, versions: &[&Version]) -> Option<u32> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    assert!(meta.is_dir(), "{} is not a real folder", dir.display());
    assert_eq!(mode(dir), 0o755, "mode of {}", dir.display());
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["manifest.json", "updates.zip"],
        "{} holds a partial or polluted set",
        dir.display()
    );
    let manifest = fs::read(dir.join("manifest.json")).unwrap();
    let zip = fs::read(dir.join("updates.zip")).unwrap();
    let v = versions
        .iter()
        .find(|v| v.files[slot_index].1 == manifest)
        .unwrap_or_else(|| {
            panic!(
                "{}: manifest.json is none of the imported versions: {}",
                dir.display(),
                String::from_utf8_lossy(&manifest)
            )
        });
    assert!(
        v.files[slot_index].0 == zip,
        "{}: mixed or partial set: manifest.json of v{} beside an updates.zip of {} bytes that is not v{}'s",
        dir.display(),
        v.n,
        zip.len(),
        v.n
    );
    for f in ["manifest.json", "updates.zip"] {
        assert_eq!(mode(&dir.join(f)), 0o644, "mode of {}/{f}", dir.display());
    }
    Some(v.n)
}

/// (current, back) version of every slot of the mirror.
pub fn snapshot(mirror: &Path, versions: &[&Version]) -> Vec<(Option<u32>, Option<u32>)> {
    SLOTS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                set_in(&mirror.join(s), i, versions),
                set_in(&mirror.join(back_of(s)), i, versions),
            )
        })
        .collect()
}

/// The mirror holds nothing but the served tree: `<platform>/{production,
/// production_back}` and no staging.
pub fn assert_clean(mirror: &Path, ctx: &str) {
    let left = staging_leftovers(mirror);
    assert!(left.is_empty(), "{ctx}: staging left behind: {left:?}");
    for platform in ["linux", "mac"] {
        let mut names: Vec<String> = fs::read_dir(mirror.join(platform))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["production", "production_back"],
            "{ctx}: {platform}/"
        );
    }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A tiny seeded PRNG for test schedules (xorshift64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform-ish in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
