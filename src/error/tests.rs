//! A sample of every variant of the crate error goes through the chain walk
//! the binary uses, bare and under a context, and must come out with its
//! documented exit code. `variant` has no wildcard arm: a new variant does not
//! compile here until it has a sample too.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::mirror::state::Downgrade;

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn variant(e: &Error) -> &'static str {
    match e {
        Error::Usage(_) => "Usage",
        Error::Key(_) => "Key",
        Error::Bundle(_) => "Bundle",
        Error::Cosign(_) => "Cosign",
        Error::Sequence(_) => "Sequence",
        Error::Collect(_) => "Collect",
        Error::Export(_) => "Export",
        Error::Endpoint(_) => "Endpoint",
        Error::Fetch(_) => "Fetch",
        Error::Slot(_) => "Slot",
        Error::Lock(_) => "Lock",
        Error::State(_) => "State",
        Error::Policy(_) => "Policy",
        Error::Ledger(_) => "Ledger",
        Error::Publish(_) => "Publish",
        Error::Session(_) => "Session",
        Error::Import(_) => "Import",
        Error::Rollback(_) => "Rollback",
        Error::Inbox(_) => "Inbox",
        Error::Metrics(_) => "Metrics",
        Error::Trust(_) => "Trust",
        Error::WinCollect(_) => "WinCollect",
        Error::WinSlot(_) => "WinSlot",
        Error::S3(_) => "S3",
        Error::S3Publish(_) => "S3Publish",
    }
}
const VARIANTS: usize = 25;

fn broken_ledger() -> LedgerError {
    LedgerError::Broken {
        path: p("/s/ledger.jsonl"),
        line: 3,
        reason: "hash mismatch".into(),
    }
}

fn older() -> PolicyError {
    PolicyError::Older(Vec::<Downgrade>::new())
}

/// One or more samples per variant, with the code the README documents.
fn samples() -> Vec<(Error, i32)> {
    use crate::mde::fetch::FetchError;
    vec![
        (
            UsageError("--threshold must be at least 1".into()).into(),
            2,
        ),
        (KeyError::WrongPassword { path: p("k.key") }.into(), 2),
        (
            KeyError::Read {
                path: p("k.key"),
                source: io::Error::other("x"),
            }
            .into(),
            2,
        ),
        (
            BundleError::Rejected {
                path: p("b.tar.zst"),
                reason: "bad signature".into(),
            }
            .into(),
            3,
        ),
        (
            BundleError::Policy {
                path: p("b.tar.zst"),
                reason: "expired".into(),
            }
            .into(),
            4,
        ),
        (
            crate::bundle::cosign::CosignError::Rejected {
                path: p("k.minisig"),
                reason: "does not verify".into(),
            }
            .into(),
            3,
        ),
        (
            crate::bundle::cosign::CosignError::Refused {
                path: p("b.tar.zst"),
                reason: "already signed by that key".into(),
            }
            .into(),
            2,
        ),
        (
            SequenceError {
                path: p("/s/seq"),
                reason: "cannot write it".into(),
                source: Some(Box::new(io::Error::other("disk full"))),
            }
            .into(),
            1,
        ),
        (
            CollectError::Nothing {
                root: p("/dl"),
                filter: String::new(),
            }
            .into(),
            1,
        ),
        (
            ExportError::Exists {
                path: p("b.tar.zst"),
            }
            .into(),
            1,
        ),
        (
            ExportError::Write {
                out: p("b.tar.zst"),
                source: BundleError::Rejected {
                    path: p("b.tar.zst"),
                    reason: "x".into(),
                },
            }
            .into(),
            3,
        ),
        (EndpointError::PlistForLinux.into(), 2),
        (FetchError::NoDownloadFolder.into(), 2),
        (FetchError::Locked { path: p("/dl") }.into(), 1),
        (
            SlotError::NotZip {
                url: "https://x".into(),
                reason: "short".into(),
            }
            .into(),
            1,
        ),
        (
            LockError::Held {
                path: p("/s/lock"),
                holder: None,
                waited: Duration::from_secs(1),
                legacy: false,
            }
            .into(),
            1,
        ),
        (
            StateError::Corrupt {
                path: p("/s/state.json"),
                reason: "x".into(),
            }
            .into(),
            1,
        ),
        (older().into(), 4),
        (
            PolicyError::SequenceConflict {
                channel: "prod".into(),
                sequence: 7,
                accepted_bundle_id: "a".into(),
                accepted_manifest_sha256: "b".into(),
                incoming_manifest_sha256: "c".into(),
            }
            .into(),
            3,
        ),
        (broken_ledger().into(), 3),
        (
            LedgerError::Missing {
                path: p("/s/ledger.jsonl"),
            }
            .into(),
            1,
        ),
        (
            PublishError::BadDestination {
                path: p("/t"),
                reason: "x".into(),
            }
            .into(),
            2,
        ),
        (PublishError::BadName { name: "..".into() }.into(), 1),
        (SessionError::from(broken_ledger()).into(), 3),
        (
            SessionError::from(StateError::NoDefault { reason: "x".into() }).into(),
            1,
        ),
        (ImportError::from(broken_ledger()).into(), 3),
        (
            ImportError::Rollback {
                bundle: p("b.tar.zst"),
                policy: Box::new(older()),
            }
            .into(),
            4,
        ),
        (
            ImportError::Usage {
                bundle: p("b.tar.zst"),
                reason: "no such ring".into(),
            }
            .into(),
            2,
        ),
        (
            RollbackError::BackDamaged {
                mismatch: "x".into(),
            }
            .into(),
            3,
        ),
        (RollbackError::NotServed { dir: p("/m/x") }.into(), 1),
        (RollbackError::from(no_default_state()).into(), 1),
        (
            InboxError::Io {
                path: p("/in"),
                source: io::Error::other("x"),
            }
            .into(),
            1,
        ),
        (
            crate::mirror::metrics::MetricsError::Write {
                path: p("/var/lib/node-exporter/gapferry.prom"),
                source: io::Error::other("x"),
            }
            .into(),
            1,
        ),
        (
            crate::mirror::metrics::MetricsError::NotProm {
                path: p("/var/lib/node-exporter/gapferry.txt"),
            }
            .into(),
            2,
        ),
        (
            crate::trustpolicy::TrustError::Rejected {
                source_name: "b.tar.zst".into(),
                reason: "forged".into(),
            }
            .into(),
            3,
        ),
        (
            crate::trustpolicy::TrustError::Usage {
                path: p("policy.json"),
                reason: "x".into(),
            }
            .into(),
            2,
        ),
        (
            crate::windows::collect::WinCollectError::Nothing {
                root: p("/d"),
                filter: String::new(),
            }
            .into(),
            1,
        ),
        (
            crate::windows::fetch::WinSlotError::Unsigned {
                url: "http://127.0.0.1/x".into(),
            }
            .into(),
            1,
        ),
        (
            crate::s3::S3Error::NoBucket {
                url: "s3://mirror/defender".into(),
                bucket: "mirror".into(),
            }
            .into(),
            1,
        ),
        (
            crate::s3::S3Error::Config("AWS_ACCESS_KEY_ID is not set".into()).into(),
            2,
        ),
        (
            crate::mirror::s3mirror::S3PublishError::Changed {
                url: "s3://mirror/defender/linux/production/arch_x86_64/updates.zip".into(),
                location: "s3://mirror/defender".into(),
            }
            .into(),
            1,
        ),
    ]
}

