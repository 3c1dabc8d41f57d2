//! The bundle reader end to end on arbitrary bytes (the `.tar.zst` file
//! itself): inspect and verify through the library, then import into a
//! throwaway mirror.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::read_bundle(data);
    common::import_bundle(data);
});
