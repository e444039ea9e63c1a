//! The endorsement key for the genuine-TPM proof of a restore: the client reads its EK and
//! answers the server's credential challenge; the server (feature `server`) checks the EK's
//! template and makes the challenge.

use tss_esapi::constants::response_code::Tss2ResponseCodeKind as Rc;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::AuthHandle;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, EncryptedSecret, Nonce};

use crate::secret::Passphrase;
use crate::tpm::TpmError;

#[cfg(feature = "server")]
use crate::tpm::tpm2b;
#[cfg(feature = "server")]
use tss_esapi::interface_types::resource_handles::Hierarchy;

use super::rc::*;
use super::templates::*;
use super::*;

use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::interface_types::algorithm::AsymmetricAlgorithm;

/// The EKs lifeline proves a TPM with, in the order it looks for their certificates: the TCG
/// default templates RSA-2048 (L-1, certificate at 0x01c00002) and ECC P-256 (L-2,
/// 0x01c0000a), the two every TPM vendor certifies (a TPM without one has the other).
fn ek_kinds() -> [(AsymmetricAlgorithm, AsymmetricAlgorithmSelection); 2] {
    use tss_esapi::interface_types::ecc::EccCurve;
    use tss_esapi::interface_types::key_bits::RsaKeyBits;
    [
        (
            AsymmetricAlgorithm::Rsa,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        ),
        (
            AsymmetricAlgorithm::Ecc,
            AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        ),
    ]
}

/// The key of an EK public area, as its certificate states it (`ekcert::certified_key`): an
/// RSA modulus without leading zeros, or an ECC P-256 point as x || y. Refused unless it has a
/// TCG default EK template's attributes and policy (PolicySecret(endorsement)): such a key is
/// usable only inside its TPM.
#[cfg(feature = "server")]
pub fn ek_key(ek_public: &[u8]) -> Result<Vec<u8>, TpmError> {
    let public = public_from(ek_public, "the EK")?;
    let (algorithm, key) = match &public {
        Public::Rsa { unique, .. } => (
            AsymmetricAlgorithm::Rsa,
            crate::tpm::strip_zeros(unique.value()).to_vec(),
        ),
        Public::Ecc { unique, .. } => {
            let (x, y) = (unique.x().value(), unique.y().value());
            if x.len() > 32 || y.len() > 32 {
                return Err(TpmError::Other("the EK is not an ECC P-256 key".into()));
            }
            let mut point = vec![0u8; 64];
            point[32 - x.len()..32].copy_from_slice(x);
            point[64 - y.len()..].copy_from_slice(y);
            (AsymmetricAlgorithm::Ecc, point)
        }
        _ => {
            return Err(TpmError::Other(
                "the EK is neither an RSA nor an ECC key".into(),
            ))
        }
    };
    let template =
        tss_esapi::abstraction::ek::create_ek_public_from_default_template(algorithm, None)
            .map_err(wrapper)?;
    if public.object_attributes() != template.object_attributes()
        || public.auth_policy() != template.auth_policy()
    {
        return Err(TpmError::Other(
            "the EK does not have the TCG endorsement key template".into(),
        ));
    }
    Ok(key)
}

/// True when a public area describes a storage key that was created inside a TPM and cannot
/// leave it (fixedTPM, fixedParent, restricted, decrypt): what a DRSK may be restored to.
#[cfg(feature = "server")]
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
    /// The kind of EK this TPM has a certificate for, and the certificate (DER) from NV.
    fn ek_certificate(&mut self) -> Result<(AsymmetricAlgorithm, Vec<u8>), TpmError> {
        for (algorithm, selection) in ek_kinds() {
            match tss_esapi::abstraction::ek::retrieve_ek_pubcert(&mut self.ctx, selection) {
                Ok(cert) => return Ok((algorithm, cert)),
                Err(e) if matches!(kind(&e), Some(Rc::Handle | Rc::Value) | None) => continue,
                Err(e) => return Err(classify(e, "reading the EK certificate")),
            }
        }
        Err(TpmError::Other(
            "the TPM has no EK certificate (neither RSA-2048 at NV index 0x01c00002 nor ECC P-256 at 0x01c0000a)".into(),
        ))
    }

    /// This TPM's EK public area (RSA-2048 or ECC P-256, whichever is certified) and its
    /// certificate (DER) from NV.
    pub fn ek_bundle(&mut self) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let (algorithm, cert) = self.ek_certificate()?;
        let handle = tss_esapi::abstraction::ek::create_ek_object(&mut self.ctx, algorithm, None)
            .map_err(|e| classify(e, "creating the EK"))?;
        let public = self.read_public(handle.into());
        self.flush(handle);
        Ok((public_bytes(&public?)?, cert))
    }

    /// Server side: a credential for `object_name` that only the TPM holding `ek_public` can
    /// activate, and only with that object loaded. Returns (credential blob, encrypted seed).
    #[cfg(feature = "server")]
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
        // The EK the proof was made for: the one `ek_bundle` sent.
        let (algorithm, _) = self.ek_certificate()?;
        let (srk, srk_transient) = self.srk(owner_auth)?;
        let ek = tss_esapi::abstraction::ek::create_ek_object(&mut self.ctx, algorithm, None)
            .map_err(|e| classify(e, "creating the EK"));
        let ek = match ek {
            Ok(ek) => ek,
            Err(e) => {
                if srk_transient {
                    self.flush(srk);
                }
                return Err(e);
            }
        };
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
