//! The S3 client (`gapferry::s3::Client`) against a real Garage
//! ([`crate::support::garage`]): uploads small and multipart with their
//! checksums and metadata, HEAD, bounded GET, conditional server-side
//! copy, DELETE, paginated LIST, and the errors an operator meets: wrong
//! secret, missing bucket, skewed clock, a store that went away, a staged
//! file that changed before it was uploaded.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gapferry::progress::{NoProgress, Observer};
use gapferry::s3::{Client, Config, Location, Retry, S3Error, MULTIPART_THRESHOLD, PART_SIZE};
use sha2::{Digest, Sha256};

use crate::support::garage::{Garage, BUCKET};

/// A loopback server answering every request with `status` (an S3 XML
/// error with `code`); returns its endpoint and the request counter.
fn canned(status: u16, code: &'static str) -> (String, std::sync::Arc<AtomicU64>) {
    use std::io::{BufRead, BufReader, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            seen.fetch_add(1, Ordering::SeqCst);
            let xml = format!("<Error><Code>{code}</Code><Message>canned</Message></Error>");
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{xml}",
                xml.len()
            );
        }
    });
    (endpoint, count)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `len` bytes that do not repeat with any short period.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    let mut block = vec![0u8; 1 << 20];
    getrandom::getrandom(&mut block).unwrap();
    block[0] = seed;
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        block[1..9].copy_from_slice(&i.to_le_bytes());
        let take = (len - out.len()).min(block.len());
        out.extend_from_slice(&block[..take]);
        i += 1;
    }
    out
}

/// Counts what an upload reports.
#[derive(Default)]
struct Counted {
    started: AtomicU64,
    total: AtomicU64,
    advanced: AtomicU64,
    finished: AtomicU64,
}

