//! Duplicating the DRSK to a backup server's key, and importing a restored DRSK.

use tss_esapi::constants::response_code::Tss2ResponseCodeKind as Rc;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, DigestList, EncryptedSecret, Private, SymmetricDefinitionObject,
};
use tss_esapi::Context;

use crate::secret::Passphrase;
use crate::tpm::policy;
use crate::tpm::{tpm2b, Duplicate, TpmError, DRSK_HANDLE};

use super::rc::*;
use super::templates::*;
use super::*;

impl TssTpm {
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
    pub(super) fn policy_duplicate(
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
    pub(super) fn import(
        &mut self,
        parent: KeyHandle,
        dup: &Duplicate,
    ) -> Result<Private, TpmError> {
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
        Ok(crate::tpm::client_id(&dup.public))
    }
}
