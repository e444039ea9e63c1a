//! `lifeline enroll` and `lifeline unseal-check`: the volume key sealed under the DRSK.

use std::path::PathBuf;

use argh::FromArgs;

use super::{CmdResult, Exit, Failure, Globals};
use crate::atomic_file;
use crate::luks::LuksVolume;
use crate::tpm::token::{luks1_file, read_sealed, SealedToken, TOKEN_TYPE};
use crate::tpm::{self, TssTpm};

#[derive(FromArgs, Debug)]
/// Seal a volume's key under the TPM's DRSK so it can be unlocked without a passphrase,
/// optionally only while the given PCRs hold their current values. Stored in a LUKS2 token of
/// type lifeline-tpm2 (LUKS1: a file in the state directory). Enrolling again replaces it.
#[argh(
    subcommand,
    name = "enroll",
    example = "{command_name} /dev/nvme0n1p3 --pcrs 7",
    example = "{command_name} /dev/sda2 --key-file - < passphrase.txt"
)]
pub struct Args {
    /// the LUKS block device or image file
    #[argh(positional)]
    pub device: PathBuf,
    /// PCRs (SHA-256 bank) to bind to, e.g. 7 or 0,2,7 (default: none)
    #[argh(option, default = "String::new()")]
    pub pcrs: String,
    /// read the volume passphrase from this file, byte for byte (default: ask)
    #[argh(option)]
    pub key_file: Option<PathBuf>,
}

fn parse_pcrs(text: &str) -> Result<Vec<u8>, Failure> {
    let mut pcrs = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u8>() {
            Ok(n) if n < 24 => pcrs.push(n),
            _ => {
                return Err(Failure::usage(format!(
                    "--pcrs: '{part}' is not a PCR number (0 to 23)"
                )))
            }
        }
    }
    pcrs.sort_unstable();
    pcrs.dedup();
    Ok(pcrs)
}

pub fn run(args: Args, g: &Globals) -> CmdResult {
    let pcrs = parse_pcrs(&args.pcrs)?;
    let mut volume = LuksVolume::open(&args.device)?;
    let info = volume.info()?;
    let key = super::volume_key_from_user(&mut volume, &args.device, args.key_file.as_deref())?;
    let mut tpm = g.open_tpm()?;
    let (blob, binding) = tpm.seal(&key, &pcrs)?;
    let token = SealedToken {
        client_id: tpm::client_id(&tpm.drsk_public()?),
        blob,
        pcrs: binding,
    };
    // Prove the sealed key comes back and opens the volume before anything is stored.
    let unsealed = tpm.unseal(&token.client_id, &token.blob, token.pcrs.as_ref())?;
    volume.check_key(&unsealed)?;
    let json = token.to_json();
    if volume.is_luks2() {
        volume.put_token(TOKEN_TYPE, &json)?;
        eprintln!("Volume {} enrolled: LUKS2 token {TOKEN_TYPE}.", info.uuid);
    } else {
        let file = luks1_file(&g.state_dir, &info.uuid);
        atomic_file::replace(&file, json.to_string().as_bytes(), 0o600).map_err(|e| {
            Failure::new(
                Exit::Failure,
                format!("cannot write {}: {e}", file.display()),
            )
        })?;
        eprintln!("Volume {} (LUKS1) enrolled: {}.", info.uuid, file.display());
    }
    if !pcrs.is_empty() {
        let list: Vec<String> = pcrs.iter().map(u8::to_string).collect();
        eprintln!("Bound to PCR {} (sha256).", list.join(","));
    }
    Ok(())
}

/// Finds a volume's sealed key: its LUKS2 token, or the LUKS1 file.
pub fn find_sealed(
    volume: &mut LuksVolume,
    g: &Globals,
    uuid: &str,
) -> Result<SealedToken, Failure> {
    read_sealed(volume, &g.state_dir, uuid)?.ok_or_else(|| {
        Failure::new(
            Exit::Volume,
            format!("volume {uuid} has no lifeline-tpm2 key"),
        )
        .todo("run lifeline enroll first")
    })
}

#[derive(FromArgs, Debug)]
/// Check that the TPM unseals this volume's enrolled key and that the key opens the volume
/// (nothing is activated). Says which step fails.
#[argh(
    subcommand,
    name = "unseal-check",
    example = "{command_name} /dev/nvme0n1p3"
)]
pub struct CheckArgs {
    /// the LUKS block device or image file
    #[argh(positional)]
    pub device: PathBuf,
}

pub fn run_check(args: CheckArgs, g: &Globals) -> CmdResult {
    let mut volume = LuksVolume::open(&args.device)?;
    let info = volume.info()?;
    let token = find_sealed(&mut volume, g, &info.uuid)
        .map_err(|f| f.context("step 1, find the sealed key"))?;
    let mut tpm: TssTpm = g
        .open_tpm()
        .map_err(|f| f.context("step 2, open the TPM"))?;
    let key = tpm
        .unseal(&token.client_id, &token.blob, token.pcrs.as_ref())
        .map_err(|e| Failure::from(e).context("step 3, unseal"))?;
    volume
        .check_key(&key)
        .map_err(|e| Failure::from(e).context("step 4, check the key against the volume"))?;
    eprintln!(
        "OK: the TPM unseals the key of {} and it opens the volume.",
        info.uuid
    );
    Ok(())
}
