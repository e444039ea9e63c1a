//! Boot-flow scenarios with fakes, one per branch of DESIGN.md's flow. The recovery packets
//! are the signed test vectors (tests/vectors), opened with their real one-time passwords.

use std::collections::VecDeque;
use std::time::Duration;

use super::fake::*;
use super::*;

const GOOD: &str = include_str!("../../tests/vectors/recovery-good.vector");
const FORGED: &str = include_str!("../../tests/vectors/recovery-other-signer.vector");
const ALTERED: &str = include_str!("../../tests/vectors/recovery-altered.vector");
const TRUST: &str = include_str!("../../tests/vectors/keys/minisign.pub");

/// A vector's header field and its packet bytes.
fn vector(text: &str, field: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}: ")))
        .unwrap()
        .to_string()
}

fn packet(text: &str) -> Option<Vec<u8>> {
    Some(text.split_once("\n\n").unwrap().1.as_bytes().to_vec())
}

fn otp() -> &'static str {
    Box::leak(vector(GOOD, "otp").into_boxed_str())
}

/// A one-time password of the right shape whose code is wrong (every group's check passes).
const WRONG_OTP: &str = "000000-000011-000022-000033";

struct World {
    log: Log,
    tpm: FakeTpm,
    volume: FakeVolume,
    server: FakeSource,
    usb: FakeSource,
    console: Vec<Step>,
    settings: Settings,
    uuid: String,
    /// How `tpm_only` ended earlier in the boot.
    earlier: Option<TpmError>,
}

impl World {
    /// A machine whose TPM token unseals; the server and the USB stick have nothing yet.
    fn new() -> World {
        let log = log();
        let key = crate::hex::decode(&vector(GOOD, "volume-key")).unwrap();
        let now = humantime::parse_rfc3339(&vector(GOOD, "now")).unwrap();
        World {
            tpm: FakeTpm {
                key: key.clone(),
                failure: None,
                log: log.clone(),
                lockout: false,
                wrong_pins: 0,
            },
            volume: FakeVolume {
                key,
                passphrase: "correct horse".into(),
                token: Some(token(&[7])),
                log: log.clone(),
            },
            server: FakeSource::new("the escrow server", &log),
            usb: FakeSource::new("removable media", &log),
            console: Vec::new(),
            settings: Settings {
                machine_id: vector(GOOD, "machine-id"),
                trust: Some(
                    minisign::PublicKeyBox::from_string(TRUST)
                        .unwrap()
                        .into_public_key()
                        .unwrap(),
                ),
                poll_interval: Duration::ZERO,
                timeout: Duration::from_secs(3600),
                reseal: true,
                offer_new_passphrase: false,
                now,
            },
            uuid: vector(GOOD, "volume-uuid"),
            earlier: None,
            log,
        }
    }

    fn run(self) -> (Result<Opened, GaveUp>, Vec<String>) {
        let World {
            log,
            mut tpm,
            mut volume,
            server,
            usb,
            console,
            settings,
            uuid,
            earlier,
        } = self;
        let mut sources: Vec<Box<dyn EscrowSource>> = vec![Box::new(server), Box::new(usb)];
        let mut console = FakeConsole {
            script: VecDeque::from(console),
            log: log.clone(),
        };
        let result = unlock(
            &uuid,
            &mut volume,
            &mut tpm,
            &mut sources,
            &mut console,
            &settings,
            earlier,
        );
        let lines = log.borrow().clone();
        (result, lines)
    }

    /// `tpm_only` on this machine, then the log.
    fn tpm_only(&mut self) -> (Result<(), NotOpened>, Vec<String>) {
        let mut console = FakeConsole {
            script: VecDeque::from(std::mem::take(&mut self.console)),
            log: self.log.clone(),
        };
        let result = crate::unlock::tpm_only(
            &self.uuid,
            &mut self.volume,
            &mut self.tpm,
            &mut console,
            &self.settings,
        );
        let lines = self.log.borrow().clone();
        (result, lines)
    }
}

fn has(lines: &[String], text: &str) -> bool {
    lines.iter().any(|l| l.contains(text))
}

