//! An in-process stand-in for Microsoft's fwlink endpoints, for the fetch
//! tests: `/fwlink/?linkid=..[&arch=arm64][&engRing=3&sigRing=1]&action=info`
//! answers 302 to `/info/<key>` (version XML with extra elements), and the
//! same query without `action` answers 302 to `/pkg/<key>/updates.zip`.
//! Faults (status codes, HTML pages, truncation, hangs, oversize bodies,
//! releases that move during a download) are switched on per test.
//!
//! [`Mock::start_tls`] serves the same over TLS on 127.0.0.1, with a server
//! certificate issued by a [`TestCa`] made in the test (no network, no
//! files outside the test's temporary folder).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One release of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub engine: String,
    pub definitions: String,
}

impl Release {
    pub fn new(engine: &str, definitions: &str) -> Self {
        Release {
            engine: engine.into(),
            definitions: definitions.into(),
        }
    }

    /// The package bytes: a real (stored) zip naming the release, padded so
    /// it is a few KiB.
    pub fn package(&self, key: &str) -> Vec<u8> {
        let mut content = format!(
            "slot {key} engine {} definitions {}\n",
            self.engine, self.definitions
        )
        .into_bytes();
        content.resize(content.len() + 4096, b'.');
        fake_zip("mpasbase.vdm", &content)
    }
}

/// What goes wrong, and for how many requests (None = every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a short HTML body.
    Status(u16),
    /// 200 with a text/html sign-in page.
    Html,
    /// Announce the full length, send half, close.
    Truncate,
    /// Accept, read the request, never answer.
    Hang,
    /// Send headers and half the body, then go silent.
    HangMidBody,
    /// Send the body without Content-Length (close-delimited).
    NoLength,
}

#[derive(Debug, Default)]
pub struct State {
    /// Current release per slot key ("linux/production/x86_64"); slots not
    /// listed use `default`.
    pub releases: HashMap<String, Release>,
    pub default: Option<Release>,
    pub package_fault: Option<(Fault, Option<u32>)>,
    pub info_fault: Option<(Fault, Option<u32>)>,
    /// Publish this release right after the next package is served (the
    /// release moves between the two info reads).
    pub next_after_package: Option<Release>,
    /// Bump the definitions after every package served.
    pub bump_every_package: bool,
    pub package_hits: u32,
    pub info_hits: u32,
    /// Every request target, in order.
    pub requests: Vec<String>,
    /// Make the fwlink redirects absolute, to this origin
    /// (`http://127.0.0.1:PORT`) instead of relative to the mock itself.
    pub redirect_origin: Option<String>,
}

impl State {
    pub fn release(&self, key: &str) -> Release {
        self.releases
            .get(key)
            .or(self.default.as_ref())
            .expect("mock has a release")
            .clone()
    }
}

pub struct Mock {
    pub base: String,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Mock {
    /// The mock over plain http on 127.0.0.1.
    pub fn start(default: Release) -> Mock {
        Mock::spawn(default, Mode::Plain)
    }

    /// The mock over https on 127.0.0.1, presenting `ca`'s server
    /// certificate (valid for 127.0.0.1 and localhost).
    pub fn start_tls(default: Release, ca: &TestCa) -> Mock {
        Mock::spawn(default, Mode::Tls(ca.server_config()))
    }

    /// A TLS-inspecting proxy on 127.0.0.1 (`proxy` is its URL for
    /// HTTPS_PROXY): it answers CONNECT, then presents a certificate for
    /// go.microsoft.com issued by `ca` and answers the fwlink paths itself,
    /// so `base` is Microsoft's own URL and nothing leaves the machine.
    pub fn start_inspecting_proxy(default: Release, ca: &TestCa) -> (Mock, String) {
        let mut mock = Mock::spawn(default, Mode::InspectingProxy(ca.server_config()));
        let proxy = mock
            .base
            .replace("https://", "http://")
            .replace("/fwlink/", "");
        mock.base = "https://go.microsoft.com/fwlink/".to_string();
        (mock, proxy)
    }

    fn spawn(default: Release, mode: Mode) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            default: Some(default),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let scheme = match mode {
            Mode::Plain => "http",
            Mode::Tls(_) | Mode::InspectingProxy(_) => "https",
        };
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, sp, mode) = (st.clone(), sp.clone(), mode.clone());
                thread::spawn(move || match mode {
                    Mode::Plain => {
                        let _ = serve(conn, &st, &sp);
                    }
                    Mode::Tls(config) => serve_tls(conn, config, &st, &sp),
                    Mode::InspectingProxy(config) => {
                        if let Ok(conn) = accept_connect(conn, &st) {
                            serve_tls(conn, config, &st, &sp);
                        }
                    }
                });
            }
        });
        Mock {
            base: format!("{scheme}://{addr}/fwlink/"),
            state,
            stop,
        }
    }

    /// `http://127.0.0.1:PORT` or `https://...`: the mock's origin.
    pub fn origin(&self) -> String {
        self.base.trim_end_matches("/fwlink/").to_string()
    }

    /// How many requests reached the mock.
    pub fn request_count(&self) -> usize {
        self.with(|s| s.requests.len())
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn package_hits(&self) -> u32 {
        self.with(|s| s.package_hits)
    }
}

