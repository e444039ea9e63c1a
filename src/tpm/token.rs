//! The `lifeline-tpm2` LUKS2 token: a volume key sealed under the DRSK, as JSON.
//!
//! LUKS1 volumes have no tokens; the same JSON is kept in `<state dir>/sealed/<uuid>.json`.
//! [`read_sealed`] finds a volume's token either way.
//! `docs/FORMAT.md` specifies the fields.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{KeyAlgorithm, PcrBinding, SealedBlob};
use crate::hex::encode as hex;
use crate::luks::{LuksError, LuksVolume};

pub const TOKEN_TYPE: &str = "lifeline-tpm2";
pub const TOKEN_VERSION: u64 = 1;
/// The version of tokens sealed with a PIN: lifeline before PINs refuses them, instead of
/// spending a dictionary-attack try on them without one.
pub const PIN_TOKEN_VERSION: u64 = 2;

/// A sealed volume key and what is needed to unseal it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedToken {
    /// Client ID of the DRSK it is sealed under.
    pub client_id: String,
    pub blob: SealedBlob,
    pub pcrs: Option<PcrBinding>,
    /// Present when the key is sealed with a PIN: the salt of its authorization value
    /// (`tpm::pin_auth`).
    pub pin_salt: Option<Vec<u8>>,
    /// The DRSK's algorithm (`key-algorithm`, written when it is RSA; ECC when absent), for
    /// whoever reads the token: the TPM knows it from the DRSK itself.
    pub key_algorithm: KeyAlgorithm,
}

/// Why a volume's sealed token cannot be used.
#[derive(Debug)]
pub enum TokenError {
    /// It is there, but damaged or of a newer version.
    Damaged(String),
    /// The volume's header, where it would be, could not be read.
    Luks(LuksError),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Damaged(why) => write!(f, "the lifeline-tpm2 token is damaged: {why}"),
            TokenError::Luks(e) => write!(f, "cannot read the lifeline-tpm2 token: {e}"),
        }
    }
}

impl From<LuksError> for TokenError {
    fn from(e: LuksError) -> Self {
        TokenError::Luks(e)
    }
}

/// Where a LUKS1 volume's sealed token is kept.
pub fn luks1_file(state_dir: &Path, uuid: &str) -> PathBuf {
    state_dir.join("sealed").join(format!("{uuid}.json"))
}

/// A volume's sealed token, if it has one: the LUKS2 token, or for LUKS1 the file in
/// `state_dir` (where the initramfs glue copies it).
pub fn read_sealed(
    volume: &mut LuksVolume,
    state_dir: &Path,
    uuid: &str,
) -> Result<Option<SealedToken>, TokenError> {
    let json =
        if volume.is_luks2() {
            volume.find_token(TOKEN_TYPE)?.map(|(_, json)| json)
        } else {
            let file = luks1_file(state_dir, uuid);
            match std::fs::read_to_string(&file) {
                Ok(text) => Some(serde_json::from_str(&text).map_err(|e| {
                    TokenError::Damaged(format!("{}: not JSON: {e}", file.display()))
                })?),
                Err(_) => None,
            }
        };
    json.map(|json| SealedToken::from_json(&json)).transpose()
}

fn field<'a>(v: &'a Value, key: &str) -> Result<&'a str, TokenError> {
    v[key]
        .as_str()
        .ok_or_else(|| TokenError::Damaged(format!("'{key}' is missing")))
}

fn unhex(text: &str, key: &str) -> Result<Vec<u8>, TokenError> {
    crate::hex::decode(text).ok_or_else(|| TokenError::Damaged(format!("'{key}' is not hex")))
}

impl SealedToken {
    pub fn to_json(&self) -> Value {
        let version = match self.pin_salt {
            Some(_) => PIN_TOKEN_VERSION,
            None => TOKEN_VERSION,
        };
        let mut v = json!({
            "type": TOKEN_TYPE,
            "keyslots": [],
            "lifeline-version": version,
            "client-id": self.client_id,
            "public": hex(&self.blob.public),
            "private": hex(&self.blob.private),
        });
        if let Some(p) = &self.pcrs {
            v["pcr-bank"] = json!("sha256");
            v["pcrs"] = json!(p.pcrs);
            v["pcr-values"] = json!(p.values.iter().map(|d| hex(d)).collect::<Vec<_>>());
        }
        if let Some(salt) = &self.pin_salt {
            v["pin-salt"] = json!(hex(salt));
        }
        if self.key_algorithm != KeyAlgorithm::Ecc {
            v["key-algorithm"] = json!(self.key_algorithm.name());
        }
        v
    }

