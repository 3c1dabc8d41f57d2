//! Microsoft's update endpoints as `fetch` sees them: the fwlink query strings
//! (built exactly as `xplat_offline_updates_download.sh` builds them), the
//! `&action=info` XML, and a blocking HTTP client with timeouts, bounded
//! retries and a streaming, size-capped package download.
//!
//! It also owns the client's trust: TLS roots (the built-in Mozilla set, the
//! operating system's store, and `--ca-cert` files) and the redirect rule
//! (HTTPS stays HTTPS; plain HTTP only to a loopback address). A package
//! fetched over plain HTTP could be swapped by anyone on the path and would
//! then be signed into a bundle, so no request or redirect may leave HTTPS
//! for another machine.
//!
//! This module only talks HTTP and parses what comes back; it never decides
//! where files go on disk and never replaces anything (that is
//! [`super::fetch`]'s job), and it never prints.

use std::fmt;
use std::io::{Read, Seek, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quick_xml::events::Event;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use ureq::http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use ureq::http::{Response, StatusCode};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::{Agent, Body, Proxy};
use url::Url;

use super::layout::{Arch, FolderManifest, Platform, Ring, Slot};
use super::version::Version;
use crate::progress::Observer;

/// Microsoft's redirector, the base every query string is appended to.
pub const DEFAULT_UPSTREAM: &str = "https://go.microsoft.com/fwlink/";
/// Largest `&action=info` document accepted; Microsoft's is about 200 bytes.
pub const MAX_INFO_SIZE: u64 = 64 * 1024;
/// The four bytes every zip file (with at least one entry) starts with.
pub const ZIP_LOCAL_HEADER: &[u8; 4] = b"PK\x03\x04";
/// Redirects followed for one request (fwlink uses one or two).
pub const MAX_REDIRECTS: usize = 10;
/// Largest `--ca-cert` file accepted (a full system bundle is about 220 KiB).
pub const MAX_CA_FILE: u64 = 4 * 1024 * 1024;

/// The fwlink id of a platform's definition package.
pub fn link_id(platform: Platform) -> &'static str {
    match platform {
        Platform::Linux => "2144709",
        Platform::Mac => "2120136",
    }
}

/// The package URL of `slot` under `base`, with the query string built as
/// Microsoft's script builds it: `?linkid=..`, then `&arch=arm64` for ARM,
/// then `&engRing=3&sigRing=1` for preview.
pub fn package_url(base: &str, slot: Slot) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut url = format!("{base}{sep}linkid={}", link_id(slot.platform));
    if slot.arch == Arch::Arm64 {
        url.push_str("&arch=arm64");
    }
    if slot.ring == Ring::Preview {
        url.push_str("&engRing=3&sigRing=1");
    }
    url
}

/// The version-info URL of `slot`: the package URL plus `&action=info`.
pub fn info_url(base: &str, slot: Slot) -> String {
    package_url(base, slot) + "&action=info"
}

/// What the `&action=info` document says is the current release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamInfo {
    /// `<engine>`: the antimalware engine version.
    pub engine: Version,
    /// `<signatures>`: the definition (security intelligence) version.
    pub definitions: Version,
    /// `<platform>`, when present (the product version; informational).
    pub platform: Option<String>,
    /// The `date` attribute of `<signatures>`, when present.
    pub signatures_date: Option<String>,
}