fn no_default_state() -> StateError {
    StateError::NoDefault { reason: "x".into() }
}

#[test]
fn every_variant_has_a_sample() {
    let names: std::collections::BTreeSet<_> = samples().iter().map(|(e, _)| variant(e)).collect();
    assert_eq!(names.len(), VARIANTS, "{names:?}");
}

#[test]
fn every_sample_maps_to_its_documented_code() {
    for (err, code) in samples() {
        let name = variant(&err);
        let text = err.to_string();
        assert_eq!(err.exit_kind().code(), code, "{name}: {text}");
        // The chain walk finds it bare, as the crate error ...
        let dynamic: &(dyn StdError + 'static) = &err;
        assert_eq!(exit_kind_of_chain([dynamic]).code(), code, "{name}");
        // ... and as the module error itself, under a context of the CLI.
        let wrapped = anyhow::Error::from(err).context("while doing something");
        assert_eq!(exit_kind_of_chain(wrapped.chain()).code(), code, "{name}");
    }
}

#[test]
fn module_errors_found_without_the_crate_error() {
    // A module error `?`-ed straight into the binary's error, never
    // converted: the walk still knows its type.
    let e = anyhow::Error::from(broken_ledger()).context("ledger check");
    assert_eq!(exit_kind_of_chain(e.chain()), ExitKind::Rejected);
    let e = anyhow::Error::from(UsageError("x".into()));
    assert_eq!(exit_kind_of_chain(e.chain()), ExitKind::Usage);
}

#[test]
fn a_chain_without_a_crate_error_is_operational() {
    let e = anyhow::Error::from(io::Error::other("disk full")).context("writing out.json");
    assert_eq!(exit_kind_of_chain(e.chain()), ExitKind::Operational);
}

#[test]
fn the_outermost_classified_cause_decides() {
    // An export that failed because the bundle was rejected exits 3 (the
    // export error delegates), not 1.
    let e = ExportError::Write {
        out: p("b"),
        source: BundleError::Rejected {
            path: p("b"),
            reason: "x".into(),
        },
    };
    let e = anyhow::Error::from(e);
    assert_eq!(exit_kind_of_chain(e.chain()), ExitKind::Rejected);
}

#[test]
fn session_parts_keep_their_message() {
    let direct = broken_ledger().to_string();
    assert_eq!(ImportError::from(broken_ledger()).to_string(), direct);
    assert_eq!(RollbackError::from(broken_ledger()).to_string(), direct);
    assert_eq!(
        Error::from(SessionError::from(broken_ledger())).to_string(),
        direct
    );
}
