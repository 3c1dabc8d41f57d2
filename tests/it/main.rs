//! gapferry's integration tests, one module per area, linked into one test
//! binary (each test binary links the whole crate, so one link instead of
//! thirty keeps the first `cargo test` short). Tests run through the real
//! binary (`CARGO_BIN_EXE_gapferry`) or the library; [`support`] is the
//! one shared harness. Names read `it::inbox::...`: run one area with
//! `cargo test --test it inbox::`.
//!
//! The crash and lock tests re-run this binary as a child
//! (`--exact <module>::child_entry`, selected by a `GAPFERRY_TEST_CHILD_*`
//! variable), so their child entries keep their full test path.

mod support;

mod bundle_roundtrip;
mod cosign;
mod demo;
mod endpoint_config;
mod export_fetch;
mod export_refusals;
mod fetch;
mod fuzz_seeds;
mod generate;
mod golden;
mod hostile_import;
mod hostile_verify;
mod import_crash;
mod import_layout;
mod import_live;
mod import_ops;
mod import_policy;
mod inbox;
mod inbox_give_up;
mod json_output;
mod json_schema;
mod ledger;
mod limits;
mod logs;
mod metrics;
mod minisign_interop;
mod mirror_crash;
mod mirror_lock;
mod mirror_publish;
mod newuser;
mod packaging;
mod parity;
mod properties;
mod readme;
mod receipt;
mod regressions;
mod s3_client;
mod s3_mirror;
mod status_rollback;
mod trust_policy;
mod volumes;
mod windows;