#[test]
fn tpm_unseals_and_nothing_is_asked() {
    let (result, log) = World::new().run();
    assert_eq!(result, Ok(Opened::Tpm));
    assert_eq!(log, ["tpm unseal", "activated"]);
}

#[test]
fn tpm_only_opens_with_the_tpm_or_says_why_without_asking_anything() {
    let mut w = World::new();
    assert!(w.tpm_only().0.is_ok());
    w.tpm.failure = Some(TpmError::PcrMismatch("PCR 7 changed".into()));
    let not = w.tpm_only().0.unwrap_err();
    assert!(not.why.contains("PCR 7 changed"), "{}", not.why);
    assert!(
        not.handoff.is_none(),
        "no PIN was asked: nothing to hand over"
    );
    w.volume.token = None;
    let not = w.tpm_only().0.unwrap_err();
    assert!(not.why.contains("no lifeline TPM key"), "{}", not.why);
    assert_eq!(
        *w.log.borrow(),
        ["tpm unseal", "activated", "tpm unseal"],
        "the TPM and nothing else"
    );
}

#[test]
fn pcr_change_falls_back_to_https_packet_wrong_otp_then_right_otp_then_reseals() {
    let mut w = World::new();
    w.tpm.failure = Some(TpmError::PcrMismatch("PCR 7 changed".into()));
    w.server.packets = VecDeque::from([None, packet(GOOD)]);
    w.console = vec![Step::Wait, Step::Type(WRONG_OTP), Step::Type(otp())];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::RecoveryPacket));
    assert!(
        has(&log, "(PCR 7 changed). Recovery ID c1d2-8f14"),
        "{log:#?}"
    );
    assert!(has(
        &log,
        &format!("the escrow server request {} 8f14", "c1d2".repeat(16))
    ));
    assert!(has(&log, "recovery packet from the escrow server verified"));
    assert!(
        has(
            &log,
            "the one-time password does not open the packet. 4 attempts left"
        ),
        "{log:#?}"
    );
    let activated = log.iter().position(|l| l == "activated").unwrap();
    assert!(
        log[activated + 1..].iter().any(|l| l == "tpm reseal [7]"),
        "{log:#?}"
    );
    assert!(has(&log, "token stored"));
    assert!(has(&log, "re-sealed to the current PCR values"));
}

#[test]
fn no_network_packet_on_usb() {
    let mut w = World::new();
    w.tpm.failure = Some(TpmError::PcrMismatch("PCR 7 changed".into()));
    w.server.down = u32::MAX;
    w.usb.packets = VecDeque::from([None, None, packet(GOOD)]);
    w.console = vec![Step::Wait, Step::Wait, Step::Type(otp())];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::RecoveryPacket));
    assert!(has(
        &log,
        "the escrow server not reachable: connection refused"
    ));
    assert!(has(&log, "recovery packet from removable media verified"));
}

#[test]
fn a_server_that_comes_up_late_gets_the_request_and_sends_the_packet() {
    let mut w = World::new();
    w.tpm.failure = Some(TpmError::PcrMismatch("PCR 7 changed".into()));
    // Down for the whole first poll: its request and its look for a packet.
    w.server.down = 2;
    w.server.packets = VecDeque::from([packet(GOOD)]);
    w.console = vec![Step::Wait, Step::Wait, Step::Type(otp())];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::RecoveryPacket));
    let refused: Vec<_> = log.iter().filter(|l| l.contains("refused")).collect();
    assert_eq!(
        refused.len(),
        2,
        "named once as a request, once as a poll: {log:#?}"
    );
    let filed = log
        .iter()
        .position(|l| l.contains("recovery request filed with the escrow server"));
    let verified = log
        .iter()
        .position(|l| l.contains("recovery packet from the escrow server verified"));
    assert!(filed.is_some() && filed < verified, "{log:#?}");
}

#[test]
fn the_passphrase_typed_instead_of_an_otp_opens_and_wrong_ones_are_counted() {
    let mut w = World::new();
    w.tpm.failure = Some(TpmError::NoDevice(
        "no TPM: /dev/tpmrm0 does not exist".into(),
    ));
    w.console = vec![Step::Type("wrong horse"), Step::Type("correct horse")];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::Passphrase));
    assert!(has(
        &log,
        "no keyslot accepts that passphrase. 4 attempts left"
    ));
    assert!(!has(&log, "tpm reseal"), "no re-seal without a PCR change");
}