impl UpstreamInfo {
    /// Parses the info XML with a real XML parser. The elements may sit
    /// anywhere and in any order; unknown elements and attributes are
    /// ignored. `url` only names the document in errors.
    pub fn parse(bytes: &[u8], url: &str) -> Result<Self, UpstreamError> {
        let bad = |reason: String| UpstreamError::BadInfo {
            url: url.to_string(),
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        let text = text.trim_start_matches('\u{feff}');
        let mut reader = quick_xml::Reader::from_str(text);
        let mut open: Vec<Vec<u8>> = Vec::new();
        let (mut engine, mut signatures, mut platform, mut date) = (None, None, None, None);
        let mut saw_element = false;
        loop {
            let event = reader
                .read_event()
                .map_err(|e| bad(format!("not well-formed XML: {e}")))?;
            match event {
                Event::Start(e) => {
                    saw_element = true;
                    if e.local_name().as_ref() == b"signatures" {
                        if let Some(a) = e
                            .try_get_attribute("date")
                            .map_err(|e| bad(format!("bad attribute on <signatures>: {e}")))?
                        {
                            let v = a
                                .unescape_value()
                                .map_err(|e| bad(format!("bad date on <signatures>: {e}")))?;
                            date = Some(v.into_owned());
                        }
                    }
                    open.push(e.local_name().as_ref().to_vec());
                    if open.len() > 32 {
                        return Err(bad("nested more than 32 elements deep".into()));
                    }
                }
                Event::Empty(_) => saw_element = true,
                Event::End(_) => {
                    open.pop();
                }
                Event::Text(t) => {
                    let value = t
                        .unescape()
                        .map_err(|e| bad(format!("bad text: {e}")))?
                        .trim()
                        .to_string();
                    if value.is_empty() {
                        continue;
                    }
                    let slot = match open.last().map(Vec::as_slice) {
                        Some(b"engine") => &mut engine,
                        Some(b"signatures") => &mut signatures,
                        Some(b"platform") => &mut platform,
                        _ => continue,
                    };
                    if slot.is_some() {
                        return Err(bad(format!(
                            "<{}> appears twice",
                            String::from_utf8_lossy(open.last().expect("matched above"))
                        )));
                    }
                    *slot = Some(value);
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if !saw_element {
            return Err(bad("empty document".into()));
        }
        let engine = engine.ok_or_else(|| bad("no <engine> element".into()))?;
        let signatures = signatures.ok_or_else(|| bad("no <signatures> element".into()))?;
        Ok(UpstreamInfo {
            engine: engine.parse().map_err(|e| bad(format!("<engine>: {e}")))?,
            definitions: signatures
                .parse()
                .map_err(|e| bad(format!("<signatures>: {e}")))?,
            platform,
            signatures_date: date,
        })
    }

    /// True when `other` names the same engine and definition versions.
    pub fn same_release(&self, other: &UpstreamInfo) -> bool {
        self.engine == other.engine && self.definitions == other.definitions
    }

    /// True when a local `manifest.json` already describes this release.
    pub fn matches(&self, local: &FolderManifest) -> bool {
        local.engine().is_ok_and(|e| e == self.engine)
            && local.definitions().is_ok_and(|d| d == self.definitions)
    }

    /// The `manifest.json` describing this release, with Microsoft's keys.
    pub fn to_manifest(&self) -> FolderManifest {
        FolderManifest {
            engine_version: self.engine.to_string(),
            definition_version: self.definitions.to_string(),
        }
    }
}

impl fmt::Display for UpstreamInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "engine {}, definitions {}",
            self.engine, self.definitions
        )
    }
}

/// Timeouts, retries and extra trust of the HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Time allowed to open a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed for any single wait: the response headers, or each read
    /// of the body. A slow but moving download never hits it.
    pub read_timeout: Duration,
    /// Extra attempts after the first, on 5xx, 408, 429, timeouts, dropped
    /// connections and truncated bodies. Other failures are not retried.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one (capped at
    /// one minute).
    pub retry_delay: Duration,
    /// CA certificates trusted in addition to the built-in roots and the
    /// operating system's store (`--ca-cert`).
    pub extra_roots: ExtraRoots,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            retries: 3,
            retry_delay: Duration::from_secs(2),
            extra_roots: ExtraRoots::default(),
        }
    }
}

/// CA certificates from `--ca-cert` PEM files, each checked when read so
/// that a bad file is named before any connection is made.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtraRoots {
    files: Vec<CaFile>,
}

/// One `--ca-cert` file and the DER certificates it holds (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFile {
    pub path: PathBuf,
    certs: Vec<Vec<u8>>,
}

impl CaFile {
    /// How many certificates the file holds.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Never true: a file without a certificate is refused when read.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    fn read(path: &Path) -> Result<Self, UpstreamError> {
        let bad = |reason: String| UpstreamError::CaCert {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|source| UpstreamError::CaCertRead {
            path: path.to_path_buf(),
            source,
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_CA_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| UpstreamError::CaCertRead {
                path: path.to_path_buf(),
                source,
            })?;
        if bytes.len() as u64 > MAX_CA_FILE {
            return Err(bad(format!("it is larger than {MAX_CA_FILE} bytes")));
        }
        let mut certs = Vec::new();
        for (i, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
            let n = i + 1;
            let cert = cert.map_err(|e| bad(format!("certificate {n} is not valid PEM: {e}")))?;
            rustls::RootCertStore::empty()
                .add(cert.clone())
                .map_err(|e| {
                    let why = match e {
                        rustls::Error::InvalidCertificate(c) => format!("{c:?}"),
                        other => other.to_string(),
                    };
                    bad(format!(
                        "certificate {n} is not a usable X.509 CA certificate ({why})"
                    ))
                })?;
            certs.push(cert.as_ref().to_vec());
        }
        if certs.is_empty() {
            return Err(bad(
                "it holds no -----BEGIN CERTIFICATE----- block (a DER file converts with `openssl x509 -inform der -in FILE -out FILE.pem`)".into(),
            ));
        }
        Ok(CaFile {
            path: path.to_path_buf(),
            certs,
        })
    }
}

impl ExtraRoots {
    /// Reads every file: PEM `CERTIFICATE` blocks (other blocks, such as
    /// keys, are ignored), each of which must parse as an X.509 trust
    /// anchor. A file without one is an error naming it.
    pub fn read(paths: &[PathBuf]) -> Result<Self, UpstreamError> {
        let files = paths
            .iter()
            .map(|p| CaFile::read(p))
            .collect::<Result<_, _>>()?;
        Ok(ExtraRoots { files })
    }

    /// The files, in the order given.
    pub fn files(&self) -> &[CaFile] {
        &self.files
    }
}

