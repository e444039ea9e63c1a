//! `lifeline recover`: open a recovery packet with the one-time password and regain access.

use std::path::PathBuf;
use std::time::SystemTime;

use argh::FromArgs;

use super::{read_passphrase_file, CmdResult, Exit, Failure};
use crate::api;
use crate::escrow::https::FetchError;
use crate::escrow::otp;
use crate::escrow::{read_packet_file, PacketError, Record, RecoveryPacket};
use crate::luks::LuksVolume;
use crate::prompt::{Prompt, Terminal};

#[derive(FromArgs, Debug)]
/// Recover access to a LUKS volume with a recovery packet from your helpdesk and the one-time
/// password they read to you. Checks the packet's signature and that it is for this volume and
/// machine before asking for the password, then proves the escrowed key opens the volume and,
/// if asked, adds a new passphrase.
#[argh(
    subcommand,
    name = "recover",
    example = "{command_name} /dev/nvme0n1p3 --server https://escrow.example.org:8443 --new-passphrase-file new.txt",
    example = "{command_name} /dev/sda2 --packet /media/stick/lifeline/recovery.packet --trust minisign.pub --new-passphrase-file -"
)]
pub struct Args {
    /// the LUKS block device, image file, or LUKS header backup file
    /// (cryptsetup luksHeaderBackup)
    #[argh(positional)]
    pub device: PathBuf,
    /// the recovery packet file
    #[argh(option)]
    pub packet: Option<PathBuf>,
    /// fetch the recovery packet from this escrow server instead (see lifeline join); once a
    /// new passphrase is added, it is reported used (and deleted there)
    #[argh(option)]
    pub server: Option<String>,
    /// the authority's minisign public key that must have signed the packet (default with
    /// --server: the one the server gave at join)
    #[argh(option)]
    pub trust: Option<PathBuf>,
    /// read the one-time password from this file (default: ask)
    #[argh(option)]
    pub otp_file: Option<PathBuf>,
    /// add the passphrase in this file (its first line) in a free keyslot
    #[argh(option)]
    pub new_passphrase_file: Option<PathBuf>,
    /// after adding the new passphrase, remove this keyslot (the forgotten passphrase's)
    #[argh(option)]
    pub replace_slot: Option<u32>,
    /// the machine this volume belongs to (default: /etc/machine-id); for recovering a header
    /// backup on another computer
    #[argh(option)]
    pub machine_id: Option<String>,
    /// how many one-time passwords may be tried (default 5)
    #[argh(option, default = "5")]
    pub attempts: u32,
    /// PBKDF2 iterations for the new keyslot instead of cryptsetup's benchmarked default;
    /// for test images only
    #[argh(option)]
    pub pbkdf2_iterations: Option<u32>,
}

