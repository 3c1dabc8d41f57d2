//! The one harness of the integration tests: the `gapferry` binary with a
//! clean environment ([`command`], [`gapferry`]), one [`Run`] result type,
//! one [`Keys`] type made through `gapferry keygen`, synthetic download
//! folders with tiny valid zips, and one tree walker for "nothing changed
//! on disk" assertions ([`tree_digest`] exact, [`content_digest`] by
//! content).
//!
//! Submodules build on it: [`craft`] builds bundles byte by byte (tar
//! headers by hand, zstd, minisign signatures) so tests can make hostile
//! ones; [`import`] is the mirror-and-state fixture ([`import::Fx`]);
//! [`crash`] is the crash and live-import world with its scenario builder
//! ("v1, v2, v3 exported and imported", [`crash::World::chain`]);
//! [`fetch_mock`] is the loopback upstream for `fetch`; [`win_standin`]
//! the one for `fetch --platform windows`; [`garage`] a single-node
//! Garage, the S3 store of the `s3://` mirror tests.
//!
//! Every test module reaches it as `crate::support`.

#![allow(dead_code)]

pub mod craft;
pub mod crash;
pub mod fetch_mock;
pub mod garage;
pub mod import;
pub mod win_standin;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use sha2::{Digest, Sha256};

use gapferry::keys::{KeyId, PublicKey, SecretKey};

/// The real binary, built with the `fault-injection` feature.
pub const BIN: &str = env!("CARGO_BIN_EXE_gapferry");

/// The test-only crash hooks (src/faults.rs), cleared for every run unless
/// a test sets them.
pub const CRASH_AT: &str = "GAPFERRY_TEST_CRASH_AT";
pub const CRASH_AFTER_BYTES: &str = "GAPFERRY_TEST_CRASH_AFTER_BYTES";
pub const FORCE_FALLBACK: &str = "GAPFERRY_TEST_FORCE_FALLBACK";
/// The test-only clock offset of S3 request signing (src/faults.rs).
pub const S3_CLOCK_OFFSET: &str = "GAPFERRY_TEST_S3_CLOCK_OFFSET_SECS";

/// S3 variables cleared for every run, so no test reaches a store it did
/// not start ([`garage::Garage::env`] sets them).
pub const AWS_VARS: &[&str] = &[
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
];

/// Proxy variables cleared for every run, so no test ever reaches a network.
pub const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

/// The one runner: the `gapferry` binary with a clean environment for
/// `GAPFERRY_*` (state dir and crash hooks), proxies and the terminal (no
/// progress bars: stderr is a pipe anyway). Every harness starts here.
pub fn command() -> std::process::Command {
    let mut c = std::process::Command::new(BIN);
    for v in PROXY_VARS.iter().chain(AWS_VARS) {
        c.env_remove(v);
    }
    for v in [
        "GAPFERRY_STATE_DIR",
        CRASH_AT,
        CRASH_AFTER_BYTES,
        FORCE_FALLBACK,
        S3_CLOCK_OFFSET,
    ] {
        c.env_remove(v);
    }
    c.env("NO_COLOR", "1");
    c
}

/// [`command`] as an `assert_cmd` command.
pub fn gapferry() -> Command {
    Command::from_std(command())
}

/// `gapferry keygen --unencrypted` into `dir/NAME.{key,pub}` (`dir` created).
pub fn keygen(dir: &Path, name: &str) -> Keys {
    fs::create_dir_all(dir).unwrap();
    let keys = Keys {
        secret: dir.join(format!("{name}.key")),
        public: dir.join(format!("{name}.pub")),
    };
    let mut c = command();
    c.arg("keygen")
        .arg("--unencrypted")
        .arg("--secret-key")
        .arg(&keys.secret)
        .arg("--public-key")
        .arg(&keys.public);
    Run::from_output(c.output().expect("cannot run gapferry")).ok();
    keys
}

/// The result of a run, with stdout and stderr as text.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from_output(o: Output) -> Run {
        Run {
            code: o.status.code().expect("gapferry was killed by a signal"),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Asserts success and returns self.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success; {self:#?}");
        self
    }

    /// Asserts the exit code and that stderr contains every one of `needles`.
    #[track_caller]
    pub fn fails(self, code: i32, needles: &[&str]) -> Run {
        self.expect(code, needles);
        self
    }

    /// [`Run::fails`] by reference, for a run looked at again afterwards.
    #[track_caller]
    pub fn expect(&self, code: i32, needles: &[&str]) -> &Run {
        assert_eq!(self.code, code, "wrong exit code; {self:#?}");
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr does not mention {n:?}; {self:#?}"
            );
        }
        self
    }
}

