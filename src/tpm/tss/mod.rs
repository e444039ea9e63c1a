//! The tss-esapi adapter. Templates, sessions, and the one place TPM response codes are
//! classified.
//!
//! Object shapes (docs/TPM.md has the full templates):
//! - SRK: ECC P-256 restricted decrypt primary in the owner hierarchy, AES-128-CFB, the TCG
//!   storage template, so it is the same key every time for the same TPM seed.
//! - DRSK: ECC P-256 restricted decrypt key under the SRK, fixedTPM and fixedParent clear,
//!   adminWithPolicy, authPolicy = the duplication policy of `policy.rs`.
//! - Sealed volume key: keyedhash sealed data under the DRSK, fixedParent set (it moves only
//!   together with the DRSK), optionally bound to PCRs.
//!
//! By job: `rc.rs` classifies failures, `templates.rs` shapes objects, `keys.rs` provisions
//! the SRK and DRSK, `seal.rs` seals and unseals, `duplicate.rs` moves the DRSK to a backup
//! server and back, `ek.rs` answers the genuine-TPM challenge; `custody.rs` (feature
//! `server`) is the backup server's side.

use std::str::FromStr;
use std::time::{Duration, Instant};

use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind as Rc;
use tss_esapi::constants::{PropertyTag, SessionType};
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, Public, SymmetricDefinition};
use tss_esapi::tcti_ldr::{DeviceConfig, TctiNameConf};
use tss_esapi::Context;

use crate::secret::{Passphrase, VolumeKey};
use crate::tpm::token::SealedToken;
use crate::tpm::{SealedBlob, TpmError};

#[cfg(feature = "server")]
mod custody;
mod duplicate;
mod ek;
mod keys;
mod rc;
mod seal;
mod templates;

#[cfg(feature = "server")]
pub use custody::ServerKey;
#[cfg(feature = "server")]
pub use ek::{ek_key, is_resident_storage_key};
pub use templates::{auth_policy_of, name_of_public};

use rc::*;

/// The TCTI named by `tcti`. A device (`device:PATH`) is all a machine needs, and all the
/// client speaks unless built with the `any-tcti` feature (swtpm and mssim simulators,
/// tpm2-abrmd): tss-esapi parses those configurations with the regex crate, which would
/// add some 450 KiB to the initramfs binary.
fn tcti_conf(tcti: &str) -> Result<TctiNameConf, TpmError> {
    match tcti
        .strip_prefix("device:")
        .or((tcti == "device").then_some(""))
    {
        Some(path) => DeviceConfig::from_str(path)
            .map(TctiNameConf::Device)
            .map_err(|_| not_a_tcti(tcti)),
        None => other_tcti(tcti),
    }
}

fn not_a_tcti(tcti: &str) -> TpmError {
    TpmError::NoDevice(format!("'{tcti}' is not a TCTI configuration"))
}

#[cfg(feature = "any-tcti")]
fn other_tcti(tcti: &str) -> Result<TctiNameConf, TpmError> {
    TctiNameConf::from_str(tcti).map_err(|_| not_a_tcti(tcti))
}

#[cfg(not(feature = "any-tcti"))]
fn other_tcti(tcti: &str) -> Result<TctiNameConf, TpmError> {
    Err(TpmError::NoDevice(format!(
        "'{tcti}': this lifeline speaks to TPM devices only (device:PATH); simulators and tpm2-abrmd need a build with the any-tcti feature"
    )))
}

/// A connection to one TPM.
pub struct TssTpm {
    ctx: Context,
    /// A DRSK imported in this process but not persisted (initramfs restore); used instead of
    /// the persistent handle while set.
    transient_drsk: Option<KeyHandle>,
}

impl std::fmt::Debug for TssTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TssTpm")
    }
}

/// What is at one of lifeline's persistent handles.
enum HandleState {
    Empty,
    Ours(ObjectHandle),
    Foreign(ObjectHandle),
}

/// What `provision` found or did.
#[derive(Debug, PartialEq, Eq)]
pub enum Provisioned {
    Created,
    AlreadyThere,
    Replaced,
}

