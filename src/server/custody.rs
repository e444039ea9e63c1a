//! Custody of clients' DRSKs in the server's TPM, shared by `lifeline-server drsk` (files) and
//! the HTTPS API.
//!
//! Files in the server directory: `drsk.pub` (the server key's TPM2B_PUBLIC, for clients),
//! `drsk.priv` (its TPM2B_PRIVATE, loadable only by this TPM), `clients/<client-id>.drsk` (each
//! client's DRSK, wrapped so only the server key can load it), and optionally `ek-ca.pem` (the
//! CA certificates a replacement TPM's endorsement key must chain to: then every restore needs
//! the genuine-TPM proof).

use std::path::{Path, PathBuf};

use crate::atomic_file;
use crate::secret::Passphrase;
use crate::tpm::{self, policy, transfer, Duplicate, ServerKey, TpmError, TssTpm};

/// Where a server that demands the genuine-TPM proof keeps its trusted EK CA certificates.
pub const EK_CA_FILE: &str = "ek-ca.pem";
const PENDING_TAG: &str = "lifeline-pending-proof";

#[derive(Debug)]
pub enum CustodyError {
    /// This server directory has no server key (`lifeline-server drsk init` was not run).
    NotSetUp(String),
    /// No DRSK in custody for that client.
    UnknownClient(String),
    /// Refused on purpose: wrong server, wrong policy, no or a bad genuine-TPM proof.
    Refused(String),
    /// Malformed input.
    Bad(String),
    Tpm(TpmError),
    Io(std::io::Error),
}

impl std::fmt::Display for CustodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CustodyError::NotSetUp(m)
            | CustodyError::Refused(m)
            | CustodyError::Bad(m)
            | CustodyError::UnknownClient(m) => f.write_str(m),
            CustodyError::Tpm(e) => write!(f, "{e}"),
            CustodyError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<TpmError> for CustodyError {
    fn from(e: TpmError) -> Self {
        CustodyError::Tpm(e)
    }
}

impl From<std::io::Error> for CustodyError {
    fn from(e: std::io::Error) -> Self {
        CustodyError::Io(e)
    }
}

type Result<T> = std::result::Result<T, CustodyError>;

/// A client ID is the SHA-256 of its DRSK's name: 64 hex digits.
pub fn check_client_id(client: &str) -> Result<String> {
    crate::id::client_id(client).map_err(|e| CustodyError::Bad(e.to_string()))
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

/// The server key and the custody directory.
pub struct Custody {
    dir: PathBuf,
    key: ServerKey,
}

/// What the server keeps between a challenge and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Name of the storage key the challenge was made for.
    pub new_parent_name: Vec<u8>,
    /// SHA-256 of the secret only that TPM can recover.
    pub secret_hash: Vec<u8>,
}

impl Pending {
    pub fn to_text(&self) -> String {
        transfer::hex_record(
            PENDING_TAG,
            &[
                ("new-parent", &self.new_parent_name),
                ("secret-sha256", &self.secret_hash),
            ],
        )
    }

    pub fn parse(text: &str) -> Result<Pending> {
        let mut f = transfer::parse_hex_record(text, PENDING_TAG, &["new-parent", "secret-sha256"])
            .map_err(CustodyError::Bad)?;
        let secret_hash = f.pop().unwrap_or_default();
        let new_parent_name = f.pop().unwrap_or_default();
        Ok(Pending {
            new_parent_name,
            secret_hash,
        })
    }

    /// Checks the client's answer for exactly the storage key `new_parent`.
    pub fn check(&self, new_parent: &[u8], secret: &[u8]) -> Result<()> {
        if tpm::name_of_public(new_parent)? != self.new_parent_name {
            return Err(CustodyError::Refused(
                "the challenge was made for another storage key".into(),
            ));
        }
        if !crate::secret::ct_eq(&sha256(secret), &self.secret_hash) {
            return Err(CustodyError::Refused(
                "the answer does not match the challenge".into(),
            ));
        }
        Ok(())
    }
}

/// The challenge sent to the replacement machine (answered by `lifeline activate`).
pub struct Challenge {
    pub credential: Vec<u8>,
    pub seed: Vec<u8>,
}

impl Challenge {
    pub fn to_text(&self) -> String {
        transfer::hex_record(
            transfer::CHALLENGE_TAG,
            &[("credential", &self.credential), ("seed", &self.seed)],
        )
    }
}