/// Runs a prepared command to completion.
pub fn run(mut cmd: Command) -> Run {
    Run::from_output(cmd.output().expect("cannot run gapferry"))
}

/// A temporary directory for one test, with export state kept inside it
/// (`<root>/export-state`) so no test touches the user's state directory.
#[derive(Debug)]
pub struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            tmp: tempfile::Builder::new()
                .prefix("gapferry-test.")
                .tempdir()
                .expect("cannot create a temporary directory"),
        }
    }

    /// The root of the sandbox.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// `root/rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// A fresh directory `root/rel` (parents created).
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.join(rel);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// The export state directory every [`Sandbox::cmd`] uses.
    pub fn state_dir(&self) -> PathBuf {
        self.join("export-state")
    }

    /// `gapferry` run from the sandbox root with `GAPFERRY_STATE_DIR` inside it.
    pub fn cmd(&self) -> Command {
        let mut c = gapferry();
        c.current_dir(self.path());
        c.env("GAPFERRY_STATE_DIR", self.state_dir());
        c
    }

    /// Runs `gapferry ARGS` in the sandbox.
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = self.cmd();
        c.args(args);
        run(c)
    }

    /// `gapferry keygen --unencrypted` into `root/keys/NAME.{key,pub}`.
    pub fn keygen(&self, name: &str) -> Keys {
        keygen(&self.join("keys"), name)
    }

    /// A download folder `root/NAME` holding `releases`.
    pub fn download_folder(&self, name: &str, releases: &[FakeRelease]) -> PathBuf {
        let root = self.mkdir(name);
        for r in releases {
            r.write_into(&root);
        }
        root
    }

    /// `gapferry export --from FROM --secret-key K... --out OUT EXTRA...`,
    /// asserting success. Returns the run (stdout holds `--json` output).
    pub fn export(&self, from: &Path, keys: &[&Keys], out: &Path, extra: &[&str]) -> Run {
        let mut c = self.cmd();
        c.arg("export")
            .arg("--from")
            .arg(from)
            .arg("--out")
            .arg(out);
        for k in keys {
            c.arg("--secret-key").arg(&k.secret);
        }
        c.args(extra);
        run(c).ok()
    }

    /// `gapferry verify BUNDLE --trust K... EXTRA...` (not asserted).
    pub fn verify(&self, bundle: &Path, trust: &[&Path], extra: &[&str]) -> Run {
        let mut c = self.cmd();
        c.arg("verify").arg(bundle);
        for t in trust {
            c.arg("--trust").arg(t);
        }
        c.args(extra);
        run(c)
    }
}

/// A key pair's files.
#[derive(Debug, Clone)]
pub struct Keys {
    pub secret: PathBuf,
    pub public: PathBuf,
}

impl Keys {
    /// The (unencrypted) secret key, for signing crafted bundles.
    pub fn secret_key(&self) -> SecretKey {
        let text = fs::read_to_string(&self.secret).unwrap();
        SecretKey::parse(&text, &self.secret, None).expect("an unencrypted secret key")
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_file(&self.public).unwrap()
    }

    /// The key id as gapferry and minisign show it.
    pub fn id(&self) -> KeyId {
        self.public_key().key_id
    }
}

/// One `<platform>/<ring>/arch_<arch>/` folder of a synthetic download folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRelease {
    pub platform: String,
    pub ring: String,
    pub arch: String,
    pub engine: String,
    pub definitions: String,
}

impl FakeRelease {
    pub fn new(platform: &str, ring: &str, arch: &str) -> FakeRelease {
        FakeRelease {
            platform: platform.into(),
            ring: ring.into(),
            arch: arch.into(),
            engine: "1.1.24090.4".into(),
            definitions: "1.419.100.0".into(),
        }
    }

    /// The same slot with other versions.
    pub fn versions(mut self, engine: &str, definitions: &str) -> FakeRelease {
        self.engine = engine.into();
        self.definitions = definitions.into();
        self
    }

    /// `<platform>/<ring>/arch_<arch>`.
    pub fn rel(&self) -> String {
        format!("{}/{}/arch_{}", self.platform, self.ring, self.arch)
    }

