//! The boot flow (`lifeline::unlock::unlock`) driven by a crafted token and crafted packets:
//! the input is the token's JSON, a NUL, then packets separated by NULs, offered one per poll
//! by a source, while the person at the console types a mistyped one-time password, a wrong
//! passphrase, then nothing. Whatever comes, the flow ends (opened or stepped aside), never
//! panics, and opens nothing with what it was given.
#![no_main]

use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use lifeline::luks::LuksError;
use lifeline::secret::{Passphrase, UseToken, VolumeKey};
use lifeline::tpm::token::{SealedToken, TokenError};
use lifeline::tpm::TpmError;
use lifeline::unlock::{self, Answer, Console, EscrowSource, Settings, SourceError, Tpm, Volume};

const TRUST: &str = include_str!("../../tests/vectors/keys/minisign.pub");
const UUID: &str = "8f14e45f-ceea-467a-9af3-6b1d2c3e4f50";

struct NoTpm;

impl Tpm for NoTpm {
    fn unseal(&mut self, _: &SealedToken, _: Option<&Passphrase>) -> Result<VolumeKey, TpmError> {
        Err(TpmError::PcrMismatch("PCR 7 changed".into()))
    }
    fn in_lockout(&mut self) -> bool {
        false
    }
    fn srk_public(&mut self) -> Result<Vec<u8>, TpmError> {
        Err(TpmError::NoDevice("none".into()))
    }
    fn load_restored(&mut self, _: &[u8]) -> Result<String, TpmError> {
        Err(TpmError::NoDevice("none".into()))
    }
    fn reseal(&mut self, _: &VolumeKey, _: &[u8]) -> Result<SealedToken, TpmError> {
        Err(TpmError::NoDevice("none".into()))
    }
}

/// A volume whose token is what the input says and that no key opens.
struct Disk(Option<Result<SealedToken, TokenError>>);

impl Volume for Disk {
    fn token(&mut self) -> Option<Result<SealedToken, TokenError>> {
        self.0.take()
    }
    fn activate(&mut self, _: &VolumeKey) -> Result<(), LuksError> {
        Err(LuksError::WrongKey)
    }
    fn key_from_passphrase(&mut self, _: &Passphrase) -> Result<VolumeKey, LuksError> {
        Err(LuksError::WrongPassphrase)
    }
    fn store_token(&mut self, _: &SealedToken) -> Result<(), LuksError> {
        panic!("a token stored though nothing opened")
    }
    fn add_passphrase(&mut self, _: &VolumeKey, _: &Passphrase) -> Result<u32, LuksError> {
        panic!("a passphrase added though nothing opened")
    }
}

struct Packets(Vec<Vec<u8>>);

impl EscrowSource for Packets {
    fn describe(&self) -> String {
        "the fuzzer".into()
    }
    fn request_recovery(&mut self, who: &str, uuid: &str, _: Instant) -> Result<bool, SourceError> {
        assert!(!who.contains('/') && !uuid.contains('/'));
        Ok(true)
    }
    fn recovery_packet(
        &mut self,
        who: &[String],
        _: &str,
        _: Instant,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        assert!(who.iter().all(|w| w.bytes().all(|b| b.is_ascii_hexdigit())));
        Ok(self.0.pop())
    }
    fn report_used(&mut self, _: &str, _: &UseToken) -> Result<(), SourceError> {
        panic!("a packet reported used though nothing opened")
    }
    fn restore_file(&mut self, _: &str, _: &str) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(None)
    }
}

/// Types a mistyped OTP (refused by its group check, before any KDF), a wrong passphrase,
/// then closes.
struct Person(Vec<&'static str>);

impl Console for Person {
    fn say(&mut self, line: &str) {
        assert!(!line.contains("TimedOut") && !line.contains("InputClosed"), "{line}");
    }
    fn answer(&mut self, _: &str, _: Duration) -> Answer {
        match self.0.pop() {
            Some("") => Answer::Nothing,
            Some(text) => Answer::Line(zeroize::Zeroizing::new(text.to_string())),
            None => Answer::Closed,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let token = parts.next().and_then(|json| {
        serde_json::from_slice::<serde_json::Value>(json)
            .ok()
            .map(|v| SealedToken::from_json(&v))
    });
    let mut packets: Vec<Vec<u8>> = parts.take(8).map(<[u8]>::to_vec).collect();
    packets.reverse();
    let trust = minisign::PublicKeyBox::from_string(TRUST)
        .and_then(|b| b.into_public_key())
        .ok();
    let settings = Settings {
        machine_id: "5a0c4e2b9d7f41c3a8e6b1d2f3c4e5a6".into(),
        trust,
        poll_interval: Duration::ZERO,
        timeout: Duration::ZERO,
        reseal: true,
        offer_new_passphrase: true,
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
    };
    let mut sources: Vec<Box<dyn EscrowSource>> = vec![Box::new(Packets(packets))];
    let mut person = Person(vec!["", "wrong horse", "123453-000012-720874-065538", ""]);
    let result = unlock::unlock(
        UUID,
        &mut Disk(token),
        &mut NoTpm,
        &mut sources,
        &mut person,
        &settings,
        None,
    );
    assert!(result.is_err(), "nothing can open this disk");
});
