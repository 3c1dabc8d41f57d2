//! What went wrong talking to a store. Every variant names the object or
//! bucket (as `s3://bucket/key`) and the fix.

use crate::error::{Classify, ExitKind};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3Error {
    /// Configuration: missing credentials, bad endpoint or location (exit 2).
    #[error("{0}")]
    Config(String),
    /// The store refused the credentials (403 InvalidAccessKeyId,
    /// SignatureDoesNotMatch, AccessDenied).
    #[error("{url}: the store refused the credentials ({code}: {message}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that the key may read and write this prefix")]
    Credentials {
        url: String,
        code: String,
        message: String,
    },
    /// NoSuchBucket.
    #[error("{url}: bucket {bucket:?} does not exist; create it (garage bucket create {bucket}) or fix --mirror")]
    NoBucket { url: String, bucket: String },
    /// RequestTimeTooSkewed.
    #[error("{url}: this machine's clock differs from the store's by more than 15 minutes ({message}); set the clock (timedatectl, chrony) and try again")]
    ClockSkew { url: String, message: String },
    /// Connection refused, reset, timed out, DNS, after the retries.
    #[error("{url}: cannot reach the store after {attempts} attempts: {message}; check --s3-endpoint and that the store is running")]
    Unreachable {
        url: String,
        attempts: u32,
        message: String,
    },
    /// Any other error status, after retries where retrying makes sense.
    #[error("{url}: the store answered {status} {code}: {message}")]
    Status {
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    /// A precondition (If-Match, x-amz-copy-source-if-match) did not hold: 412.
    #[error("{url}: the object changed since it was read (412 Precondition Failed)")]
    Precondition { url: String },
    /// The store's answer does not match what was sent (size, checksum).
    #[error("{url}: {reason}")]
    Mismatch { url: String, reason: String },
    /// A local file to upload cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl Classify for S3Error {
    fn exit_kind(&self) -> ExitKind {
        match self {
            S3Error::Config(_) => ExitKind::Usage,
            _ => ExitKind::Operational,
        }
    }
}
