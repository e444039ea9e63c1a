//! `lifeline unlock`: the boot flow of DESIGN.md, per volume.
//!
//! 1. TPM: unseal the volume key from our token under the DRSK; open the volume with it.
//! 2. DRSK missing or not ours, and the server has an approved restore for this TPM: load the
//!    restored DRSK for this boot and try the TPM once more.
//! 3. Recovery: show the recovery ID, file a recovery request, then at the same time poll the
//!    escrow sources (server, removable media) and take typed answers at one prompt — the LUKS
//!    passphrase or the one-time password, told apart by shape.
//! 4. A verified packet and its OTP give the key; open; report the packet used; re-seal if only
//!    the PCRs were wrong; offer a new passphrase.
//! 5. Give up (timeout, attempts used, input closed) with a reason: the distribution's own
//!    prompt takes over. Nothing here is fatal to the boot.
//!
//! Every outside thing is a narrow trait; `cmd/unlock.rs` builds the real adapters and
//! `fake.rs` has the ones the scenario tests use.

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use zeroize::Zeroizing;

use crate::escrow::https::FetchError;
use crate::escrow::{otp, RecoveryPacket};
use crate::luks::LuksError;
use crate::secret::{Passphrase, UseToken, VolumeKey};
use crate::tpm::token::{SealedToken, TokenError};
use crate::tpm::TpmError;

/// The TPM, as the boot flow needs it.
pub trait Tpm {
    /// The token's volume key; `pin` for a token sealed with one.
    fn unseal(
        &mut self,
        token: &SealedToken,
        pin: Option<&Passphrase>,
    ) -> Result<VolumeKey, TpmError>;
    /// Whether the TPM is in dictionary-attack lockout (it refuses every PIN for now).
    fn in_lockout(&mut self) -> bool;
    /// This TPM's storage key (public part), which a restore is made for.
    fn srk_public(&mut self) -> Result<Vec<u8>, TpmError>;
    /// Loads a restore file's DRSK for this process; returns its client ID.
    fn load_restored(&mut self, restore_file: &[u8]) -> Result<String, TpmError>;
    /// Seals `key` anew under the DRSK, to the current values of `pcrs`.
    fn reseal(&mut self, key: &VolumeKey, pcrs: &[u8]) -> Result<SealedToken, TpmError>;
}

/// One LUKS volume.
pub trait Volume {
    /// Our sealed token, if the volume has one (`Err`: there is one, but it is damaged).
    fn token(&mut self) -> Option<Result<SealedToken, TokenError>>;
    /// Opens the volume with `key` under the configured mapping name.
    fn activate(&mut self, key: &VolumeKey) -> Result<(), LuksError>;
    /// The volume key, if a keyslot accepts `passphrase`.
    fn key_from_passphrase(&mut self, passphrase: &Passphrase) -> Result<VolumeKey, LuksError>;
    /// Replaces our token (after a re-seal).
    fn store_token(&mut self, token: &SealedToken) -> Result<(), LuksError>;
    fn add_passphrase(&mut self, key: &VolumeKey, new: &Passphrase) -> Result<u32, LuksError>;
}

/// Somewhere a recovery packet (or a DRSK restore) may come from: the escrow server, a USB stick.
pub trait EscrowSource {
    /// "the escrow server", "removable media": for messages.
    fn describe(&self) -> String;
    /// Files a recovery request; `Ok(false)` if this source takes none. Over by `until`.
    fn request_recovery(
        &mut self,
        who: &str,
        volume_uuid: &str,
        until: Instant,
    ) -> Result<bool, SourceError>;
    /// A recovery packet for `volume_uuid` of the machine known by any of `who`, if one is
    /// there. Over by `until`: a source that cannot answer by then says so.
    fn recovery_packet(
        &mut self,
        who: &[String],
        volume_uuid: &str,
        until: Instant,
    ) -> Result<Option<Vec<u8>>, SourceError>;
    /// Tells the source the packet was used (the server deletes it).
    fn report_used(&mut self, packet_id: &str, use_token: &UseToken) -> Result<(), SourceError>;
    /// An approved DRSK restore file for `client_id` and the storage key named `srk_name`.
    fn restore_file(
        &mut self,
        client_id: &str,
        srk_name: &str,
    ) -> Result<Option<Vec<u8>>, SourceError>;
}

