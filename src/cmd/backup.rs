//! `lifeline backup`, `lifeline srk-public`, `lifeline restore`: the DRSK's way to a backup
//! server and back to a replacement TPM.

use std::path::PathBuf;

use argh::FromArgs;

use super::provision::{server_key_name, POLICY_FILE};
use super::{owner_auth, read_small, CmdResult, Exit, Failure, Globals};
use crate::atomic_file;
use crate::tpm::{self, transfer};

fn write_out(path: &std::path::Path, bytes: &[u8]) -> CmdResult {
    atomic_file::write_new(path, bytes, 0o644).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::AlreadyExists {
            Exit::Exists
        } else {
            Exit::Failure
        };
        Failure::new(code, e.to_string())
    })
}

#[derive(FromArgs, Debug)]
/// Back up the DRSK to a backup server: duplicate it, wrapped for that server's TPM key. The
/// output holds no usable secret; give it to the server (lifeline-server drsk import).
#[argh(subcommand, name = "backup")]
pub struct Args {
    /// the server's key (drsk.pub); must be one the DRSK was provisioned with
    #[argh(option)]
    pub server_key: PathBuf,
    /// where to write the duplicate (must not exist)
    #[argh(option)]
    pub out: PathBuf,
}

pub fn run(args: Args, g: &Globals) -> CmdResult {
    let (server_public, server_name) = server_key_name(&args.server_key)?;
    let policy_path = g.state_dir.join(POLICY_FILE);
    let text = std::fs::read_to_string(&policy_path).map_err(|e| {
        Failure::usage(format!("cannot read {}: {e}", policy_path.display()))
            .todo("run lifeline provision first")
    })?;
    let servers = transfer::parse_policy(&text)
        .map_err(|e| Failure::usage(format!("{}: {e}", policy_path.display())))?;
    if !servers.contains(&server_name) {
        return Err(Failure::new(Exit::Tpm, format!("the DRSK was not provisioned for the server key {}", args.server_key.display()))
            .todo("back up to a server named at provisioning, or provision again with --force and this server"));
    }
    let mut tpm = g.open_tpm()?;
    let dup = tpm.duplicate_drsk(&server_public, &servers)?;
    let file = transfer::DrskFile {
        client_id: tpm::client_id(&dup.public),
        servers,
        dup,
    };
    write_out(&args.out, file.to_text().as_bytes())?;
    eprintln!(
        "DRSK of client {} duplicated for the server into {}.",
        file.client_id,
        args.out.display()
    );
    Ok(())
}

#[derive(FromArgs, Debug)]
/// Write this TPM's storage root key (public part), which a backup server needs to restore the
/// DRSK to it after a motherboard swap.
#[argh(subcommand, name = "srk-public")]
pub struct SrkArgs {
    /// where to write it (binary TPM2B_PUBLIC; must not exist)
    #[argh(option)]
    pub out: PathBuf,
    /// the TPM owner authorization, if set and the SRK is not persistent yet
    #[argh(option)]
    pub owner_auth_file: Option<PathBuf>,
    /// also write this TPM's endorsement key and its certificate here, for servers that want
    /// proof the storage key lives in a genuine TPM (lifeline-server drsk challenge)
    #[argh(option)]
    pub ek_out: Option<PathBuf>,
}

pub fn run_srk(args: SrkArgs, g: &Globals) -> CmdResult {
    let mut tpm = g.open_tpm()?;
    let auth = match args.owner_auth_file {
        Some(f) => Some(super::read_passphrase_file(&f)?),
        None => None,
    };
    let public = tpm.srk_public(auth.as_ref())?;
    let ek = match &args.ek_out {
        Some(_) => Some(tpm.ek_bundle()?),
        None => None,
    };
    write_out(&args.out, &public)?;
    eprintln!(
        "Storage key written to {}; send it to the backup server.",
        args.out.display()
    );
    if let (Some(path), Some((ek_public, cert))) = (&args.ek_out, ek) {
        let text = transfer::hex_record(EK_TAG, &[("public", &ek_public), ("certificate", &cert)]);
        write_out(path, text.as_bytes())?;
        eprintln!(
            "Endorsement key and certificate written to {}; send it too.",
            path.display()
        );
    }
    Ok(())
}

