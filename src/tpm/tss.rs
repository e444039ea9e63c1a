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

use std::str::FromStr;
use std::time::{Duration, Instant};

use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::response_code::Tss2ResponseCodeKind as Rc;
use tss_esapi::constants::{CommandCode, PropertyTag, SessionType};
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, Digest, DigestList, EccPoint, EncryptedSecret, KeyedHashScheme, Nonce, PcrSelectionList,
    PcrSelectionListBuilder, PcrSlot, Private, Public, PublicBuilder, PublicEccParametersBuilder,
    PublicKeyedHashParameters, SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

use super::policy;
use super::token::SealedToken;
use super::{tpm2b, untpm2b, Duplicate, PcrBinding, SealedBlob, TpmError, DRSK_HANDLE, SRK_HANDLE};
use crate::secret::{Passphrase, VolumeKey};

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

// ---- error classification -----------------------------------------------------------------

fn kind(e: &tss_esapi::Error) -> Option<Rc> {
    match e {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

/// The raw TSS2_RC of an error from the TSS itself (not the TPM), which tss-esapi only shows
/// in its text ("Response code value: 0x…").
fn raw_code(e: &tss_esapi::Error) -> Option<u32> {
    use tss_esapi::constants::response_code::Tss2ResponseCode;
    let tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) = e else {
        return None;
    };
    let text = rc.to_string();
    u32::from_str_radix(text.rsplit("0x").next()?, 16).ok()
}

/// TSS2_RC layer of the TCTI (the transport: device file, socket) and of its loader.
const TCTI_LAYER: u32 = 10;

/// What a TCTI-layer failure means, in words; `None` when it is not one.
fn tcti_failure(e: &tss_esapi::Error) -> Option<String> {
    let code = raw_code(e)?;
    if (code >> 16) & 0xff != TCTI_LAYER {
        return None;
    }
    Some(match code & 0xffff {
        // TSS2_BASE_RC_NO_CONNECTION, _IO_ERROR
        8 | 10 => format!("the connection failed: refused, or no such device (TCTI error {code:#x})"),
        // _NOT_IMPLEMENTED, _ABI_MISMATCH, _NOT_SUPPORTED
        2 | 4 | 21 => format!(
            "the TCTI library is missing or unusable, e.g. libtss2-tcti-device.so.0 (TCTI error {code:#x})"
        ),
        // _BAD_VALUE, _BAD_REFERENCE
        5 | 11 => format!("the TCTI configuration is not valid (TCTI error {code:#x})"),
        // _TRY_AGAIN
        9 => format!("the TPM did not answer in time (TCTI error {code:#x})"),
        _ => format!("TCTI error {code:#x}"),
    })
}

/// The failures every call shares; call sites map the kinds that mean something there first.
fn classify(e: tss_esapi::Error, doing: &str) -> TpmError {
    match kind(&e) {
        Some(Rc::Lockout) => TpmError::Lockout,
        Some(Rc::Retry | Rc::Yielded | Rc::Testing) => {
            TpmError::Other(format!("{doing}: the TPM is busy ({e})"))
        }
        _ => match tcti_failure(&e) {
            // The transport failed (device gone, connection refused): there is no TPM to ask.
            Some(why) => TpmError::NoDevice(format!("{doing}: {why}")),
            None => TpmError::Other(format!("{doing}: {e}")),
        },
    }
}

fn owner_error(e: tss_esapi::Error, doing: &str) -> TpmError {
    match kind(&e) {
        Some(Rc::AuthFail | Rc::BadAuth) => TpmError::OwnerAuthWrong,
        _ => classify(e, doing),
    }
}

fn wrapper(e: tss_esapi::Error) -> TpmError {
    TpmError::Other(e.to_string())
}

// ---- templates ------------------------------------------------------------------------------

/// A restricted decrypt ECC P-256 storage key. `movable` clears fixedTPM/fixedParent;
/// `auth_policy` (the DRSK's duplication policy) also sets adminWithPolicy.
fn storage_template(movable: bool, auth_policy: Option<&[u8]>) -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(!movable)
        .with_fixed_parent(!movable)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_admin_with_policy(auth_policy.is_some())
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(wrapper)?;
    let params = PublicEccParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        EccCurve::NistP256,
    )
    .build()
    .map_err(wrapper)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::try_from(auth_policy.unwrap_or(&[]).to_vec()).map_err(wrapper)?)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(wrapper)
}

fn sealed_template(pcr_policy: Option<&[u8]>) -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(false)
        .with_fixed_parent(true)
        .with_user_with_auth(pcr_policy.is_none())
        .with_no_da(true)
        .build()
        .map_err(wrapper)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::try_from(pcr_policy.unwrap_or(&[]).to_vec()).map_err(wrapper)?)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(wrapper)
}