#[derive(Clone)]
enum Mode {
    Plain,
    Tls(Arc<rustls::ServerConfig>),
    InspectingProxy(Arc<rustls::ServerConfig>),
}

fn serve_tls(
    conn: TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: &Mutex<State>,
    stop: &AtomicBool,
) {
    let Ok(session) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut stream = rustls::StreamOwned::new(session, conn);
    // A client that refuses the certificate ends the handshake here, with
    // nothing served.
    if serve(&mut stream, state, stop).is_ok() {
        stream.conn.send_close_notify();
        let _ = stream.flush();
    }
}

/// Reads a proxy's `CONNECT host:port` request (recorded as
/// "CONNECT host:port") and agrees to it.
fn accept_connect(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<TcpStream> {
    let mut reader = BufReader::new(conn);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut words = request_line.split_whitespace();
    if words.next() != Some("CONNECT") {
        return Err(std::io::Error::other("not a CONNECT request"));
    }
    let target = words.next().unwrap_or("").to_string();
    state
        .lock()
        .unwrap()
        .requests
        .push(format!("CONNECT {target}"));
    // The client sends nothing more until it has the answer, so nothing
    // is left in the buffer.
    assert!(reader.buffer().is_empty());
    let mut conn = reader.into_inner();
    conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    Ok(conn)
}

fn take_fault(slot: &mut Option<(Fault, Option<u32>)>) -> Option<Fault> {
    let (fault, left) = (*slot)?;
    match left {
        None => Some(fault),
        Some(0) => {
            *slot = None;
            None
        }
        Some(n) => {
            *slot = if n == 1 {
                None
            } else {
                Some((fault, Some(n - 1)))
            };
            Some(fault)
        }
    }
}

/// "linux/production/x86_64" from the fwlink query string.
fn slot_key(query: &str) -> Option<String> {
    let params: HashMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let platform = match *params.get("linkid")? {
        "2144709" => "linux",
        "2120136" => "mac",
        _ => return None,
    };
    let arch = if params.get("arch") == Some(&"arm64") {
        "arm64"
    } else {
        "x86_64"
    };
    let ring = match (params.get("engRing"), params.get("sigRing")) {
        (Some(&"3"), Some(&"1")) => "preview",
        (None, None) => "production",
        _ => return None,
    };
    Some(format!("{platform}/{ring}/{arch}"))
}

fn serve<S: Read + Write>(conn: S, state: &Mutex<State>, stop: &AtomicBool) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let redirect_origin = {
        let mut s = state.lock().unwrap();
        s.requests.push(target.clone());
        s.redirect_origin.clone().unwrap_or_default()
    };
    // GET requests have no body: nothing more is buffered.
    let out = reader.get_mut();

    if let Some(query) = target.strip_prefix("/fwlink/?") {
        let Some(key) = slot_key(query.trim_end_matches("&action=info")) else {
            return respond(out, 404, "text/plain", b"unknown link");
        };
        let location = if query.ends_with("&action=info") {
            format!("/info/{key}")
        } else {
            format!("/pkg/{key}/updates.zip")
        };
        let head = format!(
            "HTTP/1.1 302 Found\r\nLocation: {redirect_origin}{location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return out.write_all(head.as_bytes());
    }
    if let Some(key) = target.strip_prefix("/info/") {
        let (fault, release) = {
            let mut s = state.lock().unwrap();
            s.info_hits += 1;
            (take_fault(&mut s.info_fault), s.release(key))
        };
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<versions>\n  <product>mdatp</product>\n  \
             <platform>101.24082.0004</platform>\n  <engine>{}</engine>\n  \
             <signatures date=\"2024-10-08 05:22:52Z\">{}</signatures>\n  <note kind=\"test\"/>\n</versions>\n",
            release.engine, release.definitions
        );
        return send(out, fault, "application/xml", xml.as_bytes(), stop);
    }
    if let Some(rest) = target.strip_prefix("/pkg/") {
        let key = rest.trim_end_matches("/updates.zip").to_string();
        let (fault, body) = {
            let mut s = state.lock().unwrap();
            s.package_hits += 1;
            let fault = take_fault(&mut s.package_fault);
            let release = s.release(&key);
            let body = release.package(&key);
            if fault.is_none() {
                if let Some(next) = s.next_after_package.take() {
                    s.releases.insert(key.clone(), next);
                }
                if s.bump_every_package {
                    let n = s.package_hits;
                    s.releases.insert(
                        key.clone(),
                        Release::new(&release.engine, &format!("1.999.{n}.0")),
                    );
                }
            }
            (fault, body)
        };
        return send(out, fault, "application/octet-stream", &body, stop);
    }
    respond(out, 404, "text/plain", b"not found")
}