    pub fn from_json(v: &Value) -> Result<SealedToken, TokenError> {
        if v["type"] != TOKEN_TYPE {
            return Err(TokenError::Damaged("not a lifeline-tpm2 token".into()));
        }
        let pin_salt = match v["lifeline-version"].as_u64() {
            Some(TOKEN_VERSION) => None,
            Some(PIN_TOKEN_VERSION) => Some(unhex(field(v, "pin-salt")?, "pin-salt")?),
            Some(n) => {
                return Err(TokenError::Damaged(format!(
                    "version {n} is newer than this lifeline"
                )))
            }
            None => return Err(TokenError::Damaged("'lifeline-version' is missing".into())),
        };
        let pcrs = match v.get("pcrs") {
            None => None,
            Some(list) => {
                if v["pcr-bank"] != "sha256" {
                    return Err(TokenError::Damaged(
                        "only the sha256 PCR bank is supported".into(),
                    ));
                }
                let pcrs = list
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
                            .collect::<Option<Vec<u8>>>()
                    })
                    .filter(|p| p.iter().all(|&n| n < 24))
                    .ok_or_else(|| {
                        TokenError::Damaged("'pcrs' is not a list of PCR numbers".into())
                    })?;
                let values = v["pcr-values"]
                    .as_array()
                    .ok_or_else(|| TokenError::Damaged("'pcr-values' is missing".into()))?
                    .iter()
                    .map(|d| unhex(d.as_str().unwrap_or("-"), "pcr-values"))
                    .collect::<Result<Vec<_>, _>>()?;
                if values.len() != pcrs.len() {
                    return Err(TokenError::Damaged(
                        "'pcr-values' does not match 'pcrs'".into(),
                    ));
                }
                Some(PcrBinding { pcrs, values })
            }
        };
        Ok(SealedToken {
            client_id: crate::id::client_id(field(v, "client-id")?)
                .map_err(|e| TokenError::Damaged(format!("'client-id': {e}")))?,
            blob: SealedBlob {
                public: unhex(field(v, "public")?, "public")?,
                private: unhex(field(v, "private")?, "private")?,
            },
            pcrs,
            pin_salt,
            key_algorithm: match v.get("key-algorithm") {
                None => KeyAlgorithm::Ecc,
                Some(a) => a
                    .as_str()
                    .unwrap_or("-")
                    .parse()
                    .map_err(|e| TokenError::Damaged(format!("'key-algorithm': {e}")))?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_and_without_pcrs() {
        let mut t = SealedToken {
            client_id: "ab".repeat(32),
            blob: SealedBlob {
                public: vec![0, 2, 1, 2],
                private: vec![0, 1, 9],
            },
            pcrs: None,
            pin_salt: None,
            key_algorithm: KeyAlgorithm::Ecc,
        };
        assert_eq!(SealedToken::from_json(&t.to_json()).unwrap(), t);
        t.pcrs = Some(PcrBinding {
            pcrs: vec![7, 11],
            values: vec![vec![1; 32], vec![2; 32]],
        });
        let v = t.to_json();
        assert_eq!(v["keyslots"], json!([]));
        assert_eq!(SealedToken::from_json(&v).unwrap(), t);
        t.pin_salt = Some(vec![5; 16]);
        let pinned = t.to_json();
        assert_eq!(pinned["lifeline-version"], json!(2));
        assert_eq!(SealedToken::from_json(&pinned).unwrap(), t);
        t.key_algorithm = KeyAlgorithm::Rsa;
        let rsa = t.to_json();
        assert_eq!(rsa["key-algorithm"], json!("rsa"));
        assert_eq!(SealedToken::from_json(&rsa).unwrap(), t);
        let mut no_salt = pinned.clone();
        no_salt.as_object_mut().unwrap().remove("pin-salt");
        assert!(SealedToken::from_json(&no_salt).is_err());
        let mut future = v.clone();
        future["lifeline-version"] = json!(3);
        assert!(SealedToken::from_json(&future)
            .unwrap_err()
            .to_string()
            .contains("newer"));
    }

    #[test]
    fn a_client_id_that_is_not_one_is_refused_at_parse() {
        let t = SealedToken {
            client_id: "ab".repeat(32),
            blob: SealedBlob {
                public: vec![0, 2, 1, 2],
                private: vec![0, 1, 9],
            },
            pcrs: None,
            pin_salt: None,
            key_algorithm: KeyAlgorithm::Ecc,
        };
        for bad in [
            "é",
            "ab",
            "../../etc",
            &"ab".repeat(33),
            &format!("../{}", "a".repeat(61)),
        ] {
            let mut v = t.to_json();
            v["client-id"] = json!(bad);
            let e = SealedToken::from_json(&v).unwrap_err().to_string();
            assert!(
                e.contains("'client-id'") && e.contains("is not a client ID"),
                "{e}"
            );
        }
        let mut v = t.to_json();
        v["client-id"] = json!("AB".repeat(32));
        assert_eq!(
            SealedToken::from_json(&v).unwrap().client_id,
            "ab".repeat(32)
        );
    }
}
