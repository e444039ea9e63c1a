//! Object templates (docs/TPM.md has them in full) and parsing public areas.

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, EccPoint, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Public,
    PublicBuilder, PublicEccParametersBuilder, PublicKeyRsa, PublicKeyedHashParameters,
    PublicRsaParametersBuilder, RsaExponent, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};

use crate::tpm::policy;
use crate::tpm::{tpm2b, untpm2b, KeyAlgorithm, TpmError};

use super::rc::*;

/// A restricted decrypt storage key, ECC P-256 or RSA-2048 (AES-128-CFB for its children
/// either way). `movable` clears fixedTPM/fixedParent; `auth_policy` (the DRSK's duplication
/// policy) also sets adminWithPolicy.
pub(super) fn storage_template(
    movable: bool,
    auth_policy: Option<&[u8]>,
    algorithm: KeyAlgorithm,
) -> Result<Public, TpmError> {
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
    let builder = PublicBuilder::new()
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::try_from(auth_policy.unwrap_or(&[]).to_vec()).map_err(wrapper)?);
    let builder = match algorithm {
        KeyAlgorithm::Ecc => builder
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new_restricted_decryption_key(
                    SymmetricDefinitionObject::AES_128_CFB,
                    EccCurve::NistP256,
                )
                .build()
                .map_err(wrapper)?,
            )
            .with_ecc_unique_identifier(EccPoint::default()),
        KeyAlgorithm::Rsa => builder
            .with_public_algorithm(PublicAlgorithm::Rsa)
            .with_rsa_parameters(
                PublicRsaParametersBuilder::new_restricted_decryption_key(
                    SymmetricDefinitionObject::AES_128_CFB,
                    RsaKeyBits::Rsa2048,
                    RsaExponent::default(),
                )
                .build()
                .map_err(wrapper)?,
            )
            .with_rsa_unique_identifier(PublicKeyRsa::default()),
    };
    builder.build().map_err(wrapper)
}

/// A sealed data object: used through `policy` when given (PCRs, and the PIN after them),
/// else with its authorization value (empty, or the PIN's). Dictionary-attack protected when
/// it has a PIN: a wrong PIN is counted.
pub(super) fn sealed_template(policy: Option<&[u8]>, pin: bool) -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(false)
        .with_fixed_parent(true)
        .with_user_with_auth(policy.is_none())
        .with_no_da(!pin)
        .build()
        .map_err(wrapper)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::try_from(policy.unwrap_or(&[]).to_vec()).map_err(wrapper)?)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(wrapper)
}

/// TPM2B_PUBLIC bytes of a public area.
pub(crate) fn public_bytes(public: &Public) -> Result<Vec<u8>, TpmError> {
    Ok(tpm2b(&public.marshall().map_err(wrapper)?))
}

pub(super) fn public_from(bytes: &[u8], what: &str) -> Result<Public, TpmError> {
    let inner =
        untpm2b(bytes).ok_or_else(|| TpmError::Other(format!("{what} is not a TPM2B_PUBLIC")))?;
    Public::unmarshall(inner).map_err(|_| TpmError::Other(format!("{what} is not a TPM2B_PUBLIC")))
}

/// A TPM2B buffer (private part, encrypted seed, credential) as the tss-esapi type; `what`
/// is the error if the framing is wrong.
pub(super) fn from_tpm2b<T: TryFrom<Vec<u8>, Error = tss_esapi::Error>>(
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

pub(super) fn pcr_selection(pcrs: &[u8]) -> Result<PcrSelectionList, TpmError> {
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

/// The algorithm of a storage key's public area.
pub(super) fn algorithm_of(public: &Public) -> Option<KeyAlgorithm> {
    match public {
        Public::Ecc { .. } => Some(KeyAlgorithm::Ecc),
        Public::Rsa { .. } => Some(KeyAlgorithm::Rsa),
        _ => None,
    }
}

pub(super) fn policy_session(s: AuthSession) -> Result<PolicySession, TpmError> {
    PolicySession::try_from(s).map_err(wrapper)
}
