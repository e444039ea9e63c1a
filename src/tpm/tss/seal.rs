//! Sealing a volume key under the DRSK, optionally to PCRs, and unsealing it over a salted
//! session bound to the DRSK the token names.

use tss_esapi::constants::response_code::Tss2ResponseCodeKind as Rc;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, Digest, Private, SensitiveData};

use crate::secret::VolumeKey;
use crate::tpm::{tpm2b, PcrBinding, SealedBlob, TpmError};

use super::rc::*;
use super::templates::*;
use super::*;

/// An authorization value as tss-esapi takes it.
fn auth_value(value: &[u8]) -> Result<Auth, TpmError> {
    Auth::try_from(value.to_vec()).map_err(wrapper)
}

impl TssTpm {
    pub(super) fn read_pcrs(&mut self, pcrs: &[u8]) -> Result<Vec<Vec<u8>>, TpmError> {
        let selection = pcr_selection(pcrs)?;
        let (_, _, digests) = self
            .ctx
            .pcr_read(selection)
            .map_err(|e| classify(e, "reading PCRs"))?;
        Ok(digests.value().iter().map(|d| d.value().to_vec()).collect())
    }

    /// Seals `key` under the DRSK, optionally bound to the current values of `pcrs`
    /// (SHA-256 bank) and to a PIN (`pin`: its authorization value, `tpm::pin_auth`).
    pub fn seal(
        &mut self,
        key: &VolumeKey,
        pcrs: &[u8],
        pin: Option<&[u8]>,
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
        let policy = match &binding {
            Some(b) => Some(self.trial_policy(&b.pcrs, pin.is_some())?),
            None => None,
        };
        let template = sealed_template(policy.as_deref(), pin.is_some())?;
        // expose_secret: sealing is the purpose; it goes into an encrypted session parameter.
        let sensitive = SensitiveData::try_from(key.expose_secret().to_vec())
            .map_err(|_| TpmError::Other("the volume key is too long to seal".into()))?;
        let auth = pin.map(auth_value).transpose()?;
        let session = self.encrypted_session(drsk, SessionType::Hmac)?;
        let created = self
            .ctx
            .execute_with_session(Some(session), |ctx| {
                ctx.create(drsk, template, auth, Some(sensitive), None, None)
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

    /// The policy digest of PolicyPCR over `pcrs`, then PolicyAuthValue when there is a PIN.
    fn trial_policy(&mut self, pcrs: &[u8], pin: bool) -> Result<Vec<u8>, TpmError> {
        let session = self.session(SessionType::Trial, None)?;
        let ps = policy_session(session)?;
        let result = self
            .ctx
            .policy_pcr(ps, Digest::default(), pcr_selection(pcrs)?)
            .and_then(|()| match pin {
                true => self.ctx.policy_auth_value(ps),
                false => Ok(()),
            })
            .and_then(|()| self.ctx.policy_get_digest(ps))
            .map_err(|e| classify(e, "computing the PCR policy"));
        self.end_session(session);
        Ok(result?.value().to_vec())
    }

    /// The DRSK in use, once it is shown to be the key with `client_id`: the public area the
    /// TSS will salt sessions to must hash to it. Another key at 0x81000004 (a replaced or
    /// interposed TPM object) is never used to carry a secret.
    pub(super) fn drsk_of(&mut self, client_id: &str) -> Result<KeyHandle, TpmError> {
        let drsk = self.drsk()?;
        let public = public_bytes(&self.read_public(drsk.into())?)?;
        let esys_name = self.ctx.tr_get_name(drsk.into()).map_err(wrapper)?;
        let here = crate::tpm::client_id(&public);
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

    /// Loads a blob made by `seal` under the DRSK with `client_id`, with its authorization
    /// value (the PIN's, or empty) set for what follows.
    fn load_sealed(
        &mut self,
        client_id: &str,
        blob: &SealedBlob,
        pin: Option<&[u8]>,
    ) -> Result<(KeyHandle, KeyHandle), TpmError> {
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
        if let Some(pin) = pin {
            let set = auth_value(pin)
                .and_then(|auth| self.ctx.tr_set_auth(object.into(), auth).map_err(wrapper));
            if let Err(e) = set {
                self.flush(object);
                return Err(e);
            }
        }
        Ok((drsk, object))
    }

    /// Unseals a blob made by `seal` under the DRSK with `client_id`, through a session salted
    /// to that DRSK; `pin` is the authorization value when it was sealed with a PIN.
    pub fn unseal(
        &mut self,
        client_id: &str,
        blob: &SealedBlob,
        pcrs: Option<&PcrBinding>,
        pin: Option<&[u8]>,
    ) -> Result<VolumeKey, TpmError> {
        let (drsk, object) = self.load_sealed(client_id, blob, pin)?;
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
                    .and_then(|()| match pin {
                        Some(_) => self.ctx.policy_auth_value(ps),
                        None => Ok(()),
                    })
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
                    Some(Rc::AuthFail | Rc::BadAuth) => TpmError::WrongPin,
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

    /// The private part of the same sealed object with a new PIN (`new`, an authorization
    /// value), authorized by the current one. The PCR binding, if any, stays.
    pub fn change_pin(
        &mut self,
        client_id: &str,
        blob: &SealedBlob,
        old: &[u8],
        new: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let (drsk, object) = self.load_sealed(client_id, blob, Some(old))?;
        let new = match auth_value(new) {
            Ok(a) => a,
            Err(e) => {
                self.flush(object);
                return Err(e);
            }
        };
        let changed = self
            .encrypted_session(drsk, SessionType::Hmac)
            .and_then(|session| {
                let changed = self
                    .ctx
                    .execute_with_session(Some(session), |ctx| {
                        ctx.object_change_auth(object.into(), drsk.into(), new)
                    })
                    .map_err(|e| match kind(&e) {
                        Some(Rc::AuthFail | Rc::BadAuth) => TpmError::WrongPin,
                        _ => classify(e, "changing the PIN"),
                    });
                self.end_session(session);
                changed
            });
        self.flush(object);
        Ok(tpm2b(changed?.value()))
    }

    pub(super) fn which_pcrs_changed(&mut self, binding: Option<&PcrBinding>) -> String {
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
}
