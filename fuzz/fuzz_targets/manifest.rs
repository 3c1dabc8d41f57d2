//! Manifest parsing and validation (strict JSON, limits, path rules) and the
//! mde profile's rules.
#![no_main]

use gapferry::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::parse(data) else { return };
    let _ = m.trusted_comment();
    let _ = m.total_size();
    let _ = gapferry::mde::check::slots(&m);
    // What gapferry writes for an accepted manifest reads back the same.
    let again = Manifest::parse(&m.to_bytes()).expect("own output parses");
    assert_eq!(again, m);
});
