//! Import end to end past the signature check. Arbitrary bytes cannot forge
//! an Ed25519 signature, so this target signs for the fuzzer: the input is
//! `len: u16 LE ‖ manifest[len] ‖ rest`, and the harness builds the bundle
//! `gapferry/manifest.json` (the manifest), a valid signature by the fuzzing
//! key, then `rest` as raw tar bytes (payload entries, end marker, garbage),
//! compressed into one zstd frame. That lets the fuzzer reach the payload
//! walk, staging, the folder manifest.json checks and publishing.
#![no_main]

use gapferry::manifest::Manifest;
use gapferry::sign::Signature;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let len = u16::from_le_bytes([data[0], data[1]]) as usize;
    let rest = &data[2..];
    let (manifest, tail) = rest.split_at(len.min(rest.len()));
    let comment = Manifest::parse(manifest)
        .map(|m| m.trusted_comment())
        .unwrap_or_else(|_| "fuzz".into());
    let key = common::key();
    let sig = Signature::sign(&key, manifest, &comment);
    let mut tar = Vec::new();
    common::tar_entry(&mut tar, "gapferry/manifest.json", manifest);
    common::tar_entry(
        &mut tar,
        &format!("gapferry/signatures/{}.minisig", key.key_id),
        sig.to_text("fuzz").as_bytes(),
    );
    tar.extend_from_slice(tail);
    let bundle = zstd::bulk::compress(&tar, 1).unwrap();
    common::read_bundle(&bundle);
    common::import_bundle(&bundle);
});