/// A failure talking to upstream. Every variant names the URL, or the
/// `--ca-cert` file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    #[error("{url} is not a usable upstream URL: {reason}; pass an https:// URL such as {DEFAULT_UPSTREAM} (plain http:// only to a loopback address, such as a local relay)")]
    BadBase { url: String, reason: String },
    #[error("cannot read CA certificate file {path}: {source}; check the --ca-cert path")]
    CaCertRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable CA certificate file: {reason}; pass the proxy's or relay's CA certificate in PEM form to --ca-cert")]
    CaCert { path: PathBuf, reason: String },
    #[error("refused the redirect from {from} to {to}{start}: {why}; gapferry follows no redirect that leaves HTTPS, fix the relay or proxy that sends it", start = if url == from { String::new() } else { format!(" (fetching {url})") })]
    Redirect {
        url: String,
        from: String,
        to: String,
        why: String,
    },
    #[error("cannot verify the TLS certificate of {url}: {reason}; if a TLS-inspecting proxy or relay sits in between, pass its CA certificate with --ca-cert FILE (PEM) or add it to the system's certificate store")]
    Certificate { url: String, reason: String },
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    #[error("cannot reach {url} ({attempts} attempt{s}): {reason}; check the network, DNS and HTTPS_PROXY/NO_PROXY", s = plural(*attempts))]
    Connect {
        url: String,
        attempts: u32,
        reason: String,
    },
    #[error("no answer from {url} within {timeout} ({attempts} attempt{s}); check the network and proxy, or raise --timeout", timeout = humantime::format_duration(*timeout), s = plural(*attempts))]
    Timeout {
        url: String,
        attempts: u32,
        timeout: Duration,
    },
    #[error("{url} answered HTTP {status} ({attempts} attempt{s}); {hint}", s = plural(*attempts), hint = status_hint(*status))]
    Status {
        url: String,
        status: u16,
        attempts: u32,
    },
    #[error("download from {url} broke off after {received} of {expected} bytes ({attempts} attempt{s}); the connection or a proxy dropped it, try again later", expected = expected.map_or("?".to_string(), |n| n.to_string()), s = plural(*attempts))]
    Truncated {
        url: String,
        received: u64,
        expected: Option<u64>,
        attempts: u32,
    },
    #[error("{url} did not send a zip package (content-type {content_type}, starts with {start:?}); a proxy, captive portal or wrong --upstream may be answering instead of Microsoft")]
    NotZip {
        url: String,
        content_type: String,
        start: String,
    },
    #[error("{url}: {what}; raise --max-package-size if the package really is this large")]
    TooLarge { url: String, what: String },
    #[error("{url} did not return Defender version info: {reason}; check --upstream and any proxy in between")]
    BadInfo { url: String, reason: String },
    #[error("cannot write the download from {url} to {path}: {source}; check free space and permissions")]
    Write {
        url: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn status_hint(status: u16) -> &'static str {
    match status {
        407 => "the proxy wants credentials: put them in HTTPS_PROXY (https://user:pass@proxy:port)",
        401 | 403 => "access was refused: check the proxy's allow list for go.microsoft.com and download.microsoft.com",
        404 => "check --upstream",
        500..=599 => "the server or a proxy failed; try again later",
        _ => "check --upstream and any proxy in between",
    }
}

impl UpstreamError {
    /// Whether another attempt could succeed.
    fn retryable(&self) -> bool {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Truncated { .. } => true,
            UpstreamError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }

    fn set_attempts(&mut self, n: u32) {
        match self {
            UpstreamError::Connect { attempts, .. }
            | UpstreamError::Timeout { attempts, .. }
            | UpstreamError::Status { attempts, .. }
            | UpstreamError::Truncated { attempts, .. } => *attempts = n,
            _ => {}
        }
    }
}

/// A finished package download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// Bytes written.
    pub bytes: u64,
    /// SHA-256 of those bytes, lower-case hex (upstream publishes none to
    /// check against; it goes in the log and the report for auditors).
    pub sha256: String,
    /// The URL the redirects ended at.
    pub final_url: String,
    /// How many attempts it took.
    pub attempts: u32,
}

/// A client for one upstream base URL.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Straight to the server: plain http (loopback only), a loopback
    /// base, and hosts NO_PROXY names.
    direct: Agent,
    /// Through the proxy the environment names for https, if any.
    proxied: Option<ProxiedAgent>,
    base: String,
    config: HttpConfig,
}

/// The agent for https requests that go through a proxy, and the rule
/// that sends some hosts around it.
#[derive(Debug, Clone)]
struct ProxiedAgent {
    agent: Agent,
    no_proxy: NoProxy,
}

impl Upstream {
    /// Checks `base` and builds the client. Redirects are followed (up to
    /// [`MAX_REDIRECTS`]) only while they keep to [`check_redirect`];
    /// HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY are honoured, except
    /// that a loopback base is reached directly. TLS trusts the built-in
    /// Mozilla roots, the operating system's store (SSL_CERT_FILE and
    /// SSL_CERT_DIR replace its usual places, as for OpenSSL) and
    /// `config.extra_roots`.
    pub fn new(base: &str, config: HttpConfig) -> Result<Self, UpstreamError> {
        let url = check_base(base)?;
        let tls = tls_config(&config.extra_roots);
        let direct = agent(&config, tls.clone(), None);
        // Plain http to this machine must not travel to a proxy, nor may
        // anything else a loopback base redirects to.
        let proxied = match proxy_var_for("https:") {
            Some(var) if !is_loopback(&url) => {
                let value = std::env::var(var).unwrap_or_default();
                let proxy = Proxy::new(&value).map_err(|e| {
                    // The value is not shown: it may hold credentials.
                    UpstreamError::Client(format!(
                        "{var} is not a usable proxy URL ({e}); set it to http://[user:pass@]host:port"
                    ))
                })?;
                Some(ProxiedAgent {
                    agent: agent(&config, tls, Some(proxy)),
                    no_proxy: NoProxy::from_env(),
                })
            }
            _ => None,
        };
        Ok(Upstream {
            direct,
            proxied,
            base: base.to_string(),
            config,
        })
    }

