//! Fakes of the boot flow's outside world, for the scenario tests. Each records what was done
//! to it in a shared log the test reads afterwards.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::{Answer, Console, EscrowSource, SourceError, Tpm, Volume};
use crate::luks::LuksError;
use crate::secret::{Passphrase, UseToken, VolumeKey};
use crate::tpm::token::{SealedToken, TokenError};
use crate::tpm::{SealedBlob, TpmError};

pub type Log = Rc<RefCell<Vec<String>>>;

pub fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

pub fn token(pcrs: &[u8]) -> SealedToken {
    SealedToken {
        client_id: "c1d2".repeat(16),
        blob: SealedBlob {
            public: vec![1],
            private: vec![2],
        },
        pcrs: (!pcrs.is_empty()).then(|| crate::tpm::PcrBinding {
            pcrs: pcrs.to_vec(),
            values: vec![vec![0; 32]; pcrs.len()],
        }),
        pin_salt: None,
        key_algorithm: crate::tpm::KeyAlgorithm::Ecc,
    }
}

/// A TPM whose unseal fails with `failure` (until a restore is loaded, for DRSK failures).
pub struct FakeTpm {
    pub key: Vec<u8>,
    pub failure: Option<TpmError>,
    pub log: Log,
    /// Refuses every PIN before it is tried.
    pub lockout: bool,
    pub wrong_pins: u32,
}

/// The PIN of `pin_token`.
pub const PIN: &str = "2468";

/// A token sealed with `PIN`.
pub fn pin_token(pcrs: &[u8]) -> SealedToken {
    SealedToken {
        pin_salt: Some(vec![7; 16]),
        ..token(pcrs)
    }
}

impl Tpm for FakeTpm {
    fn unseal(&mut self, t: &SealedToken, pin: Option<&Passphrase>) -> Result<VolumeKey, TpmError> {
        let shown = pin.map(|p| format!(" pin {}", String::from_utf8_lossy(p.expose_secret())));
        self.log
            .borrow_mut()
            .push(format!("tpm unseal{}", shown.unwrap_or_default()));
        match (&self.failure, &t.pin_salt, pin) {
            (Some(e), _, _) => Err(e.clone()),
            (None, Some(_), None) => Err(TpmError::PinNeeded),
            (None, Some(_), Some(p)) if p.expose_secret() != PIN.as_bytes() => {
                self.wrong_pins += 1;
                Err(TpmError::WrongPin)
            }
            _ => Ok(VolumeKey::from_slice(&self.key)),
        }
    }

    fn in_lockout(&mut self) -> bool {
        self.lockout
    }

    fn srk_public(&mut self) -> Result<Vec<u8>, TpmError> {
        Ok(crate::tpm::tpm2b(b"fake storage key"))
    }

    fn load_restored(&mut self, file: &[u8]) -> Result<String, TpmError> {
        self.log
            .borrow_mut()
            .push(format!("tpm load {}", String::from_utf8_lossy(file)));
        self.failure = None;
        Ok("c1d2".repeat(16))
    }

    fn reseal(&mut self, key: &VolumeKey, pcrs: &[u8]) -> Result<SealedToken, TpmError> {
        assert_eq!(key.expose_secret(), &self.key[..]);
        self.log.borrow_mut().push(format!("tpm reseal {pcrs:?}"));
        Ok(token(pcrs))
    }
}

pub struct FakeVolume {
    pub key: Vec<u8>,
    pub passphrase: String,
    pub token: Option<SealedToken>,
    pub log: Log,
}

impl Volume for FakeVolume {
    fn token(&mut self) -> Option<Result<SealedToken, TokenError>> {
        self.token.clone().map(Ok)
    }

    fn activate(&mut self, key: &VolumeKey) -> Result<(), LuksError> {
        if key.expose_secret() != &self.key[..] {
            return Err(LuksError::WrongKey);
        }
        self.log.borrow_mut().push("activated".into());
        Ok(())
    }

