//! The mirror side of an import: staging and atomic publish of arch folders
//! ([`publish`]), one import at a time ([`lock`]), persisted served versions
//! and accepted sequences with the rollback policy ([`state`]), the check of
//! a folder against that record ([`setcheck`]), the hash-chained import
//! ledger ([`ledger`]) and its flood limit ([`ledger_quota`]); the
//! phone-sized receipt of an
//! import ([`receipt`]); the inbox job that imports whatever arrives in a
//! directory ([`inbox`]); the session every change starts with, under the
//! lock, and the writing of a state change with its ledger line
//! ([`session`]); the Prometheus metrics of a mirror ([`metrics`]). These
//! are building blocks: they never read bundles or
//! check signatures; the import orchestration accepts first
//! ([`crate::verify::accept`]) and then calls them. The mirror works on the
//! profile seam's types ([`crate::profile`]) and never names a profile.

pub(crate) mod fsx;
pub mod import;
pub mod inbox;
pub mod ledger;
pub mod ledger_quota;
pub mod lock;
pub mod metrics;
pub mod publish;
pub mod receipt;
pub mod rollback;
pub mod s3mirror;
pub mod session;
pub mod setcheck;
pub mod state;
pub mod status;
