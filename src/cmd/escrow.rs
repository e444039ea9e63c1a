//! `lifeline escrow`: write an escrow packet for a LUKS volume.

use std::path::PathBuf;
use std::time::SystemTime;

use argh::FromArgs;

use super::{local_machine_id, CmdResult, Exit, Failure};
use crate::atomic_file;
use crate::escrow::{EscrowPacket, Record, VolumeInfo};
use crate::luks::{LuksVolume, Pbkdf};
use crate::secret::Passphrase;

#[derive(FromArgs, Debug)]
/// Escrow a LUKS volume's key: read it with a passphrase and write it to an escrow packet,
/// encrypted to your recovery authority. The packet holds no secret in clear; keep it with the
/// authority or in a safe.
#[argh(subcommand, name = "escrow")]
pub struct Args {
    /// the LUKS block device or image file
    #[argh(positional)]
    pub device: PathBuf,
    /// the authority's age recipient file (recipient.txt from lifeline-server init)
    #[argh(option)]
    pub recipient: PathBuf,
    /// where to write the escrow packet (must not exist)
    #[argh(option)]
    pub out: PathBuf,
    /// also add a random recovery passphrase in a free keyslot and escrow it with the key
    #[argh(switch)]
    pub random_passphrase: bool,
    /// read the volume passphrase from this file, byte for byte as cryptsetup --key-file does
    /// (default: ask)
    #[argh(option)]
    pub key_file: Option<PathBuf>,
    /// the machine ID to record (default: /etc/machine-id)
    #[argh(option)]
    pub machine_id: Option<String>,
    /// PBKDF2 iterations for the recovery keyslot instead of cryptsetup's benchmarked default;
    /// for test images only
    #[argh(option)]
    pub pbkdf2_iterations: Option<u32>,
}

pub fn run(args: Args) -> CmdResult {
    let recipient = read_recipient(&args.recipient)?;
    if args.out.exists() {
        return Err(Failure::new(
            Exit::Exists,
            format!("{} already exists", args.out.display()),
        )
        .todo("choose another --out name; existing packets are never overwritten"));
    }
    let mut volume = LuksVolume::open(&args.device)?;
    let luks = volume.info()?;
    let machine_id = match &args.machine_id {
        Some(id) => id.to_ascii_lowercase(),
        None => local_machine_id()?,
    };
    let key = super::volume_key_from_user(&mut volume, &args.device, args.key_file.as_deref())?;

    let recovery_passphrase = if args.random_passphrase {
        // Fail before writing anything if there is no room for the new keyslot.
        volume.free_keyslot()?;
        Some(
            Passphrase::generate_recovery()
                .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?,
        )
    } else {
        None
    };

    let record = Record {
        info: VolumeInfo {
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            machine_id,
            client_id: None,
            volume_uuid: luks.uuid.clone(),
            volume_label: luks.label.clone(),
            luks_version: luks.version,
            cipher: luks.cipher.clone(),
            key_bits: luks.key_bits,
            created: SystemTime::now(),
        },
        volume_key: key,
        recovery_passphrase,
        binding: None,
    };
    let packet = EscrowPacket::seal(&record, &recipient)?;

    // Order matters: the packet is on disk (under a temporary name) before the keyslot exists,
    // and becomes visible only once the keyslot is in place. A failure in between leaves
    // neither a packet for a passphrase that was never added nor a keyslot nobody knows.
    let staged = atomic_file::stage(&args.out, &packet, 0o600)
        .map_err(|e| Failure::new(Exit::Failure, format!("cannot write the packet: {e}")))?;
    let mut added_slot = None;
    if let Some(pass) = &record.recovery_passphrase {
        if let Some(n) = args.pbkdf2_iterations {
            volume.set_pbkdf(Pbkdf::Pbkdf2Iterations(n))?;
        }
        added_slot = Some(volume.add_passphrase(&record.volume_key, pass)?);
    }
    if let Err(e) = staged.commit() {
        if let Some(slot) = added_slot {
            let _ = volume.destroy_keyslot(slot);
        }
        return Err(Failure::new(
            Exit::Failure,
            format!("cannot write the packet: {e}"),
        ));
    }

    eprintln!(
        "Escrow packet for volume {}{} written to {}.",
        luks.uuid,
        luks.label.map(|l| format!(" ({l})")).unwrap_or_default(),
        args.out.display()
    );
    if let Some(slot) = added_slot {
        eprintln!("A random recovery passphrase was added in keyslot {slot}; only the authority can read it.");
    }
    Ok(())
}

/// Reads the age recipient (`age1…`) from a file: the first line that is not a comment.
pub fn read_recipient(path: &std::path::Path) -> Result<age::x25519::Recipient, Failure> {
    let text = String::from_utf8(super::read_small(path, 4096)?)
        .map_err(|_| Failure::usage(format!("{} is not a text file", path.display())))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    line.parse().map_err(|_| {
        Failure::usage(format!(
            "{} does not hold an age recipient (age1…)",
            path.display()
        ))
        .todo("use the recipient.txt that lifeline-server init wrote")
    })
}