/// TPM2B_PUBLIC bytes of a public area.
pub(crate) fn public_bytes(public: &Public) -> Result<Vec<u8>, TpmError> {
    Ok(tpm2b(&public.marshall().map_err(wrapper)?))
}

fn public_from(bytes: &[u8], what: &str) -> Result<Public, TpmError> {
    let inner =
        untpm2b(bytes).ok_or_else(|| TpmError::Other(format!("{what} is not a TPM2B_PUBLIC")))?;
    Public::unmarshall(inner).map_err(|_| TpmError::Other(format!("{what} is not a TPM2B_PUBLIC")))
}

/// A TPM2B buffer (private part, encrypted seed, credential) as the tss-esapi type; `what`
/// is the error if the framing is wrong.
fn from_tpm2b<T: TryFrom<Vec<u8>, Error = tss_esapi::Error>>(
    bytes: &[u8],
    what: &str,
) -> Result<T, TpmError> {
    let inner = untpm2b(bytes).ok_or_else(|| TpmError::Other(what.to_string()))?;
    T::try_from(inner.to_vec()).map_err(wrapper)
}

/// The Name of a TPM2B_PUBLIC.
pub fn name_of_public(bytes: &[u8]) -> Result<Vec<u8>, TpmError> {
    let inner = untpm2b(bytes).ok_or_else(|| TpmError::Other("not a TPM2B_PUBLIC".into()))?;
    Ok(policy::name_of(inner))
}

/// The authPolicy of a TPM2B_PUBLIC.
pub fn auth_policy_of(bytes: &[u8]) -> Result<Vec<u8>, TpmError> {
    Ok(public_from(bytes, "the public part")?
        .auth_policy()
        .value()
        .to_vec())
}

