//! minisign public and secret key parsing: any text ends in a key or a
//! typed error. (Encrypted secret keys stop before scrypt: no password is
//! given, and scrypt's cost is bounded by MAX_MEMLIMIT, not by the input.)
#![no_main]

use std::path::Path;

use gapferry::keys::{PublicKey, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.key");
    if let Ok(k) = PublicKey::parse(&text, path) {
        let again = PublicKey::parse(&k.to_file_text(), path).expect("own output parses");
        assert_eq!(again, k);
    }
    let _ = SecretKey::is_encrypted(&text, path);
    if let Ok(k) = SecretKey::parse(&text, path, None) {
        let again = SecretKey::parse(&k.to_file_text(None), path, None).expect("own output parses");
        assert_eq!(again.public(), k.public());
    }
});