impl TssTpm {
    /// Connects, waiting up to `wait` for the TPM to appear (a boot may still be loading the
    /// driver). `tcti` is a TCTI string such as `device:/dev/tpmrm0` or
    /// `swtpm:host=127.0.0.1,port=2321`.
    pub fn open(tcti: &str, wait: Duration) -> Result<TssTpm, TpmError> {
        let conf = tcti_conf(tcti)?;
        let deadline = Instant::now() + wait;
        loop {
            if let Some(path) = tcti.strip_prefix("device:") {
                if !std::path::Path::new(path).exists() {
                    if Instant::now() >= deadline {
                        return Err(TpmError::NoDevice(format!("{path} does not exist")));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            match Context::new(conf.clone()) {
                Ok(ctx) => {
                    return Ok(TssTpm {
                        ctx,
                        transient_drsk: None,
                    })
                }
                Err(e) if Instant::now() >= deadline => {
                    let why = tcti_failure(&e).unwrap_or_else(|| e.to_string());
                    return Err(TpmError::NoDevice(format!("{tcti}: {why}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// True when the owner hierarchy has an authorization value.
    pub fn owner_auth_set(&mut self) -> Result<bool, TpmError> {
        let permanent = self
            .ctx
            .get_tpm_property(PropertyTag::Permanent)
            .map_err(|e| classify(e, "reading TPM properties"))?;
        Ok(permanent.unwrap_or(0) & 1 == 1)
    }

    /// The storage-key algorithm this TPM takes when none is asked for: ECC P-256 when it has
    /// that curve, else RSA-2048.
    pub fn preferred_algorithm(&mut self) -> Result<crate::tpm::KeyAlgorithm, TpmError> {
        use tss_esapi::constants::{CapabilityType, EccCurveIdentifier};
        use tss_esapi::structures::CapabilityData;
        let (curves, _) = self
            .ctx
            .get_capability(CapabilityType::EccCurves, 0, 64)
            .map_err(|e| classify(e, "reading the TPM's ECC curves"))?;
        let p256 = matches!(&curves, CapabilityData::EccCurves(list)
            if list.contains(&EccCurveIdentifier::NistP256));
        Ok(match p256 {
            true => crate::tpm::KeyAlgorithm::Ecc,
            false => crate::tpm::KeyAlgorithm::Rsa,
        })
    }

    pub(super) fn set_owner_auth(&mut self, auth: Option<&Passphrase>) -> Result<(), TpmError> {
        // expose_secret: handed to the TSS, which computes the authorization with it.
        let value = Auth::try_from(auth.map(|a| a.expose_secret().to_vec()).unwrap_or_default())
            .map_err(|_| TpmError::Other("the owner authorization is too long".into()))?;
        self.ctx
            .tr_set_auth(ObjectHandle::Owner, value)
            .map_err(wrapper)
    }

    /// Sets the owner authorization of a TPM that has none.
    pub fn change_owner_auth(&mut self, new: &Passphrase) -> Result<(), TpmError> {
        self.set_owner_auth(None)?;
        // expose_secret: the TPM stores it as the owner hierarchy's authorization value.
        let value = Auth::try_from(new.expose_secret().to_vec())
            .map_err(|_| TpmError::Other("the owner authorization is too long".into()))?;
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.hierarchy_change_auth(AuthHandle::Owner, value)
            })
            .map_err(|e| owner_error(e, "setting the owner authorization"))
    }

    /// The object at a persistent handle, or `None` if the handle is empty.
    pub(super) fn persistent(&mut self, handle: u32) -> Result<Option<ObjectHandle>, TpmError> {
        let tpm_handle = TpmHandle::Persistent(PersistentTpmHandle::new(handle).map_err(wrapper)?);
        match self.ctx.tr_from_tpm_public(tpm_handle) {
            Ok(h) => Ok(Some(h)),
            Err(e) if matches!(kind(&e), Some(Rc::Handle | Rc::Value)) => Ok(None),
            Err(e) => Err(classify(e, "reading a persistent handle")),
        }
    }

    pub(super) fn read_public(&mut self, handle: ObjectHandle) -> Result<Public, TpmError> {
        let (public, _, _) = self
            .ctx
            .read_public(handle.into())
            .map_err(|e| classify(e, "reading a public area"))?;
        Ok(public)
    }

    pub(super) fn flush(&mut self, handle: impl Into<ObjectHandle>) {
        let _ = self.ctx.flush_context(handle.into());
    }

    /// A session of `kind` (AES-128-CFB parameter encryption available, SHA-256), salted to
    /// `salt_key` when given.
    pub(super) fn session(
        &mut self,
        kind: SessionType,
        salt_key: Option<KeyHandle>,
    ) -> Result<AuthSession, TpmError> {
        self.ctx
            .start_auth_session(
                salt_key,
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(|e| classify(e, "starting a TPM session"))?
            .ok_or_else(|| TpmError::Other("the TPM gave no session".into()))
    }

    pub(super) fn end_session(&mut self, session: AuthSession) {
        self.flush(tss_esapi::handles::SessionHandle::from(session));
    }

    /// A session salted to `salt_key` that encrypts the first parameter both ways, so secrets
    /// do not cross the bus in clear.
    pub(super) fn encrypted_session(
        &mut self,
        salt_key: KeyHandle,
        kind: SessionType,
    ) -> Result<AuthSession, TpmError> {
        let session = self.session(kind, Some(salt_key))?;
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .with_continue_session(true)
            .build();
        self.ctx
            .tr_sess_set_attributes(session, attributes, mask)
            .map_err(wrapper)?;
        Ok(session)
    }
}

/// A fresh salt for a PIN's authorization value.
fn new_salt() -> Result<Vec<u8>, TpmError> {
    let mut salt = vec![0u8; 16];
    crate::secret::random_bytes(&mut salt).map_err(|e| TpmError::Other(e.to_string()))?;
    Ok(salt)
}

/// Sealed tokens, with or without a PIN.
impl TssTpm {
    /// Seals `key` under the DRSK into a token, bound to the current values of `pcrs`, and
    /// to `pin` when given (with a fresh salt).
    pub fn seal_token(
        &mut self,
        key: &VolumeKey,
        pcrs: &[u8],
        pin: Option<&Passphrase>,
    ) -> Result<SealedToken, TpmError> {
        let salt = pin.map(|_| new_salt()).transpose()?;
        let auth = salt
            .as_ref()
            .zip(pin)
            .map(|(s, p)| crate::tpm::pin_auth(s, p));
        let (blob, pcrs) = self.seal(key, pcrs, auth.as_ref().map(|a| a.as_slice()))?;
        Ok(SealedToken {
            client_id: crate::tpm::client_id(&self.drsk_public()?),
            blob,
            pcrs,
            pin_salt: salt,
            key_algorithm: self.drsk_algorithm()?,
        })
    }

    /// Unseals a token's key; one sealed with a PIN needs `pin`.
    pub fn unseal_token(
        &mut self,
        token: &SealedToken,
        pin: Option<&Passphrase>,
    ) -> Result<VolumeKey, TpmError> {
        let auth = match (&token.pin_salt, pin) {
            (Some(salt), Some(pin)) => Some(crate::tpm::pin_auth(salt, pin)),
            (Some(_), None) => return Err(TpmError::PinNeeded),
            (None, _) => None,
        };
        let auth = auth.as_ref().map(|a| a.as_slice());
        self.unseal(&token.client_id, &token.blob, token.pcrs.as_ref(), auth)
    }

    /// Whether the TPM refuses every authorization of dictionary-attack protected objects for
    /// now: its failure counter has reached the most it allows.
    pub fn in_lockout(&mut self) -> bool {
        // TPMA_PERMANENT.inLockout (bit 9): the TPM's own word for it.
        let permanent = self.ctx.get_tpm_property(PropertyTag::Permanent);
        permanent.ok().flatten().is_some_and(|p| p & (1 << 9) != 0)
    }

    /// The token with `new` as its PIN instead of `old` (a new salt; the same sealed key).
    pub fn change_token_pin(
        &mut self,
        token: &SealedToken,
        old: &Passphrase,
        new: &Passphrase,
    ) -> Result<SealedToken, TpmError> {
        let Some(old_salt) = &token.pin_salt else {
            return Err(TpmError::Other("this key is sealed without a PIN".into()));
        };
        let salt = new_salt()?;
        let (old, new) = (
            crate::tpm::pin_auth(old_salt, old),
            crate::tpm::pin_auth(&salt, new),
        );
        let private = self.change_pin(&token.client_id, &token.blob, &old, &new)?;
        Ok(SealedToken {
            blob: SealedBlob {
                public: token.blob.public.clone(),
                private,
            },
            pin_salt: Some(salt),
            ..token.clone()
        })
    }
}

/// The boot flow's view of the TPM.
impl crate::unlock::Tpm for TssTpm {
    fn unseal(
        &mut self,
        token: &SealedToken,
        pin: Option<&Passphrase>,
    ) -> Result<VolumeKey, TpmError> {
        self.unseal_token(token, pin)
    }

    fn srk_public(&mut self) -> Result<Vec<u8>, TpmError> {
        TssTpm::srk_public(self, None)
    }

    fn load_restored(&mut self, restore_file: &[u8]) -> Result<String, TpmError> {
        let file = std::str::from_utf8(restore_file)
            .map_err(|_| TpmError::Other("the restore file is not text".into()))
            .and_then(|t| {
                super::transfer::DrskFile::parse(t)
                    .map_err(|e| TpmError::Other(format!("the restore file: {e}")))
            })?;
        self.restore_drsk(&file.dup, false, None)
    }

    fn reseal(&mut self, key: &VolumeKey, pcrs: &[u8]) -> Result<SealedToken, TpmError> {
        self.seal_token(key, pcrs, None)
    }

    fn in_lockout(&mut self) -> bool {
        TssTpm::in_lockout(self)
    }
}
