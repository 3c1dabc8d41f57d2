//! A blocking S3 client with the few requests a publish needs: what each
//! request carries (keys, signed headers, checksums, metadata) and what is
//! read from each answer. Sending, signing time and retries are
//! [`super::transport`]'s; this module never decides which objects a
//! publish writes or in which order.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use jiff::Timestamp;
use rusty_s3::actions::{
    AbortMultipartUpload, CompleteMultipartUpload, CreateMultipartUpload, DeleteObject, GetObject,
    HeadBucket, HeadObject, ListObjectsV2, PutObject, UploadPart,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use sha2::{Digest, Sha256};
use ureq::http::{Method, Response};
use ureq::Body;

use super::error::ErrorBody;
use super::transport::{Answer, Payload, Retry, Target, Transport, SIGNATURE_LIFETIME};
use super::{Config, Location, S3Error};
use crate::progress::Observer;

/// Files above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;
/// Size of one part of a multipart upload (the last may be smaller).
pub const PART_SIZE: u64 = 16 * 1024 * 1024;

/// The metadata header holding the lower-case hex SHA-256 of the content.
pub const META_SHA256: &str = "x-amz-meta-sha256";

/// Largest listing page read into memory.
const MAX_LIST_PAGE: u64 = 32 * 1024 * 1024;

/// What HEAD (or a completed upload or copy) says of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// The ETag, quotes included, as the store returned it (for If-Match).
    pub etag: String,
    /// Lower-case hex SHA-256 of the content, from the `x-amz-meta-sha256`
    /// metadata gapferry writes on every object (None: not written by
    /// gapferry).
    pub sha256: Option<String>,
}

/// A client for one mirror location.
#[derive(Debug)]
pub struct Client {
    config: Config,
    location: Location,
    bucket: Bucket,
    credentials: Credentials,
    transport: Transport,
    list_page: usize,
}

