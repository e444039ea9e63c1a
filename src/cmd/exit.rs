//! Exit codes, and failures as the person sees them: what happened, what to do next.

use std::fmt;

use crate::escrow::https::FetchError;
use crate::escrow::otp::OtpError;
use crate::escrow::PacketError;
use crate::luks::LuksError;
use crate::prompt::PromptError;
use crate::tpm::token::TokenError;
use crate::tpm::TpmError;

/// Exit codes of `lifeline` and `lifeline-server`: a contract with scripts and initramfs glue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// Anything not listed below (I/O errors, bugs).
    Failure = 1,
    /// Bad arguments or unreadable input files.
    Usage = 2,
    /// A passphrase or one-time password was wrong (after the allowed attempts).
    Denied = 3,
    /// A packet is damaged, altered, of an unknown version, or signed by an untrusted key.
    BadPacket = 4,
    /// A valid packet that does not apply here: other volume, other machine, or expired.
    NotApplicable = 5,
    /// The volume cannot do what was asked: not LUKS, the key does not open it, no free
    /// keyslot, keyslot not in use.
    Volume = 6,
    /// The target exists already (an authority, an output file); nothing was changed.
    Exists = 7,
    /// The TPM cannot do it: no TPM, no DRSK, PCRs changed, lockout, refused by policy,
    /// or a foreign object where lifeline's should be.
    Tpm = 8,
    /// `lifeline unlock` did not open every volume (gave up, timed out, disabled): the
    /// distribution's own unlock step takes over.
    StepAside = 9,
    /// `lifeline status` found a disk at risk (after `--repair`, one it could not fix).
    AtRisk = 10,
}

/// A failed command: what happened and what the person should do next.
#[derive(Debug)]
pub struct Failure {
    pub code: Exit,
    pub what: String,
    pub todo: Option<String>,
}

pub type CmdResult = Result<(), Failure>;

impl Failure {
    pub fn new(code: Exit, what: impl Into<String>) -> Self {
        Failure {
            code,
            what: what.into(),
            todo: None,
        }
    }

    pub fn todo(mut self, todo: impl Into<String>) -> Self {
        self.todo = Some(todo.into());
        self
    }

    pub fn usage(what: impl Into<String>) -> Self {
        Failure::new(Exit::Usage, what)
    }

    /// Prefixes the message with where it happened (a file name, a step).
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.what = format!("{ctx}: {}", self.what);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.what)?;
        if let Some(todo) = &self.todo {
            write!(f, "\n  what to do: {todo}")?;
        }
        Ok(())
    }
}

impl From<PacketError> for Failure {
    fn from(e: PacketError) -> Self {
        let what = e.to_string();
        let (code, todo) = match e {
            PacketError::Malformed(_) => (
                Exit::BadPacket,
                "ask for the packet again; it was cut short or changed on the way",
            ),
            PacketError::UnknownVersion(_) => (Exit::BadPacket, "use a newer lifeline to read this packet"),
            PacketError::OtherSigner => (
                Exit::BadPacket,
                "check that --trust names your organisation's key, and get the packet from your helpdesk",
            ),
            PacketError::BadSignature => (Exit::BadPacket, "do not use this packet; ask the helpdesk for a new one"),
            PacketError::LegacySignature => (
                Exit::BadPacket,
                "sign it again without -l (minisign -S signs pre-hashed), or have lifeline-server issue it",
            ),
            PacketError::OtherVolume { .. } | PacketError::OtherMachine { .. } => (
                Exit::NotApplicable,
                "ask the helpdesk for the packet of this volume; read them the volume UUID",
            ),
            PacketError::Expired(_) => (Exit::NotApplicable, "ask the helpdesk to issue a new recovery packet"),
            PacketError::WrongPassphrase => (
                Exit::Denied,
                "check the one-time password with the helpdesk and type it again",
            ),
            PacketError::NotOurRecipient => (
                Exit::BadPacket,
                "this packet was escrowed to another authority; use that authority's directory",
            ),
            PacketError::ExcessiveWork(_) => (Exit::BadPacket, "this packet was not made by lifeline; do not use it"),
            PacketError::HeaderMismatch(_) => (Exit::BadPacket, "do not use this packet; find an unaltered copy"),
            // A packet file that is missing, unreadable or not a regular file is bad input.
            PacketError::Io(ref io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::InvalidInput
                ) =>
            {
                (Exit::Usage, "check the file name and permissions")
            }
            PacketError::Io(_) => (Exit::Failure, "check the file name and permissions"),
        };
        Failure::new(code, what).todo(todo)
    }
}