    fn key_from_passphrase(&mut self, p: &Passphrase) -> Result<VolumeKey, LuksError> {
        if p.expose_secret() != self.passphrase.as_bytes() {
            return Err(LuksError::WrongPassphrase);
        }
        Ok(VolumeKey::from_slice(&self.key))
    }

    fn store_token(&mut self, t: &SealedToken) -> Result<(), LuksError> {
        self.log.borrow_mut().push("token stored".into());
        self.token = Some(t.clone());
        Ok(())
    }

    fn add_passphrase(&mut self, key: &VolumeKey, new: &Passphrase) -> Result<u32, LuksError> {
        assert_eq!(key.expose_secret(), &self.key[..]);
        self.log.borrow_mut().push(format!(
            "passphrase added {}",
            String::from_utf8_lossy(new.expose_secret())
        ));
        Ok(1)
    }
}

/// A source that, poll after poll, offers the next of `packets` (`None`: nothing yet).
pub struct FakeSource {
    pub name: &'static str,
    /// Calls refused ("connection refused") before the source answers; `u32::MAX`: never.
    pub down: u32,
    pub packets: VecDeque<Option<Vec<u8>>>,
    pub restore: Option<Vec<u8>>,
    pub log: Log,
    /// The time each call was told to be over by.
    pub untils: Rc<RefCell<Vec<Instant>>>,
}

impl FakeSource {
    pub fn new(name: &'static str, log: &Log) -> Self {
        FakeSource {
            name,
            down: 0,
            packets: VecDeque::new(),
            restore: None,
            log: log.clone(),
            untils: Rc::default(),
        }
    }
}

impl FakeSource {
    fn answers(&mut self) -> Result<(), SourceError> {
        if self.down == 0 {
            return Ok(());
        }
        self.down = self.down.saturating_sub(u32::from(self.down != u32::MAX));
        Err(SourceError::Other("connection refused".into()))
    }
}

impl EscrowSource for FakeSource {
    fn describe(&self) -> String {
        self.name.to_string()
    }

    fn request_recovery(
        &mut self,
        who: &str,
        volume_uuid: &str,
        until: Instant,
    ) -> Result<bool, SourceError> {
        self.untils.borrow_mut().push(until);
        self.answers()?;
        self.log
            .borrow_mut()
            .push(format!("{} request {who} {volume_uuid}", self.name));
        Ok(true)
    }

    fn recovery_packet(
        &mut self,
        _: &[String],
        _: &str,
        until: Instant,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        self.untils.borrow_mut().push(until);
        self.answers()?;
        Ok(self.packets.pop_front().flatten())
    }

    fn report_used(&mut self, packet_id: &str, _: &UseToken) -> Result<(), SourceError> {
        self.log
            .borrow_mut()
            .push(format!("{} used {packet_id}", self.name));
        Ok(())
    }

    fn restore_file(&mut self, client: &str, srk: &str) -> Result<Option<Vec<u8>>, SourceError> {
        self.log
            .borrow_mut()
            .push(format!("{} restore? {client} {srk}", self.name));
        Ok(self.restore.clone())
    }
}

/// What the person at the console does at each question: type a line or let a poll interval
/// pass. When the script ends, input is closed.
pub enum Step {
    Type(&'static str),
    Wait,
}

pub struct FakeConsole {
    pub script: VecDeque<Step>,
    pub log: Log,
}

impl Console for FakeConsole {
    fn say(&mut self, line: &str) {
        self.log.borrow_mut().push(format!("say {line}"));
    }

    fn answer(&mut self, question: &str, _: Duration) -> Answer {
        match self.script.pop_front() {
            Some(Step::Type(text)) => {
                self.log
                    .borrow_mut()
                    .push(format!("ask {question} -> {text}"));
                Answer::Line(Zeroizing::new(text.to_string()))
            }
            Some(Step::Wait) => Answer::Nothing,
            None => Answer::Closed,
        }
    }
}