    /// The agent for one request: https through the proxy unless NO_PROXY
    /// names the host; plain http (loopback only) always direct.
    fn agent_for(&self, url: &Url) -> &Agent {
        match &self.proxied {
            Some(p) if url.scheme() == "https" && !p.no_proxy.matches(url) => &p.agent,
            _ => &self.direct,
        }
    }

    /// The base URL query strings are appended to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Reads the `&action=info` document of `slot`. `on_retry` hears about
    /// each failed attempt that will be retried.
    pub fn info(
        &self,
        slot: Slot,
        on_retry: &dyn Fn(&UpstreamError, Duration),
    ) -> Result<UpstreamInfo, UpstreamError> {
        let url = info_url(&self.base, slot);
        self.with_retries(on_retry, |_| {
            let (resp, _) = self.get(&url)?;
            let body = read_small(resp, &url, MAX_INFO_SIZE, self.config.read_timeout)?;
            UpstreamInfo::parse(&body, &url)
        })
        .map(|(info, _)| info)
    }

    /// Streams the package of `slot` into `out` (truncated first, and again
    /// before each retry), at most `cap` bytes. Fails early when the body
    /// does not start like a zip or is announced larger than `cap`, and
    /// when fewer bytes arrive than announced. `path` names `out` in errors.
    pub fn download(
        &self,
        slot: Slot,
        out: &mut std::fs::File,
        path: &std::path::Path,
        cap: u64,
        observer: &dyn Observer,
        on_retry: &dyn Fn(&UpstreamError, Duration),
    ) -> Result<Download, UpstreamError> {
        let url = package_url(&self.base, slot);
        // Short enough for a progress bar on an 80-column terminal.
        let label = match slot.ring {
            Ring::Production => format!("{} {}", slot.platform, slot.arch),
            Ring::Preview => format!("{} {} preview", slot.platform, slot.arch),
        };
        self.download_url(&url, &label, true, out, path, cap, observer, on_retry)
    }

    /// Streams `url` into `out` as [`Upstream::download`] does, with the
    /// same retries, redirect rule, proxies, cap and length check; the
    /// early "starts like a zip" check only when `zip` is set (other
    /// profiles check their packages themselves once they are complete).
    #[allow(clippy::too_many_arguments)]
    pub fn download_url(
        &self,
        url: &str,
        label: &str,
        zip: bool,
        out: &mut std::fs::File,
        path: &std::path::Path,
        cap: u64,
        observer: &dyn Observer,
        on_retry: &dyn Fn(&UpstreamError, Duration),
    ) -> Result<Download, UpstreamError> {
        let url = url.to_string();
        let (mut d, attempts) = self.with_retries(on_retry, |_| {
            let write_err = |source| UpstreamError::Write {
                url: url.clone(),
                path: path.to_path_buf(),
                source,
            };
            out.set_len(0).map_err(write_err)?;
            out.rewind().map_err(write_err)?;
            let (resp, final_url) = self.get(&url)?;
            let expected = header_len(&resp);
            if let Some(n) = expected.filter(|&n| n > cap) {
                return Err(UpstreamError::TooLarge {
                    url: url.clone(),
                    what: format!("the package is announced as {n} bytes, over the cap of {cap}"),
                });
            }
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("unknown")
                .to_string();
            observer.start(label, expected.unwrap_or(0));
            let sink = Sink {
                url: &url,
                path,
                zip,
                cap,
                expected,
                content_type: &content_type,
                timeout: self.config.read_timeout,
            };
            let result = sink.stream(resp, out, observer);
            observer.finish();
            let (bytes, sha256) = result?;
            Ok(Download {
                bytes,
                sha256,
                final_url,
                attempts: 0,
            })
        })?;
        d.attempts = attempts;
        Ok(d)
    }

    /// Sends a GET for `url` and follows redirects while [`check_redirect`]
    /// allows them; returns the 200 response and the URL that answered.
    /// Redirects are followed here, not inside the HTTP library, so every
    /// hop is checked before any byte is sent to it.
    fn get(&self, url: &str) -> Result<(Response<Body>, String), UpstreamError> {
        let first = Url::parse(url).map_err(|e| UpstreamError::Connect {
            url: url.to_string(),
            attempts: 1,
            reason: format!("not a valid URL: {e}"),
        })?;
        let mut chain = vec![first];
        loop {
            let current = chain.last().expect("never empty");
            let resp = self
                .agent_for(current)
                .get(current.as_str())
                .call()
                .map_err(|e| self.classify(url, e))?;
            let status = resp.status();
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if let (true, Some(location)) = (is_redirect(status), location) {
                let mut next = current
                    .join(&location)
                    .map_err(|e| UpstreamError::Connect {
                        url: url.to_string(),
                        attempts: 1,
                        reason: format!("{current} redirected to an invalid URL {location:?}: {e}"),
                    })?;
                check_redirect(&chain, &next).map_err(|r| UpstreamError::Redirect {
                    url: url.to_string(),
                    from: r.from,
                    to: r.to,
                    why: r.why.to_string(),
                })?;
                // A fragment is never sent.
                next.set_fragment(None);
                chain.push(next);
                continue;
            }
            if status != StatusCode::OK {
                return Err(UpstreamError::Status {
                    url: url.to_string(),
                    status: status.as_u16(),
                    attempts: 1,
                });
            }
            return Ok((resp, current.to_string()));
        }
    }