fn pcr_selection(pcrs: &[u8]) -> Result<PcrSelectionList, TpmError> {
    let slots = pcrs
        .iter()
        .map(|&n| {
            PcrSlot::try_from(1u32 << n)
                .map_err(|_| TpmError::Other(format!("PCR {n} does not exist")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(wrapper)
}

fn policy_session(s: AuthSession) -> Result<PolicySession, TpmError> {
    PolicySession::try_from(s).map_err(wrapper)
}

impl TssTpm {
    /// Connects, waiting up to `wait` for the TPM to appear (a boot may still be loading the
    /// driver). `tcti` is a TCTI string such as `device:/dev/tpmrm0` or
    /// `swtpm:host=127.0.0.1,port=2321`.
    pub fn open(tcti: &str, wait: Duration) -> Result<TssTpm, TpmError> {
        let conf = TctiNameConf::from_str(tcti)
            .map_err(|_| TpmError::NoDevice(format!("'{tcti}' is not a TCTI configuration")))?;
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

    fn set_owner_auth(&mut self, auth: Option<&Passphrase>) -> Result<(), TpmError> {
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
    fn persistent(&mut self, handle: u32) -> Result<Option<ObjectHandle>, TpmError> {
        let tpm_handle = TpmHandle::Persistent(PersistentTpmHandle::new(handle).map_err(wrapper)?);
        match self.ctx.tr_from_tpm_public(tpm_handle) {
            Ok(h) => Ok(Some(h)),
            Err(e) if matches!(kind(&e), Some(Rc::Handle | Rc::Value)) => Ok(None),
            Err(e) => Err(classify(e, "reading a persistent handle")),
        }
    }

    fn read_public(&mut self, handle: ObjectHandle) -> Result<Public, TpmError> {
        let (public, _, _) = self
            .ctx
            .read_public(handle.into())
            .map_err(|e| classify(e, "reading a public area"))?;
        Ok(public)
    }

    fn flush(&mut self, handle: impl Into<ObjectHandle>) {
        let _ = self.ctx.flush_context(handle.into());
    }

    /// Creates the SRK as a transient primary (same key every time for this TPM's seed).
    fn create_srk(&mut self, owner_auth: Option<&Passphrase>) -> Result<KeyHandle, TpmError> {
        self.set_owner_auth(owner_auth)?;
        let template = storage_template(false, None)?;
        let result = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(|e| owner_error(e, "creating the storage root key"))?;
        Ok(result.key_handle)
    }

    /// The SRK: the persistent one at 0x81000003 if present, else a transient primary.
    /// Returns the handle and whether it must be flushed after use.
    fn srk(&mut self, owner_auth: Option<&Passphrase>) -> Result<(KeyHandle, bool), TpmError> {
        if let Some(h) = self.persistent(SRK_HANDLE)? {
            return Ok((h.into(), false));
        }
        if owner_auth.is_none() && self.owner_auth_set()? {
            return Err(TpmError::OwnerAuthNeeded);
        }
        Ok((self.create_srk(owner_auth)?, true))
    }

    /// The SRK's TPM2B_PUBLIC: what a backup server needs to restore a DRSK to this TPM.
    pub fn srk_public(&mut self, owner_auth: Option<&Passphrase>) -> Result<Vec<u8>, TpmError> {
        let (srk, transient) = self.srk(owner_auth)?;
        let public = self.read_public(srk.into());
        if transient {
            self.flush(srk);
        }
        public_bytes(&public?)
    }

    /// The DRSK in use: a restored transient one, else the persistent one.
    fn drsk(&mut self) -> Result<KeyHandle, TpmError> {
        if let Some(h) = self.transient_drsk {
            return Ok(h);
        }
        self.persistent(DRSK_HANDLE)?
            .map(KeyHandle::from)
            .ok_or(TpmError::DrskMissing)
    }

    /// The DRSK's TPM2B_PUBLIC.
    pub fn drsk_public(&mut self) -> Result<Vec<u8>, TpmError> {
        let drsk = self.drsk()?;
        let public = self.read_public(drsk.into())?;
        public_bytes(&public)
    }

    /// Creates (or checks) the SRK at 0x81000003 and the DRSK at 0x81000004 whose
    /// duplication policy allows exactly the backup servers whose DRSK Names are given.
    /// Both handles are inspected before anything changes: a refusal leaves the TPM as it was.
    pub fn provision(
        &mut self,
        server_names: &[Vec<u8>],
        owner_auth: Option<&Passphrase>,
        force: bool,
    ) -> Result<Provisioned, TpmError> {
        if owner_auth.is_none() && self.owner_auth_set()? {
            return Err(TpmError::OwnerAuthNeeded);
        }
        let auth_policy = policy::drsk_auth_policy(server_names);
        let drsk_template = storage_template(true, Some(&auth_policy))?;

        // Ours is the primary our template makes on this TPM: compare with a fresh one.
        let fresh_srk = self.create_srk(owner_auth)?;
        let result = self
            .inspect_handles(fresh_srk, &drsk_template)
            .and_then(|(srk, drsk)| {
                use HandleState::{Empty, Foreign, Ours};
                let foreign = match (&srk, &drsk) {
                    (Foreign(_), _) => Some("another key is at 0x81000003"),
                    (_, Foreign(_)) => Some("another object is at 0x81000004"),
                    (_, Ours(h))
                        if self.read_public(*h)?.auth_policy().value()
                            != auth_policy.as_slice() =>
                    {
                        Some("the DRSK at 0x81000004 was provisioned for other backup servers")
                    }
                    _ => None,
                };
                if let (Some(what), false) = (foreign, force) {
                    return Err(TpmError::ForeignObject(what.into()));
                }
                let mut outcome = if foreign.is_some() {
                    Provisioned::Replaced
                } else {
                    Provisioned::AlreadyThere
                };
                let srk = match srk {
                    Ours(h) => h,
                    Empty | Foreign(_) => {
                        if let Foreign(old) = srk {
                            self.evict(old, SRK_HANDLE)?;
                        }
                        if outcome == Provisioned::AlreadyThere {
                            outcome = Provisioned::Created;
                        }
                        self.persist(fresh_srk.into(), SRK_HANDLE)?
                    }
                };
                match drsk {
                    // A new SRK means a new DRSK: the old one's parent is gone.
                    Ours(_) if foreign.is_none() && outcome == Provisioned::AlreadyThere => {
                        return Ok(outcome)
                    }
                    Ours(old) | Foreign(old) => self.evict(old, DRSK_HANDLE)?,
                    Empty => {}
                }
                if outcome == Provisioned::AlreadyThere {
                    outcome = Provisioned::Created;
                }
                self.create_drsk(srk.into(), drsk_template.clone())?;
                Ok(outcome)
            });
        self.flush(fresh_srk);
        result
    }

    /// What is at our two handles: empty, ours, or something else.
    fn inspect_handles(
        &mut self,
        fresh_srk: KeyHandle,
        drsk_template: &Public,
    ) -> Result<(HandleState, HandleState), TpmError> {
        let fresh_public = self.read_public(fresh_srk.into())?;
        let srk = match self.persistent(SRK_HANDLE)? {
            None => HandleState::Empty,
            Some(h) if self.read_public(h)? == fresh_public => HandleState::Ours(h),
            Some(h) => HandleState::Foreign(h),
        };
        let drsk = match self.persistent(DRSK_HANDLE)? {
            None => HandleState::Empty,
            Some(h)
                if self.read_public(h)?.object_attributes()
                    == drsk_template.object_attributes() =>
            {
                HandleState::Ours(h)
            }
            Some(h) => HandleState::Foreign(h),
        };
        Ok((srk, drsk))
    }

    fn create_drsk(&mut self, srk: KeyHandle, template: Public) -> Result<(), TpmError> {
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create(srk, template, None, None, None, None)
            })
            .map_err(|e| classify(e, "creating the DRSK"))?;
        let loaded = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.load(srk, created.out_private, created.out_public)
            })
            .map_err(|e| classify(e, "loading the DRSK"))?;
        let result = self.persist(loaded.into(), DRSK_HANDLE);
        self.flush(loaded);
        result.map(|_| ())
    }

    fn persist(&mut self, object: ObjectHandle, handle: u32) -> Result<ObjectHandle, TpmError> {
        let persistent = Persistent::Persistent(PersistentTpmHandle::new(handle).map_err(wrapper)?);
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.evict_control(Provision::Owner, object, persistent)
            })
            .map_err(|e| owner_error(e, "making a key persistent"))
    }

    fn evict(&mut self, persistent_object: ObjectHandle, handle: u32) -> Result<(), TpmError> {
        let persistent = Persistent::Persistent(PersistentTpmHandle::new(handle).map_err(wrapper)?);
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.evict_control(Provision::Owner, persistent_object, persistent)
            })
            .map_err(|e| owner_error(e, "removing a persistent key"))?;
        Ok(())
    }

    /// A session of `kind` (AES-128-CFB parameter encryption available, SHA-256), salted to
    /// `salt_key` when given.
    fn session(
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

    fn end_session(&mut self, session: AuthSession) {
        self.flush(tss_esapi::handles::SessionHandle::from(session));
    }

    /// A session salted to `salt_key` that encrypts the first parameter both ways, so secrets
    /// do not cross the bus in clear.
    fn encrypted_session(
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

    fn read_pcrs(&mut self, pcrs: &[u8]) -> Result<Vec<Vec<u8>>, TpmError> {
        let selection = pcr_selection(pcrs)?;
        let (_, _, digests) = self
            .ctx
            .pcr_read(selection)
            .map_err(|e| classify(e, "reading PCRs"))?;
        Ok(digests.value().iter().map(|d| d.value().to_vec()).collect())
    }

    /// Seals `key` under the DRSK, optionally bound to the current values of `pcrs`
    /// (SHA-256 bank).
    pub fn seal(
        &mut self,
        key: &VolumeKey,
        pcrs: &[u8],
    ) -> Result<(SealedBlob, Option<PcrBinding>), TpmError> {
        let drsk = self.drsk()?;
        let binding = if pcrs.is_empty() {
            None
        } else {
            Some(PcrBinding {
                pcrs: pcrs.to_vec(),
                values: self.read_pcrs(pcrs)?,
            })
        };
        let pcr_policy = match &binding {
            Some(b) => Some(self.trial_pcr_policy(&b.pcrs)?),
            None => None,
        };
        let template = sealed_template(pcr_policy.as_deref())?;
        // expose_secret: sealing is the purpose; it goes into an encrypted session parameter.
        let sensitive = SensitiveData::try_from(key.expose_secret().to_vec())
            .map_err(|_| TpmError::Other("the volume key is too long to seal".into()))?;
        let session = self.encrypted_session(drsk, SessionType::Hmac)?;
        let created = self
            .ctx
            .execute_with_session(Some(session), |ctx| {
                ctx.create(drsk, template, None, Some(sensitive), None, None)
            })
            .map_err(|e| classify(e, "sealing under the DRSK"));
        self.end_session(session);
        let created = created?;
        Ok((
            SealedBlob {
                public: public_bytes(&created.out_public)?,
                private: tpm2b(created.out_private.value()),
            },
            binding,
        ))
    }

    fn trial_pcr_policy(&mut self, pcrs: &[u8]) -> Result<Vec<u8>, TpmError> {
        let session = self.session(SessionType::Trial, None)?;
        let ps = policy_session(session)?;
        let result = self
            .ctx
            .policy_pcr(ps, Digest::default(), pcr_selection(pcrs)?)
            .and_then(|()| self.ctx.policy_get_digest(ps))
            .map_err(|e| classify(e, "computing the PCR policy"));
        self.end_session(session);
        Ok(result?.value().to_vec())
    }

    /// The DRSK in use, once it is shown to be the key with `client_id`: the public area the
    /// TSS will salt sessions to must hash to it. Another key at 0x81000004 (a replaced or
    /// interposed TPM object) is never used to carry a secret.
    fn drsk_of(&mut self, client_id: &str) -> Result<KeyHandle, TpmError> {
        let drsk = self.drsk()?;
        let public = public_bytes(&self.read_public(drsk.into())?)?;
        let esys_name = self.ctx.tr_get_name(drsk.into()).map_err(wrapper)?;
        let here = super::client_id(&public);
        if here != client_id || name_of_public(&public)? != esys_name.value() {
            let short = |id: &str| id.chars().take(8).collect::<String>();
            return Err(TpmError::OtherKey(format!(
                "the TPM's storage key at 0x81000004 is not the one this key was sealed under \
                 (it has client ID {}…, the sealed key needs {}…); it was not used",
                short(&here),
                short(client_id)
            )));
        }
        Ok(drsk)
    }

    /// Unseals a blob made by `seal` under the DRSK with `client_id`, through a session salted
    /// to that DRSK.
    pub fn unseal(
        &mut self,
        client_id: &str,
        blob: &SealedBlob,
        pcrs: Option<&PcrBinding>,
    ) -> Result<VolumeKey, TpmError> {
        let drsk = self.drsk_of(client_id)?;
        let public = public_from(&blob.public, "the sealed object's public part")?;
        let private = from_tpm2b::<Private>(
            &blob.private,
            "the sealed object's private part is not a TPM2B",
        )?;
        let object = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.load(drsk, private, public)
            })
            .map_err(|e| match kind(&e) {
                Some(Rc::Integrity | Rc::Handle | Rc::Value | Rc::Size) => TpmError::OtherKey(
                    "the sealed key was made under another DRSK (TPM cleared or replaced)".into(),
                ),
                _ => classify(e, "loading the sealed key"),
            })?;
        let kind_of_session = if pcrs.is_some() {
            SessionType::Policy
        } else {
            SessionType::Hmac
        };
        let session = match self.encrypted_session(drsk, kind_of_session) {
            Ok(s) => s,
            Err(e) => {
                self.flush(object);
                return Err(e);
            }
        };
        let mut result = Ok(());
        if let Some(b) = pcrs {
            result = policy_session(session).and_then(|ps| {
                self.ctx
                    .policy_pcr(ps, Digest::default(), pcr_selection(&b.pcrs)?)
                    .map_err(|e| classify(e, "PCR policy"))
            });
        }
        let unsealed = result.and_then(|()| {
            self.ctx
                .execute_with_session(Some(session), |ctx| ctx.unseal(object.into()))
                .map_err(|e| match kind(&e) {
                    Some(Rc::PolicyFail | Rc::Value | Rc::PcrChanged) => {
                        TpmError::PcrMismatch(String::new())
                    }
                    _ => classify(e, "unsealing"),
                })
        });
        self.end_session(session);
        self.flush(object);
        match unsealed {
            // Convert at the boundary: SensitiveData derefs to a plain Vec and derives Debug.
            Ok(data) => Ok(VolumeKey::new(zeroize::Zeroizing::new(
                data.value().to_vec(),
            ))),
            Err(TpmError::PcrMismatch(_)) => {
                Err(TpmError::PcrMismatch(self.which_pcrs_changed(pcrs)))
            }
            Err(e) => Err(e),
        }
    }

    fn which_pcrs_changed(&mut self, binding: Option<&PcrBinding>) -> String {
        let Some(b) = binding else {
            return "policy check failed".into();
        };
        match self.read_pcrs(&b.pcrs) {
            Ok(now) => {
                let changed: Vec<String> = b
                    .pcrs
                    .iter()
                    .zip(b.values.iter().zip(now.iter()))
                    .filter(|(_, (then, now))| then != now)
                    .map(|(n, _)| n.to_string())
                    .collect();
                match changed.len() {
                    0 => "PCR policy check failed".into(),
                    1 => format!("PCR {} changed", changed[0]),
                    _ => format!("PCRs {} changed", changed.join(", ")),
                }
            }
            Err(_) => "PCR policy check failed".into(),
        }
    }

    /// Duplicates the DRSK to a backup server's DRSK (given as its TPM2B_PUBLIC), through the
    /// PolicyDuplicationSelect branch for that server. `server_names` are all backup servers
    /// the DRSK was provisioned with, in order (PolicyOR needs every branch).
    pub fn duplicate_drsk(
        &mut self,
        server_public: &[u8],
        server_names: &[Vec<u8>],
    ) -> Result<Duplicate, TpmError> {
        let drsk = self.drsk()?;
        let drsk_public = self.read_public(drsk.into())?;
        let drsk_name = self.ctx.tr_get_name(drsk.into()).map_err(wrapper)?;
        let parent_public = public_from(server_public, "the server key")?;
        let parent_name = name_of_public(server_public)?;
        let parent = self
            .ctx
            .load_external_public(parent_public, Hierarchy::Null)
            .map_err(|e| classify(e, "loading the server key"))?;
        let result = self.policy_duplicate(drsk.into(), parent, server_names, |ctx, ps| {
            ctx.policy_duplication_select(
                ps,
                drsk_name.clone(),
                tss_esapi::structures::Name::try_from(parent_name.clone())?,
                false,
            )
        });
        self.flush(parent);
        let (private, seed) = result?;
        Ok(Duplicate {
            public: public_bytes(&drsk_public)?,
            private,
            seed,
        })
    }

    /// Runs `branch` in a fresh policy session, then PolicyOR over the DRSK policy's branches,
    /// then TPM2_Duplicate of `object` to `new_parent` (no inner wrapper).
    fn policy_duplicate(
        &mut self,
        object: ObjectHandle,
        new_parent: KeyHandle,
        server_names: &[Vec<u8>],
        branch: impl FnOnce(&mut Context, PolicySession) -> tss_esapi::Result<()>,
    ) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let branches = policy::drsk_branches(server_names);
        let mut list = DigestList::new();
        for b in &branches {
            list.add(Digest::try_from(b.to_vec()).map_err(wrapper)?)
                .map_err(wrapper)?;
        }
        let session = self.session(SessionType::Policy, None)?;
        let ps = policy_session(session)?;
        let refused = |e: tss_esapi::Error| match kind(&e) {
            Some(
                Rc::PolicyFail
                | Rc::Value
                | Rc::Policy
                | Rc::AuthFail
                | Rc::BadAuth
                | Rc::Attributes,
            ) => TpmError::PolicyRefused(format!(
                "the DRSK's policy does not allow this duplication ({e})"
            )),
            _ => classify(e, "duplicating"),
        };
        let result = branch(&mut self.ctx, ps)
            .and_then(|()| self.ctx.policy_or(ps, list))
            .map_err(refused)
            .and_then(|()| {
                self.ctx
                    .execute_with_session(Some(session), |ctx| {
                        ctx.duplicate(
                            object,
                            new_parent.into(),
                            None,
                            SymmetricDefinitionObject::Null,
                        )
                    })
                    .map_err(refused)
            });
        self.end_session(session);
        let (_, private, seed) = result?;
        Ok((tpm2b(private.value()), tpm2b(seed.value())))
    }

    /// Imports a duplicate under `parent` and returns the new TPM2B_PRIVATE.
    fn import(&mut self, parent: KeyHandle, dup: &Duplicate) -> Result<Private, TpmError> {
        let public = public_from(&dup.public, "the duplicate's public part")?;
        let private = from_tpm2b::<Private>(&dup.private, "the duplicate is damaged")?;
        let seed = from_tpm2b::<EncryptedSecret>(&dup.seed, "the duplicate's seed is damaged")?;
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.import(
                    parent.into(),
                    None,
                    public,
                    private,
                    seed,
                    SymmetricDefinitionObject::Null,
                )
            })
            .map_err(|e| match kind(&e) {
                Some(Rc::Integrity | Rc::Value | Rc::Size) => TpmError::OtherKey(
                    "the duplicate was not made for this TPM's storage key".into(),
                ),
                _ => classify(e, "importing the DRSK"),
            })
    }

    /// Client side of a restore: imports the DRSK under this TPM's SRK and loads it. With
    /// `persist` it becomes 0x81000004 (needs the owner authorization if set); otherwise it
    /// stays loaded for the life of this connection.
    pub fn restore_drsk(
        &mut self,
        dup: &Duplicate,
        persist: bool,
        owner_auth: Option<&Passphrase>,
    ) -> Result<String, TpmError> {
        let (srk, srk_transient) = self.srk(owner_auth)?;
        let result = self.import(srk, dup).and_then(|private| {
            let public = public_from(&dup.public, "the duplicate's public part")?;
            self.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.load(srk, private, public)
                })
                .map_err(|e| classify(e, "loading the restored DRSK"))
        });
        if srk_transient {
            self.flush(srk);
        }
        let drsk = result?;
        if persist {
            if owner_auth.is_none() && self.owner_auth_set()? {
                self.flush(drsk);
                return Err(TpmError::OwnerAuthNeeded);
            }
            self.set_owner_auth(owner_auth)?;
            if let Some(existing) = self.persistent(DRSK_HANDLE)? {
                self.evict(existing, DRSK_HANDLE)?;
            }
            let persisted = self.persist(drsk.into(), DRSK_HANDLE);
            self.flush(drsk);
            persisted?;
        } else {
            self.transient_drsk = Some(drsk);
        }
        Ok(super::client_id(&dup.public))
    }
}

