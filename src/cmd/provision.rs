//! `lifeline provision` and `lifeline id`: the TPM's storage keys and the machine's client ID.

use std::path::{Path, PathBuf};

use argh::FromArgs;

use super::{owner_auth, read_passphrase_file, read_small, CmdResult, Failure, Globals};
use crate::atomic_file;
use crate::tpm::{self, policy, transfer, Provisioned};

#[derive(FromArgs, Debug)]
/// Provision the TPM: the storage root key at 0x81000003 and the recoverable storage key (DRSK)
/// at 0x81000004, whose duplication policy allows backups to exactly the servers named here.
/// Safe to run again: keys that exist and match are kept. Prints the client ID.
#[argh(
    subcommand,
    name = "provision",
    example = "{command_name} --backup-server-key drsk.pub"
)]
pub struct Args {
    /// a backup server's key (drsk.pub from lifeline-server drsk init); repeat for up to 4
    #[argh(option)]
    pub backup_server_key: Vec<PathBuf>,
    /// the TPM owner authorization, first line of this file (asked for when the TPM has one)
    #[argh(option)]
    pub owner_auth_file: Option<PathBuf>,
    /// afterwards, set this owner authorization if the TPM has none (recommended)
    #[argh(option)]
    pub set_owner_auth_file: Option<PathBuf>,
    /// replace a foreign object at 0x81000003/0x81000004, or a DRSK with other backup servers
    /// (everything sealed under the old DRSK is lost)
    #[argh(switch)]
    pub force: bool,
    /// the storage keys' algorithm: ecc (P-256) or rsa (RSA-2048, for TPMs without P-256 or
    /// slow at it); default: ecc when the TPM has it, and what is provisioned already
    #[argh(option)]
    pub key_algorithm: Option<tpm::KeyAlgorithm>,
}

/// Reads a server key file (binary TPM2B_PUBLIC) and returns its Name.
pub fn server_key_name(path: &Path) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    let public = read_small(path, 4096)?;
    let name = tpm::name_of_public(&public).map_err(|_| {
        Failure::usage(format!(
            "{} is not a TPM public key (TPM2B_PUBLIC)",
            path.display()
        ))
        .todo("use the drsk.pub that lifeline-server drsk init wrote")
    })?;
    Ok((public, name))
}

pub fn run(args: Args, g: &Globals) -> CmdResult {
    if args.backup_server_key.len() > policy::MAX_BACKUP_SERVERS {
        return Err(Failure::usage(format!(
            "at most {} backup servers",
            policy::MAX_BACKUP_SERVERS
        )));
    }
    let names = args
        .backup_server_key
        .iter()
        .map(|p| server_key_name(p).map(|(_, name)| name))
        .collect::<Result<Vec<_>, _>>()?;
    let new_owner_auth = match &args.set_owner_auth_file {
        Some(f) => Some(read_passphrase_file(f)?),
        None => None,
    };
    let mut tpm = g.open_tpm()?;
    let auth = owner_auth(&mut tpm, args.owner_auth_file.as_deref())?;
    let outcome = tpm.provision(&names, auth.as_ref(), args.force, args.key_algorithm)?;
    atomic_file::replace(
        &g.state_dir.join(POLICY_FILE),
        transfer::policy_text(&names).as_bytes(),
        0o644,
    )
    .map_err(|e| {
        Failure::new(
            super::Exit::Failure,
            format!("cannot record the backup servers: {e}"),
        )
    })?;
    let client_id = tpm::client_id(&tpm.drsk_public()?);
    match outcome {
        Provisioned::Created => eprintln!(
            "TPM provisioned: SRK at 0x81000003, DRSK at 0x81000004 ({}).",
            tpm.drsk_algorithm()?.label()
        ),
        Provisioned::AlreadyThere => {
            eprintln!("TPM already provisioned with these backup servers; nothing changed.")
        }
        Provisioned::Replaced => {
            eprintln!("TPM re-provisioned (--force): enroll your volumes again.")
        }
    }
    if names.is_empty() {
        eprintln!("warning: no --backup-server-key: this DRSK can never be backed up or restored to a new TPM.");
    }
    if let Some(new) = new_owner_auth {
        if auth.is_none() {
            tpm.change_owner_auth(&new)?;
            eprintln!("TPM owner authorization set. lifeline does not store it; keep it safe.");
        } else {
            eprintln!(
                "The TPM already has an owner authorization; --set-owner-auth-file was not used."
            );
        }
    } else if auth.is_none() {
        eprintln!("note: the TPM has no owner authorization; setting one (--set-owner-auth-file) keeps others from evicting these keys.");
    }
    println!("{client_id}");
    Ok(())
}

/// Where the client records its DRSK's backup servers, inside the state directory.
pub const POLICY_FILE: &str = "drsk-policy";

#[derive(FromArgs, Debug)]
/// Print this machine's client ID (SHA-256 of the DRSK's public part), which names it to
/// backup servers and survives a motherboard swap.
#[argh(subcommand, name = "id", example = "{command_name}")]
pub struct IdArgs {}

pub fn run_id(_args: IdArgs, g: &Globals) -> CmdResult {
    let mut tpm = g.open_tpm()?;
    println!("{}", tpm::client_id(&tpm.drsk_public()?));
    Ok(())
}