fn send(
    out: &mut impl Write,
    fault: Option<Fault>,
    content_type: &str,
    body: &[u8],
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let hang = |stop: &AtomicBool| {
        let until = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::SeqCst) && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
    };
    match fault {
        None => respond(out, 200, content_type, body),
        Some(Fault::Status(code)) => respond(
            out,
            code,
            "text/html",
            b"<html><body><h1>Internal error</h1></body></html>",
        ),
        Some(Fault::Html) => respond(
            out,
            200,
            "text/html; charset=utf-8",
            b"<!DOCTYPE html><html><head><title>Proxy sign-in</title></head><body>Please sign in to continue.</body></html>",
        ),
        Some(Fault::Truncate) => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            out.write_all(&body[..body.len() / 2])?;
            out.flush()
        }
        Some(Fault::Hang) => {
            hang(stop);
            Ok(())
        }
        Some(Fault::HangMidBody) => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            out.write_all(&body[..body.len() / 2])?;
            out.flush()?;
            hang(stop);
            Ok(())
        }
        Some(Fault::NoLength) => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n"
            )?;
            out.write_all(body)?;
            out.flush()
        }
    }
}

fn respond(
    out: &mut impl Write,
    code: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    out.write_all(body)?;
    out.flush()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid zip with one stored (uncompressed) entry.
pub fn fake_zip(name: &str, content: &[u8]) -> Vec<u8> {
    let crc = crc32(content);
    let size = content.len() as u32;
    let name_len = name.len() as u16;
    let mut z = Vec::new();
    // local file header
    z.extend(0x0403_4b50u32.to_le_bytes());
    z.extend(20u16.to_le_bytes()); // version needed
    z.extend(0u16.to_le_bytes()); // flags
    z.extend(0u16.to_le_bytes()); // stored
    z.extend(0u16.to_le_bytes()); // time
    z.extend(0x21u16.to_le_bytes()); // date 1980-01-01
    z.extend(crc.to_le_bytes());
    z.extend(size.to_le_bytes());
    z.extend(size.to_le_bytes());
    z.extend(name_len.to_le_bytes());
    z.extend(0u16.to_le_bytes());
    z.extend(name.as_bytes());
    z.extend(content);
    let cd_offset = z.len() as u32;
    // central directory
    z.extend(0x0201_4b50u32.to_le_bytes());
    z.extend(20u16.to_le_bytes()); // made by
    z.extend(20u16.to_le_bytes()); // needed
    z.extend(0u16.to_le_bytes());
    z.extend(0u16.to_le_bytes());
    z.extend(0u16.to_le_bytes());
    z.extend(0x21u16.to_le_bytes());
    z.extend(crc.to_le_bytes());
    z.extend(size.to_le_bytes());
    z.extend(size.to_le_bytes());
    z.extend(name_len.to_le_bytes());
    z.extend(0u16.to_le_bytes()); // extra
    z.extend(0u16.to_le_bytes()); // comment
    z.extend(0u16.to_le_bytes()); // disk
    z.extend(0u16.to_le_bytes()); // internal attrs
    z.extend(0u32.to_le_bytes()); // external attrs
    z.extend(0u32.to_le_bytes()); // local header offset
    z.extend(name.as_bytes());
    let cd_size = z.len() as u32 - cd_offset;
    // end of central directory
    z.extend(0x0605_4b50u32.to_le_bytes());
    z.extend(0u16.to_le_bytes());
    z.extend(0u16.to_le_bytes());
    z.extend(1u16.to_le_bytes());
    z.extend(1u16.to_le_bytes());
    z.extend(cd_size.to_le_bytes());
    z.extend(cd_offset.to_le_bytes());
    z.extend(0u16.to_le_bytes());
    z
}

/// A certificate authority made for one test: its certificate (PEM, to
/// hand to `--ca-cert`) and a server certificate it issued for 127.0.0.1,
/// localhost and go.microsoft.com (as an inspecting proxy forges it).
pub struct TestCa {
    pub ca_pem: String,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key_der: Vec<u8>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = rcgen::KeyPair::generate().unwrap();
        let mut server_params = rcgen::CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "go.microsoft.com".to_string(),
        ])
        .unwrap();
        server_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        server_params.use_authority_key_identifier_extension = true;
        server_params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            server_chain: vec![server_cert.der().clone(), ca_cert.der().clone()],
            server_key_der: server_key.serialize_der(),
        }
    }

    /// Writes the CA certificate as PEM into `dir` and returns its path.
    pub fn write_pem(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.server_key_der.clone().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), key)
            .unwrap();
        Arc::new(config)
    }
}

pub use super::PROXY_VARS;

/// The binary, with the caller's proxy settings removed so that requests
/// reach the in-process mock.
pub fn gapferry() -> assert_cmd::Command {
    let mut c = super::gapferry();
    // The system's trust store stays the machine's own: a test CA gets in
    // only where a test puts it.
    c.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
    c
}