    fn classify(&self, url: &str, e: ureq::Error) -> UpstreamError {
        let invalid_cert = match &e {
            ureq::Error::Rustls(rustls::Error::InvalidCertificate(why)) => Some(why),
            ureq::Error::Io(io) => match find_in_chain::<rustls::Error>(io) {
                Some(rustls::Error::InvalidCertificate(why)) => Some(why),
                _ => None,
            },
            _ => None,
        };
        if let Some(why) = invalid_cert {
            let mut reason = format!("{why:?}");
            if let Some(var) = self.proxy_var(url) {
                reason.push_str(&format!(" (through the proxy named by {var})"));
            }
            return UpstreamError::Certificate {
                url: url.to_string(),
                reason,
            };
        }
        if is_timeout(&e) {
            UpstreamError::Timeout {
                url: url.to_string(),
                attempts: 1,
                timeout: self.config.read_timeout,
            }
        } else {
            let mut reason = match &e {
                ureq::Error::Io(io) => error_chain(io),
                other => error_chain(other),
            };
            if let Some(var) = self.proxy_var(url) {
                reason.push_str(&format!(" (through the proxy named by {var})"));
            }
            UpstreamError::Connect {
                url: url.to_string(),
                attempts: 1,
                reason,
            }
        }
    }

    /// The proxy variable in use for `url` (by name only: its value may
    /// hold credentials), or None when the request goes direct.
    fn proxy_var(&self, url: &str) -> Option<&'static str> {
        let parsed = Url::parse(url).ok()?;
        match &self.proxied {
            Some(p) if parsed.scheme() == "https" && !p.no_proxy.matches(&parsed) => {
                proxy_var_for(url)
            }
            _ => None,
        }
    }

    /// Runs `op` until it succeeds, fails for good, or the retries run out;
    /// returns its value and the number of attempts made.
    fn with_retries<T>(
        &self,
        on_retry: &dyn Fn(&UpstreamError, Duration),
        mut op: impl FnMut(u32) -> Result<T, UpstreamError>,
    ) -> Result<(T, u32), UpstreamError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op(attempt) {
                Ok(v) => return Ok((v, attempt)),
                Err(mut e) => {
                    e.set_attempts(attempt);
                    if !e.retryable() || attempt > self.config.retries {
                        return Err(e);
                    }
                    let factor = 1u32 << (attempt - 1).min(10);
                    let delay = self
                        .config
                        .retry_delay
                        .saturating_mul(factor)
                        .min(Duration::from_secs(60));
                    on_retry(&e, delay);
                    std::thread::sleep(delay);
                }
            }
        }
    }
}

/// Checks an upstream base URL: https, or plain http to a loopback
/// address (a relay on this machine, or a test server); no fragment.
pub fn check_base(base: &str) -> Result<Url, UpstreamError> {
    let bad = |reason: String| UpstreamError::BadBase {
        url: base.to_string(),
        reason,
    };
    let url = Url::parse(base).map_err(|e| bad(e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(bad(
                "plain http would let anyone on the path swap the package that gets signed into a bundle".into(),
            ))
        }
        other => return Err(bad(format!("scheme {other:?} is not https"))),
    }
    if url.fragment().is_some() {
        return Err(bad("it has a #fragment".into()));
    }
    Ok(url)
}

/// True for 127.0.0.0/8, ::1 and `localhost`: traffic that never leaves
/// this machine.
fn is_loopback(url: &Url) -> bool {
    // The parser has already normalised IPv4 forms such as 127.1.
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why a redirect was not followed.
#[derive(Debug)]
pub struct RedirectRefused {
    pub from: String,
    pub to: String,
    pub why: &'static str,
}

impl fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "redirect from {} to {} refused: {}",
            self.from, self.to, self.why
        )
    }
}

impl std::error::Error for RedirectRefused {}

/// Whether a redirect to `next` may be followed after `previous` (every
/// URL requested so far, the one that answered with the redirect last):
/// https always; plain http only to a loopback address and only while no
/// earlier hop was https (never a downgrade); nothing else.
pub fn check_redirect(previous: &[Url], next: &Url) -> Result<(), RedirectRefused> {
    let refuse = |why| {
        Err(RedirectRefused {
            from: previous.last().unwrap_or(next).to_string(),
            to: next.to_string(),
            why,
        })
    };
    if previous.len() >= MAX_REDIRECTS {
        return refuse("more than 10 redirects");
    }
    match next.scheme() {
        "https" => Ok(()),
        "http" if previous.iter().any(|u| u.scheme() == "https") => {
            refuse("it downgrades https to plain http")
        }
        "http" if !is_loopback(next) => refuse("plain http to another machine"),
        "http" => Ok(()),
        _ => refuse("the target is neither https nor http"),
    }
}

