//! One-time passwords as typed: shape, group checks, typos named.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeline::escrow::otp;

fuzz_target!(|data: &[u8]| {
    let Some((&groups, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let _ = otp::looks_like_otp(text);
    if let Ok(code) = otp::parse(text, usize::from(groups % 18)) {
        // A code that parses is digits and dashes only.
        assert!(code
            .expose_secret()
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-'));
    }
});
