//! S3-compatible object storage as a mirror target: where a mirror lives
//! (`s3://BUCKET/PREFIX`, [`Location`]), how to reach the store
//! ([`Config`]: endpoint, region, path style, credentials from the usual
//! `AWS_*` variables), and a blocking client ([`Client`]) with exactly the
//! requests a publish needs: HEAD, GET of small objects, PUT of a file
//! streamed from disk (multipart above [`MULTIPART_THRESHOLD`]) with its
//! SHA-256 checked by the store, server-side COPY with a source condition,
//! DELETE and LIST. Requests are signed with AWS Signature V4
//! (`rusty-s3`, sans-IO) and sent with the same blocking HTTP client fetch
//! uses (`ureq`); 5xx, throttling and dropped connections are retried with
//! backoff (`transport`, one signed request at a time, each signed right
//! before it is sent); error answers become an [`S3Error`] naming the
//! `s3://` object and the fix.
//!
//! This module only talks to the store; it never decides what goes where
//! or in which order (that is [`crate::mirror::s3mirror`]'s job).

mod client;
mod config;
mod error;
mod location;
mod transport;

pub use client::{Client, ObjectInfo, META_SHA256, MULTIPART_THRESHOLD, PART_SIZE};
pub use config::Config;
pub use error::S3Error;
pub use location::Location;
pub use transport::Retry;