/// The statuses that redirect a GET (as browsers and curl follow them).
fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// One agent: timeouts from `config`, no redirects of its own (see
/// [`Upstream::get`]), HTTP errors as responses, no gzip, and exactly the
/// proxy given (ureq would otherwise read the environment itself).
fn agent(config: &HttpConfig, tls: TlsConfig, proxy: Option<Proxy>) -> Agent {
    Agent::config_builder()
        .user_agent(concat!("gapferry/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(config.connect_timeout))
        .timeout_recv_response(Some(config.read_timeout))
        .timeout_per_read(Some(config.read_timeout))
        .max_redirects(0)
        .http_status_as_error(false)
        .proxy(proxy)
        .tls_config(tls)
        .build()
        .into()
}

/// The roots a server certificate may chain to: the built-in Mozilla set,
/// the operating system's store (SSL_CERT_FILE and SSL_CERT_DIR replace
/// its usual places, as for OpenSSL) and every `--ca-cert` certificate.
/// Certificates of the system store that do not parse are skipped, as
/// they were before; `--ca-cert` ones were checked when read.
pub(crate) fn tls_config(extra: &ExtraRoots) -> TlsConfig {
    let mut roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let native = rustls_native_certs::load_native_certs();
    roots.extend(
        native
            .certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned()),
    );
    for file in extra.files() {
        roots.extend(
            file.certs
                .iter()
                .map(|der| Certificate::from_der(der).to_owned()),
        );
    }
    TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .build()
}

/// NO_PROXY (or no_proxy) as reqwest read it: comma-separated; `*` for
/// every host; an IP address or CIDR network matches addresses in it; a
/// domain, with or without a leading dot, matches itself and every
/// subdomain. Ports are ignored.
#[derive(Debug, Clone, Default)]
struct NoProxy {
    entries: Vec<String>,
}

impl NoProxy {
    fn from_env() -> Self {
        let value = ["NO_PROXY", "no_proxy"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|x| !x.is_empty()))
            .unwrap_or_default();
        NoProxy::parse(&value)
    }

    fn parse(value: &str) -> Self {
        NoProxy {
            entries: value
                .split(',')
                .map(|e| e.trim().to_ascii_lowercase())
                .filter(|e| !e.is_empty())
                .collect(),
        }
    }

    fn matches(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some(ip) = ip {
                return ip_matches(ip, entry);
            }
            let domain = entry.trim_start_matches('.');
            host == domain || host.ends_with(&format!(".{domain}"))
        })
    }
}

/// Whether `ip` is the address `entry` or inside the network `entry`.
fn ip_matches(ip: IpAddr, entry: &str) -> bool {
    let entry = entry.trim_start_matches('[').trim_end_matches(']');
    let (addr, bits) = match entry.split_once('/') {
        Some((a, b)) => match b.parse::<u32>() {
            Ok(b) => (a, Some(b)),
            Err(_) => return false,
        },
        None => (entry, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let bits = bits.unwrap_or(32).min(32);
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let bits = bits.unwrap_or(128).min(128);
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Whether a failed request or read ran out of time.
fn is_timeout(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::TimedOut
                || io.kind() == std::io::ErrorKind::WouldBlock
                || io_chain_has_timeout(io)
        }
        _ => false,
    }
}

/// The first error of type `T` in `e`'s cause chain, looking inside
/// `std::io::Error`s too (whose `source` skips the error they wrap).
fn find_in_chain<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(inner) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(t) = find_in_chain::<T>(inner) {
                return Some(t);
            }
        }
        cur = c.source();
    }
    None
}

fn header_len(resp: &Response<Body>) -> Option<u64> {
    resp.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn read_small(
    resp: Response<Body>,
    url: &str,
    cap: u64,
    timeout: Duration,
) -> Result<Vec<u8>, UpstreamError> {
    let expected = header_len(&resp);
    if expected.is_some_and(|n| n > cap) {
        return Err(UpstreamError::BadInfo {
            url: url.to_string(),
            reason: format!(
                "announced as {} bytes, more than {cap}",
                expected.unwrap_or(0)
            ),
        });
    }
    let mut body = Vec::new();
    let mut limited = body_reader(resp).take(cap + 1);
    if let Err(e) = limited.read_to_end(&mut body) {
        return Err(body_error(url, e, body.len() as u64, expected, timeout));
    }
    if body.len() as u64 > cap {
        return Err(UpstreamError::BadInfo {
            url: url.to_string(),
            reason: format!("more than {cap} bytes"),
        });
    }
    if let Some(n) = expected.filter(|&n| n != body.len() as u64) {
        return Err(UpstreamError::Truncated {
            url: url.to_string(),
            received: body.len() as u64,
            expected: Some(n),
            attempts: 1,
        });
    }
    Ok(body)
}

/// The body of `resp` as a reader without ureq's own size limit: the caps
/// are ours, checked while reading.
fn body_reader(resp: Response<Body>) -> impl Read {
    resp.into_body().into_with_config().limit(u64::MAX).reader()
}

/// A failed body read: a timeout, or the connection dropping mid-body.
fn body_error(
    url: &str,
    e: std::io::Error,
    received: u64,
    expected: Option<u64>,
    timeout: Duration,
) -> UpstreamError {
    if matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    ) || io_chain_has_timeout(&e)
    {
        UpstreamError::Timeout {
            url: url.to_string(),
            attempts: 1,
            timeout,
        }
    } else {
        UpstreamError::Truncated {
            url: url.to_string(),
            received,
            expected,
            attempts: 1,
        }
    }
}

/// Where and how one response body is streamed.
struct Sink<'a> {
    url: &'a str,
    path: &'a std::path::Path,
    /// Check that the body starts like a zip.
    zip: bool,
    cap: u64,
    expected: Option<u64>,
    content_type: &'a str,
    timeout: Duration,
}