#[test]
fn an_otp_typed_before_the_packet_arrives_is_tried_when_it_does() {
    let mut w = World::new();
    w.volume.token = None;
    w.server.packets = VecDeque::from([None, None, packet(GOOD)]);
    w.console = vec![Step::Type(otp()), Step::Wait];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::RecoveryPacket));
    assert!(
        has(&log, "it has no lifeline TPM key. Recovery ID 5a0c-8f14"),
        "{log:#?}"
    );
    assert!(has(&log, "no recovery packet has arrived yet"));
}

#[test]
fn forged_and_altered_packets_are_refused_once_then_the_good_one_is_accepted() {
    let mut w = World::new();
    w.tpm.failure = Some(TpmError::PcrMismatch("PCR 7 changed".into()));
    w.usb.packets = VecDeque::from([
        packet(FORGED),
        packet(FORGED),
        packet(ALTERED),
        packet(GOOD),
    ]);
    w.console = vec![Step::Wait, Step::Wait, Step::Wait, Step::Type(otp())];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::RecoveryPacket));
    let refusals: Vec<_> = log
        .iter()
        .filter(|l| l.contains("refused a recovery packet"))
        .collect();
    assert_eq!(
        refusals.len(),
        2,
        "each bad packet named once: {refusals:#?}"
    );
    assert!(
        refusals[0].contains("signed by a key that is not trusted"),
        "{refusals:#?}"
    );
    assert!(refusals[1].contains("it was altered"), "{refusals:#?}");
}

#[test]
fn drsk_missing_and_an_approved_restore_unlocks_with_the_tpm() {
    let mut w = World::new();
    w.tpm.failure = Some(TpmError::DrskMissing);
    w.server.restore = Some(b"restore-file".to_vec());
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::RestoredTpm));
    assert!(has(&log, "tpm load restore-file"));
    assert!(has(
        &log,
        "DRSK restored from the escrow server for this boot"
    ));
    assert!(!has(&log, "Recovery ID"), "no recovery needed: {log:#?}");
}

#[test]
fn drsk_missing_without_a_restore_goes_to_recovery() {
    let mut w = World::new();
    w.tpm.failure = Some(TpmError::DrskMissing);
    w.console = vec![Step::Type("correct horse")];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::Passphrase));
    assert!(has(&log, "the escrow server restore?"));
}

#[test]
fn everything_fails_and_lifeline_steps_aside() {
    let mut w = World::new();
    w.tpm.failure = Some(TpmError::PcrMismatch("PCR 7 changed".into()));
    w.console = (0..MAX_ATTEMPTS).map(|_| Step::Type("guess")).collect();
    let (result, log) = w.run();
    assert_eq!(result, Err(GaveUp::TooManyAttempts));
    assert!(has(&log, "No attempts left"));
    assert!(!has(&log, "activated"));

    let mut w = World::new();
    w.tpm.failure = Some(TpmError::PcrMismatch("PCR 7 changed".into()));
    w.server.packets = VecDeque::from([packet(GOOD)]);
    w.console = (0..MAX_ATTEMPTS).map(|_| Step::Type(WRONG_OTP)).collect();
    assert_eq!(w.run().0, Err(GaveUp::TooManyAttempts));
}

#[test]
fn nobody_there_times_out_but_someone_typing_is_not_cut_off() {
    let mut w = World::new();
    w.tpm.failure = Some(TpmError::PcrMismatch("PCR 7 changed".into()));
    w.settings.timeout = Duration::ZERO;
    w.console = vec![Step::Wait, Step::Type("correct horse")];
    assert_eq!(w.run().0, Err(GaveUp::TimedOut(Duration::ZERO)));

    let mut w = World::new();
    w.tpm.failure = Some(TpmError::PcrMismatch("PCR 7 changed".into()));
    w.settings.timeout = Duration::ZERO;
    w.console = vec![
        Step::Type("wrong horse"),
        Step::Wait,
        Step::Wait,
        Step::Type("correct horse"),
    ];
    assert_eq!(w.run().0, Ok(Opened::Passphrase));
}

