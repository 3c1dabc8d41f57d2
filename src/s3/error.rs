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
    /// What was downloaded cannot be written where the caller wanted it.
    #[error("{url}: cannot write what was downloaded: {source}")]
    Write { url: String, source: std::io::Error },
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

/// The `<Code>` and `<Message>` of an S3 XML error answer (both empty when
/// the answer had no body, as HEAD answers never do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    /// Reads `<Error><Code>..</Code><Message>..</Message></Error>`;
    /// anything else (HTML from a proxy, nothing) gives empty fields and,
    /// for a non-XML body, its first line as the message.
    pub fn parse(body: &[u8]) -> ErrorBody {
        use quick_xml::events::Event;
        let mut reader = quick_xml::Reader::from_reader(body);
        let mut out = ErrorBody::default();
        let mut field: Option<&'static str> = None;
        let mut saw_xml = false;
        loop {
            match reader.read_event() {
                Ok(Event::Start(e)) => {
                    saw_xml = true;
                    field = match e.local_name().as_ref() {
                        b"Code" => Some("code"),
                        b"Message" => Some("message"),
                        _ => None,
                    };
                }
                Ok(Event::Text(t)) => {
                    let text = t.unescape().map(|c| c.into_owned()).unwrap_or_default();
                    match field {
                        Some("code") if out.code.is_empty() => out.code = text.trim().to_string(),
                        Some("message") if out.message.is_empty() => {
                            out.message = text.trim().to_string()
                        }
                        _ => {}
                    }
                }
                Ok(Event::End(_)) => field = None,
                Ok(Event::Eof) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if !saw_xml && out.message.is_empty() {
            let text = String::from_utf8_lossy(body);
            if let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) {
                out.message = line.chars().take(200).collect();
            }
        }
        out
    }

    /// Whether a store answering this should be asked again later.
    pub fn retryable(&self, status: u16) -> bool {
        matches!(status, 429 | 500 | 502 | 503 | 504)
            || matches!(
                self.code.as_str(),
                "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"
            )
    }

    /// Whether this says the request's date is too far from the store's
    /// clock: AWS's RequestTimeTooSkewed, and for the presigned requests
    /// gapferry sends, Garage's "Date is too old" and AWS's expired or
    /// not-yet-valid request.
    fn is_clock_skew(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        self.code == "RequestTimeTooSkewed"
            || m.contains("date is too old")
            || m.contains("request has expired")
            || m.contains("request is not valid yet")
            || m.contains("time too skewed")
    }

    /// The error for an answer with `status` and this body, about the
    /// object (or bucket) named `url` in bucket `bucket`.
    pub fn into_error(self, status: u16, url: &str, bucket: &str) -> S3Error {
        let url = url.to_string();
        if self.is_clock_skew() {
            let message = if self.message.is_empty() {
                self.code
            } else {
                self.message
            };
            return S3Error::ClockSkew { url, message };
        }
        match (status, self.code.as_str()) {
            (_, "NoSuchBucket") => S3Error::NoBucket {
                url,
                bucket: bucket.to_string(),
            },
            (412, _) | (_, "PreconditionFailed") => S3Error::Precondition { url },
            (_, "InvalidDigest" | "BadDigest" | "XAmzContentChecksumMismatch") => {
                S3Error::Mismatch {
                    url,
                    reason: format!(
                        "the store refused the upload: the bytes it received do not hash to the \
                         checksum sent ({}: {}); they were damaged on the way or the file \
                         changed while it was read; run the import again",
                        self.code, self.message
                    ),
                }
            }
            (403, _) | (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied") => {
                S3Error::Credentials {
                    url,
                    code: if self.code.is_empty() {
                        "403 Forbidden".to_string()
                    } else {
                        self.code
                    },
                    message: if self.message.is_empty() {
                        "no details in the answer".to_string()
                    } else {
                        self.message
                    },
                }
            }
            _ => S3Error::Status {
                url,
                status,
                code: if self.code.is_empty() {
                    "(no error code)".to_string()
                } else {
                    self.code
                },
                message: if self.message.is_empty() {
                    "no details in the answer".to_string()
                } else {
                    self.message
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16, body: &str) -> S3Error {
        ErrorBody::parse(body.as_bytes()).into_error(status, "s3://b/k", "b")
    }

    #[test]
    fn xml_bodies_are_read() {
        let b = ErrorBody::parse(
            br#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>Key not found &amp; gone</Message><Resource>/b/k</Resource></Error>"#,
        );
        assert_eq!(b.code, "NoSuchKey");
        assert_eq!(b.message, "Key not found & gone");
        assert_eq!(ErrorBody::parse(b""), ErrorBody::default());
        let html = ErrorBody::parse(b"\n<html>bad gateway</html>");
        assert_eq!(html.code, "");
        let plain = ErrorBody::parse(b"\nupstream connect error\n");
        assert_eq!(plain.message, "upstream connect error");
    }

    #[test]
    fn answers_are_classified() {
        let e = classify(
            403,
            "<Error><Code>InvalidAccessKeyId</Code><Message>No such key: GK1</Message></Error>",
        );
        assert!(matches!(e, S3Error::Credentials { .. }), "{e}");
        assert!(e.to_string().starts_with("s3://b/k: "), "{e}");
        assert!(e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        assert!(matches!(classify(403, ""), S3Error::Credentials { .. }));
        assert!(matches!(
            classify(404, "<Error><Code>NoSuchBucket</Code></Error>"),
            S3Error::NoBucket { .. }
        ));
        assert!(matches!(classify(412, ""), S3Error::Precondition { .. }));
        let skew = classify(
            400,
            "<Error><Code>InvalidRequest</Code><Message>Bad request: Date is too old</Message></Error>",
        );
        assert!(matches!(skew, S3Error::ClockSkew { .. }), "{skew}");
        assert!(matches!(
            classify(403, "<Error><Code>RequestTimeTooSkewed</Code></Error>"),
            S3Error::ClockSkew { .. }
        ));
        let damaged = classify(
            400,
            "<Error><Code>InvalidDigest</Code><Message>m</Message></Error>",
        );
        assert!(matches!(damaged, S3Error::Mismatch { .. }), "{damaged}");
        assert!(
            damaged.to_string().contains("run the import again"),
            "{damaged}"
        );
        let other = classify(
            400,
            "<Error><Code>MalformedXML</Code><Message>m</Message></Error>",
        );
        assert!(other.to_string().contains("400 MalformedXML: m"), "{other}");
    }

    #[test]
    fn retryable_answers() {
        let none = ErrorBody::default();
        for s in [429, 500, 502, 503, 504] {
            assert!(none.retryable(s), "{s}");
        }
        for s in [400, 403, 404, 412] {
            assert!(!none.retryable(s), "{s}");
        }
        let slow = ErrorBody {
            code: "SlowDown".into(),
            message: String::new(),
        };
        assert!(slow.retryable(400));
    }
}