impl Client {
    /// A client for `location` in the store `config` describes. Fails when
    /// the endpoint cannot address the bucket (virtual-hosted addressing
    /// of an IP address or of a name with dots: use path style).
    pub fn new(config: Config, location: Location) -> Result<Client, S3Error> {
        let style = if config.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            config.endpoint.clone(),
            style,
            location.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| {
            S3Error::Config(format!(
                "{location}: cannot address bucket {:?} at {} with virtual-hosted URLs \
                 ({e:?}); add --s3-path-style (needed for IP addresses and stores without \
                 wildcard DNS, such as Garage, MinIO and Ceph by default)",
                location.bucket,
                config.endpoint.as_str()
            ))
        })?;
        let credentials = match &config.session_token {
            Some(token) => Credentials::new_with_token(
                config.access_key.clone(),
                config.secret_key.clone(),
                token.clone(),
            ),
            None => Credentials::new(config.access_key.clone(), config.secret_key.clone()),
        };
        Ok(Client {
            config,
            location,
            bucket,
            credentials,
            transport: Transport::new(),
            list_page: 1000,
        })
    }

    /// The same client with other retry settings (tests shorten them).
    pub fn with_retry(mut self, retry: Retry) -> Client {
        self.transport.retry = retry;
        self
    }

    /// The same client signing with a clock `secs` seconds off this
    /// machine's (the clock skew tests).
    pub fn with_clock_offset(mut self, secs: i64) -> Client {
        self.transport.clock_offset_secs = secs;
        self
    }

    /// The same client listing `n` keys per page (1 to 1000; tests use
    /// small pages to cover pagination).
    pub fn with_list_page_size(mut self, n: usize) -> Client {
        self.list_page = n.clamp(1, 1000);
        self
    }

    /// The store this client talks to.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// `s3://bucket/prefix/rel`, for messages.
    pub fn url_of(&self, rel: &str) -> String {
        format!("s3://{}/{}", self.location.bucket, self.location.key(rel))
    }

    /// HEAD the bucket: Ok when it exists and the credentials may use it.
    pub fn check_bucket(&self) -> Result<(), S3Error> {
        let url = self.location.to_string();
        let action = HeadBucket::new(&self.bucket, Some(&self.credentials));
        match self.request(&url, action, Vec::new(), &Payload::None, false) {
            Ok(Answer::Ok(_)) => Ok(()),
            Ok(Answer::NotFound) => Err(S3Error::NoBucket {
                url,
                bucket: self.location.bucket.clone(),
            }),
            Err(e) => Err(self.explain(e)),
        }
    }

    /// HEAD `rel`; None when it does not exist (404). A 404 for a missing
    /// bucket looks the same (HEAD answers have no body):
    /// [`Client::check_bucket`] tells them apart.
    pub fn head(&self, rel: &str) -> Result<Option<ObjectInfo>, S3Error> {
        let key = self.location.key(rel);
        let url = self.url_of(rel);
        let action = HeadObject::new(&self.bucket, Some(&self.credentials), &key);
        match self.request(&url, action, Vec::new(), &Payload::None, false) {
            Ok(Answer::Ok(resp)) => object_info(&url, &resp).map(Some),
            Ok(Answer::NotFound) => Ok(None),
            Err(e) => Err(self.explain(e)),
        }
    }

    /// GET `rel` whole into memory, refusing more than `limit` bytes; None
    /// when it does not exist.
    pub fn get_bytes(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>, S3Error> {
        let url = self.url_of(rel);
        let Some(mut resp) = self.get(rel)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| cut_off(&url, &e))?;
        if out.len() as u64 > limit {
            return Err(S3Error::Mismatch {
                url,
                reason: format!(
                    "the object is larger than the {limit} bytes expected of it; it was not \
                     written by gapferry, remove or replace it"
                ),
            });
        }
        Ok(Some(out))
    }

    /// GET `rel` into `out`, streaming; None when it does not exist.
    pub fn get_to(&self, rel: &str, out: &mut dyn std::io::Write) -> Result<Option<u64>, S3Error> {
        let url = self.url_of(rel);
        let Some(mut resp) = self.get(rel)? else {
            return Ok(None);
        };
        let mut reader = resp.body_mut().as_reader();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(cut_off(&url, &e)),
            };
            out.write_all(&buf[..n]).map_err(|source| S3Error::Write {
                url: url.clone(),
                source,
            })?;
            total += n as u64;
        }
        out.flush().map_err(|source| S3Error::Write {
            url: url.clone(),
            source,
        })?;
        Ok(Some(total))
    }

    /// PUT the file at `path` as `rel`, streamed from disk: one request up
    /// to [`MULTIPART_THRESHOLD`], else a multipart upload of
    /// [`PART_SIZE`] parts (aborted on failure). Every request carries
    /// `x-amz-checksum-sha256` of its body, so the store refuses damaged
    /// bytes; the object gets `x-amz-meta-sha256: <sha256_hex>` (the
    /// whole file's hash, checked while reading) and `content_type`. The
    /// upload is checked by a HEAD afterwards (size and metadata).
    ///
    /// `observer` hears `start("uploading REL", size)`, the bytes as they
    /// go out, and `finish()`. A file whose content no longer hashes to
    /// `sha256_hex` is refused with [`S3Error::Mismatch`] and no object
    /// is created or replaced.
    pub fn put_file(
        &self,
        rel: &str,
        path: &Path,
        sha256_hex: &str,
        content_type: &str,
        observer: &dyn Observer,
    ) -> Result<ObjectInfo, S3Error> {
        let read_err = |source| S3Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_err)?.len();
        let want = sha256_hex.to_ascii_lowercase();
        observer.start(&format!("uploading {rel}"), size);
        let result = if size <= MULTIPART_THRESHOLD {
            self.put_single(rel, path, size, &want, content_type, observer)
        } else {
            self.put_multipart(rel, path, size, &want, content_type, observer)
        };
        observer.finish();
        result?;
        self.check_written(rel, size, &want)
    }

    /// PUT small `data` as `rel` (same checks as [`Client::put_file`]).
    /// `if_none_match_any`: send `If-None-Match: *` (create only; stores
    /// that do not support it ignore it: Garage 2.5 does).
    pub fn put_bytes(
        &self,
        rel: &str,
        data: &[u8],
        content_type: &str,
        if_none_match_any: bool,
    ) -> Result<ObjectInfo, S3Error> {
        let key = self.location.key(rel);
        let url = self.url_of(rel);
        let digest: [u8; 32] = Sha256::digest(data).into();
        let hex = hex::encode(digest);
        let mut headers = object_headers(content_type, &hex);
        headers.push(checksum_header(&digest));
        if if_none_match_any {
            headers.push(("if-none-match".into(), "*".into()));
        }
        let action = PutObject::new(&self.bucket, Some(&self.credentials), &key);
        self.expect_ok(&url, action, headers, &Payload::Bytes(data), true)?;
        self.check_written(rel, data.len() as u64, &hex)
    }

    /// Server-side copy `from` -> `to` (metadata copied), only if `from`
    /// still has ETag `if_match` when given (412 -> [`S3Error::Precondition`]).
    /// A missing `from` is an [`S3Error::Status`] 404 naming it. Returns
    /// what HEAD says of `to` afterwards.
    pub fn copy(
        &self,
        from: &str,
        to: &str,
        if_match: Option<&str>,
    ) -> Result<ObjectInfo, S3Error> {
        let to_key = self.location.key(to);
        let from_url = self.url_of(from);
        let url = self.url_of(to);
        let mut headers = vec![(
            "x-amz-copy-source".to_string(),
            format!(
                "/{}/{}",
                self.location.bucket,
                encode_key(&self.location.key(from))
            ),
        )];
        if let Some(etag) = if_match {
            headers.push(("x-amz-copy-source-if-match".to_string(), etag.to_string()));
        }
        let action = PutObject::new(&self.bucket, Some(&self.credentials), &to_key);
        match self.request(&url, action, headers, &Payload::Bytes(&[]), false) {
            Ok(Answer::Ok(mut resp)) => {
                // A copy may fail after its 200 status line: the error is
                // then in the body.
                let body = read_body(&mut resp, &url, 1024 * 1024)?;
                let parsed = ErrorBody::parse(&body);
                if !parsed.code.is_empty() {
                    return Err(parsed.into_error(500, &url, &self.location.bucket));
                }
            }
            Ok(Answer::NotFound) => {
                return Err(S3Error::Status {
                    url: from_url,
                    status: 404,
                    code: "NoSuchKey".into(),
                    message: format!("the source of a copy to {url} does not exist"),
                })
            }
            Err(S3Error::Precondition { .. }) => {
                return Err(S3Error::Precondition { url: from_url })
            }
            Err(e) => return Err(self.explain(e)),
        }
        self.head(to)?.ok_or_else(|| S3Error::Mismatch {
            url,
            reason: "the store accepted the copy but has no such object afterwards; check \
                     the store's health (garage status)"
                .into(),
        })
    }

    /// DELETE `rel` (absent is fine).
    pub fn delete(&self, rel: &str) -> Result<(), S3Error> {
        let key = self.location.key(rel);
        let url = self.url_of(rel);
        let action = DeleteObject::new(&self.bucket, Some(&self.credentials), &key);
        match self.request(&url, action, Vec::new(), &Payload::None, false) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.explain(e)),
        }
    }

    /// Every object under `rel_prefix` (relative keys and sizes), all pages.
    /// `rel_prefix` is a plain key prefix: give `dir/` for the objects in
    /// folder `dir`, `""` for the whole mirror.
    pub fn list(&self, rel_prefix: &str) -> Result<Vec<(String, u64)>, S3Error> {
        let prefix = self.location.key(rel_prefix);
        let url = self.url_of(rel_prefix);
        let strip = if self.location.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.location.prefix)
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
            action.with_prefix(prefix.clone());
            action.with_max_keys(self.list_page);
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let mut resp = self.expect_ok(&url, action, Vec::new(), &Payload::None, false)?;
            let body = read_body(&mut resp, &url, MAX_LIST_PAGE)?;
            let text = String::from_utf8_lossy(&body);
            let page = ListObjectsV2::parse_response(&text).map_err(|e| S3Error::Mismatch {
                url: url.clone(),
                reason: format!(
                    "the store's listing cannot be read ({e}); is --s3-endpoint an S3 API?"
                ),
            })?;
            for item in page.contents {
                let Some(rel) = item.key.strip_prefix(&strip) else {
                    continue;
                };
                out.push((rel.to_string(), item.size.unwrap_or(0)));
            }
            match page.next_continuation_token {
                Some(t) if token.as_deref() != Some(t.as_str()) => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    // ---- the requests behind the API ----

    /// Signs `action` with `headers` and sends it (see
    /// [`Transport::send`]); `probe`: diagnose a dropped large upload.
    fn request<'a, A: S3Action<'a>>(
        &self,
        url: &str,
        mut action: A,
        headers: Vec<(String, String)>,
        payload: &Payload<'_>,
        probe: bool,
    ) -> Result<Answer, S3Error> {
        for (k, v) in &headers {
            action.headers_mut().insert(k.clone(), v.clone());
        }
        let method = match A::METHOD {
            rusty_s3::Method::Head => Method::HEAD,
            rusty_s3::Method::Get => Method::GET,
            rusty_s3::Method::Post => Method::POST,
            rusty_s3::Method::Put => Method::PUT,
            rusty_s3::Method::Delete => Method::DELETE,
        };
        let target = Target {
            url,
            bucket: &self.location.bucket,
        };
        let sign = |t: &Timestamp| action.sign_with_time(SIGNATURE_LIFETIME, t);
        let diagnose = || self.probe();
        self.transport.send(
            &target,
            method,
            &sign,
            &headers,
            payload,
            probe.then_some(&diagnose as &dyn Fn() -> Option<S3Error>),
        )
    }

    /// [`Client::request`] where a 404 is an error too.
    fn expect_ok<'a, A: S3Action<'a>>(
        &self,
        url: &str,
        action: A,
        headers: Vec<(String, String)>,
        payload: &Payload<'_>,
        probe: bool,
    ) -> Result<Response<Body>, S3Error> {
        match self.request(url, action, headers, payload, probe) {
            Ok(Answer::Ok(resp)) => Ok(resp),
            Ok(Answer::NotFound) => Err(S3Error::Status {
                url: url.to_string(),
                status: 404,
                code: "NoSuchKey".into(),
                message: "not found".into(),
            }),
            Err(e) => Err(self.explain(e)),
        }
    }

    fn get(&self, rel: &str) -> Result<Option<Response<Body>>, S3Error> {
        let key = self.location.key(rel);
        let url = self.url_of(rel);
        let action = GetObject::new(&self.bucket, Some(&self.credentials), &key);
        match self.request(&url, action, Vec::new(), &Payload::None, false) {
            Ok(Answer::Ok(resp)) => Ok(Some(resp)),
            Ok(Answer::NotFound) => Ok(None),
            Err(e) => Err(self.explain(e)),
        }
    }

    /// One listing request of at most one key under the prefix: the
    /// store's reason for refusing requests (an error with a body, which
    /// HEAD answers and dropped uploads lack), or None when it does not.
    fn probe(&self) -> Option<S3Error> {
        let url = self.location.to_string();
        let mut action = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
        action.with_prefix(self.location.key(""));
        action.with_max_keys(1);
        match self.request(&url, action, Vec::new(), &Payload::None, false) {
            Ok(Answer::Ok(_)) => None,
            Ok(Answer::NotFound) => None,
            Err(S3Error::Unreachable { .. }) => None,
            Err(e) => Some(e),
        }
    }

    /// An error without details (a HEAD answer has no body) replaced by
    /// the probe's, when the probe has one.
    fn explain(&self, e: S3Error) -> S3Error {
        let bare = match &e {
            S3Error::Status { message, .. } | S3Error::Credentials { message, .. } => {
                message == "no details in the answer"
            }
            _ => false,
        };
        if bare {
            if let Some(better) = self.probe() {
                return better;
            }
        }
        e
    }

    /// One PUT of a file of at most [`MULTIPART_THRESHOLD`] bytes: hashed
    /// first (refused unless it matches `want`), then streamed with that
    /// hash as its checksum, so the store refuses it if the file changes
    /// in between.
    fn put_single(
        &self,
        rel: &str,
        path: &Path,
        size: u64,
        want: &str,
        content_type: &str,
        observer: &dyn Observer,
    ) -> Result<(), S3Error> {
        let key = self.location.key(rel);
        let url = self.url_of(rel);
        let (digest, hashed) = hash_file(path)?;
        if hex::encode(digest) != want || hashed != size {
            return Err(changed(&url, path, want));
        }
        let mut headers = object_headers(content_type, want);
        headers.push(checksum_header(&digest));
        // Progress across attempts: only bytes beyond the furthest point
        // any attempt reached.
        let reported = AtomicU64::new(0);
        let sent = |done: u64| {
            let before = reported.fetch_max(done, Ordering::Relaxed);
            if done > before {
                observer.advance(done - before);
            }
        };
        let payload = Payload::File {
            path,
            len: size,
            sent: &sent,
        };
        let action = PutObject::new(&self.bucket, Some(&self.credentials), &key);
        match self.request(&url, action, headers, &payload, true) {
            Ok(Answer::Ok(_)) => Ok(()),
            Ok(Answer::NotFound) => Err(S3Error::NoBucket {
                url,
                bucket: self.location.bucket.clone(),
            }),
            Err(e) => Err(self.explain(e)),
        }
    }

    /// A multipart upload of [`PART_SIZE`] parts, each with its own
    /// checksum; the whole file's hash is checked before completing.
    /// Aborted on any failure.
    fn put_multipart(
        &self,
        rel: &str,
        path: &Path,
        size: u64,
        want: &str,
        content_type: &str,
        observer: &dyn Observer,
    ) -> Result<(), S3Error> {
        let upload_id = self.create_multipart(rel, want, content_type)?;
        let result = self.upload_parts(rel, &upload_id, path, size, want, observer);
        if result.is_err() {
            // Best effort: the upload failed already; an unfinished upload
            // left behind holds space until the store's lifecycle cleans it.
            self.abort_multipart(rel, &upload_id);
        }
        result
    }

    /// Starts a multipart upload of `rel` whose whole content will hash to
    /// `sha256_hex` (stored as its metadata) and returns its upload id.
    /// With [`Client::upload_part`], [`Client::complete_multipart`] and
    /// [`Client::abort_multipart`]: uploads from a stream whose length is
    /// known but that is not a file.
    pub fn create_multipart(
        &self,
        rel: &str,
        sha256_hex: &str,
        content_type: &str,
    ) -> Result<String, S3Error> {
        let key = self.location.key(rel);
        let url = self.url_of(rel);
        let action = CreateMultipartUpload::new(&self.bucket, Some(&self.credentials), &key);
        let headers = object_headers(content_type, &sha256_hex.to_ascii_lowercase());
        let mut resp = self.expect_ok(&url, action, headers, &Payload::Bytes(&[]), false)?;
        let body = read_body(&mut resp, &url, 1024 * 1024)?;
        let created = CreateMultipartUpload::parse_response(&String::from_utf8_lossy(&body))
            .map_err(|e| S3Error::Mismatch {
                url: url.clone(),
                reason: format!(
                    "the store's answer to starting a multipart upload cannot be read ({e})"
                ),
            })?;
        Ok(created.upload_id().to_string())
    }

    /// Uploads part `part_number` (from 1) of upload `upload_id`, with the
    /// SHA-256 of `data` for the store to check; returns its ETag.
    pub fn upload_part(
        &self,
        rel: &str,
        upload_id: &str,
        part_number: u16,
        data: &[u8],
    ) -> Result<String, S3Error> {
        let key = self.location.key(rel);
        let url = self.url_of(rel);
        let digest: [u8; 32] = Sha256::digest(data).into();
        let action = UploadPart::new(
            &self.bucket,
            Some(&self.credentials),
            &key,
            part_number,
            upload_id,
        );
        let resp = self.expect_ok(
            &url,
            action,
            vec![checksum_header(&digest)],
            &Payload::Bytes(data),
            true,
        )?;
        header(&resp, "etag").ok_or_else(|| S3Error::Mismatch {
            url,
            reason: format!("the store's answer to part {part_number} has no ETag"),
        })
    }

    /// Completes upload `upload_id` from its parts' ETags (in part order),
    /// then checks the object by HEAD: `size` bytes carrying `sha256_hex`.
    pub fn complete_multipart(
        &self,
        rel: &str,
        upload_id: &str,
        etags: &[String],
        size: u64,
        sha256_hex: &str,
    ) -> Result<ObjectInfo, S3Error> {
        self.complete_only(rel, upload_id, etags)?;
        self.check_written(rel, size, &sha256_hex.to_ascii_lowercase())
    }

    /// Completes upload `upload_id` from its parts' ETags, in part order.
    fn complete_only(&self, rel: &str, upload_id: &str, etags: &[String]) -> Result<(), S3Error> {
        let key = self.location.key(rel);
        let url = self.url_of(rel);
        let action = CompleteMultipartUpload::new(
            &self.bucket,
            Some(&self.credentials),
            &key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let body = action.clone().body();
        let mut resp = self.expect_ok(
            &url,
            action,
            Vec::new(),
            &Payload::Bytes(body.as_bytes()),
            false,
        )?;
        // Completing may fail after its 200 status line: the error is then
        // in the body.
        let answer = read_body(&mut resp, &url, 1024 * 1024)?;
        let parsed = ErrorBody::parse(&answer);
        if !parsed.code.is_empty() {
            return Err(parsed.into_error(500, &url, &self.location.bucket));
        }
        Ok(())
    }

    /// Abandons upload `upload_id` (best effort: the store's lifecycle
    /// removes what is left).
    pub fn abort_multipart(&self, rel: &str, upload_id: &str) {
        let key = self.location.key(rel);
        let url = self.url_of(rel);
        let abort =
            AbortMultipartUpload::new(&self.bucket, Some(&self.credentials), &key, upload_id);
        let _ = self.request(&url, abort, Vec::new(), &Payload::None, false);
    }

    #[allow(clippy::too_many_arguments)]
    fn upload_parts(
        &self,
        rel: &str,
        upload_id: &str,
        path: &Path,
        size: u64,
        want: &str,
        observer: &dyn Observer,
    ) -> Result<(), S3Error> {
        let url = self.url_of(rel);
        let url = url.as_str();
        let read_err = |source| S3Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(read_err)?;
        let mut whole = Sha256::new();
        let mut buf = Vec::with_capacity(PART_SIZE as usize);
        let mut etags: Vec<String> = Vec::new();
        let mut total = 0u64;
        loop {
            buf.clear();
            (&mut file)
                .take(PART_SIZE)
                .read_to_end(&mut buf)
                .map_err(read_err)?;
            if buf.is_empty() && !etags.is_empty() {
                break;
            }
            whole.update(&buf);
            total += buf.len() as u64;
            if total > size {
                return Err(changed(url, path, want));
            }
            let part_number = u16::try_from(etags.len() + 1).map_err(|_| S3Error::Mismatch {
                url: url.to_string(),
                reason: "the file needs more than 65535 parts".into(),
            })?;
            let etag = self.upload_part(rel, upload_id, part_number, &buf)?;
            etags.push(etag);
            observer.advance(buf.len() as u64);
            if (buf.len() as u64) < PART_SIZE {
                break;
            }
        }
        if total != size || hex::encode(whole.finalize()) != want {
            return Err(changed(url, path, want));
        }
        self.complete_only(rel, upload_id, &etags)?;
        Ok(())
    }

    /// HEAD after a write: the object must have `size` bytes and carry
    /// SHA-256 `sha256_hex`.
    fn check_written(&self, rel: &str, size: u64, sha256_hex: &str) -> Result<ObjectInfo, S3Error> {
        let url = self.url_of(rel);
        let Some(info) = self.head(rel)? else {
            return Err(S3Error::Mismatch {
                url,
                reason: "the store accepted the upload but has no such object afterwards; \
                         check the store's health (garage status)"
                    .into(),
            });
        };
        if info.size != size || info.sha256.as_deref() != Some(sha256_hex) {
            return Err(S3Error::Mismatch {
                url,
                reason: format!(
                    "after the upload the store holds {} bytes with SHA-256 {}, not {size} \
                     bytes with {sha256_hex}; another writer may use this prefix",
                    info.size,
                    info.sha256.as_deref().unwrap_or("(none)")
                ),
            });
        }
        Ok(info)
    }
}

/// Content-Type and the SHA-256 metadata of a new object.
fn object_headers(content_type: &str, sha256_hex: &str) -> Vec<(String, String)> {
    vec![
        ("content-type".to_string(), content_type.to_string()),
        (META_SHA256.to_string(), sha256_hex.to_string()),
    ]
}

/// `x-amz-checksum-sha256` of a body: the store refuses the body unless it
/// hashes to this.
fn checksum_header(digest: &[u8; 32]) -> (String, String) {
    (
        "x-amz-checksum-sha256".to_string(),
        base64::engine::general_purpose::STANDARD.encode(digest),
    )
}

fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn object_info(url: &str, resp: &Response<Body>) -> Result<ObjectInfo, S3Error> {
    let size = header(resp, "content-length")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| S3Error::Mismatch {
            url: url.to_string(),
            reason: "the store's HEAD answer has no Content-Length".into(),
        })?;
    Ok(ObjectInfo {
        size,
        etag: header(resp, "etag").unwrap_or_default(),
        sha256: header(resp, META_SHA256).map(|s| s.trim().to_ascii_lowercase()),
    })
}