impl Sink<'_> {
    fn stream(
        &self,
        resp: Response<Body>,
        out: &mut std::fs::File,
        observer: &dyn Observer,
    ) -> Result<(u64, String), UpstreamError> {
        let Sink {
            url,
            path,
            zip,
            cap,
            expected,
            content_type,
            timeout,
        } = *self;
        let mut buf = vec![0u8; 256 * 1024];
        let mut head: Vec<u8> = Vec::with_capacity(64);
        let mut total: u64 = 0;
        let mut hasher = Sha256::new();
        let mut body = body_reader(resp);
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return Err(body_error(url, e, total, expected, timeout)),
            };
            if zip && head.len() < 64 {
                let take = (64 - head.len()).min(n);
                head.extend_from_slice(&buf[..take]);
                if head.len() >= ZIP_LOCAL_HEADER.len() && !head.starts_with(ZIP_LOCAL_HEADER) {
                    return Err(not_zip(url, content_type, &head));
                }
            }
            total += n as u64;
            if total > cap {
                return Err(UpstreamError::TooLarge {
                    url: url.to_string(),
                    what: format!("the package is larger than the cap of {cap} bytes"),
                });
            }
            out.write_all(&buf[..n])
                .map_err(|source| UpstreamError::Write {
                    url: url.to_string(),
                    path: path.to_path_buf(),
                    source,
                })?;
            hasher.update(&buf[..n]);
            observer.advance(n as u64);
        }
        if let Some(n) = expected.filter(|&n| n != total) {
            return Err(UpstreamError::Truncated {
                url: url.to_string(),
                received: total,
                expected: Some(n),
                attempts: 1,
            });
        }
        if zip && head.len() < ZIP_LOCAL_HEADER.len() {
            return Err(not_zip(url, content_type, &head));
        }
        Ok((total, hex::encode(hasher.finalize())))
    }
}

fn not_zip(url: &str, content_type: &str, head: &[u8]) -> UpstreamError {
    let start: String = String::from_utf8_lossy(head)
        .chars()
        .take(40)
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    UpstreamError::NotZip {
        url: url.to_string(),
        content_type: content_type.to_string(),
        start,
    }
}

/// The proxy variable for `url`'s scheme, if one is set (by name only: its
/// value may hold credentials), in reqwest's order. NO_PROXY is not
/// evaluated here.
fn proxy_var_for(url: &str) -> Option<&'static str> {
    let vars: &[&'static str] = if url.starts_with("https:") {
        &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    };
    vars.iter()
        .copied()
        .find(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

fn chain_has_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if c.to_string().contains("timed out") {
            return true;
        }
        cur = c.source();
    }
    false
}