/// Why a source could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// The escrow server: unreachable, refused, too slow, or an answer that is not one.
    Server(FetchError),
    /// Any other source (removable media), in words: a file that is refused, a stick that
    /// does not answer in time.
    Other(String),
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Server(e) => e.fmt(f),
            SourceError::Other(why) => f.write_str(why),
        }
    }
}

impl From<FetchError> for SourceError {
    fn from(e: FetchError) -> Self {
        SourceError::Server(e)
    }
}

/// What the person at the console did in the time given.
pub enum Answer {
    Line(Zeroizing<String>),
    Nothing,
    /// Input is gone (closed terminal, no console at all).
    Closed,
}

/// The person at the boot screen.
pub trait Console {
    /// One line of information.
    fn say(&mut self, line: &str);
    /// Waits up to `wait` for an answer to `question` (asked once, until answered).
    fn answer(&mut self, question: &str, wait: Duration) -> Answer;
}

/// The prompt line tests and glue wait for.
pub const QUESTION: &str = "Passphrase or one-time password:";
/// The prompt for a volume whose TPM key is sealed with a PIN.
pub const PIN_QUESTION: &str = "TPM PIN (or passphrase):";
/// Wrong PINs in one boot before lifeline turns to recovery (each also counts toward the
/// TPM's own dictionary-attack lockout).
pub const PIN_ATTEMPTS: u32 = 3;
/// Wrong passphrases or one-time passwords allowed before lifeline steps aside.
pub const MAX_ATTEMPTS: u32 = 5;

/// How the boot flow behaves (from the configuration).
pub struct Settings {
    pub machine_id: String,
    pub trust: Option<minisign::PublicKey>,
    pub poll_interval: Duration,
    pub timeout: Duration,
    pub reseal: bool,
    pub offer_new_passphrase: bool,
    /// When packets' expiry is judged.
    pub now: SystemTime,
}

/// How a volume was opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    Tpm,
    /// After loading the DRSK the server restored for this TPM.
    RestoredTpm,
    Passphrase,
    RecoveryPacket,
}

/// Why lifeline stepped aside for a volume.
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp {
    /// Nobody answered, and no packet came, within the timeout.
    TimedOut(Duration),
    TooManyAttempts,
    InputClosed,
    /// The volume cannot be opened with a key that should open it.
    Volume(String),
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GaveUp::TimedOut(t) => write!(
                f,
                "nothing was typed and no recovery packet came within {} s",
                t.as_secs()
            ),
            GaveUp::TooManyAttempts => write!(f, "all {MAX_ATTEMPTS} attempts were used"),
            GaveUp::InputClosed => f.write_str("there is no console to type at"),
            GaveUp::Volume(why) => f.write_str(why),
        }
    }
}

/// How long one call to a source may take once someone is at the prompt (before that, the
/// timeout bounds every call).
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// The short ID the user reads over the phone: the first four digits of the client ID (or the
/// machine ID, when the volume has no TPM token) and of the volume UUID. Both were checked
/// where they were read (`crate::id`); even so, nothing here can panic on odd text.
pub fn recovery_id(who: &str, volume_uuid: &str) -> String {
    let first4 = |s: &str| s.chars().take(4).collect::<String>();
    format!("{}-{}", first4(who), first4(volume_uuid))
}

