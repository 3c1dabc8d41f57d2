//! minisign signature files: parse, then verify against the fuzzing key.
#![no_main]

use gapferry::sign::Signature;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(sig) = Signature::parse(data) else { return };
    let _ = sig.verify(&common::key().public(), b"manifest");
    let again = Signature::parse(sig.to_text("fuzz").as_bytes()).expect("own output parses");
    assert_eq!(again, sig);
});
