//! The TPM half: a recoverable storage key (DRSK) that sealed volume keys live under, and its
//! backup to, and restore from, a server's TPM (after seeds/003, with a stricter duplication
//! policy; see `docs/TPM.md`).
//!
//! `tss/` is the only place that touches tss-esapi; its types do not leave it. Every TPM
//! response code is turned into a [`TpmError`] there (`tss/rc.rs`), once, in the terms callers
//! decide on. `token.rs` is the LUKS side: the sealed token and where a volume keeps it.

pub mod policy;
pub mod token;
pub mod transfer;
mod tss;

use std::fmt;

pub use tss::{auth_policy_of, name_of_public, Provisioned, TssTpm};
#[cfg(feature = "server")]
pub use tss::{ek_key, is_resident_storage_key, ServerKey};

/// Persistent handle of lifeline's storage root key (0x81000001/2 are the platform's SRK/EK).
pub const SRK_HANDLE: u32 = 0x8100_0003;
/// Persistent handle of the DRSK.
pub const DRSK_HANDLE: u32 = 0x8100_0004;
/// The TCTI used when neither `--tcti` nor `LIFELINE_TCTI` says otherwise.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// The algorithm of lifeline's storage keys (SRK, DRSK, a server's custody key): chosen at
/// provisioning, ECC P-256 where the TPM has it, else RSA-2048, which every TPM has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Ecc,
    Rsa,
}

impl KeyAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::Ecc => "ecc",
            KeyAlgorithm::Rsa => "rsa",
        }
    }

    /// As people say it.
    pub fn label(self) -> &'static str {
        match self {
            KeyAlgorithm::Ecc => "ECC P-256",
            KeyAlgorithm::Rsa => "RSA-2048",
        }
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ecc" => Ok(KeyAlgorithm::Ecc),
            "rsa" => Ok(KeyAlgorithm::Rsa),
            other => Err(format!(
                "'{other}' is not a key algorithm: give ecc (P-256) or rsa (RSA-2048)"
            )),
        }
    }
}

/// Big-endian integers may carry leading zero bytes (DER) or not (TPM); compare without them.
pub fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// What callers decide on. Every TPM failure maps to one of these.
#[derive(Debug, Clone)]
pub enum TpmError {
    /// No TPM answered within the wait.
    NoDevice(String),
    /// Nothing at 0x81000004: not provisioned, or the TPM was cleared or replaced.
    DrskMissing,
    /// Something lifeline did not make (or made for other backup servers) is at 0x81000003
    /// or 0x81000004; it is left alone.
    ForeignObject(String),
    /// A blob was made under another key than the one here: a sealed key under another DRSK,
    /// a duplicate for another TPM, a server key of another TPM.
    OtherKey(String),
    /// The PCR values differ from those the secret was sealed to.
    PcrMismatch(String),
    /// Dictionary-attack lockout.
    Lockout,
    /// The PIN is wrong; the TPM counted the failure toward its dictionary-attack lockout.
    WrongPin,
    /// The key is sealed with a PIN and none was given.
    PinNeeded,
    /// The owner hierarchy has an authorization value and none was given.
    OwnerAuthNeeded,
    /// The owner authorization given is wrong.
    OwnerAuthWrong,
    /// The TPM refused an operation its policy does not allow (e.g. duplication elsewhere).
    PolicyRefused(String),
    /// Anything else, with the TPM's own words.
    Other(String),
}

impl fmt::Display for TpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TpmError::NoDevice(why) => write!(f, "no TPM: {why}"),
            TpmError::DrskMissing => write!(
                f,
                "the TPM has no lifeline storage key (DRSK) at 0x81000004"
            ),
            TpmError::ForeignObject(what) | TpmError::OtherKey(what) => write!(f, "{what}"),
            TpmError::PcrMismatch(what) => write!(f, "TPM could not unseal ({what})"),
            TpmError::Lockout => write!(f, "the TPM is in dictionary-attack lockout"),
            TpmError::WrongPin => write!(f, "the TPM refused the PIN"),
            TpmError::PinNeeded => write!(f, "the TPM key is sealed with a PIN"),
            TpmError::OwnerAuthNeeded => {
                write!(f, "the TPM owner authorization is set and is needed")
            }
            TpmError::OwnerAuthWrong => write!(f, "the TPM owner authorization is wrong"),
            TpmError::PolicyRefused(what) => write!(f, "the TPM refused: {what}"),
            TpmError::Other(what) => write!(f, "TPM error: {what}"),
        }
    }
}

