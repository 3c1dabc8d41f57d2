//! The documented exit codes, the crate error [`Error`] and the one mapping
//! from an error chain to an exit code ([`exit_kind_of_chain`]). Modules own
//! their error enums and decide their exit kind in their own [`Classify`]
//! impl; [`Error`] has one variant per module error, and its
//! [`Classify::exit_kind`] is an exhaustive `match` that delegates to them.
//! This module never formats messages and never names a cause's text: it
//! only classifies.
//!
//! Why a new module error cannot silently exit 1: [`Classify`] can only be
//! implemented by a type [`Error`] converts from, so giving an error an exit
//! code means adding its variant below, and the `match` in
//! [`Error::exit_kind`] then does not compile until the variant's exit code
//! is decided. The chain walk recognises exactly the types listed in the
//! variant table (generated from the same list), so no second list can drift.

use std::error::Error as StdError;

use crate::bundle::cosign::CosignError;
use crate::bundle::BundleError;
use crate::export::ExportError;
use crate::keys::KeyError;
use crate::mde::collect::CollectError;
use crate::mde::endpoint::EndpointError;
use crate::mde::fetch::{FetchError, SlotError};
use crate::mirror::import::ImportError;
use crate::mirror::inbox::InboxError;
use crate::mirror::ledger::LedgerError;
use crate::mirror::lock::LockError;
use crate::mirror::metrics::MetricsError;
use crate::mirror::publish::PublishError;
use crate::mirror::rollback::RollbackError;
use crate::mirror::s3mirror::S3PublishError;
use crate::mirror::session::SessionError;
use crate::mirror::state::{PolicyError, StateError};
use crate::s3::S3Error;
use crate::sequence::SequenceError;
use crate::trustpolicy::TrustError;
use crate::windows::collect::WinCollectError;
use crate::windows::fetch::WinSlotError;

/// What kind of failure an error is, which decides the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitKind {
    /// 1: I/O, disk full, lock held, network.
    Operational,
    /// 2: the command line or its inputs make no sense.
    Usage,
    /// 3: the bundle is rejected (signature, integrity, unsafe or malformed content).
    Rejected,
    /// 4: the bundle is refused by policy (older, expired, wrong channel, threshold).
    Policy,
}

impl ExitKind {
    /// The process exit code documented in the README and `--help`.
    pub fn code(self) -> i32 {
        match self {
            ExitKind::Operational => 1,
            ExitKind::Usage => 2,
            ExitKind::Rejected => 3,
            ExitKind::Policy => 4,
        }
    }
}

/// Errors that know which exit code they deserve. Only a type the crate
/// error converts from can implement it (see the module documentation).
pub trait Classify: Sized
where
    Error: From<Self>,
{
    fn exit_kind(&self) -> ExitKind;
}

/// A problem with the command line found after parsing (conflicting or
/// impossible options, a flag value that does not parse): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Classify for UsageError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::Usage
    }
}

/// Declares [`Error`] with one transparent `#[from]` variant per module
/// error, and [`Error::classify_cause`], which recognises each listed type in
/// an error chain. One list, so the enum and the chain walk cannot disagree.
macro_rules! crate_error {
    ($($(#[$doc:meta])* $variant:ident($ty:ty),)*) => {
        /// The crate error: any module error, with its message and source
        /// chain unchanged (`transparent`).
        #[derive(Debug, thiserror::Error)]
        #[non_exhaustive]
        pub enum Error {
            $($(#[$doc])* #[error(transparent)] $variant(#[from] $ty),)*
        }

        impl Error {
            /// The exit kind of `cause` if it is the crate error or one of
            /// the module errors it wraps.
            pub fn classify_cause(cause: &(dyn StdError + 'static)) -> Option<ExitKind> {
                if let Some(e) = cause.downcast_ref::<Error>() {
                    return Some(e.exit_kind());
                }
                $(if let Some(e) = cause.downcast_ref::<$ty>() {
                    return Some(e.exit_kind());
                })*
                None
            }
        }
    };
}

crate_error! {
    /// A command-line usage error found after parsing (exit 2).
    Usage(UsageError),
    Key(KeyError),
    Bundle(BundleError),
    Cosign(CosignError),
    Sequence(SequenceError),
    Collect(CollectError),
    Export(ExportError),
    Endpoint(EndpointError),
    Fetch(FetchError),
    Slot(SlotError),
    Lock(LockError),
    State(StateError),
    Policy(PolicyError),
    Ledger(LedgerError),
    Publish(PublishError),
    Session(SessionError),
    Import(ImportError),
    Rollback(RollbackError),
    Inbox(InboxError),
    Metrics(MetricsError),
    Trust(TrustError),
    WinCollect(WinCollectError),
    WinSlot(WinSlotError),
    S3(S3Error),
    S3Publish(S3PublishError),
}

impl Classify for Error {
    /// Exhaustive on purpose: no wildcard arm, so a new variant does not
    /// compile until its exit code is decided here.
    fn exit_kind(&self) -> ExitKind {
        match self {
            Error::Usage(e) => e.exit_kind(),
            Error::Key(e) => e.exit_kind(),
            Error::Bundle(e) => e.exit_kind(),
            Error::Cosign(e) => e.exit_kind(),
            Error::Sequence(e) => e.exit_kind(),
            Error::Collect(e) => e.exit_kind(),
            Error::Export(e) => e.exit_kind(),
            Error::Endpoint(e) => e.exit_kind(),
            Error::Fetch(e) => e.exit_kind(),
            Error::Slot(e) => e.exit_kind(),
            Error::Lock(e) => e.exit_kind(),
            Error::State(e) => e.exit_kind(),
            Error::Policy(e) => e.exit_kind(),
            Error::Ledger(e) => e.exit_kind(),
            Error::Publish(e) => e.exit_kind(),
            Error::Session(e) => e.exit_kind(),
            Error::Import(e) => e.exit_kind(),
            Error::Rollback(e) => e.exit_kind(),
            Error::Inbox(e) => e.exit_kind(),
            Error::Metrics(e) => e.exit_kind(),
            Error::Trust(e) => e.exit_kind(),
            Error::WinCollect(e) => e.exit_kind(),
            Error::WinSlot(e) => e.exit_kind(),
            Error::S3(e) => e.exit_kind(),
            Error::S3Publish(e) => e.exit_kind(),
        }
    }
}

/// The exit kind of an error chain (outermost first, as `anyhow`'s `chain()`
/// yields it): that of the first cause that is a crate or module error. A
/// chain with none (a plain I/O error of the binary's own) is operational.
pub fn exit_kind_of_chain<'a, I>(chain: I) -> ExitKind
where
    I: IntoIterator<Item = &'a (dyn StdError + 'static)>,
{
    chain
        .into_iter()
        .find_map(Error::classify_cause)
        .unwrap_or(ExitKind::Operational)
}

#[cfg(test)]
mod tests;
