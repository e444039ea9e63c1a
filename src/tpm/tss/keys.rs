//! The SRK and the DRSK: provisioning, and finding them at their persistent handles.

use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::Public;

use crate::secret::Passphrase;
use crate::tpm::policy;
use crate::tpm::{KeyAlgorithm, TpmError, DRSK_HANDLE, SRK_HANDLE};

use super::rc::*;
use super::templates::*;
use super::*;

impl TssTpm {
    /// Creates the SRK as a transient primary (same key every time for this TPM's seed and
    /// `algorithm`).
    pub(super) fn create_srk(
        &mut self,
        owner_auth: Option<&Passphrase>,
        algorithm: KeyAlgorithm,
    ) -> Result<KeyHandle, TpmError> {
        self.set_owner_auth(owner_auth)?;
        let template = storage_template(false, None, algorithm)?;
        let result = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(|e| owner_error(e, "creating the storage root key"))?;
        Ok(result.key_handle)
    }

    /// The SRK: the persistent one at 0x81000003 if present, else a transient primary of the
    /// TPM's preferred algorithm. Returns the handle and whether it must be flushed after use.
    pub(super) fn srk(
        &mut self,
        owner_auth: Option<&Passphrase>,
    ) -> Result<(KeyHandle, bool), TpmError> {
        if let Some(h) = self.persistent(SRK_HANDLE)? {
            return Ok((h.into(), false));
        }
        if owner_auth.is_none() && self.owner_auth_set()? {
            return Err(TpmError::OwnerAuthNeeded);
        }
        let algorithm = self.preferred_algorithm()?;
        Ok((self.create_srk(owner_auth, algorithm)?, true))
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
    pub(super) fn drsk(&mut self) -> Result<KeyHandle, TpmError> {
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

    /// The DRSK's algorithm.
    pub fn drsk_algorithm(&mut self) -> Result<KeyAlgorithm, TpmError> {
        let drsk = self.drsk()?;
        algorithm_of(&self.read_public(drsk.into())?)
            .ok_or_else(|| TpmError::Other("the DRSK is not a storage key".into()))
    }

    /// Creates (or checks) the SRK at 0x81000003 and the DRSK at 0x81000004 whose
    /// duplication policy allows exactly the backup servers whose DRSK Names are given, both
    /// of `algorithm` (default: the TPM's preferred one; keys there already keep theirs unless
    /// one is asked for). Both handles are inspected before anything changes: a refusal leaves
    /// the TPM as it was.
    pub fn provision(
        &mut self,
        server_names: &[Vec<u8>],
        owner_auth: Option<&Passphrase>,
        force: bool,
        algorithm: Option<KeyAlgorithm>,
    ) -> Result<Provisioned, TpmError> {
        if owner_auth.is_none() && self.owner_auth_set()? {
            return Err(TpmError::OwnerAuthNeeded);
        }
        let algorithm = match algorithm {
            Some(a) => a,
            None => match self.persistent(SRK_HANDLE)? {
                Some(h) => self
                    .read_public(h)
                    .ok()
                    .as_ref()
                    .and_then(algorithm_of)
                    .map_or_else(|| self.preferred_algorithm(), Ok)?,
                None => self.preferred_algorithm()?,
            },
        };
        let auth_policy = policy::drsk_auth_policy(server_names);
        let drsk_template = storage_template(true, Some(&auth_policy), algorithm)?;

        // Ours is the primary our template makes on this TPM: compare with a fresh one.
        let fresh_srk = self.create_srk(owner_auth, algorithm)?;
        let result = self
            .inspect_handles(fresh_srk, &drsk_template)
            .and_then(|(srk, drsk)| {
                use HandleState::{Empty, Foreign, Ours};
                let foreign = match (&srk, &drsk) {
                    (Foreign(h), _)
                        if algorithm_of(&self.read_public(*h)?)
                            .is_some_and(|a| a != algorithm) =>
                    {
                        Some(match algorithm {
                            KeyAlgorithm::Rsa => "the storage keys at 0x81000003/0x81000004 are ECC P-256, not the RSA-2048 asked for",
                            KeyAlgorithm::Ecc => "the storage keys at 0x81000003/0x81000004 are RSA-2048, not the ECC P-256 asked for",
                        })
                    }
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
    pub(super) fn inspect_handles(
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
                if {
                    let public = self.read_public(h)?;
                    public.object_attributes() == drsk_template.object_attributes()
                        && algorithm_of(&public) == algorithm_of(drsk_template)
                } =>
            {
                HandleState::Ours(h)
            }
            Some(h) => HandleState::Foreign(h),
        };
        Ok((srk, drsk))
    }

    pub(super) fn create_drsk(&mut self, srk: KeyHandle, template: Public) -> Result<(), TpmError> {
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

    pub(super) fn persist(
        &mut self,
        object: ObjectHandle,
        handle: u32,
    ) -> Result<ObjectHandle, TpmError> {
        let persistent = Persistent::Persistent(PersistentTpmHandle::new(handle).map_err(wrapper)?);
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.evict_control(Provision::Owner, object, persistent)
            })
            .map_err(|e| owner_error(e, "making a key persistent"))
    }

    pub(super) fn evict(
        &mut self,
        persistent_object: ObjectHandle,
        handle: u32,
    ) -> Result<(), TpmError> {
        let persistent = Persistent::Persistent(PersistentTpmHandle::new(handle).map_err(wrapper)?);
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.evict_control(Provision::Owner, persistent_object, persistent)
            })
            .map_err(|e| owner_error(e, "removing a persistent key"))?;
        Ok(())
    }
}
