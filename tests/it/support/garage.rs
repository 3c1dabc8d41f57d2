//! A real S3 store for the tests: a single-node Garage on loopback, in a
//! temporary directory, with a generated configuration, one key
//! (`gapferry-test`) and one bucket ([`BUCKET`]) that key owns and that is
//! also served as a website (the HTTP endpoint Defender clients would
//! poll). [`Garage::start`] returns once the S3 API answers; dropping the
//! value kills the server.
//!
//! The binary comes from `GAPFERRY_GARAGE`, else `garage` on PATH, else
//! `~/.cargo/bin/garage`. Without one the test fails and says how to
//! install it: tests against object storage never pass by being skipped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gapferry::s3::{Client, Config, Location, Retry};

/// The bucket every test store has.
pub const BUCKET: &str = "mirror";
/// Garage's signing region (`s3_region` in the configuration).
pub const REGION: &str = "garage";
/// Buckets are served as websites at `<bucket>.<WEB_ROOT>`.
pub const WEB_ROOT: &str = "web.garage";
/// The access key's name.
pub const KEY_NAME: &str = "gapferry-test";

/// How long the server may take to answer after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One running (or stopped) single-node Garage.
#[derive(Debug)]
pub struct Garage {
    dir: tempfile::TempDir,
    bin: PathBuf,
    conf: PathBuf,
    /// The server process; behind a lock so a test holding clients
    /// (which borrow the store) can still stop and restart it.
    child: Mutex<Option<Child>>,
    pub s3_port: u16,
    pub web_port: u16,
    pub key_id: String,
    pub secret: String,
    /// How long [`Garage::start`] took, server start to a ready bucket.
    pub startup: Duration,
}

/// The garage binary, or a failure saying how to install one.
pub fn garage_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GAPFERRY_GARAGE").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "GAPFERRY_GARAGE={} is not a file; point it at a garage 2.x binary",
            p.display()
        );
        return p;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    });
    let in_cargo = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cargo/bin/garage"))
        .filter(|p| p.is_file());
    on_path.or(in_cargo).unwrap_or_else(|| {
        panic!(
            "the S3 tests need a Garage server binary and none was found (GAPFERRY_GARAGE, \
             `garage` on PATH, ~/.cargo/bin/garage). Install it with \
             `cargo install --debug --locked garage --no-default-features --features bundled-libs,lmdb` \
             (about 5 minutes), or set GAPFERRY_GARAGE=/path/to/garage"
        )
    })
}

/// `n` distinct free loopback ports (held together while chosen).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

impl Garage {
    /// Starts a new store and sets up its key and bucket.
    pub fn start() -> Garage {
        let bin = garage_bin();
        let dir = tempfile::tempdir().expect("temporary directory for garage");
        let ports = free_ports(4);
        let (s3_port, web_port, rpc_port, admin_port) = (ports[0], ports[1], ports[2], ports[3]);
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).expect("random rpc secret");
        let conf = dir.path().join("garage.toml");
        let text = format!(
            r#"# A single-node test store (tests/it/support/garage.rs).
metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "lmdb"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"

[s3_web]
bind_addr = "127.0.0.1:{web_port}"
root_domain = ".{WEB_ROOT}"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
            root = dir.path().display(),
            rpc_secret = hex::encode(secret),
        );
        std::fs::write(&conf, text).expect("write garage.toml");
        let began = Instant::now();
        let mut g = Garage {
            dir,
            bin,
            conf,
            child: Mutex::new(None),
            s3_port,
            web_port,
            key_id: String::new(),
            secret: String::new(),
            startup: Duration::ZERO,
        };
        g.spawn();
        let node = g.cli(&["node", "id", "-q"]);
        let node = node
            .trim()
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(!node.is_empty(), "garage node id printed nothing");
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        g.cli(&["layout", "apply", "--version", "1"]);
        g.cli(&["key", "create", KEY_NAME]);
        g.cli(&["bucket", "create", BUCKET]);
        g.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_NAME,
        ]);
        g.cli(&["bucket", "website", "--allow", BUCKET]);
        let info = g.cli(&["key", "info", "--show-secret", KEY_NAME]);
        g.key_id = field(&info, "Key ID:");
        g.secret = field(&info, "Secret key:");
        g.wait_for_bucket();
        g.startup = began.elapsed();
        g
    }

    /// `http://127.0.0.1:PORT`, the S3 API.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The variables that point `gapferry` at this store (with
    /// `--s3-path-style`, which loopback addresses need).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL_S3", self.endpoint()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
    }

    /// The library's configuration for this store.
    pub fn config(&self) -> Config {
        Config {
            endpoint: self.endpoint().parse().expect("endpoint URL"),
            region: REGION.to_string(),
            path_style: true,
            access_key: self.key_id.clone(),
            secret_key: self.secret.clone(),
            session_token: None,
        }
    }

    /// A client for `s3://mirror/<prefix>`.
    pub fn client(&self, prefix: &str) -> Client {
        let location: Location = if prefix.is_empty() {
            format!("s3://{BUCKET}").parse()
        } else {
            format!("s3://{BUCKET}/{prefix}").parse()
        }
        .expect("test location");
        Client::new(self.config(), location).expect("client")
    }

    /// GET `key` (a full key in [`BUCKET`]) through the website endpoint,
    /// as a Defender client would: status and body.
    pub fn web_get(&self, key: &str) -> (u16, Vec<u8>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let url = format!("http://127.0.0.1:{}/{}", self.web_port, key);
        let mut resp = agent
            .get(&url)
            .header("host", format!("{BUCKET}.{WEB_ROOT}"))
            .call()
            .unwrap_or_else(|e| panic!("GET {url} (website endpoint): {e}"));
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap_or_else(|e| panic!("GET {url} (website endpoint) body: {e}"));
        (status, body)
    }

    /// Kills the server (the store "goes away"); its data stays.
    pub fn stop(&self) {
        let taken = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = taken {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data.
    pub fn restart(&self) {
        self.stop();
        self.spawn();
        self.wait_for_bucket();
    }

    /// Whether the server process is running.
    pub fn running(&self) -> bool {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The server's log (stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn spawn(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("garage server log");
        let err = log.try_clone().expect("garage server log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        self.poll("garage status to answer", || {
            self.run(&["status"]).map(|_| ()).ok()
        });
    }

    /// Runs a garage CLI command against this server; its stdout, or a
    /// failure with its output and the server log. Retried briefly: right
    /// after `layout apply` the tables may not be ready yet.
    fn cli(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.run(args) {
                Ok(out) => return out,
                Err(e) if Instant::now() > deadline => panic!(
                    "garage {}: {e}\nserver log:\n{}",
                    args.join(" "),
                    self.log()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Polls until the key may list the bucket through the S3 API.
    fn wait_for_bucket(&self) {
        let client = self.client("").with_retry(Retry {
            attempts: 1,
            ..Retry::default()
        });
        self.poll("the S3 API to serve the bucket", || {
            client.check_bucket().ok()
        });
    }

    fn poll(&self, what: &str, mut ready: impl FnMut() -> Option<()>) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while ready().is_none() {
            assert!(
                Instant::now() < deadline,
                "garage: waited {READY_TIMEOUT:?} for {what}\nserver log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value after `label` on its line of `garage key info` output.
fn field(output: &str, label: &str) -> String {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("no {label:?} in garage output:\n{output}"))
}
