//! The `lifeline-tpm2` LUKS2 token (or LUKS1 file) JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeline::tpm::token::SealedToken;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(t) = SealedToken::from_json(&json) {
        // A token that parses names a real client ID and survives a round trip.
        assert_eq!(t.client_id.len(), 64);
        let _ = lifeline::unlock::recovery_id(&t.client_id, "8f14e45f-ceea-467a-9af3-6b1d2c3e4f50");
        assert_eq!(SealedToken::from_json(&t.to_json()).ok(), Some(t));
    }
});
