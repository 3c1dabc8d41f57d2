//! A blocking S3 client with the few requests a publish needs.

use std::path::Path;

use super::{Config, Location, S3Error};
use crate::progress::Observer;

/// Files above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;
/// Size of one part of a multipart upload (the last may be smaller).
pub const PART_SIZE: u64 = 16 * 1024 * 1024;

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
}

impl Client {
    pub fn new(config: Config, location: Location) -> Result<Client, S3Error> {
        Ok(Client { config, location })
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
        todo!()
    }

    /// HEAD `rel`; None when it does not exist (404).
    pub fn head(&self, rel: &str) -> Result<Option<ObjectInfo>, S3Error> {
        todo!("{rel}")
    }

    /// GET `rel` whole into memory, refusing more than `limit` bytes; None
    /// when it does not exist.
    pub fn get_bytes(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>, S3Error> {
        todo!("{rel} {limit}")
    }

    /// GET `rel` into `out`, streaming; None when it does not exist.
    pub fn get_to(&self, rel: &str, out: &mut dyn std::io::Write) -> Result<Option<u64>, S3Error> {
        let _ = out;
        todo!("{rel}")
    }

    /// PUT the file at `path` as `rel`, streamed from disk: one request up
    /// to [`MULTIPART_THRESHOLD`], else a multipart upload of
    /// [`PART_SIZE`] parts (aborted on failure). Every request carries
    /// `x-amz-checksum-sha256` of its body, so the store refuses damaged
    /// bytes; the object gets `x-amz-meta-sha256: <sha256_hex>` (the
    /// whole file's hash, checked while reading) and `content_type`. The
    /// upload is checked by a HEAD afterwards (size and metadata).
    pub fn put_file(
        &self,
        rel: &str,
        path: &Path,
        sha256_hex: &str,
        content_type: &str,
        observer: &dyn Observer,
    ) -> Result<ObjectInfo, S3Error> {
        let _ = (path, sha256_hex, content_type, observer);
        todo!("{rel}")
    }

    /// PUT small `data` as `rel` (same checks as [`Client::put_file`]).
    /// `if_none_match_any`: send `If-None-Match: *` (create only; stores
    /// that do not support it ignore it).
    pub fn put_bytes(
        &self,
        rel: &str,
        data: &[u8],
        content_type: &str,
        if_none_match_any: bool,
    ) -> Result<ObjectInfo, S3Error> {
        let _ = (data, content_type, if_none_match_any);
        todo!("{rel}")
    }

    /// Server-side copy `from` -> `to` (metadata copied), only if `from`
    /// still has ETag `if_match` when given (412 -> [`S3Error::Precondition`]).
    pub fn copy(
        &self,
        from: &str,
        to: &str,
        if_match: Option<&str>,
    ) -> Result<ObjectInfo, S3Error> {
        let _ = if_match;
        todo!("{from} {to}")
    }

    /// DELETE `rel` (absent is fine).
    pub fn delete(&self, rel: &str) -> Result<(), S3Error> {
        todo!("{rel}")
    }

    /// Every object under `rel_prefix` (relative keys and sizes), all pages.
    pub fn list(&self, rel_prefix: &str) -> Result<Vec<(String, u64)>, S3Error> {
        todo!("{rel_prefix}")
    }
}