fn io_chain_has_timeout(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| {
        inner
            .downcast_ref::<ureq::Error>()
            .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)))
            || chain_has_timeout(inner as &(dyn std::error::Error + 'static))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(platform: Platform, ring: Ring, arch: Arch) -> Slot {
        Slot {
            platform,
            ring,
            arch,
        }
    }

    #[test]
    fn query_strings_match_microsofts_script() {
        let b = DEFAULT_UPSTREAM;
        assert_eq!(
            package_url(b, slot(Platform::Linux, Ring::Production, Arch::X86_64)),
            "https://go.microsoft.com/fwlink/?linkid=2144709"
        );
        assert_eq!(
            info_url(b, slot(Platform::Mac, Ring::Preview, Arch::Arm64)),
            "https://go.microsoft.com/fwlink/?linkid=2120136&arch=arm64&engRing=3&sigRing=1&action=info"
        );
        assert_eq!(
            info_url(b, slot(Platform::Linux, Ring::Production, Arch::Arm64)),
            "https://go.microsoft.com/fwlink/?linkid=2144709&arch=arm64&action=info"
        );
        assert_eq!(
            package_url(
                "http://relay:8080/fwlink?token=1",
                slot(Platform::Linux, Ring::Preview, Arch::X86_64)
            ),
            "http://relay:8080/fwlink?token=1&linkid=2144709&engRing=3&sigRing=1"
        );
    }

    #[test]
    fn parses_info_with_extra_elements() {
        let xml = br#"<?xml version="1.0" encoding="utf-8"?>
<!-- a comment -->
<versions xmlns:x="urn:x" kind="full">
  <product name="mdatp"><channel>stable</channel></product>
  <platform>101.24082.0004</platform>
  <engine> 1.1.24080.9 </engine>
  <signatures date="2024-10-08 05:22:52Z" extra="1">1.419.184.0</signatures>
  <delta/>
</versions>"#;
        let info = UpstreamInfo::parse(xml, "u").unwrap();
        assert_eq!(info.engine.as_str(), "1.1.24080.9");
        assert_eq!(info.definitions.as_str(), "1.419.184.0");
        assert_eq!(info.platform.as_deref(), Some("101.24082.0004"));
        assert_eq!(
            info.signatures_date.as_deref(),
            Some("2024-10-08 05:22:52Z")
        );
        let m = info.to_manifest();
        assert!(info.matches(&m));
        assert_eq!(m.engine_version, "1.1.24080.9");
    }

    #[test]
    fn rejects_bad_info() {
        for (bad, why) in [
            (&b"<html><body>Sign in to the proxy</body></html>"[..], "no <engine>"),
            (b"<versions><engine>1.1.1.1</engine></versions>", "no <signatures>"),
            (
                b"<versions><engine>x</engine><signatures>1.2</signatures></versions>",
                "<engine>",
            ),
            (
                b"<versions><engine>1.1</engine><engine>1.2</engine><signatures>1</signatures></versions>",
                "twice",
            ),
            (b"<versions><engine>1.1</engine", "well-formed"),
            (b"", "empty"),
            (b"\xff\xfe", "UTF-8"),
        ] {
            let err = UpstreamInfo::parse(bad, "http://x/info").unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
            assert!(err.contains("http://x/info"), "{err}");
        }
    }

    #[test]
    fn bad_bases_are_refused() {
        for bad in [
            "ftp://x/",
            "not a url",
            "https://x/#frag",
            "http://127.0.0.1/#frag",
            "http://go.microsoft.com/fwlink/",
            "http://10.0.0.1/fwlink/",
            "http://[fe80::1]/fwlink/",
            "http://localhost.example.com/",
        ] {
            let err = Upstream::new(bad, HttpConfig::default()).unwrap_err();
            assert!(matches!(err, UpstreamError::BadBase { .. }), "{bad}");
        }
        for good in [
            DEFAULT_UPSTREAM,
            "https://relay.example.com:8443/fwlink?token=1",
            "http://127.0.0.1:1/fwlink/",
            "http://127.1/fwlink/",
            "http://127.8.9.10:8080/",
            "http://localhost:8080/fwlink/",
            "http://[::1]:8080/fwlink/",
        ] {
            assert!(check_base(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn ca_cert_file_4_mib() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let mut text = pem.into_bytes();
        let line = b"# padding, as in a bundle with comments between certificates\n";
        while text.len() + line.len() <= MAX_CA_FILE as usize {
            text.extend_from_slice(line);
        }
        text.resize(MAX_CA_FILE as usize, b'\n');
        std::fs::write(&path, &text).unwrap();
        let roots = ExtraRoots::read(std::slice::from_ref(&path)).unwrap();
        assert_eq!(roots.files()[0].len(), 1);

        text.push(b'\n');
        std::fs::write(&path, &text).unwrap();
        let err = ExtraRoots::read(std::slice::from_ref(&path)).unwrap_err();
        assert!(matches!(err, UpstreamError::CaCert { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("larger than 4194304 bytes"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn no_proxy_matches_as_reqwest_did() {
        let np = NoProxy::parse(" .corp.example , relay.example.net,10.0.0.0/8, ::1 ,192.168.1.7");
        let m = |u: &str| np.matches(&Url::parse(u).unwrap());
        assert!(m("https://corp.example/"));
        assert!(m("https://a.b.corp.example:8443/"));
        assert!(m("https://relay.example.net/"));
        assert!(m("https://cdn.relay.example.net/"));
        assert!(m("https://10.20.30.40/"));
        assert!(m("https://[::1]:8443/"));
        assert!(m("https://192.168.1.7/"));
        assert!(!m("https://192.168.1.8/"));
        assert!(!m("https://11.0.0.1/"));
        assert!(!m("https://go.microsoft.com/fwlink/"));
        assert!(!m("https://notcorp.example/"));
        assert!(!m("https://relay.example.net.evil.com/"));
        assert!(NoProxy::parse("*").matches(&Url::parse("https://x/").unwrap()));
        assert!(!NoProxy::parse("").matches(&Url::parse("https://x/").unwrap()));
    }

    #[test]
    fn only_the_statuses_that_redirect_a_get_are_followed() {
        for s in [301, 302, 303, 307, 308] {
            assert!(is_redirect(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 300, 304, 305, 404] {
            assert!(!is_redirect(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    fn urls(list: &[&str]) -> Vec<Url> {
        list.iter().map(|u| Url::parse(u).unwrap()).collect()
    }

    #[test]
    fn redirects_never_leave_https() {
        let ok = |prev: &[&str], next: &str| check_redirect(&urls(prev), &urls(&[next])[0]);
        let fwlink = "https://go.microsoft.com/fwlink/?linkid=2144709";
        assert!(ok(&[fwlink], "https://definitionupdates.microsoft.com/x").is_ok());
        assert!(ok(&["http://127.0.0.1:80/f"], "http://127.0.0.1:81/g").is_ok());
        assert!(ok(&["http://127.0.0.1/f"], "https://cdn.example.com/g").is_ok());
        for (prev, next, why) in [
            (
                &[fwlink][..],
                "http://definitionupdates.microsoft.com/x",
                "downgrades",
            ),
            (&[fwlink], "http://127.0.0.1/x", "downgrades"),
            (
                &["http://127.0.0.1/a", "https://cdn.example.com/b"],
                "http://127.0.0.1/c",
                "downgrades",
            ),
            (
                &["http://127.0.0.1/a"],
                "http://cdn.example.com/b",
                "another machine",
            ),
            (&[fwlink], "ftp://cdn.example.com/b", "neither"),
            (&[fwlink], "file:///etc/passwd", "neither"),
        ] {
            let e = ok(prev, next).unwrap_err();
            assert!(e.why.contains(why), "{prev:?} -> {next}: {e}");
            assert_eq!(e.to, next);
            assert_eq!(e.from, *prev.last().unwrap());
        }
        let chain: Vec<String> = (0..MAX_REDIRECTS)
            .map(|i| format!("https://a/{i}"))
            .collect();
        let chain: Vec<&str> = chain.iter().map(String::as_str).collect();
        assert!(ok(&chain[..MAX_REDIRECTS - 1], "https://a/next").is_ok());
        let e = ok(&chain, "https://a/next").unwrap_err();
        assert!(e.why.contains("more than 10 redirects"), "{e}");
    }
}