    /// `<platform>/<ring>_back/arch_<arch>`.
    pub fn back_rel(&self) -> String {
        format!("{}/{}_back/arch_{}", self.platform, self.ring, self.arch)
    }

    /// A tiny valid zip naming the release (different for every slot and version).
    pub fn updates_zip(&self) -> Vec<u8> {
        let body = format!(
            "fake Defender definitions for {} engine {} definitions {}\n",
            self.rel(),
            self.engine,
            self.definitions
        );
        gapferry::mde::zipcheck::tiny_zip("mpavdlta.vdm", body.repeat(8).as_bytes())
    }

    /// Microsoft's `manifest.json` for this release.
    pub fn manifest_json(&self) -> Vec<u8> {
        format!(
            "{{\"EngineVersion\": \"{}\", \"DefinitionVersion\": \"{}\"}}\n",
            self.engine, self.definitions
        )
        .into_bytes()
    }

    /// The payload files as a bundle lists them: `(path, bytes)`.
    pub fn payload(&self) -> Vec<(String, Vec<u8>)> {
        vec![
            (format!("{}/updates.zip", self.rel()), self.updates_zip()),
            (
                format!("{}/manifest.json", self.rel()),
                self.manifest_json(),
            ),
        ]
    }

    /// Writes `updates.zip` and `manifest.json` under `root/<rel>/`.
    pub fn write_into(&self, root: &Path) {
        let dir = root.join(self.rel());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("updates.zip"), self.updates_zip()).unwrap();
        fs::write(dir.join("manifest.json"), self.manifest_json()).unwrap();
    }

    /// Writes an n-1 copy (older versions) under `root/<back_rel>/`, as
    /// Microsoft's script does with `backupPreviousUpdates`.
    pub fn write_back_into(&self, root: &Path) {
        let old = self.clone().versions("1.1.24080.9", "1.419.1.0");
        let dir = root.join(self.back_rel());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("updates.zip"), old.updates_zip()).unwrap();
        fs::write(dir.join("manifest.json"), old.manifest_json()).unwrap();
    }
}

/// linux/production for both arches and mac/production/x86_64.
pub fn standard_releases() -> Vec<FakeRelease> {
    vec![
        FakeRelease::new("linux", "production", "x86_64"),
        FakeRelease::new("linux", "production", "arm64"),
        FakeRelease::new("mac", "production", "x86_64"),
    ]
}

/// A snapshot of a directory tree: for each path (relative, sorted) a
/// description. Compare two snapshots with `assert_eq!` or
/// [`assert_trees_eq`] to prove nothing changed on disk.
pub type TreeDigest = BTreeMap<String, String>;

/// How much of each entry a digest records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Type, permission bits, content hash or link target, and for files
    /// and folders the mtime (files also size and inode): a rewrite with the
    /// same bytes, or a file created and removed again, still shows.
    Exact,
    /// Type, permission bits and content hash or link target only: for
    /// trees that may be legitimately rewritten with the same content.
    Content,
}

/// The exact digest of the tree under `root` (the root itself included as
/// `.`). A missing root digests to `{".": "missing"}`.
pub fn tree_digest(root: &Path) -> TreeDigest {
    digest(root, Detail::Exact, &[])
}

/// The content digest of the tree under `root` (see [`Detail::Content`]).
pub fn content_digest(root: &Path) -> TreeDigest {
    digest(root, Detail::Content, &[])
}

/// [`content_digest`] skipping the subtrees in `skip`.
pub fn content_digest_except(root: &Path, skip: &[&Path]) -> TreeDigest {
    digest(root, Detail::Content, skip)
}

/// The one tree walker: `root` at `detail`, without the subtrees in `skip`.
pub fn digest(root: &Path, detail: Detail, skip: &[&Path]) -> TreeDigest {
    let mut out = BTreeMap::new();
    walk(root, root, detail, skip, &mut out);
    out
}