// ---- the server's side of custody -------------------------------------------------------------

/// The backup server's own DRSK, kept as blobs under its SRK (not at a persistent handle, so
/// a server can also be a lifeline client with its own DRSK at 0x81000004). fixedTPM: it never
/// leaves the server's TPM.
#[derive(Debug, Clone)]
pub struct ServerKey {
    pub public: Vec<u8>,
    pub private: Vec<u8>,
}

impl TssTpm {
    /// Creates the server's DRSK under its SRK.
    pub fn create_server_key(
        &mut self,
        owner_auth: Option<&Passphrase>,
    ) -> Result<ServerKey, TpmError> {
        let (srk, transient) = self.srk(owner_auth)?;
        let template = storage_template(false, None)?;
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create(srk, template, None, None, None, None)
            })
            .map_err(|e| classify(e, "creating the server key"));
        if transient {
            self.flush(srk);
        }
        let created = created?;
        Ok(ServerKey {
            public: public_bytes(&created.out_public)?,
            private: tpm2b(created.out_private.value()),
        })
    }

    fn load_server_key(
        &mut self,
        key: &ServerKey,
        owner_auth: Option<&Passphrase>,
    ) -> Result<KeyHandle, TpmError> {
        let (srk, transient) = self.srk(owner_auth)?;
        let public = public_from(&key.public, "the server key")?;
        let private = from_tpm2b::<Private>(&key.private, "the server key is damaged")?;
        let loaded = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.load(srk, private, public)
            })
            .map_err(|e| match kind(&e) {
                Some(Rc::Integrity) => {
                    TpmError::OtherKey("the server key belongs to another TPM".into())
                }
                _ => classify(e, "loading the server key"),
            });
        if transient {
            self.flush(srk);
        }
        loaded
    }

    /// Imports a client's DRSK duplicate under the server key; returns the TPM2B_PRIVATE that
    /// only this TPM can load.
    pub fn import_client(
        &mut self,
        key: &ServerKey,
        dup: &Duplicate,
        owner_auth: Option<&Passphrase>,
    ) -> Result<Vec<u8>, TpmError> {
        let server = self.load_server_key(key, owner_auth)?;
        let result = self.import(server, dup);
        self.flush(server);
        Ok(tpm2b(result?.value()))
    }

    /// Re-duplicates a stored client DRSK to a replacement TPM's SRK (its TPM2B_PUBLIC),
    /// through the PolicySecret(server key) + PolicyCommandCode(Duplicate) branch.
    pub fn reduplicate_client(
        &mut self,
        key: &ServerKey,
        client_public: &[u8],
        client_private: &[u8],
        server_names: &[Vec<u8>],
        new_parent_public: &[u8],
        owner_auth: Option<&Passphrase>,
    ) -> Result<Duplicate, TpmError> {
        let server = self.load_server_key(key, owner_auth)?;
        let stored = Duplicate {
            public: client_public.to_vec(),
            private: client_private.to_vec(),
            seed: Vec::new(),
        };
        let loaded = public_from(client_public, "the client DRSK").and_then(|public| {
            let private = from_tpm2b::<Private>(&stored.private, "the stored DRSK is damaged")?;
            self.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.load(server, private, public)
                })
                .map_err(|e| classify(e, "loading the stored DRSK"))
        });
        let copy = match loaded {
            Ok(c) => c,
            Err(e) => {
                self.flush(server);
                return Err(e);
            }
        };
        let new_parent = public_from(new_parent_public, "the new storage key").and_then(|p| {
            self.ctx
                .load_external_public(p, Hierarchy::Null)
                .map_err(|e| classify(e, "loading the new storage key"))
        });
        let result = new_parent.and_then(|parent| {
            let server_auth: AuthHandle = ObjectHandle::from(server).into();
            let r = self.policy_duplicate(copy.into(), parent, server_names, |ctx, ps| {
                ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.policy_secret(
                        ps,
                        server_auth,
                        Nonce::default(),
                        Digest::default(),
                        Nonce::default(),
                        None,
                    )
                })?;
                ctx.policy_command_code(ps, CommandCode::Duplicate)
            });
            self.flush(parent);
            r
        });
        self.flush(copy);
        self.flush(server);
        let (private, seed) = result?;
        Ok(Duplicate {
            public: client_public.to_vec(),
            private,
            seed,
        })
    }
}

