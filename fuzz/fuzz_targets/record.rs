//! The plaintext record inside both packets, as either kind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeline::escrow::{Kind, Record};

fuzz_target!(|data: &[u8]| {
    for kind in [Kind::Escrow, Kind::Recovery] {
        if let Ok(r) = Record::parse(data, kind) {
            // What parses must write back the same.
            let again = r.to_plaintext(kind);
            let back = Record::parse(again.as_bytes(), kind).expect("a written record parses");
            assert_eq!(back.info, r.info);
        }
    }
});
