//! A CSR as an agent sends it in connection_settings_request: parsed, signature-checked and, if
//! acceptable, signed.
#![no_main]

use flotilla_common::pki::Ca;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use std::time::Duration;

static CA: LazyLock<Ca> = LazyLock::new(|| Ca::generate("fuzz CA").unwrap());

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = CA.sign_csr(text, uuid::Uuid::nil(), Duration::from_secs(60));
});