// ---- the genuine-TPM proof for restores -------------------------------------------------------

/// The RSA EK certificate and key: the TCG default template (L-1), certificate at 0x01c00002.
const EK_ALG: tss_esapi::interface_types::algorithm::AsymmetricAlgorithm =
    tss_esapi::interface_types::algorithm::AsymmetricAlgorithm::Rsa;

/// The modulus of an EK public area, if it has the TCG default RSA EK template's attributes
/// and policy (PolicySecret(endorsement)): such a key is usable only inside its TPM.
pub fn ek_modulus(ek_public: &[u8]) -> Result<Vec<u8>, TpmError> {
    let public = public_from(ek_public, "the EK")?;
    let template = tss_esapi::abstraction::ek::create_ek_public_from_default_template(EK_ALG, None)
        .map_err(wrapper)?;
    let modulus = match &public {
        Public::Rsa { unique, .. } => unique.value().to_vec(),
        _ => return Err(TpmError::Other("the EK is not an RSA key".into())),
    };
    if public.object_attributes() != template.object_attributes()
        || public.auth_policy() != template.auth_policy()
    {
        return Err(TpmError::Other(
            "the EK does not have the TCG endorsement key template".into(),
        ));
    }
    Ok(modulus)
}

/// True when a public area describes a storage key that was created inside a TPM and cannot
/// leave it (fixedTPM, fixedParent, restricted, decrypt): what a DRSK may be restored to.
pub fn is_resident_storage_key(bytes: &[u8]) -> bool {
    public_from(bytes, "the storage key")
        .map(|p| {
            let a = p.object_attributes();
            a.fixed_tpm()
                && a.fixed_parent()
                && a.restricted()
                && a.decrypt()
                && a.sensitive_data_origin()
        })
        .unwrap_or(false)
}

