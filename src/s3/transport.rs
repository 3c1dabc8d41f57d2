//! Sending one signed S3 request: the HTTP agent, the clock requests are
//! signed with, retries with backoff, and turning an error answer into an
//! [`S3Error`]. Each attempt is signed right before it is sent, so a
//! request that waited (a retry, a late part of a long upload) never goes
//! out with an expired signature.
//!
//! This module never builds S3 requests or reads successful answers (that
//! is [`super::client`]'s job), and never retries a request the store
//! refused for good (4xx other than 429).

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use ureq::http::{Method, Request, Response};
use ureq::{Agent, Body, SendBody};
use url::Url;

use super::error::ErrorBody;
use super::S3Error;
use crate::mde::upstream::{tls_config, ExtraRoots};

/// How long a signature stays valid. Every attempt is signed right before
/// it is sent, so this only has to cover the trip to the store; it is
/// also how far behind the store's clock this machine's may be before the
/// store refuses the request (Garage: "Date is too old").
pub(crate) const SIGNATURE_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// How often, and how patiently, a request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (1: no retry).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
    /// The longest wait between two attempts.
    pub cap: Duration,
}

impl Default for Retry {
    /// 5 attempts, waiting 200 ms, 400 ms, 800 ms, 1.6 s (at most 5 s).
    fn default() -> Self {
        Retry {
            attempts: 5,
            backoff: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        }
    }
}

impl Retry {
    fn delay(&self, failed_attempt: u32) -> Duration {
        let factor = 1u32 << failed_attempt.saturating_sub(1).min(16);
        self.backoff.saturating_mul(factor).min(self.cap)
    }
}

/// The body of a request, re-sendable: every attempt sends it whole.
pub(crate) enum Payload<'a> {
    /// No body at all (GET, HEAD, DELETE).
    None,
    /// Bytes in memory (`Content-Length` set from them; may be empty).
    Bytes(&'a [u8]),
    /// `len` bytes of the file at `path` from its start, re-read for every
    /// attempt; `sent` hears how many bytes of the file this attempt has
    /// handed to the connection so far (it starts again from 0 on a retry).
    File {
        path: &'a Path,
        len: u64,
        sent: &'a dyn Fn(u64),
    },
}

impl Payload<'_> {
    fn is_large(&self) -> bool {
        match self {
            Payload::None => false,
            Payload::Bytes(b) => b.len() > 1024 * 1024,
            Payload::File { len, .. } => *len > 1024 * 1024,
        }
    }
}

/// The HTTP side of a [`super::Client`].
pub(crate) struct Transport {
    agent: Agent,
    pub retry: Retry,
    /// Seconds added to this machine's clock when signing (tests only).
    pub clock_offset_secs: i64,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("retry", &self.retry)
            .field("clock_offset_secs", &self.clock_offset_secs)
            .finish_non_exhaustive()
    }
}

/// An answer the caller handles itself: 2xx, or 404 that is not
/// NoSuchBucket (the object is absent).
pub(crate) enum Answer {
    Ok(Response<Body>),
    NotFound,
}

/// Where errors point: the `s3://` URL of the object and its bucket.
pub(crate) struct Target<'a> {
    pub url: &'a str,
    pub bucket: &'a str,
}

impl Transport {
    pub fn new() -> Transport {
        let agent: Agent = Agent::config_builder()
            .user_agent(concat!("gapferry/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .timeout_per_write(Some(Duration::from_secs(120)))
            .timeout_recv_response(Some(Duration::from_secs(600)))
            .max_redirects(0)
            .http_status_as_error(false)
            // A store inside the network is reached directly: no proxy
            // from the environment.
            .proxy(None)
            .tls_config(tls_config(&ExtraRoots::default()))
            .build()
            .into();
        Transport {
            agent,
            retry: Retry::default(),
            clock_offset_secs: crate::faults::s3_clock_offset_secs(),
        }
    }

    /// The time requests are signed with.
    fn now(&self) -> Timestamp {
        let now = Timestamp::now();
        now.checked_add(SignedDuration::from_secs(self.clock_offset_secs))
            .unwrap_or(now)
    }

    /// Sends the request `sign` gives (a presigned URL for a time) with
    /// `headers` (exactly the signed ones) and `payload`, retrying 5xx,
    /// throttling and dropped connections. A transport failure of a large
    /// body asks `probe` whether the store refuses requests for good
    /// (credentials, clock), since a store that refuses a request may close
    /// the connection before the body is sent, and that error is returned.
    pub fn send(
        &self,
        target: &Target<'_>,
        method: Method,
        sign: &dyn Fn(&Timestamp) -> Url,
        headers: &[(String, String)],
        payload: &Payload<'_>,
        probe: Option<&dyn Fn() -> Option<S3Error>>,
    ) -> Result<Answer, S3Error> {
        let attempts = self.retry.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let url = sign(&self.now());
            match self.once(&method, &url, headers, payload) {
                Err(Failed::Local(reason)) => {
                    return Err(S3Error::Mismatch {
                        url: target.url.to_string(),
                        reason,
                    })
                }
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    if (200..300).contains(&status) {
                        return Ok(Answer::Ok(resp));
                    }
                    let body = read_error_body(&mut resp);
                    let parsed = ErrorBody::parse(&body);
                    if status == 404 && parsed.code != "NoSuchBucket" {
                        return Ok(Answer::NotFound);
                    }
                    if !parsed.retryable(status) || attempt >= attempts {
                        return Err(parsed.into_error(status, target.url, target.bucket));
                    }
                }
                Err(Failed::Net(e)) => {
                    if payload.is_large() {
                        if let Some(refused) = probe.and_then(|p| p()) {
                            return Err(refused);
                        }
                    }
                    if !transient(&e) || attempt >= attempts {
                        return Err(S3Error::Unreachable {
                            url: target.url.to_string(),
                            attempts: attempt,
                            message: error_chain(&e),
                        });
                    }
                }
            }
            std::thread::sleep(self.retry.delay(attempt));
        }
    }