impl From<LuksError> for Failure {
    fn from(e: LuksError) -> Self {
        let what = e.to_string();
        let (code, todo) = match e {
            LuksError::Open { .. } => (Exit::Usage, "check the device or file name"),
            LuksError::NotLuks(_) => (Exit::Volume, "name the LUKS partition itself (see lsblk -f) or a LUKS header backup"),
            LuksError::WrongPassphrase => (Exit::Denied, "type the passphrase again, or recover with a recovery packet"),
            LuksError::WrongKey => (
                Exit::Volume,
                "the volume was re-created or re-encrypted after this key was escrowed; escrow it again",
            ),
            LuksError::NoFreeKeyslot { .. } => (
                Exit::Volume,
                "free a keyslot first (cryptsetup luksKillSlot DEVICE N, keeping one you can open)",
            ),
            LuksError::SlotNotActive(_) => (Exit::Volume, "list keyslots with cryptsetup luksDump DEVICE"),
            LuksError::Other(_) => (Exit::Failure, "run cryptsetup luksDump DEVICE to check the header"),
        };
        Failure::new(code, what).todo(todo)
    }
}

impl From<TpmError> for Failure {
    fn from(e: TpmError) -> Self {
        let what = e.to_string();
        let (code, todo) = match e {
            TpmError::NoDevice(_) => (
                Exit::Tpm,
                "check that the TPM is enabled in the firmware, or name it with --tcti or LIFELINE_TCTI",
            ),
            TpmError::DrskMissing => (
                Exit::Tpm,
                "run lifeline provision; after a motherboard swap, restore the DRSK from a backup server (lifeline restore)",
            ),
            TpmError::ForeignObject(_) => (
                Exit::Tpm,
                "lifeline leaves keys it did not make alone; provision --force replaces them, and everything sealed under the old DRSK must be enrolled again",
            ),
            TpmError::OtherKey(_) => (Exit::Tpm, "restore the DRSK from its backup server, or enroll again"),
            TpmError::PcrMismatch(_) => (
                Exit::Tpm,
                "boot the way the key was enrolled, or recover with a recovery packet and enroll again",
            ),
            TpmError::Lockout => (
                Exit::Tpm,
                "wait for the lockout to end, or reset it with the lockout authorization (tpm2_dictionarylockout -c)",
            ),
            TpmError::PinNeeded => (Exit::Usage, "give the PIN (--pin-file, or type it when asked)"),
            TpmError::WrongPin => (
                Exit::Denied,
                "type the PIN again; each wrong one counts toward the TPM's lockout",
            ),
            TpmError::OwnerAuthNeeded => (Exit::Usage, "give the TPM owner authorization with --owner-auth-file"),
            TpmError::OwnerAuthWrong => (Exit::Denied, "check the TPM owner authorization"),
            TpmError::PolicyRefused(_) => (
                Exit::Tpm,
                "the DRSK can be backed up only to the servers named when it was provisioned",
            ),
            TpmError::Other(_) => (Exit::Tpm, "run the command again; if it persists, check the TPM with tpm2_getcap"),
        };
        Failure::new(code, what).todo(todo)
    }
}

impl From<OtpError> for Failure {
    fn from(e: OtpError) -> Self {
        Failure::new(Exit::Denied, e.to_string())
            .todo("read the code back to the helpdesk group by group")
    }
}

impl From<PromptError> for Failure {
    fn from(e: PromptError) -> Self {
        Failure::new(Exit::Usage, e.to_string())
            .todo("answer at the prompt, or give the answer in a file (see --help)")
    }
}

/// Runs a subcommand and turns its outcome into the process exit code.
pub fn finish(program: &str, result: CmdResult) -> i32 {
    match result {
        Ok(()) => Exit::Ok as i32,
        Err(f) => {
            // An empty message: the command has said why already.
            if !f.what.is_empty() {
                eprintln!("{program}: {f}");
            }
            f.code as i32
        }
    }
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Self {
        let code = match e {
            FetchError::NotFound(_) => Exit::NotApplicable,
            FetchError::Setup(_) => Exit::Usage,
            FetchError::Refused {
                status: 401 | 403, ..
            } => Exit::Denied,
            _ => Exit::Failure,
        };
        let failure = Failure::new(code, e.to_string());
        match e.what_to_do() {
            Some(todo) => failure.todo(todo),
            None => failure,
        }
    }
}

impl From<TokenError> for Failure {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Luks(e) => e.into(),
            damaged => {
                Failure::new(Exit::Volume, damaged.to_string()).todo("run lifeline enroll again")
            }
        }
    }
}
