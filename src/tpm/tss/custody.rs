//! The backup server's side (feature `server`): its own key, importing clients' DRSKs and
//! re-duplicating them to a replacement TPM, and the genuine-TPM challenge.

use tss_esapi::constants::response_code::Tss2ResponseCodeKind as Rc;
use tss_esapi::constants::CommandCode;
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle};
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, Nonce, Private};

use crate::secret::Passphrase;
use crate::tpm::{tpm2b, Duplicate, TpmError};

use super::rc::*;
use super::templates::*;
use super::*;

/// The backup server's own DRSK, kept as blobs under its SRK (not at a persistent handle, so
/// a server can also be a lifeline client with its own DRSK at 0x81000004). fixedTPM: it never
/// leaves the server's TPM.
#[derive(Debug, Clone)]
pub struct ServerKey {
    pub public: Vec<u8>,
    pub private: Vec<u8>,
}

impl TssTpm {
    /// Creates the server's DRSK under its SRK, of `algorithm` (default: the TPM's preferred).
    pub fn create_server_key(
        &mut self,
        owner_auth: Option<&Passphrase>,
        algorithm: Option<crate::tpm::KeyAlgorithm>,
    ) -> Result<ServerKey, TpmError> {
        let (srk, transient) = self.srk(owner_auth)?;
        let algorithm = match algorithm {
            Some(a) => a,
            None => self.preferred_algorithm()?,
        };
        let template = storage_template(false, None, algorithm)?;
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

    pub(super) fn load_server_key(
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