fn walk(root: &Path, p: &Path, detail: Detail, skip: &[&Path], out: &mut TreeDigest) {
    if skip.contains(&p) {
        return;
    }
    let rel = match p.strip_prefix(root).unwrap().to_string_lossy().into_owned() {
        s if s.is_empty() => ".".to_string(),
        s => s,
    };
    let meta = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(_) => {
            out.insert(rel, "missing".into());
            return;
        }
    };
    let mode = meta.permissions().mode() & 0o7777;
    let ft = meta.file_type();
    let exact = detail == Detail::Exact;
    let mtime = format!("mtime {}.{:09}", meta.mtime(), meta.mtime_nsec());
    let desc = if ft.is_symlink() {
        format!("symlink -> {}", fs::read_link(p).unwrap().display())
    } else if ft.is_dir() && exact {
        format!("dir {mode:04o} {mtime}")
    } else if ft.is_dir() {
        format!("dir {mode:04o}")
    } else if ft.is_file() {
        let data = fs::read(p).unwrap();
        let hash = hex::encode(Sha256::digest(&data));
        if exact {
            format!(
                "file {mode:04o} {} {hash} ino {} {mtime}",
                data.len(),
                meta.ino()
            )
        } else {
            format!("file {mode:04o} {hash}")
        }
    } else if ft.is_fifo() {
        format!("fifo {mode:04o}")
    } else {
        format!("special {mode:04o}")
    };
    out.insert(rel, desc);
    if ft.is_dir() {
        let mut children: Vec<PathBuf> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        children.sort();
        for c in children {
            walk(root, &c, detail, skip, out);
        }
    }
}

/// Asserts two digests are equal, showing only the differences.
#[track_caller]
pub fn assert_trees_eq(before: &TreeDigest, after: &TreeDigest) {
    if before == after {
        return;
    }
    let mut diff = String::new();
    for (k, v) in before {
        match after.get(k) {
            None => diff.push_str(&format!("- {k} {v}\n")),
            Some(w) if w != v => diff.push_str(&format!("~ {k} {v} -> {w}\n")),
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            diff.push_str(&format!("+ {k} {v}\n"));
        }
    }
    panic!("the tree changed:\n{diff}");
}

