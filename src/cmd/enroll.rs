//! `lifeline enroll` and `lifeline unseal-check`: the volume key sealed under the DRSK.

use std::path::PathBuf;

use argh::FromArgs;

use super::{CmdResult, Exit, Failure, Globals};
use crate::atomic_file;
use crate::luks::LuksVolume;
use crate::tpm::token::{luks1_file, read_sealed, SealedToken, TOKEN_TYPE};
use crate::tpm::TssTpm;

#[derive(FromArgs, Debug)]
/// Seal a volume's key under the TPM's DRSK so it can be unlocked without a passphrase,
/// optionally only while the given PCRs hold their current values, and only with a PIN the
/// TPM checks (--pin). Stored in a LUKS2 token of type lifeline-tpm2 (LUKS1: a file in the
/// state directory). Enrolling again replaces it.
#[argh(
    subcommand,
    name = "enroll",
    example = "{command_name} /dev/nvme0n1p3 --pcrs 7",
    example = "{command_name} /dev/nvme0n1p3 --pcrs 7 --pin",
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
    /// also require a PIN at every boot, checked by the TPM (a wrong one counts toward its
    /// dictionary-attack lockout); asked twice unless --pin-file is given
    #[argh(switch)]
    pub pin: bool,
    /// with --pin: read the PIN from this file's first line
    #[argh(option)]
    pub pin_file: Option<PathBuf>,
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
    if args.pin_file.is_some() && !args.pin {
        return Err(Failure::usage("--pin-file needs --pin"));
    }
    let mut volume = LuksVolume::open(&args.device)?;
    let info = volume.info()?;
    let key = super::volume_key_from_user(&mut volume, &args.device, args.key_file.as_deref())?;
    let pin = match args.pin {
        true => Some(super::new_pin(args.pin_file.as_deref(), "PIN")?),
        false => None,
    };
    let mut tpm = g.open_tpm()?;
    let token = tpm.seal_token(&key, &pcrs, pin.as_ref())?;
    // Prove the sealed key comes back and opens the volume before anything is stored.
    let unsealed = tpm.unseal_token(&token, pin.as_ref())?;
    volume.check_key(&unsealed)?;
    let place = store(&mut volume, g, &info.uuid, &token)?;
    eprintln!(
        "Volume {} enrolled: {place}, sealed under the DRSK ({}).",
        info.uuid,
        token.key_algorithm.label()
    );
    if !pcrs.is_empty() {
        let list: Vec<String> = pcrs.iter().map(u8::to_string).collect();
        eprintln!("Bound to PCR {} (sha256).", list.join(","));
    }
    if pin.is_some() {
        eprintln!("Every boot asks for the PIN (lifeline pin changes it).");
    }
    Ok(())
}

/// Stores a volume's sealed key (replacing one there): its LUKS2 token, or for LUKS1 the file
/// in the state directory. Says where.
fn store(
    volume: &mut LuksVolume,
    g: &Globals,
    uuid: &str,
    token: &SealedToken,
) -> Result<String, Failure> {
    let json = token.to_json();
    if volume.is_luks2() {
        volume.put_token(TOKEN_TYPE, &json)?;
        return Ok(format!("LUKS2 token {TOKEN_TYPE}"));
    }
    let file = luks1_file(&g.state_dir, uuid);
    atomic_file::replace(&file, json.to_string().as_bytes(), 0o600).map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!("cannot write {}: {e}", file.display()),
        )
    })?;
    Ok(format!("(LUKS1) {}", file.display()))
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
    /// the PIN, for a key enrolled with --pin, from this file's first line (default: ask)
    #[argh(option)]
    pub pin_file: Option<PathBuf>,
}

#[derive(FromArgs, Debug)]
/// Change the PIN of a volume enrolled with lifeline enroll --pin: the TPM re-wraps the same
/// sealed key under the new PIN (the old PIN is needed; nothing else changes).
#[argh(
    subcommand,
    name = "pin",
    example = "{command_name} /dev/nvme0n1p3",
    note = "A copy of the LUKS header made before the change (cryptsetup luksHeaderBackup) still holds the key under the old PIN: the TPM cannot revoke it."
)]
pub struct PinArgs {
    /// the LUKS block device or image file
    #[argh(positional)]
    pub device: PathBuf,
    /// the current PIN, from this file's first line (default: ask)
    #[argh(option)]
    pub pin_file: Option<PathBuf>,
    /// the new PIN, from this file's first line (default: ask twice)
    #[argh(option)]
    pub new_pin_file: Option<PathBuf>,
}

pub fn run_pin(args: PinArgs, g: &Globals) -> CmdResult {
    let mut volume = LuksVolume::open(&args.device)?;
    let info = volume.info()?;
    let token = find_sealed(&mut volume, g, &info.uuid)?;
    if token.pin_salt.is_none() {
        return Err(Failure::new(
            Exit::NotApplicable,
            format!("volume {} is enrolled without a PIN", info.uuid),
        )
        .todo("enroll it again with lifeline enroll --pin"));
    }
    let old = super::pin_from(args.pin_file.as_deref(), "Current TPM PIN:")?;
    let new = super::new_pin(args.new_pin_file.as_deref(), "new PIN")?;
    let mut tpm = g.open_tpm()?;
    let changed = tpm.change_token_pin(&token, &old, &new)?;
    // Prove the new PIN unseals a key that opens the volume before anything is stored.
    volume.check_key(&tpm.unseal_token(&changed, Some(&new))?)?;
    store(&mut volume, g, &info.uuid, &changed)?;
    eprintln!("Volume {}: the PIN is changed.", info.uuid);
    Ok(())
}

pub fn run_check(args: CheckArgs, g: &Globals) -> CmdResult {
    let mut volume = LuksVolume::open(&args.device)?;
    let info = volume.info()?;
    let token = find_sealed(&mut volume, g, &info.uuid)
        .map_err(|f| f.context("step 1, find the sealed key"))?;
    let mut tpm: TssTpm = g
        .open_tpm()
        .map_err(|f| f.context("step 2, open the TPM"))?;
    let pin = match token.pin_salt {
        Some(_) => Some(super::pin_from(args.pin_file.as_deref(), "TPM PIN:")?),
        None => None,
    };
    let key = tpm
        .unseal_token(&token, pin.as_ref())
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