impl TssTpm {
    /// This TPM's RSA EK public area and its certificate (DER) from NV.
    pub fn ek_bundle(&mut self) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        use tss_esapi::abstraction::ek;
        use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
        use tss_esapi::interface_types::key_bits::RsaKeyBits;
        let cert = ek::retrieve_ek_pubcert(
            &mut self.ctx,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        )
        .map_err(|e| match kind(&e) {
            Some(Rc::Handle | Rc::Value) | None => {
                TpmError::Other("the TPM has no RSA EK certificate (NV index 0x01c00002)".into())
            }
            _ => classify(e, "reading the EK certificate"),
        })?;
        let handle = ek::create_ek_object(&mut self.ctx, EK_ALG, None)
            .map_err(|e| classify(e, "creating the EK"))?;
        let public = self.read_public(handle.into());
        self.flush(handle);
        Ok((public_bytes(&public?)?, cert))
    }

    /// Server side: a credential for `object_name` that only the TPM holding `ek_public` can
    /// activate, and only with that object loaded. Returns (credential blob, encrypted seed).
    pub fn make_credential(
        &mut self,
        ek_public: &[u8],
        object_name: &[u8],
        secret: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let ek = self
            .ctx
            .load_external_public(public_from(ek_public, "the EK")?, Hierarchy::Null)
            .map_err(|e| classify(e, "loading the EK"))?;
        let result = self
            .ctx
            .make_credential(
                ek,
                Digest::try_from(secret.to_vec()).map_err(wrapper)?,
                tss_esapi::structures::Name::try_from(object_name.to_vec()).map_err(wrapper)?,
            )
            .map_err(|e| classify(e, "making the credential"));
        self.flush(ek);
        let (blob, seed) = result?;
        Ok((tpm2b(blob.value()), tpm2b(seed.value())))
    }

    /// Client side: proves the SRK lives in this TPM by activating the server's credential with
    /// the EK. Returns the secret the server put in it.
    pub fn activate_credential(
        &mut self,
        blob: &[u8],
        seed: &[u8],
        owner_auth: Option<&Passphrase>,
    ) -> Result<Vec<u8>, TpmError> {
        use tss_esapi::structures::IdObject;
        let blob = from_tpm2b::<IdObject>(blob, "the challenge is damaged")?;
        let seed = from_tpm2b::<EncryptedSecret>(seed, "the challenge is damaged")?;
        let (srk, srk_transient) = self.srk(owner_auth)?;
        let ek = tss_esapi::abstraction::ek::create_ek_object(&mut self.ctx, EK_ALG, None)
            .map_err(|e| classify(e, "creating the EK"))?;
        let session = self.session(SessionType::Policy, None);
        let result = session.and_then(|session| {
            let ps = policy_session(session)?;
            // The EK's policy: PolicySecret(endorsement hierarchy), whose authorization is empty.
            let r = self
                .ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.policy_secret(
                        ps,
                        AuthHandle::Endorsement,
                        Nonce::default(),
                        Digest::default(),
                        Nonce::default(),
                        None,
                    )
                })
                .map_err(|e| classify(e, "authorizing the EK"))
                .and_then(|_| {
                    self.ctx
                        .execute_with_sessions(
                            (Some(AuthSession::Password), Some(session), None),
                            |ctx| ctx.activate_credential(srk, ek, blob, seed),
                        )
                        .map_err(|e| match kind(&e) {
                            Some(Rc::Integrity | Rc::Value | Rc::Size) => TpmError::OtherKey(
                                "the challenge was made for another TPM or another storage key"
                                    .into(),
                            ),
                            _ => classify(e, "activating the credential"),
                        })
                });
            self.end_session(session);
            r
        });
        self.flush(ek);
        if srk_transient {
            self.flush(srk);
        }
        Ok(result?.value().to_vec())
    }
}

/// The boot flow's view of the TPM.
impl crate::unlock::Tpm for TssTpm {
    fn unseal(&mut self, token: &SealedToken) -> Result<VolumeKey, TpmError> {
        TssTpm::unseal(self, &token.client_id, &token.blob, token.pcrs.as_ref())
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
        let (blob, pcrs) = self.seal(key, pcrs)?;
        Ok(SealedToken {
            client_id: super::client_id(&self.drsk_public()?),
            blob,
            pcrs,
        })
    }
}