/// At most `limit` bytes of an answer's body; more is an error.
fn read_body(resp: &mut Response<Body>, url: &str, limit: u64) -> Result<Vec<u8>, S3Error> {
    let mut out = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| cut_off(url, &e))?;
    if out.len() as u64 > limit {
        return Err(S3Error::Mismatch {
            url: url.to_string(),
            reason: format!("the store's answer is larger than {limit} bytes"),
        });
    }
    Ok(out)
}

/// A body that stopped arriving.
fn cut_off(url: &str, e: &std::io::Error) -> S3Error {
    S3Error::Unreachable {
        url: url.to_string(),
        attempts: 1,
        message: format!("the answer was cut off: {e}"),
    }
}

/// The refusal of a file that no longer hashes to what was staged.
fn changed(url: &str, path: &Path, want: &str) -> S3Error {
    S3Error::Mismatch {
        url: url.to_string(),
        reason: format!(
            "{} no longer has SHA-256 {want} (it changed on disk after it was verified); \
             nothing was uploaded, run the import again",
            path.display()
        ),
    }
}

/// SHA-256 and length of a file, read in 1 MiB chunks.
fn hash_file(path: &Path) -> Result<([u8; 32], u64), S3Error> {
    let read_err = |source| S3Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize().into(), total))
}

/// A key for the `x-amz-copy-source` header: percent-encoded except for
/// unreserved characters and `/`.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_keys_are_encoded() {
        assert_eq!(encode_key("p/linux/updates.zip"), "p/linux/updates.zip");
        assert_eq!(encode_key("a b+c/ü"), "a%20b%2Bc/%C3%BC");
    }

    #[test]
    fn virtual_host_of_an_ip_needs_path_style() {
        let config = Config {
            endpoint: "http://127.0.0.1:3900".parse().unwrap(),
            region: "garage".into(),
            path_style: false,
            access_key: "GK".into(),
            secret_key: "s".into(),
            session_token: None,
        };
        let location: Location = "s3://mirror/p".parse().unwrap();
        let err = Client::new(config.clone(), location.clone()).unwrap_err();
        assert!(err.to_string().contains("--s3-path-style"), "{err}");
        let ok = Client::new(
            Config {
                path_style: true,
                ..config
            },
            location,
        )
        .unwrap();
        assert_eq!(ok.url_of("/a/b.zip"), "s3://mirror/p/a/b.zip");
    }
}