pub fn run(args: Args, g: &super::Globals) -> CmdResult {
    if args.replace_slot.is_some() && args.new_passphrase_file.is_none() {
        return Err(Failure::usage("--replace-slot needs --new-passphrase-file")
            .todo("a keyslot is only removed after a new passphrase is in place"));
    }
    let mut server = match &args.server {
        Some(url) => Some(super::join::joined_server(g, Some(url), false)?),
        None => None,
    };
    let trusted = match (&args.trust, &server) {
        (Some(path), _) => read_trust_key(path)?,
        (None, Some(_)) => read_trust_key(&g.state_dir.join("minisign.pub"))?,
        (None, None) => {
            return Err(Failure::usage(
                "--trust is needed (the authority's minisign.pub)",
            ))
        }
    };
    let mut volume = LuksVolume::open(&args.device)?;
    let luks = volume.info()?;
    let machine_id = super::machine_id(args.machine_id.as_deref())?;
    let bytes = match (&args.packet, &server) {
        (Some(path), _) => {
            read_packet_file(path).map_err(|e| Failure::from(e).context(path.display()))?
        }
        (None, Some(s)) => s
            .get_packet(&api::RECOVERY_PACKET.path(&[&machine_id, &luks.uuid]))
            .map_err(|e| match e {
                FetchError::NotFound(_) => Failure::from(e).todo(
                    "ask the helpdesk to approve your recovery request (lifeline recovery request)",
                ),
                e => Failure::from(e),
            })?,
        (None, None) => {
            return Err(Failure::usage(
                "give the recovery packet with --packet FILE or --server URL",
            ))
        }
    };
    let packet = RecoveryPacket::verify(&bytes, &trusted)?;
    packet.check_binding(&machine_id, &luks.uuid, SystemTime::now())?;

    // Everything that can be checked without the code is checked now, so nobody types a
    // one-time password only to hear that the keyslots are full.
    let new_passphrase = match &args.new_passphrase_file {
        Some(file) => Some(read_passphrase_file(file)?),
        None => None,
    };
    if new_passphrase.is_some() {
        volume.free_keyslot()?;
    }
    if let Some(slot) = args.replace_slot {
        if !volume.slot_is_active(slot) {
            return Err(crate::luks::LuksError::SlotNotActive(slot).into());
        }
    }

    let record = open_with_otp(&packet, &args)?;
    volume.check_key(&record.volume_key)?;
    eprintln!(
        "The one-time password is correct and the escrowed key opens {}.",
        args.device.display()
    );

    let Some(new_passphrase) = new_passphrase else {
        // A dry run changes nothing, so the packet stays usable: it is not reported used.
        eprintln!(
            "Nothing was changed. To set a new passphrase, run again with --new-passphrase-file{}.",
            if server.is_some() {
                " (the packet stays on the server until it is used or expires)"
            } else {
                ""
            }
        );
        return Ok(());
    };
    if let Some(n) = args.pbkdf2_iterations {
        volume.set_pbkdf2_iterations(n)?;
    }
    let slot = volume.add_passphrase(&record.volume_key, &new_passphrase)?;
    // Prove the new passphrase works before anything is removed.
    volume.unlock(&new_passphrase)?;
    eprintln!("New passphrase added in keyslot {slot}.");
    if let Some(s) = &mut server {
        // One-time use: now that it changed something, the server deletes the packet. Failing
        // to say so costs nothing here. The use token proves this machine opened the packet.
        let reported = match &record.use_token {
            Some(t) => crate::unlock::EscrowSource::report_used(s, &packet.binding.packet_id, t)
                .map_err(|e| e.to_string()),
            None => Err("the packet carries no use token".into()),
        };
        if let Err(e) = reported {
            eprintln!("warning: could not tell the server the packet was used: {e}");
        }
    }
    if let Some(old) = args.replace_slot {
        if old == slot {
            return Err(Failure::new(
                Exit::Volume,
                format!("keyslot {old} now holds the new passphrase; nothing removed"),
            ));
        }
        volume.destroy_keyslot(old)?;
        eprintln!("Keyslot {old} removed.");
    }
    Ok(())
}

fn open_with_otp(packet: &RecoveryPacket, args: &Args) -> Result<Record, Failure> {
    let groups = packet.binding.otp_groups;
    if let Some(file) = &args.otp_file {
        let text = zeroize::Zeroizing::new(
            String::from_utf8(super::read_small(file, 1024)?)
                .map_err(|_| Failure::usage(format!("{} is not text", file.display())))?,
        );
        let code = otp::parse(&text, groups)?;
        return Ok(packet.open(&code)?);
    }
    let mut console = Terminal::new();
    console.say(&format!(
        "Recovery packet {} for volume {} (valid until {}).",
        packet.binding.packet_id,
        packet.binding.volume_uuid,
        humantime::format_rfc3339_seconds(packet.binding.expires)
    ));
    let mut last = Failure::from(PacketError::WrongPassphrase);
    for attempt in 1..=args.attempts {
        let answer =
            console.ask_secret(&format!("One-time password ({groups} groups of 6 digits):"))?;
        let remaining = args.attempts - attempt;
        let failure = match otp::parse(&answer, groups) {
            Err(e) => Failure::from(e),
            Ok(code) => match packet.open(&code) {
                Ok(record) => return Ok(record),
                Err(e @ PacketError::WrongPassphrase) => Failure::from(e),
                Err(e) => return Err(e.into()),
            },
        };
        if remaining > 0 {
            console.say(&format!(
                "{}. {remaining} attempts left.",
                capitalise(&failure.what)
            ));
        }
        last = failure;
    }
    Err(last)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Reads a minisign public key file (as `minisign -G` writes it).
pub fn read_trust_key(path: &std::path::Path) -> Result<minisign::PublicKey, Failure> {
    let text = String::from_utf8(super::read_small(path, 4096)?)
        .map_err(|_| Failure::usage(format!("{} is not a text file", path.display())))?;
    minisign::PublicKeyBox::from_string(&text)
        .and_then(|b| b.into_public_key())
        .map_err(|_| {
            Failure::usage(format!("{} is not a minisign public key", path.display()))
                .todo("use the minisign.pub that lifeline-server init wrote")
        })
}
