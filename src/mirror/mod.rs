//! The mirror side of an import: staging and atomic publish of arch folders
//! ([`publish`]), one import at a time ([`lock`]), persisted served versions
//! and accepted sequences with the rollback policy ([`state`]), and the
//! hash-chained import ledger ([`ledger`]). These are building blocks: they
//! never read bundles or check signatures; the import orchestration verifies
//! first and then calls them.

mod fsx;
pub mod import;
pub mod ledger;
pub mod lock;
pub mod publish;
pub mod rollback;
pub mod state;
pub mod status;