impl Custody {
    /// The custody of the server directory `dir` (made by `lifeline-server drsk init`).
    pub fn open(dir: &Path) -> Result<Custody> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| {
                CustodyError::NotSetUp(format!(
                    "{}: {e}; this server keeps no DRSKs until lifeline-server drsk init runs",
                    dir.join(name).display()
                ))
            })
        };
        Ok(Custody {
            dir: dir.to_path_buf(),
            key: ServerKey {
                public: read("drsk.pub")?,
                private: read("drsk.priv")?,
            },
        })
    }

    /// The server key's public part (what clients provision with).
    pub fn server_public(&self) -> &[u8] {
        &self.key.public
    }

    /// Whether every restore needs the genuine-TPM proof.
    pub fn requires_proof(&self) -> bool {
        self.dir.join(EK_CA_FILE).exists()
    }

    fn client_file(&self, client: &str) -> Result<PathBuf> {
        Ok(self
            .dir
            .join("clients")
            .join(format!("{}.drsk", check_client_id(client)?)))
    }

    /// Whether a DRSK is in custody for `client`.
    pub fn has(&self, client: &str) -> Result<bool> {
        Ok(self.client_file(client)?.exists())
    }

    fn stored(&self, client: &str) -> Result<transfer::DrskFile> {
        let path = self.client_file(client)?;
        let text = std::fs::read_to_string(&path).map_err(|_| {
            CustodyError::UnknownClient(format!("no DRSK in custody for client {client}"))
        })?;
        transfer::DrskFile::parse(&text)
            .map_err(|e| CustodyError::Bad(format!("{}: {e}", path.display())))
    }

    /// Accepts only DRSKs whose policy really is lifeline's, built for this server among
    /// others: then the copy kept here can go back only to a TPM this server chooses.
    pub fn check_backup(&self, backup: &transfer::DrskFile) -> Result<()> {
        if !backup
            .servers
            .contains(&tpm::name_of_public(&self.key.public)?)
        {
            return Err(CustodyError::Refused(
                "this DRSK was not provisioned for this server's key".into(),
            ));
        }
        if tpm::auth_policy_of(&backup.dup.public)? != policy::drsk_auth_policy(&backup.servers) {
            return Err(CustodyError::Refused(
                "the DRSK's duplication policy is not the one its file describes; refused".into(),
            ));
        }
        Ok(())
    }

    /// Imports a client's backup into this TPM and keeps only the TPM-wrapped copy (replacing
    /// an earlier one of the same client). Returns where it is kept.
    pub fn import(
        &self,
        tpm: &mut TssTpm,
        backup: transfer::DrskFile,
        auth: Option<&Passphrase>,
    ) -> Result<PathBuf> {
        self.check_backup(&backup)?;
        let private = tpm.import_client(&self.key, &backup.dup, auth)?;
        let path = self.client_file(&backup.client_id)?;
        let stored = transfer::DrskFile {
            client_id: backup.client_id,
            servers: backup.servers,
            dup: Duplicate {
                public: backup.dup.public,
                private,
                seed: Vec::new(),
            },
        };
        std::fs::create_dir_all(self.dir.join("clients"))?;
        atomic_file::replace(&path, stored.to_text().as_bytes(), 0o600)?;
        Ok(path)
    }

    /// Checks the replacement TPM's EK certificate against `ek-ca.pem` and that `new_parent` is
    /// a TPM-resident storage key, then makes a credential only that TPM can activate, and only
    /// while holding that storage key.
    pub fn challenge(
        &self,
        tpm: &mut TssTpm,
        client: &str,
        new_parent: &[u8],
        ek_public: &[u8],
        ek_certificate: &[u8],
    ) -> Result<(Challenge, Pending)> {
        let ca = std::fs::read(self.dir.join(EK_CA_FILE)).map_err(|_| {
            CustodyError::NotSetUp(format!(
                "{} has no {EK_CA_FILE}: this server was set up without the genuine-TPM proof",
                self.dir.display()
            ))
        })?;
        if !self.has(client)? {
            return Err(CustodyError::UnknownClient(format!(
                "no DRSK in custody for client {client}"
            )));
        }
        let certified =
            crate::server::ekcert::verify(ek_certificate, &ca).map_err(CustodyError::Refused)?;
        if tpm::ek_key(ek_public)? != certified {
            return Err(CustodyError::Refused(
                "the EK certificate is for another key than the EK given".into(),
            ));
        }
        if !tpm::is_resident_storage_key(new_parent) {
            return Err(CustodyError::Refused(
                "the new storage key is not a TPM-resident storage key (fixedTPM, restricted, decrypt)".into(),
            ));
        }
        let name = tpm::name_of_public(new_parent)?;
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        crate::secret::random_bytes(&mut secret[..])?;
        let (credential, seed) = tpm.make_credential(ek_public, &name, &secret[..])?;
        Ok((
            Challenge { credential, seed },
            Pending {
                new_parent_name: name,
                secret_hash: sha256(&secret[..]),
            },
        ))
    }

    /// Re-duplicates a client's DRSK to the storage key `new_parent`. The caller has checked
    /// the genuine-TPM proof when [`Custody::requires_proof`].
    pub fn restore(
        &self,
        tpm: &mut TssTpm,
        client: &str,
        new_parent: &[u8],
        auth: Option<&Passphrase>,
    ) -> Result<transfer::DrskFile> {
        let stored = self.stored(client)?;
        let dup = tpm.reduplicate_client(
            &self.key,
            &stored.dup.public,
            &stored.dup.private,
            &stored.servers,
            new_parent,
            auth,
        )?;
        Ok(transfer::DrskFile {
            client_id: stored.client_id,
            servers: stored.servers,
            dup,
        })
    }
}