    fn once(
        &self,
        method: &Method,
        url: &Url,
        headers: &[(String, String)],
        payload: &Payload<'_>,
    ) -> Result<Response<Body>, Failed> {
        let mut builder = Request::builder().method(method.clone()).uri(url.as_str());
        for (k, v) in headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let net = Failed::Net;
        let http = |e: ureq::http::Error| Failed::Net(e.into());
        match payload {
            Payload::None => self.agent.run(builder.body(()).map_err(http)?).map_err(net),
            Payload::Bytes(b) => self.agent.run(builder.body(*b).map_err(http)?).map_err(net),
            Payload::File { path, len, sent } => {
                let file = File::open(path)
                    .map_err(|e| Failed::Local(format!("cannot read {}: {e}", path.display())))?;
                let mut reader = Counting {
                    inner: file.take(*len),
                    left: *len,
                    done: 0,
                    sent: *sent,
                    short: false,
                };
                let req = builder
                    .header("content-length", len.to_string())
                    .body(SendBody::from_reader(&mut reader))
                    .map_err(http)?;
                let result = self.agent.run(req);
                if reader.short {
                    return Err(Failed::Local(format!(
                        "{} is shorter than the {len} bytes it had when it was hashed (it \
                         changed on disk); nothing was uploaded, run the import again",
                        path.display()
                    )));
                }
                result.map_err(net)
            }
        }
    }
}

/// Why an attempt failed before the store answered.
enum Failed {
    /// The connection: may be retried.
    Net(ureq::Error),
    /// The local body (a file that shrank): never retried.
    Local(String),
}

/// A reader that reports how much went through it, and fails (instead of
/// ending early, which would leave the request waiting for the rest of
/// its announced length) when the file has fewer bytes than announced.
struct Counting<'a, R> {
    inner: R,
    left: u64,
    done: u64,
    sent: &'a dyn Fn(u64),
    short: bool,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.short = true;
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file is shorter than announced",
            ));
        }
        self.left -= n as u64;
        self.done += n as u64;
        (self.sent)(self.done);
        Ok(n)
    }
}

/// At most 64 KiB of an error answer's body.
fn read_error_body(resp: &mut Response<Body>) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(64 * 1024)
        .read_to_end(&mut out);
    out
}

/// Whether a transport failure may go away by itself (a store restarting,
/// a dropped connection), as opposed to a TLS or URL problem.
fn transient(e: &ureq::Error) -> bool {
    !matches!(
        e,
        ureq::Error::Tls(_)
            | ureq::Error::Rustls(_)
            | ureq::Error::Pem(_)
            | ureq::Error::BadUri(_)
            | ureq::Error::Http(_)
            | ureq::Error::InvalidProxyUrl
            | ureq::Error::RequireHttpsOnly(_)
            | ureq::Error::TlsRequired
    )
}

/// `e` and its causes, one line.
fn error_chain(e: &ureq::Error) -> String {
    let mut out = match e {
        ureq::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_shorter_than_announced_fails_instead_of_ending() {
        let seen = std::cell::Cell::new(0u64);
        let note = |d: u64| seen.set(d);
        let mut r = Counting {
            inner: &b"abcdef"[..],
            left: 10,
            done: 0,
            sent: &note,
            short: false,
        };
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(r.short);
        assert_eq!((out.as_slice(), seen.get()), (&b"abcdef"[..], 6));
        let mut exact = Counting {
            inner: (&b"abcdef"[..]).take(4),
            left: 4,
            done: 0,
            sent: &note,
            short: false,
        };
        out.clear();
        exact.read_to_end(&mut out).unwrap();
        assert!(!exact.short);
        assert_eq!((out.as_slice(), seen.get()), (&b"abcd"[..], 4));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = Retry::default();
        let waits: Vec<u64> = (1..=6).map(|a| r.delay(a).as_millis() as u64).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000]);
    }
}