#[test]
fn after_a_packet_recovery_a_new_passphrase_can_be_set() {
    let mut w = World::new();
    w.tpm.failure = Some(TpmError::NoDevice("no TPM".into()));
    w.settings.offer_new_passphrase = true;
    w.server.packets = VecDeque::from([packet(GOOD)]);
    w.console = vec![
        Step::Type(otp()),
        Step::Type("new horse"),
        Step::Type("new horse"),
    ];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::RecoveryPacket));
    assert!(has(&log, "passphrase added new horse"));
    assert!(has(&log, "new passphrase added in keyslot 1"));
}

#[test]
fn until_someone_answers_the_timeout_bounds_every_call_to_a_source() {
    let mut w = World::new();
    w.tpm.failure = Some(TpmError::PcrMismatch("PCR 7 changed".into()));
    w.settings.timeout = Duration::from_secs(1);
    w.console = vec![
        Step::Wait,
        Step::Wait,
        Step::Type("correct horse"),
        Step::Wait,
    ];
    let untils = w.server.untils.clone();
    let started = std::time::Instant::now();
    assert_eq!(w.run().0, Ok(Opened::Passphrase));
    let untils = untils.borrow();
    // Two polls before anyone typed (each files and looks), then none: the passphrase opened it.
    assert!(untils.len() >= 4, "{}", untils.len());
    for until in untils.iter() {
        // A call's own limit (10 s) would end later than the 1 s timeout.
        assert!(
            *until <= started + Duration::from_millis(1100),
            "a call may run past the timeout"
        );
    }
}

#[test]
fn the_reason_for_stepping_aside_is_said_in_words() {
    for (why, words) in [
        (
            GaveUp::TimedOut(Duration::from_secs(300)),
            "no recovery packet came within 300 s",
        ),
        (GaveUp::TooManyAttempts, "all 5 attempts were used"),
        (GaveUp::InputClosed, "there is no console to type at"),
    ] {
        let text = why.to_string();
        assert!(text.contains(words), "{text}");
        assert!(
            !text.contains("TimedOut") && !text.contains("InputClosed"),
            "{text}"
        );
    }
}

/// A machine whose TPM key is sealed with `PIN` (and PCR 7).
fn with_pin() -> World {
    let mut w = World::new();
    w.volume.token = Some(pin_token(&[7]));
    w
}

#[test]
fn the_pin_opens_with_the_tpm_and_no_recovery_is_filed() {
    let mut w = with_pin();
    w.console = vec![Step::Type(PIN)];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::Tpm));
    assert!(
        has(&log, &format!("ask {PIN_QUESTION} -> {PIN}")),
        "{log:#?}"
    );
    assert!(has(&log, &format!("tpm unseal pin {PIN}")));
    assert!(!has(&log, "request"), "no recovery request: {log:#?}");
}

#[test]
fn a_wrong_pin_is_counted_and_the_passphrase_also_opens_at_the_pin_prompt() {
    let mut w = with_pin();
    w.console = vec![Step::Type("1111"), Step::Type(PIN)];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::Tpm));
    assert!(
        has(&log, "the TPM refused that PIN. 2 attempts left."),
        "{log:#?}"
    );

    let mut w = with_pin();
    w.console = vec![Step::Type("correct horse")];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::Passphrase));
    assert!(has(&log, "opened with its passphrase"), "{log:#?}");
}

#[test]
fn after_three_wrong_pins_recovery_follows_and_the_key_is_not_resealed() {
    let mut w = with_pin();
    w.server.packets = VecDeque::from([packet(GOOD)]);
    w.console = vec![
        Step::Type("1111"),
        Step::Type("2222"),
        Step::Type("3333"),
        Step::Type(otp()),
    ];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::RecoveryPacket));
    assert!(
        has(&log, "the TPM refused the PIN. Recovery ID c1d2-8f14"),
        "{log:#?}"
    );
    assert!(!has(&log, "tpm reseal"));
}

