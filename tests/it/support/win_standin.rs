//! The loopback stand-in for Microsoft's Windows definition package link
//! (`fetch --platform windows`, `export --platform windows --fetch`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A loopback stand-in for `https://go.microsoft.com/fwlink/?LinkID=121721&arch=<arch>`:
/// answers each `arch=` with the bytes set for it (404 when none).
pub struct StandIn {
    /// The URL to pass as `--upstream`.
    pub base: String,
    bodies: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// The request targets seen, in order.
    pub hits: Arc<Mutex<Vec<String>>>,
}

impl StandIn {
    pub fn start() -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/fwlink/", listener.local_addr().unwrap());
        let bodies: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let (b, h) = (bodies.clone(), hits.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                }
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                h.lock().unwrap().push(target.clone());
                let arch = target
                    .split(['?', '&'])
                    .find_map(|kv| kv.strip_prefix("arch="))
                    .unwrap_or("")
                    .to_string();
                let ok = target.contains("LinkID=121721");
                let body = b.lock().unwrap().get(&arch).cloned().filter(|_| ok);
                let _ = match body {
                    Some(body) => conn
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|_| conn.write_all(&body)),
                    None => conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                };
            }
        });
        StandIn { base, bodies, hits }
    }

    /// Answers `arch=<arch>` with `body` from now on.
    pub fn serve(&self, arch: &str, body: Vec<u8>) {
        self.bodies.lock().unwrap().insert(arch.into(), body);
    }
}