impl std::error::Error for TpmError {}

/// A sealed object as the TPM stores it outside itself: TPM2B_PUBLIC and TPM2B_PRIVATE, the
/// same bytes `tpm2_create -u/-r` writes, so tpm2-tools can load it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBlob {
    pub public: Vec<u8>,
    pub private: Vec<u8>,
}

/// PCRs a secret is bound to: SHA-256 bank, with the values seen at sealing time (kept so a
/// mismatch can say which PCR changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrBinding {
    pub pcrs: Vec<u8>,
    pub values: Vec<Vec<u8>>,
}

/// A DRSK wrapped for another TPM's storage key: the outputs of TPM2_Duplicate (no inner
/// wrapper; encryptedDuplication is clear) plus what the receiver needs to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The DRSK's TPM2B_PUBLIC.
    pub public: Vec<u8>,
    /// TPM2B_PRIVATE, protected by the new parent's seed.
    pub private: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET: the seed, encrypted to the new parent.
    pub seed: Vec<u8>,
}

/// The client ID: lower-case hex SHA-256 of the DRSK's TPM2B_PUBLIC (as `sha256sum drsk.pub`).
pub fn client_id(drsk_public: &[u8]) -> String {
    use sha2::Digest;
    crate::hex::encode(&sha2::Sha256::digest(drsk_public))
}

/// The TPM authorization value of a sealed key enrolled with a PIN: SHA-256 over a label, the
/// token's random salt and the PIN, so that the same PIN gives another value on another
/// volume and nothing about the PIN is kept in the header.
pub fn pin_auth(salt: &[u8], pin: &crate::secret::Passphrase) -> zeroize::Zeroizing<Vec<u8>> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"lifeline tpm pin v1\0");
    h.update(salt);
    // expose_secret: hashed into the authorization value, which stays in wiped memory.
    h.update(pin.expose_secret());
    zeroize::Zeroizing::new(h.finalize().to_vec())
}

/// Frames `bytes` as a TPM2B (big-endian u16 size, then the bytes).
pub fn tpm2b(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    // TPM2B buffers are at most a few KiB; u16 is their wire format.
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The payload of a TPM2B, checking its size field.
pub fn untpm2b(framed: &[u8]) -> Option<&[u8]> {
    let (size, rest) = framed.split_first_chunk::<2>()?;
    (usize::from(u16::from_be_bytes(*size)) == rest.len()).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_auth_is_sha256_of_label_salt_and_pin() {
        // Expected value from Python's hashlib over the same bytes.
        let auth = pin_auth(&[7; 16], &crate::secret::Passphrase::from_slice(b"2468"));
        assert_eq!(
            crate::hex::encode(&auth),
            "f0b46b48fa4f1e7f514bd34c1dec2d1f847d12c3515ff81e3afbd2723885938b"
        );
        let other = pin_auth(&[8; 16], &crate::secret::Passphrase::from_slice(b"2468"));
        assert_ne!(*auth, *other, "another salt, another value");
    }

    #[test]
    fn tpm2b_framing() {
        assert_eq!(tpm2b(&[1, 2, 3]), vec![0, 3, 1, 2, 3]);
        assert_eq!(untpm2b(&[0, 3, 1, 2, 3]), Some(&[1u8, 2, 3][..]));
        assert_eq!(untpm2b(&[0, 4, 1, 2, 3]), None);
        assert_eq!(untpm2b(&[0]), None);
    }
}