/// The boot flow for one volume. `earlier` is how `tpm_only` ended for a token sealed with a
/// PIN, earlier in this boot: its PIN is not asked for again (see `handoff_text`).
pub fn unlock(
    uuid: &str,
    volume: &mut dyn Volume,
    tpm: &mut dyn Tpm,
    sources: &mut [Box<dyn EscrowSource>],
    console: &mut dyn Console,
    settings: &Settings,
    earlier: Option<TpmError>,
) -> Result<Opened, GaveUp> {
    let token = match volume.token() {
        Some(Ok(t)) => Some(t),
        Some(Err(damaged)) => {
            console.say(&format!("lifeline: {damaged}"));
            None
        }
        None => None,
    };
    // 1. The TPM (with the PIN, for a token sealed with one).
    let mut tpm_failure = None;
    let mut typed_otp = None;
    if let Some(t) = &token {
        let step = match (earlier, &t.pin_salt) {
            (Some(e), Some(_)) => TpmStep::Failed(e),
            _ => tpm_step(uuid, volume, tpm, t, console, settings)?,
        };
        match step {
            TpmStep::Opened(how) => return Ok(how),
            TpmStep::Failed(e) => tpm_failure = Some(e),
            TpmStep::Otp(otp) => typed_otp = Some(otp),
        }
        // 2. A DRSK restore, when the DRSK is not there (new motherboard).
        if matches!(
            tpm_failure,
            Some(TpmError::DrskMissing | TpmError::ForeignObject(_) | TpmError::OtherKey(_))
        ) && restore_drsk(tpm, sources, &t.client_id, console)
        {
            match tpm_step(uuid, volume, tpm, t, console, settings)? {
                TpmStep::Opened(Opened::Tpm) => return Ok(Opened::RestoredTpm),
                TpmStep::Opened(how) => return Ok(how),
                TpmStep::Failed(e) => tpm_failure = Some(e),
                TpmStep::Otp(otp) => typed_otp = Some(otp),
            }
        }
    }
    // 3. Recovery.
    let who = token
        .as_ref()
        .map_or(settings.machine_id.clone(), |t| t.client_id.clone());
    let reason = match (&tpm_failure, &typed_otp) {
        (Some(e), _) => e.to_string(),
        (None, Some(_)) => "a one-time password was typed".to_string(),
        (None, None) => "it has no lifeline TPM key".to_string(),
    };
    console.say(&format!(
        "lifeline: volume {uuid}: {reason}. Recovery ID {} — call your helpdesk with it, or type the passphrase.",
        recovery_id(&who, uuid)
    ));
    let names = [who.clone(), settings.machine_id.clone()];
    let (opened, key, used) = recover(uuid, volume, sources, console, settings, &names, typed_otp)?;
    // 4. After a recovery.
    if let Some((source, packet_id, use_token)) = used {
        if let Err(e) = sources[source].report_used(&packet_id, &use_token) {
            console.say(&format!(
                "lifeline: could not report the recovery packet used: {e}"
            ));
        }
    }
    let pinned = token.as_ref().is_some_and(|t| t.pin_salt.is_some());
    if let (true, Some(TpmError::PcrMismatch(_)), true) = (settings.reseal, &tpm_failure, pinned) {
        // The TPM checks the PCRs before the PIN: the PIN typed was never verified, and
        // sealing with a mistyped one would lock the next boots out of the TPM.
        console.say("lifeline: the TPM key has a PIN, so it was not re-sealed; run lifeline enroll --pin once booted.");
    } else if let (true, Some(TpmError::PcrMismatch(_)), Some(t)) =
        (settings.reseal, &tpm_failure, &token)
    {
        let pcrs = t.pcrs.as_ref().map(|p| p.pcrs.clone()).unwrap_or_default();
        let resealed = match tpm.reseal(&key, &pcrs) {
            Ok(t) => volume.store_token(&t).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match resealed {
            Ok(()) => console.say(
                "lifeline: re-sealed to the current PCR values; the next boot unlocks unattended.",
            ),
            Err(e) => console.say(&format!("lifeline: could not re-seal: {e}")),
        }
    }
    if opened == Opened::RecoveryPacket && settings.offer_new_passphrase {
        offer_new_passphrase(volume, &key, console);
    }
    Ok(opened)
}

/// Step 1 alone, without recovery: for `lifeline unlock --tpm-only`, so that the initramfs
/// glue brings the network up only when the TPM cannot open the volume. A token sealed with a
/// PIN is asked for it here, before any network (the PIN is the TPM's; the prompt also takes
/// the passphrase): a PIN machine never waits for a network to come up, or time out, before
/// its prompt. When the TPM does not open the volume, `Err` has the reason and, after a PIN
/// prompt, how it ended, for the whole flow that follows (`unlock`'s `earlier`).
pub fn tpm_only(
    uuid: &str,
    volume: &mut dyn Volume,
    tpm: &mut dyn Tpm,
    console: &mut dyn Console,
    settings: &Settings,
) -> Result<(), NotOpened> {
    let plain = |why: String| NotOpened { why, handoff: None };
    match volume.token() {
        Some(Ok(t)) if t.pin_salt.is_some() => {
            match with_pin(uuid, volume, tpm, &t, console, settings) {
                Ok(TpmStep::Opened(_)) => Ok(()),
                Ok(TpmStep::Failed(e)) => Err(NotOpened {
                    why: e.to_string(),
                    handoff: Some(e),
                }),
                Ok(TpmStep::Otp(_)) => Err(NotOpened {
                    why: "a one-time password was typed: type it again at the recovery prompt"
                        .into(),
                    handoff: Some(TpmError::Other("a one-time password was typed".into())),
                }),
                // Nobody answered: the whole flow asks again.
                Err(gave_up) => Err(plain(gave_up.to_string())),
            }
        }
        Some(Ok(t)) => unseal_and_open(volume, tpm, &t).map_err(|e| plain(e.to_string())),
        Some(Err(damaged)) => Err(plain(damaged.to_string())),
        None => Err(plain("it has no lifeline TPM key".into())),
    }
}

/// Why `tpm_only` did not open a volume.
#[derive(Debug)]
pub struct NotOpened {
    pub why: String,
    /// How a PIN prompt ended, for the whole flow (none when no PIN was asked, or nobody
    /// answered).
    pub handoff: Option<TpmError>,
}

/// How `tpm_only` ended for a PIN token, as the text handed to the whole flow (one line of
/// kind, then the reason; nothing secret). `handoff_from` reads it back.
pub fn handoff_text(e: &TpmError) -> String {
    let kind = match e {
        TpmError::Lockout => "lockout",
        TpmError::WrongPin => "wrong-pin",
        TpmError::PcrMismatch(_) => "pcr",
        TpmError::DrskMissing => "drsk-missing",
        TpmError::ForeignObject(_) => "foreign",
        TpmError::OtherKey(_) => "other-key",
        _ => "other",
    };
    let words = match e {
        TpmError::PcrMismatch(w)
        | TpmError::ForeignObject(w)
        | TpmError::OtherKey(w)
        | TpmError::Other(w) => w.clone(),
        other => other.to_string(),
    };
    format!("{kind}\n{words}\n")
}

pub fn handoff_from(text: &str) -> Option<TpmError> {
    let (kind, words) = text.split_once('\n')?;
    let words = words.trim_end().to_string();
    Some(match kind {
        "lockout" => TpmError::Lockout,
        "wrong-pin" => TpmError::WrongPin,
        "pcr" => TpmError::PcrMismatch(words),
        "drsk-missing" => TpmError::DrskMissing,
        "foreign" => TpmError::ForeignObject(words),
        "other-key" => TpmError::OtherKey(words),
        "other" => TpmError::Other(words),
        _ => return None,
    })
}

/// Step 1 for one token: unattended, or with the PIN when it has one.
fn tpm_step(
    uuid: &str,
    volume: &mut dyn Volume,
    tpm: &mut dyn Tpm,
    token: &SealedToken,
    console: &mut dyn Console,
    settings: &Settings,
) -> Result<TpmStep, GaveUp> {
    match token.pin_salt {
        Some(_) => with_pin(uuid, volume, tpm, token, console, settings),
        None => Ok(match unseal_and_open(volume, tpm, token) {
            Ok(()) => TpmStep::Opened(Opened::Tpm),
            Err(e) => TpmStep::Failed(e),
        }),
    }
}

fn unseal_and_open(
    volume: &mut dyn Volume,
    tpm: &mut dyn Tpm,
    token: &SealedToken,
) -> Result<(), TpmError> {
    let key = tpm.unseal(token, None)?;
    open_with(volume, &key)
}

fn open_with(volume: &mut dyn Volume, key: &VolumeKey) -> Result<(), TpmError> {
    volume
        .activate(key)
        .map_err(|e| TpmError::Other(format!("the unsealed key did not open the volume: {e}")))
}

/// Where step 1 (and asking for the PIN) ended.
enum TpmStep {
    Opened(Opened),
    /// The TPM did not open the volume: recovery follows, with this reason.
    Failed(TpmError),
    /// A one-time password was typed: recovery follows, and uses it.
    Otp(Zeroizing<String>),
}

/// Asks for the PIN of a token sealed with one, up to `PIN_ATTEMPTS` times. What is typed
/// may also be the volume's passphrase (tried when the TPM refuses it as a PIN) or a one-time
/// password (told by its shape). A TPM in lockout is not asked at all.
fn with_pin(
    uuid: &str,
    volume: &mut dyn Volume,
    tpm: &mut dyn Tpm,
    token: &SealedToken,
    console: &mut dyn Console,
    settings: &Settings,
) -> Result<TpmStep, GaveUp> {
    if tpm.in_lockout() {
        return Ok(TpmStep::Failed(TpmError::Lockout));
    }
    console.say(&format!(
        "lifeline: volume {uuid}: its TPM key needs the PIN."
    ));
    for attempt in 1..=PIN_ATTEMPTS {
        let text = match console.answer(PIN_QUESTION, settings.timeout) {
            Answer::Line(text) => text,
            Answer::Nothing => return Err(GaveUp::TimedOut(settings.timeout)),
            Answer::Closed => return Err(GaveUp::InputClosed),
        };
        if otp::looks_like_otp(&text) {
            return Ok(TpmStep::Otp(text));
        }
        let typed = Passphrase::from_slice(text.as_bytes());
        match tpm.unseal(token, Some(&typed)) {
            Ok(key) => {
                return match open_with(volume, &key) {
                    Ok(()) => Ok(TpmStep::Opened(Opened::Tpm)),
                    Err(e) => Ok(TpmStep::Failed(e)),
                }
            }
            Err(TpmError::WrongPin) => {
                if let Ok(key) = volume.key_from_passphrase(&typed) {
                    volume
                        .activate(&key)
                        .map_err(|e| GaveUp::Volume(e.to_string()))?;
                    console.say(&format!(
                        "lifeline: volume {uuid} opened with its passphrase."
                    ));
                    return Ok(TpmStep::Opened(Opened::Passphrase));
                }
                if attempt < PIN_ATTEMPTS {
                    console.say(&format!(
                        "lifeline: the TPM refused that PIN. {} attempts left.",
                        PIN_ATTEMPTS - attempt
                    ));
                }
            }
            Err(e) => return Ok(TpmStep::Failed(e)),
        }
    }
    Ok(TpmStep::Failed(TpmError::WrongPin))
}

/// Asks each source for an approved restore for this TPM and loads the first that comes.
fn restore_drsk(
    tpm: &mut dyn Tpm,
    sources: &mut [Box<dyn EscrowSource>],
    client_id: &str,
    console: &mut dyn Console,
) -> bool {
    let Ok(srk) = tpm.srk_public() else {
        return false;
    };
    let Ok(name) = crate::tpm::name_of_public(&srk) else {
        return false;
    };
    let name = crate::hex::encode(&name);
    for s in sources.iter_mut() {
        if let Ok(Some(file)) = s.restore_file(client_id, &name) {
            match tpm.load_restored(&file) {
                Ok(_) => {
                    console.say(&format!(
                        "lifeline: DRSK restored from {} for this boot.",
                        s.describe()
                    ));
                    return true;
                }
                Err(e) => console.say(&format!(
                    "lifeline: the restore from {} failed: {e}",
                    s.describe()
                )),
            }
        }
    }
    false
}

/// Files the recovery request with each source in `unfiled` that takes it; a source that
/// cannot be reached stays in `unfiled` and is asked again at the next poll (the network may
/// still be coming up). Only the first failure is named.
fn file_requests(
    uuid: &str,
    sources: &mut [Box<dyn EscrowSource>],
    unfiled: &mut Vec<usize>,
    console: &mut dyn Console,
    who: &str,
    first: bool,
    until: Instant,
) {
    unfiled.retain(|&i| match sources[i].request_recovery(who, uuid, until) {
        Ok(filed) => {
            if filed {
                console.say(&format!(
                    "lifeline: recovery request filed with {}.",
                    sources[i].describe()
                ));
            }
            false
        }
        Err(e) => {
            if first {
                console.say(&format!(
                    "lifeline: {} not reachable: {e}",
                    sources[i].describe()
                ));
            }
            true
        }
    });
}

/// Which source gave the packet that was used, its ID and use token.
type Used = Option<(usize, String, UseToken)>;

/// Step 3: packets from the sources and answers from the console, until the volume opens.
/// Until someone answers, the timeout bounds everything, the calls to the sources included;
/// once someone has, it waits as long as they need.
fn recover(
    uuid: &str,
    volume: &mut dyn Volume,
    sources: &mut [Box<dyn EscrowSource>],
    console: &mut dyn Console,
    settings: &Settings,
    names: &[String],
    typed_otp: Option<Zeroizing<String>>,
) -> Result<(Opened, VolumeKey, Used), GaveUp> {
    let started = Instant::now();
    // The configuration caps the timeout; a larger one still cannot overflow here.
    let deadline = started
        .checked_add(settings.timeout)
        .unwrap_or(started + Duration::from_secs(86_400));
    let mut unfiled: Vec<usize> = (0..sources.len()).collect();
    let mut packet: Option<(usize, RecoveryPacket)> = None;
    let mut refused = HashSet::new();
    let mut waiting_otp = typed_otp;
    // Someone who typed a one-time password at the PIN prompt is there.
    let mut attended = waiting_otp.is_some();
    let mut attempts = 0;
    let mut first = true;
    loop {
        let now = Instant::now();
        let until = match attended {
            true => now + CALL_LIMIT,
            false => deadline,
        };
        file_requests(
            uuid,
            sources,
            &mut unfiled,
            console,
            &names[0],
            first,
            until,
        );
        first = false;
        if packet.is_none() {
            packet = find_packet(uuid, sources, console, settings, names, &mut refused, until);
        }
        let wait = match attended {
            true => settings.poll_interval,
            false => settings
                .poll_interval
                .min(deadline.saturating_duration_since(Instant::now())),
        };
        let answer = match (&packet, waiting_otp.take()) {
            (Some(_), Some(otp)) => Answer::Line(otp),
            (None, Some(otp)) => {
                waiting_otp = Some(otp);
                console.answer(QUESTION, wait)
            }
            (_, None) => console.answer(QUESTION, wait),
        };
        let text = match answer {
            Answer::Line(text) => text,
            Answer::Nothing if !attended && Instant::now() >= deadline => {
                return Err(GaveUp::TimedOut(settings.timeout))
            }
            Answer::Nothing => continue,
            Answer::Closed => return Err(GaveUp::InputClosed),
        };
        attended = true;
        let failure = if otp::looks_like_otp(&text) {
            let Some((source, p)) = &packet else {
                console.say("lifeline: that is a one-time password, but no recovery packet has arrived yet; it is tried as soon as one does.");
                waiting_otp = Some(text);
                continue;
            };
            match otp::parse(&text, p.binding.otp_groups)
                .map_err(|e| e.to_string())
                .and_then(|code| p.open(&code).map_err(|e| e.to_string()))
            {
                Ok(record) => {
                    volume
                        .activate(&record.volume_key)
                        .map_err(|e| GaveUp::Volume(e.to_string()))?;
                    console.say(&format!(
                        "lifeline: volume {uuid} opened with the recovery packet."
                    ));
                    let used = record
                        .use_token
                        .map(|t| (*source, p.binding.packet_id.clone(), t));
                    return Ok((Opened::RecoveryPacket, record.volume_key, used));
                }
                Err(e) => e,
            }
        } else {
            match volume.key_from_passphrase(&Passphrase::from_slice(text.as_bytes())) {
                Ok(key) => {
                    volume
                        .activate(&key)
                        .map_err(|e| GaveUp::Volume(e.to_string()))?;
                    console.say(&format!(
                        "lifeline: volume {uuid} opened with its passphrase."
                    ));
                    return Ok((Opened::Passphrase, key, None));
                }
                Err(LuksError::WrongPassphrase) => "no keyslot accepts that passphrase".to_string(),
                Err(e) => return Err(GaveUp::Volume(e.to_string())),
            }
        };
        attempts += 1;
        if attempts >= MAX_ATTEMPTS {
            console.say(&format!("lifeline: {failure}. No attempts left."));
            return Err(GaveUp::TooManyAttempts);
        }
        console.say(&format!(
            "lifeline: {failure}. {} attempts left.",
            MAX_ATTEMPTS - attempts
        ));
    }
}

/// Looks at every source once; a packet is kept only when its signature and binding check out.
/// Each refused packet, and each problem a source reports, is named once.
fn find_packet(
    uuid: &str,
    sources: &mut [Box<dyn EscrowSource>],
    console: &mut dyn Console,
    settings: &Settings,
    names: &[String],
    refused: &mut HashSet<Vec<u8>>,
    until: Instant,
) -> Option<(usize, RecoveryPacket)> {
    let trust = settings.trust.as_ref()?;
    for (i, s) in sources.iter_mut().enumerate() {
        let bytes = match s.recovery_packet(names, uuid, until) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            Err(e) => {
                // Each distinct problem is named once, not at every poll.
                if refused.insert(e.to_string().into_bytes()) {
                    console.say(&format!("lifeline: {}: {e}", s.describe()));
                }
                continue;
            }
        };
        let checked = RecoveryPacket::verify(&bytes, trust).and_then(|p| {
            p.check_binding(&settings.machine_id, uuid, settings.now)
                .map(|()| p)
        });
        match checked {
            Ok(p) => {
                console.say(&format!(
                    "lifeline: recovery packet from {} verified (signed, for this machine and volume); type the one-time password.",
                    s.describe()
                ));
                return Some((i, p));
            }
            Err(e) => {
                if refused.insert(<sha2::Sha256 as sha2::Digest>::digest(&bytes).to_vec()) {
                    console.say(&format!(
                        "lifeline: refused a recovery packet from {}: {e}",
                        s.describe()
                    ));
                }
            }
        }
    }
    None
}

/// After a recovery with the packet: the forgotten passphrase can be replaced right here.
fn offer_new_passphrase(volume: &mut dyn Volume, key: &VolumeKey, console: &mut dyn Console) {
    let ask = |console: &mut dyn Console, q: &str| loop {
        match console.answer(q, Duration::from_secs(60)) {
            Answer::Line(l) => return Some(l),
            Answer::Nothing => continue,
            Answer::Closed => return None,
        }
    };
    let Some(first) = ask(console, "New passphrase (empty: keep the current ones):") else {
        return;
    };
    if first.is_empty() {
        return;
    }
    let Some(again) = ask(console, "Repeat the new passphrase:") else {
        return;
    };
    if *first != *again {
        console.say("lifeline: the two passphrases differ; nothing was added.");
        return;
    }
    match volume.add_passphrase(key, &Passphrase::from_slice(first.as_bytes())) {
        Ok(slot) => console.say(&format!(
            "lifeline: new passphrase added in keyslot {slot}."
        )),
        Err(e) => console.say(&format!("lifeline: could not add the passphrase: {e}")),
    }
}