#[test]
fn a_tpm_in_lockout_is_not_asked_and_recovery_follows_at_once() {
    let mut w = with_pin();
    w.tpm.lockout = true;
    w.server.packets = VecDeque::from([packet(GOOD)]);
    w.console = vec![Step::Type(otp())];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::RecoveryPacket));
    assert!(!has(&log, "tpm unseal"), "{log:#?}");
    assert!(!has(&log, PIN_QUESTION), "{log:#?}");
    assert!(
        has(&log, "dictionary-attack lockout. Recovery ID"),
        "{log:#?}"
    );
}

#[test]
fn a_one_time_password_at_the_pin_prompt_goes_to_recovery_and_is_used() {
    let mut w = with_pin();
    w.server.packets = VecDeque::from([None, packet(GOOD)]);
    w.console = vec![Step::Type(otp()), Step::Wait];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::RecoveryPacket));
    assert!(
        !has(&log, "tpm unseal"),
        "the OTP was not tried as a PIN: {log:#?}"
    );
    assert!(
        has(&log, "a one-time password was typed. Recovery ID"),
        "{log:#?}"
    );
}

#[test]
fn with_a_pin_and_changed_pcrs_the_key_is_not_resealed_with_an_unchecked_pin() {
    let mut w = with_pin();
    w.tpm.failure = Some(TpmError::PcrMismatch("PCR 7 changed".into()));
    w.server.packets = VecDeque::from([packet(GOOD)]);
    w.console = vec![Step::Type(PIN), Step::Type(otp())];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::RecoveryPacket));
    assert!(!has(&log, "tpm reseal"), "{log:#?}");
    assert!(has(&log, "the TPM key has a PIN, so it was not re-sealed"));
}

#[test]
fn tpm_only_asks_the_pin_before_any_network() {
    let mut w = with_pin();
    w.console = vec![Step::Type(PIN)];
    let (result, log) = w.tpm_only();
    assert!(result.is_ok(), "{result:?}");
    assert!(has(&log, "activated"), "{log:#?}");
    // The passphrase at the same prompt opens the volume too.
    let mut w = with_pin();
    w.console = vec![Step::Type("correct horse")];
    assert!(w.tpm_only().0.is_ok());
}

#[test]
fn a_pin_refused_in_tpm_only_is_not_asked_again_by_the_whole_flow() {
    let mut w = with_pin();
    w.console = vec![Step::Type("1111"), Step::Type("2222"), Step::Type("3333")];
    let (result, _) = w.tpm_only();
    let not = result.unwrap_err();
    assert!(not.why.contains("PIN"), "{}", not.why);
    let handoff = not.handoff.expect("the way it ended is handed over");
    // Through the text the glue's two runs share, and back.
    let earlier = crate::unlock::handoff_from(&crate::unlock::handoff_text(&handoff));
    assert!(matches!(earlier, Some(TpmError::WrongPin)), "{earlier:?}");
    assert_eq!(w.tpm.wrong_pins, 3);

    // The network is up; the whole flow goes to recovery without a fourth PIN try.
    let mut w = with_pin();
    w.earlier = earlier;
    w.server.packets = VecDeque::from([packet(GOOD)]);
    w.console = vec![Step::Type(otp())];
    let (result, log) = w.run();
    assert_eq!(result, Ok(Opened::RecoveryPacket));
    assert!(!has(&log, PIN_QUESTION), "{log:#?}");
    assert!(!has(&log, "tpm unseal"), "{log:#?}");
}

#[test]
fn handoffs_read_back_as_they_were_written() {
    for e in [
        TpmError::Lockout,
        TpmError::WrongPin,
        TpmError::PcrMismatch("PCR 7 changed".into()),
        TpmError::DrskMissing,
        TpmError::OtherKey("another DRSK".into()),
        TpmError::Other("a one-time password was typed".into()),
    ] {
        let back = crate::unlock::handoff_from(&crate::unlock::handoff_text(&e)).unwrap();
        assert_eq!(back.to_string(), e.to_string());
    }
    assert!(crate::unlock::handoff_from("nonsense").is_none());
}