/// Every path under `root` whose name starts with `.gapferry-staging-`.
pub fn staging_leftovers(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name()
                .to_string_lossy()
                .starts_with(".gapferry-staging-")
            {
                out.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

/// Asserts no `.gapferry-staging-*` folder exists anywhere under `dir`.
#[track_caller]
pub fn assert_no_staging(dir: &Path) {
    let left = staging_leftovers(dir);
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

/// SHA-256 of bytes as lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The documented `--json` shapes, read back with `deny_unknown_fields` so a
/// field added or renamed without updating docs/FORMAT.md fails a test.
pub mod json {
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Item {
        pub platform: String,
        pub ring: String,
        pub arch: String,
        pub engine_version: String,
        pub definition_version: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        pub path: String,
        pub size: u64,
        pub sha256: String,
    }

    /// `gapferry export --json`.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Export {
        /// The envelope (docs/JSON.md).
        pub schema_version: u32,
        pub ok: bool,
        pub bundle_path: String,
        /// Deprecated name of `bundle_path`.
        pub bundle: String,
        pub bundle_id: String,
        pub channel: String,
        pub sequence: u64,
        pub created: String,
        pub expires: String,
        pub manifest_sha256: String,
        pub bundle_size: u64,
        pub payload_size: u64,
        pub signer_key_ids: Vec<String>,
        /// Deprecated name of `signer_key_ids`.
        pub signers: Vec<String>,
        pub items: Vec<Item>,
        /// With `--trust-policy`: the versions carried.
        #[serde(default)]
        pub trust_policy_versions: Vec<u64>,
    }

    /// One carried trust policy version (docs/FORMAT.md section 11).
    #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PolicySummary {
        pub version: u64,
        pub expires: String,
        pub sha256: String,
        pub root_keys: Vec<String>,
        pub root_threshold: usize,
        pub signer_keys: Vec<PolicySigner>,
        pub signer_threshold: usize,
        pub revoked: Vec<String>,
        pub signed_by: Vec<String>,
    }

    /// One signer key of a [`PolicySummary`].
    #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PolicySigner {
        pub key_id: String,
        #[serde(default)]
        pub channels: Option<Vec<String>>,
        #[serde(default)]
        pub not_after: Option<String>,
    }

    /// One signature in `gapferry inspect --json`.
    #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SignatureCheck {
        pub key_id: String,
        /// `valid`, `untrusted`, `unchecked` or `invalid`.
        pub status: String,
        #[serde(default)]
        pub problem: Option<String>,
    }

    /// `gapferry inspect --json`.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Inspect {
        /// The envelope (docs/JSON.md).
        pub schema_version: u32,
        pub ok: bool,
        pub bundle_path: String,
        /// Deprecated name of `bundle_path`.
        pub bundle: String,
        pub format: String,
        pub bundle_id: String,
        pub channel: String,
        pub sequence: u64,
        pub created: String,
        pub expires: String,
        pub expired: bool,
        pub producer: String,
        pub profile: String,
        pub manifest_sha256: String,
        pub payload_size: u64,
        pub signatures: Vec<SignatureCheck>,
        pub items: Vec<Item>,
        pub files: Vec<File>,
        /// The carried trust policy versions (absent: none).
        #[serde(default)]
        pub trust_policy: Vec<PolicySummary>,
        /// Only with `--packages`.
        #[serde(default)]
        pub packages: Option<Vec<Package>>,
    }

    /// One Windows package of `inspect --packages --json`.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Package {
        pub path: String,
        pub version: Option<String>,
        pub signer_subject: Option<String>,
        pub authenticode: String,
    }

    /// `gapferry verify --json`.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Verify {
        /// The envelope (docs/JSON.md).
        pub schema_version: u32,
        pub ok: bool,
        pub bundle_path: String,
        /// Deprecated name of `bundle_path`.
        pub bundle: String,
        pub bundle_id: String,
        pub channel: String,
        pub sequence: u64,
        pub expires: String,
        pub expired: bool,
        pub manifest_sha256: String,
        pub signer_key_ids: Vec<String>,
        /// Deprecated name of `signer_key_ids`.
        pub signers: Vec<String>,
        pub files_checked: usize,
        pub bytes_checked: u64,
        /// The carried trust policy versions (absent: none).
        #[serde(default)]
        pub trust_policy: Vec<PolicySummary>,
        /// With `--trust-root`: the version the signatures counted under.
        #[serde(default)]
        pub counted_under_policy: Option<u64>,
    }

    /// The `error` of a document whose `ok` is false.
    #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Error {
        pub message: String,
        pub exit_code: i32,
        /// `operational`, `usage`, `rejected` or `policy`.
        pub kind: String,
    }

    /// The failure document of a command that failed before it had a
    /// report (docs/JSON.md).
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Failure {
        pub schema_version: u32,
        pub ok: bool,
        pub error: Error,
        pub command: String,
    }

    /// Parses stdout as the failure document of `command` exiting `code`.
    #[track_caller]
    pub fn failure(stdout: &str, command: &str, code: i32) -> Failure {
        let f: Failure = parse(stdout);
        assert_eq!(
            (
                f.schema_version,
                f.ok,
                f.command.as_str(),
                f.error.exit_code
            ),
            (1, false, command, code),
            "{f:?}"
        );
        f
    }

    /// The entries of `ledger show --json` (`{ "ledger", "entries" }`).
    #[track_caller]
    pub fn ledger_entries<T: serde::de::DeserializeOwned>(stdout: &str) -> Vec<T> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Show<T> {
            schema_version: u32,
            ok: bool,
            #[allow(dead_code)]
            ledger: String,
            entries: Vec<T>,
        }
        let s: Show<T> = parse(stdout);
        assert!(s.schema_version == 1 && s.ok, "{stdout}");
        s.entries
    }

    /// Parses stdout as exactly one JSON document of type `T`.
    #[track_caller]
    pub fn parse<T: serde::de::DeserializeOwned>(stdout: &str) -> T {
        let mut de = serde_json::Deserializer::from_str(stdout);
        let v = T::deserialize(&mut de)
            .unwrap_or_else(|e| panic!("stdout is not the documented JSON ({e}):\n{stdout}"));
        de.end().unwrap_or_else(|e| {
            panic!("stdout holds more than one JSON document ({e}):\n{stdout}")
        });
        v
    }
}

/// `nobody` (through `setpriv`) opens `path` read-only and holds an
/// exclusive `flock` on it, as any local user could; returns the process
/// and what it says: `held`, or `denied <errno>`. Needs root.
pub fn attacker_flock(path: &Path) -> (std::process::Child, String) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let script = "import fcntl,os,sys,time\n\
try:\n    fd = os.open(sys.argv[1], os.O_RDONLY)\n    fcntl.flock(fd, fcntl.LOCK_EX)\n\
except OSError as e:\n    print('denied', e.errno, flush=True)\n    sys.exit(1)\n\
print('held', flush=True)\ntime.sleep(60)\n";
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            // A system Python: another user may not reach a per-user shim.
            ["/usr/bin/python3", "/usr/local/bin/python3"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .unwrap_or("python3"),
            "-c",
            script,
        ])
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(!line.is_empty(), "the attacker process did not start");
    (child, line.trim().to_string())
}