/// File tags of the genuine-TPM proof: the EK bundle, the server's challenge, the answer.
pub const EK_TAG: &str = "lifeline-ek";
pub const CHALLENGE_TAG: &str = "lifeline-tpm-challenge";
pub const PROOF_TAG: &str = "lifeline-tpm-proof";

#[derive(FromArgs, Debug)]
/// Answer a backup server's genuine-TPM challenge: the TPM's endorsement key activates the
/// credential only if this TPM holds the storage key the server bound it to.
#[argh(subcommand, name = "activate")]
pub struct ActivateArgs {
    /// the challenge from lifeline-server drsk challenge
    #[argh(option, long = "in")]
    pub input: PathBuf,
    /// where to write the answer for the server (must not exist)
    #[argh(option)]
    pub out: PathBuf,
    /// the TPM owner authorization, if set and the SRK is not persistent yet
    #[argh(option)]
    pub owner_auth_file: Option<PathBuf>,
}

pub fn run_activate(args: ActivateArgs, g: &Globals) -> CmdResult {
    let text = String::from_utf8(read_small(&args.input, 16 * 1024)?)
        .map_err(|_| Failure::usage(format!("{} is not a challenge", args.input.display())))?;
    let fields = transfer::parse_hex_record(&text, CHALLENGE_TAG, &["credential", "seed"])
        .map_err(|e| Failure::usage(format!("{}: {e}", args.input.display())))?;
    let auth = match args.owner_auth_file {
        Some(f) => Some(super::read_passphrase_file(&f)?),
        None => None,
    };
    let mut tpm = g.open_tpm()?;
    let secret = tpm.activate_credential(&fields[0], &fields[1], auth.as_ref())?;
    write_out(
        &args.out,
        transfer::hex_record(PROOF_TAG, &[("secret", &secret)]).as_bytes(),
    )?;
    eprintln!(
        "Challenge answered; send {} to the backup server.",
        args.out.display()
    );
    Ok(())
}

#[derive(FromArgs, Debug)]
/// Restore the DRSK from a backup server's restore file into this TPM. Without --persist it is
/// only loaded and checked (the initramfs does this on every boot until it is persisted).
#[argh(subcommand, name = "restore")]
pub struct RestoreArgs {
    /// the restore file from lifeline-server drsk restore
    #[argh(option, long = "in")]
    pub input: PathBuf,
    /// make it the DRSK at 0x81000004 (needs the TPM owner authorization if one is set)
    #[argh(switch)]
    pub persist: bool,
    /// the TPM owner authorization, first line of this file (asked for when needed)
    #[argh(option)]
    pub owner_auth_file: Option<PathBuf>,
}

pub fn run_restore(args: RestoreArgs, g: &Globals) -> CmdResult {
    let text = String::from_utf8(read_small(&args.input, 64 * 1024)?)
        .map_err(|_| Failure::usage(format!("{} is not a restore file", args.input.display())))?;
    let file = transfer::DrskFile::parse(&text)
        .map_err(|e| Failure::usage(format!("{}: {e}", args.input.display())))?;
    let mut tpm = g.open_tpm()?;
    let auth = if args.persist {
        owner_auth(&mut tpm, args.owner_auth_file.as_deref())?
    } else {
        None
    };
    let client_id = tpm.restore_drsk(&file.dup, args.persist, auth.as_ref())?;
    if args.persist {
        atomic_file::replace(
            &g.state_dir.join(POLICY_FILE),
            transfer::policy_text(&file.servers).as_bytes(),
            0o644,
        )
        .map_err(|e| {
            Failure::new(
                Exit::Failure,
                format!("cannot record the backup servers: {e}"),
            )
        })?;
        eprintln!("DRSK of client {client_id} restored at 0x81000004.");
    } else {
        eprintln!("DRSK of client {client_id} imported and loaded; run with --persist to keep it.");
    }
    println!("{client_id}");
    Ok(())
}
