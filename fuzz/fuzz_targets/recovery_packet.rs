//! Recovery packet verification: signature, trusted comment, binding — on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeline::escrow::RecoveryPacket;

const TRUST: &str = include_str!("../../tests/vectors/keys/minisign.pub");

fuzz_target!(|data: &[u8]| {
    let trusted = minisign::PublicKeyBox::from_string(TRUST)
        .and_then(|b| b.into_public_key())
        .expect("the vectors' key");
    let _ = RecoveryPacket::peek_unverified(data);
    if let Ok(p) = RecoveryPacket::verify(data, &trusted) {
        let _ = p.check_binding(
            "5a0c4e2b9d7f41c3a8e6b1d2f3c4e5a6",
            "8f14e45f-ceea-467a-9af3-6b1d2c3e4f50",
            std::time::SystemTime::now(),
        );
    }
});
