//! `lifeline-server recovery issue`: turn an escrow packet into a recovery packet and an OTP.

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use super::admin_secret;
use crate::atomic_file;
use crate::cmd::{CmdResult, Exit, Failure};
use crate::escrow::{otp, read_packet_file};
use crate::server::authority;

#[derive(FromArgs, Debug)]
/// Recovery packets.
#[argh(subcommand, name = "recovery")]
pub struct Args {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Issue(IssueArgs),
}

#[derive(FromArgs, Debug)]
/// Issue a recovery packet from an escrow packet: bound to its machine and volume, encrypted
/// under a new one-time password, signed by the authority. Prints the one-time password once,
/// on standard output; read it to the user over the phone and do not keep it.
#[argh(
    subcommand,
    name = "issue",
    example = "{command_name} --dir authority --escrow sda2.escrow --out recovery.packet"
)]
pub struct IssueArgs {
    /// the authority directory
    #[argh(option)]
    pub dir: PathBuf,
    /// the escrow packet of the volume to recover
    #[argh(option)]
    pub escrow: PathBuf,
    /// where to write the recovery packet (must not exist)
    #[argh(option)]
    pub out: PathBuf,
    /// how long the packet can be used, e.g. 72h, 30m, 7days (default 72h)
    #[argh(option, default = "String::from(\"72h\")")]
    pub valid_for: String,
    /// groups of six digits in the one-time password (default 4, i.e. 64 bits)
    #[argh(option, default = "otp::DEFAULT_GROUPS")]
    pub otp_groups: usize,
    /// read the administrator passphrase from this file's first line (default: ask)
    #[argh(option)]
    pub passphrase_file: Option<PathBuf>,
    /// instead of the passphrase, a share file (repeat for K shares of a K-of-N authority)
    #[argh(option)]
    pub share_file: Vec<PathBuf>,
}

pub fn run(args: Args) -> CmdResult {
    let Command::Issue(args) = args.command;
    let valid_for: Duration = humantime::parse_duration(&args.valid_for).map_err(|e| {
        Failure::usage(format!("--valid-for {}: {e}", args.valid_for))
            .todo("write it like 72h or 30m")
    })?;
    if valid_for.is_zero() {
        return Err(Failure::usage("--valid-for must be longer than zero"));
    }
    if !(otp::MIN_GROUPS..=otp::MAX_GROUPS).contains(&args.otp_groups) {
        return Err(otp::OtpError::GroupCount(args.otp_groups).into());
    }
    if args.out.exists() {
        return Err(Failure::new(
            Exit::Exists,
            format!("{} already exists", args.out.display()),
        )
        .todo("choose another --out name; existing packets are never overwritten"));
    }
    let escrow = read_packet_file(&args.escrow)
        .map_err(|e| Failure::from(e).context(args.escrow.display()))?;
    let passphrase = admin_secret(args.passphrase_file.as_deref(), &args.share_file)?;
    let unlocked = authority::unlock(&args.dir, &passphrase)?;
    let issued = unlocked
        .issue_recovery(&escrow, valid_for, args.otp_groups)
        .map_err(|e| Failure::from(e).context(args.escrow.display()))?;
    drop(unlocked);
    atomic_file::write_new(&args.out, &issued.packet, 0o644).map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!("cannot write the recovery packet: {e}"),
        )
    })?;
    let b = &issued.binding;
    eprintln!(
        "Recovery packet {} written to {}.",
        b.packet_id,
        args.out.display()
    );
    eprintln!("  machine {}  volume {}", b.machine_id, b.volume_uuid);
    eprintln!(
        "  valid until {}",
        humantime::format_rfc3339_seconds(b.expires)
    );
    eprintln!("One-time password (read it to the user group by group; it is not stored anywhere):");
    // expose_secret: printing the code once is the purpose of this command.
    println!("{}", issued.otp.expose_secret());
    Ok(())
}
