//! Escrow packets: the clear header, then opening with the authority's identity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeline::escrow::EscrowPacket;

const IDENTITY: &str = include_str!("../../tests/vectors/keys/identity.txt");

fuzz_target!(|data: &[u8]| {
    let identity: age::x25519::Identity = IDENTITY
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .and_then(|l| l.parse().ok())
        .expect("the vectors' identity");
    if let Ok(p) = EscrowPacket::parse(data) {
        let _ = p.open(&identity);
    }
});
