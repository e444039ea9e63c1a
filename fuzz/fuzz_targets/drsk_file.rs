//! DRSK files (backups, custody copies, the restore files a booting machine loads) and the
//! genuine-TPM proof's records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeline::tpm::transfer;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = transfer::DrskFile::parse(text) {
        assert_eq!(lifeline::tpm::client_id(&f.dup.public), f.client_id);
        assert_eq!(transfer::DrskFile::parse(&f.to_text()).ok(), Some(f));
    }
    let _ = transfer::parse_policy(text);
    for tag in [transfer::EK_TAG, transfer::CHALLENGE_TAG, transfer::PROOF_TAG] {
        let _ = transfer::parse_hex_record(text, tag, &["public", "secret"]);
    }
});