impl Observer for Counted {
    fn start(&self, _label: &str, total: u64) {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.total.store(total, Ordering::SeqCst);
    }
    fn advance(&self, n: u64) {
        self.advanced.fetch_add(n, Ordering::SeqCst);
    }
    fn finish(&self) {
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

/// Retries short enough for a test that expects them to run out.
fn quick() -> Retry {
    Retry {
        attempts: 3,
        backoff: Duration::from_millis(10),
        cap: Duration::from_millis(40),
    }
}

#[test]
fn small_file_put_head_get_and_delete() {
    let g = Garage::start();
    eprintln!("garage ready in {:?}", g.startup);
    let c = g.client("site/a");
    let dir = tempfile::tempdir().unwrap();
    let data = payload(300_000, 1);
    let path = dir.path().join("updates.zip");
    std::fs::write(&path, &data).unwrap();
    let sha = sha256_hex(&data);
    let seen = Counted::default();

    let info = c
        .put_file(
            "linux/production/updates.zip",
            &path,
            &sha,
            "application/zip",
            &seen,
        )
        .unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.sha256.as_deref(), Some(sha.as_str()));
    assert!(
        info.etag.starts_with('"') && info.etag.ends_with('"'),
        "{}",
        info.etag
    );
    assert_eq!(seen.started.load(Ordering::SeqCst), 1);
    assert_eq!(seen.total.load(Ordering::SeqCst), data.len() as u64);
    assert_eq!(seen.advanced.load(Ordering::SeqCst), data.len() as u64);
    assert_eq!(seen.finished.load(Ordering::SeqCst), 1);

    assert_eq!(c.head("linux/production/updates.zip").unwrap(), Some(info));
    assert_eq!(c.head("linux/production/nothing.zip").unwrap(), None);
    let back = c
        .get_bytes("linux/production/updates.zip", 1 << 20)
        .unwrap()
        .unwrap();
    assert!(back == data, "GET returned other bytes");
    let mut streamed = Vec::new();
    let n = c
        .get_to("/linux/production/updates.zip", &mut streamed)
        .unwrap();
    assert_eq!(n, Some(data.len() as u64));
    assert!(streamed == data);
    assert_eq!(c.get_bytes("linux/nothing", 10).unwrap(), None);

    let too_big = c
        .get_bytes("linux/production/updates.zip", 1000)
        .unwrap_err();
    assert!(matches!(too_big, S3Error::Mismatch { .. }), "{too_big}");
    assert!(
        too_big
            .to_string()
            .starts_with("s3://mirror/site/a/linux/production/updates.zip: "),
        "{too_big}"
    );

    // What Defender clients poll: the website endpoint, by full key.
    let (status, body) = g.web_get("site/a/linux/production/updates.zip");
    assert_eq!(status, 200);
    assert!(body == data, "the website endpoint serves other bytes");

    c.delete("linux/production/updates.zip").unwrap();
    assert_eq!(c.head("linux/production/updates.zip").unwrap(), None);
    c.delete("linux/production/updates.zip").unwrap();
    assert_eq!(g.web_get("site/a/linux/production/updates.zip").0, 404);
}

#[test]
fn large_file_goes_up_in_checked_parts() {
    let g = Garage::start();
    let c = g.client("big");
    let dir = tempfile::tempdir().unwrap();
    let len = (MULTIPART_THRESHOLD + 6 * 1024 * 1024) as usize;
    let data = payload(len, 2);
    let path = dir.path().join("updates.zip");
    std::fs::write(&path, &data).unwrap();
    let sha = sha256_hex(&data);
    let seen = Counted::default();

    let began = std::time::Instant::now();
    let info = c
        .put_file("updates.zip", &path, &sha, "application/zip", &seen)
        .unwrap();
    eprintln!("70 MiB multipart upload: {:?}", began.elapsed());
    let parts = (len as u64).div_ceil(PART_SIZE);
    assert_eq!(info.size, len as u64);
    assert_eq!(info.sha256.as_deref(), Some(sha.as_str()));
    // S3's multipart ETag: "<md5 of the part md5s>-<parts>".
    assert!(info.etag.ends_with(&format!("-{parts}\"")), "{}", info.etag);
    assert_eq!(seen.advanced.load(Ordering::SeqCst), len as u64);

    struct Hashing(Sha256, u64);
    impl Write for Hashing {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.update(b);
            self.1 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(Sha256::new(), 0);
    assert_eq!(c.get_to("updates.zip", &mut h).unwrap(), Some(len as u64));
    assert_eq!(hex::encode(h.0.finalize()), sha);
}

#[test]
fn a_file_that_changed_after_hashing_is_refused_and_leaves_no_object() {
    let g = Garage::start();
    let c = g.client("p");
    let dir = tempfile::tempdir().unwrap();
    for (name, len) in [
        ("small.zip", 100_000usize),
        ("large.zip", (MULTIPART_THRESHOLD + 1) as usize),
    ] {
        let mut data = payload(len, 3);
        let sha = sha256_hex(&data);
        // Same size, one byte different: only the hash can tell.
        let last = data.len() - 1;
        data[last] ^= 0xff;
        let path = dir.path().join(name);
        std::fs::write(&path, &data).unwrap();
        let err = c
            .put_file(name, &path, &sha, "application/zip", &NoProgress)
            .unwrap_err();
        assert!(matches!(err, S3Error::Mismatch { .. }), "{name}: {err}");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("changed on disk"), "{text}");
        assert_eq!(c.head(name).unwrap(), None, "{name} was left in the store");
    }
    assert!(c.list("").unwrap().is_empty());
}

#[test]
fn copy_is_conditional_on_the_source_etag() {
    let g = Garage::start();
    let c = g.client("m");
    let a = c
        .put_bytes("cur/manifest.json", b"{\"v\":1}", "application/json", false)
        .unwrap();
    assert_eq!(a.sha256.as_deref(), Some(sha256_hex(b"{\"v\":1}").as_str()));

    let b = c
        .copy("cur/manifest.json", "back/manifest.json", Some(&a.etag))
        .unwrap();
    assert_eq!(
        (b.size, &b.sha256),
        (a.size, &a.sha256),
        "metadata is copied"
    );
    assert_eq!(
        c.get_bytes("back/manifest.json", 100).unwrap().as_deref(),
        Some(&b"{\"v\":1}"[..])
    );
    // Copies keep Content-Type too (the website endpoint serves it).
    assert_eq!(g.web_get("m/back/manifest.json").0, 200);

    // The source changed since its ETag was read: 412, nothing copied.
    let a2 = c
        .put_bytes("cur/manifest.json", b"{\"v\":2}", "application/json", false)
        .unwrap();
    assert_ne!(a2.etag, a.etag);
    let err = c
        .copy("cur/manifest.json", "back/other.json", Some(&a.etag))
        .unwrap_err();
    assert!(matches!(err, S3Error::Precondition { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("s3://mirror/m/cur/manifest.json: "),
        "{err}"
    );
    assert_eq!(c.head("back/other.json").unwrap(), None);

    // Unconditional copy, and a missing source.
    c.copy("cur/manifest.json", "back/other.json", None)
        .unwrap();
    let err = c.copy("cur/absent.json", "back/x.json", None).unwrap_err();
    assert!(matches!(err, S3Error::Status { status: 404, .. }), "{err}");
    assert!(
        err.to_string().contains("s3://mirror/m/cur/absent.json"),
        "{err}"
    );
}

#[test]
fn create_only_put_is_ignored_by_garage() {
    // Garage 2.5 does not implement If-None-Match on PUT: a create-only
    // write replaces the object. The publish protocol must not rely on it
    // (this test fails, and says so, the day a Garage starts honouring it).
    let g = Garage::start();
    let c = g.client("claim");
    c.put_bytes("owner", b"first\n", "text/plain", true)
        .unwrap();
    match c.put_bytes("owner", b"second\n", "text/plain", true) {
        Ok(_) => assert_eq!(
            c.get_bytes("owner", 100).unwrap().as_deref(),
            Some(&b"second\n"[..])
        ),
        Err(S3Error::Precondition { .. }) => {
            panic!("this Garage honours If-None-Match: * now; update the publish protocol notes")
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn listing_follows_every_page_and_strips_the_prefix() {
    let g = Garage::start();
    let c = g.client("site").with_list_page_size(3);
    let names = [
        "l/a.zip",
        "l/b c+d.zip",
        "l/sub/c.json",
        "l/d",
        "l/e",
        "l/f",
        "l/g",
    ];
    for n in names {
        c.put_bytes(n, n.as_bytes(), "application/octet-stream", false)
            .unwrap();
    }
    c.put_bytes("other/x", b"x", "text/plain", false).unwrap();
    let outside = g.client("");
    outside
        .put_bytes("sitex/y", b"y", "text/plain", false)
        .unwrap();

    let mut want: Vec<(String, u64)> = names
        .iter()
        .map(|n| (n.to_string(), n.len() as u64))
        .collect();
    want.sort();
    assert_eq!(c.list("l/").unwrap(), want);
    let all: Vec<String> = c.list("").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(all.len(), names.len() + 1, "{all:?}");
    assert!(all.contains(&"other/x".to_string()));
    assert!(!all.iter().any(|k| k.contains("sitex")), "{all:?}");
    assert!(c.list("nothing/").unwrap().is_empty());
    let root: Vec<String> = outside
        .list("")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(root.contains(&"site/l/a.zip".to_string()), "{root:?}");
    assert!(root.contains(&"sitex/y".to_string()), "{root:?}");
}

#[test]
fn wrong_credentials_name_the_object_and_the_fix() {
    let g = Garage::start();
    let location: Location = format!("s3://{BUCKET}/p").parse().unwrap();
    for config in [
        Config {
            secret_key: "0".repeat(64),
            ..g.config()
        },
        Config {
            access_key: "GK000000000000000000000000".into(),
            ..g.config()
        },
    ] {
        let c = Client::new(config, location.clone()).unwrap();
        let err = c
            .put_bytes("x/manifest.json", b"{}", "application/json", false)
            .unwrap_err();
        assert!(matches!(err, S3Error::Credentials { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with("s3://mirror/p/x/manifest.json: "),
            "{text}"
        );
        assert!(text.contains("AWS_SECRET_ACCESS_KEY"), "{text}");
        // HEAD answers carry no reason; the client asks the store for one.
        let err = c.head("x/manifest.json").unwrap_err();
        assert!(matches!(err, S3Error::Credentials { .. }), "{err}");
        let err = c.check_bucket().unwrap_err();
        assert!(matches!(err, S3Error::Credentials { .. }), "{err}");
        assert!(matches!(
            c.list("").unwrap_err(),
            S3Error::Credentials { .. }
        ));
        // A refused upload too large for the socket buffers: the store may
        // drop the connection mid-body; the error is still the refusal.
        let dir = tempfile::tempdir().unwrap();
        let data = payload(24 << 20, 4);
        let path = dir.path().join("big.zip");
        std::fs::write(&path, &data).unwrap();
        let err = c
            .put_file(
                "big.zip",
                &path,
                &sha256_hex(&data),
                "application/zip",
                &NoProgress,
            )
            .unwrap_err();
        assert!(matches!(err, S3Error::Credentials { .. }), "{err}");
    }
    assert_eq!(g.client("p").head("x/manifest.json").unwrap(), None);
}

#[test]
fn a_missing_bucket_is_named_with_the_fix() {
    let g = Garage::start();
    let location: Location = "s3://no-such-bucket/p".parse().unwrap();
    let c = Client::new(g.config(), location).unwrap();
    for err in [
        c.check_bucket().unwrap_err(),
        c.put_bytes("a", b"a", "text/plain", false).unwrap_err(),
        c.list("").unwrap_err(),
        c.get_bytes("a", 10).unwrap_err(),
    ] {
        assert!(matches!(err, S3Error::NoBucket { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("garage bucket create no-such-bucket"),
            "{err}"
        );
    }
}

#[test]
fn a_clock_far_behind_is_reported_as_clock_skew() {
    let g = Garage::start();
    let behind = g.client("p").with_clock_offset(-2 * 3600);
    let err = behind
        .put_bytes("a", b"a", "text/plain", false)
        .unwrap_err();
    assert!(matches!(err, S3Error::ClockSkew { .. }), "{err}");
    let text = err.to_string();
    assert!(text.starts_with("s3://mirror/p/a: "), "{text}");
    assert!(text.contains("timedatectl"), "{text}");
    let err = behind.head("a").unwrap_err();
    assert!(matches!(err, S3Error::ClockSkew { .. }), "{err}");
    // A few minutes off is within the signature's lifetime.
    let slightly = g.client("p").with_clock_offset(-5 * 60);
    slightly.put_bytes("a", b"a", "text/plain", false).unwrap();
}

#[test]
fn a_store_that_went_away_is_unreachable_after_the_retries() {
    let g = Garage::start();
    let c = g.client("p").with_retry(quick());
    c.put_bytes("a", b"a", "text/plain", false).unwrap();
    g.stop();
    for err in [
        c.head("a").unwrap_err(),
        c.put_bytes("b", b"b", "text/plain", false).unwrap_err(),
    ] {
        match &err {
            S3Error::Unreachable { attempts, .. } => assert_eq!(*attempts, 3, "{err}"),
            other => panic!("not Unreachable: {other}"),
        }
        let text = err.to_string();
        assert!(text.starts_with("s3://mirror/p/"), "{text}");
        assert!(text.contains("--s3-endpoint"), "{text}");
    }
    g.restart();
    assert!(
        c.head("a").unwrap().is_some(),
        "the data survived a restart"
    );
    assert_eq!(c.head("b").unwrap(), None);
}

#[test]
fn server_errors_and_throttling_are_retried_refusals_are_not() {
    for (status, code, attempts) in [
        (503, "SlowDown", 3),
        (500, "InternalError", 3),
        (429, "TooManyRequests", 3),
        (400, "InvalidRequest", 1),
        (404, "NoSuchBucket", 1),
    ] {
        let (endpoint, count) = canned(status, code);
        let config = Config {
            endpoint: endpoint.parse().unwrap(),
            region: "garage".into(),
            path_style: true,
            access_key: "GK".into(),
            secret_key: "s".into(),
            session_token: None,
        };
        let c = Client::new(config, "s3://mirror/p".parse().unwrap())
            .unwrap()
            .with_retry(quick());
        let err = c.put_bytes("a", b"a", "text/plain", false).unwrap_err();
        assert_eq!(
            count.load(Ordering::SeqCst),
            attempts,
            "{status} {code}: {err}"
        );
        assert!(err.to_string().starts_with("s3://mirror/p/a: "), "{err}");
        if status == 404 {
            assert!(matches!(err, S3Error::NoBucket { .. }), "{err}");
        } else {
            assert!(
                matches!(&err, S3Error::Status { status: s, .. } if *s == status),
                "{err}"
            );
        }
    }
}

#[test]
fn the_binary_signs_with_the_test_clock_offset() {
    let g = Garage::start();
    let state = tempfile::tempdir().unwrap();
    let status = |offset: Option<&str>| {
        let mut c = crate::support::command();
        c.args([
            "status",
            "--mirror",
            "s3://mirror/p",
            "--s3-path-style",
            "--state-dir",
        ])
        .arg(state.path())
        .envs(g.env());
        if let Some(o) = offset {
            c.env(crate::support::S3_CLOCK_OFFSET, o);
        }
        c.output().unwrap()
    };
    let skewed = status(Some("-7200"));
    let stderr = String::from_utf8_lossy(&skewed.stderr);
    assert_eq!(skewed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("s3://mirror/p"), "{stderr}");
    assert!(stderr.contains("clock"), "{stderr}");
    let fine = status(None);
    let stderr = String::from_utf8_lossy(&fine.stderr);
    assert!(!stderr.contains("clock"), "{stderr}");
}
