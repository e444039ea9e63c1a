//! `lifeline escrow`: write an escrow packet for a LUKS volume.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use argh::FromArgs;

use super::{machine_id, CmdResult, Exit, Failure, Globals};
use crate::escrow::https::Https;
use crate::escrow::{slot, EscrowPacket, Record, VolumeInfo};
use crate::luks::LuksVolume;
use crate::secret::{Passphrase, VolumeKey};
use crate::{api, atomic_file};

#[derive(FromArgs, Debug)]
/// Escrow a LUKS volume's key: read it with a passphrase and write it to an escrow packet,
/// encrypted to your recovery authority, as a file (--out), uploaded to the escrow server this
/// machine joined (--server), or both. The packet holds no secret in clear.
#[argh(
    subcommand,
    name = "escrow",
    example = "{command_name} /dev/nvme0n1p3 --server https://escrow.example.org:8443",
    example = "{command_name} /dev/sda2 --recipient recipient.txt --out sda2.escrow --random-passphrase"
)]
pub struct Args {
    /// the LUKS block device or image file
    #[argh(positional)]
    pub device: PathBuf,
    /// the authority's age recipient file (recipient.txt from lifeline-server init; default
    /// with --server: the one the server gave at join)
    #[argh(option)]
    pub recipient: Option<PathBuf>,
    /// where to write the escrow packet (must not exist)
    #[argh(option)]
    pub out: Option<PathBuf>,
    /// upload the packet to this escrow server (see lifeline join)
    #[argh(option)]
    pub server: Option<String>,
    /// with --server: mark this volume's older packets on the server obsolete
    #[argh(switch)]
    pub obsolete_older: bool,
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

pub fn run(args: Args, g: &Globals) -> CmdResult {
    if args.out.is_none() && args.server.is_none() {
        return Err(Failure::usage(
            "say where the packet goes: --out FILE, --server URL, or both",
        ));
    }
    let server = match &args.server {
        Some(url) => Some(super::join::joined_server(g, Some(url), true)?),
        None => None,
    };
    let recipient = match (&args.recipient, &server) {
        (Some(path), _) => read_recipient(path)?,
        (None, Some(_)) => joined_recipient(g)?,
        (None, None) => {
            return Err(Failure::usage(
                "--recipient is needed (the authority's recipient.txt)",
            ))
        }
    };
    if let Some(out) = args.out.as_ref().filter(|o| o.exists()) {
        return Err(
            Failure::new(Exit::Exists, format!("{} already exists", out.display()))
                .todo("choose another --out name; existing packets are never overwritten"),
        );
    }
    let mut volume = LuksVolume::open(&args.device)?;
    let key = super::volume_key_from_user(&mut volume, &args.device, args.key_file.as_deref())?;
    let to = Destination {
        recipient: &recipient,
        server: server.as_ref(),
        out: args.out.as_deref(),
        machine_id: machine_id(args.machine_id.as_deref())?,
        obsolete_older: args.obsolete_older,
        random_passphrase: args.random_passphrase,
        pbkdf2_iterations: args.pbkdf2_iterations,
        state_dir: &g.state_dir,
    };
    let done = escrow_volume(&mut volume, key, &to)?;
    if let Some(out) = &args.out {
        eprintln!(
            "Escrow packet for volume {} written to {}.",
            done.volume,
            out.display()
        );
    }
    if let Some(answer) = &done.uploaded {
        let id = &answer.packet;
        match answer.status.as_str() {
            api::ALREADY_IN_ESCROW => eprintln!(
                "Volume {}: this key is already in escrow (packet {id}).",
                done.volume
            ),
            _ => eprintln!(
                "Volume {}: escrowed on the server as packet {id}.",
                done.volume
            ),
        }
    }
    if let Some(slot) = done.added_slot {
        eprintln!("A random recovery passphrase was added in keyslot {slot}; only the authority can read it.");
    }
    Ok(())
}

/// The authority's recipient the joined server gave at `lifeline join`.
pub fn joined_recipient(g: &Globals) -> Result<age::x25519::Recipient, Failure> {
    read_recipient(&g.state_dir.join("recipient.txt"))
}

/// Where an escrow packet goes, and how it is made.
pub struct Destination<'a> {
    pub recipient: &'a age::x25519::Recipient,
    pub server: Option<&'a Https>,
    pub out: Option<&'a Path>,
    pub machine_id: String,
    pub obsolete_older: bool,
    /// Add a random recovery passphrase in a free keyslot and escrow it with the key.
    pub random_passphrase: bool,
    pub pbkdf2_iterations: Option<u32>,
    /// Where a LUKS1 volume's recovery keyslot is noted.
    pub state_dir: &'a Path,
}

/// What `escrow_volume` did.
pub struct Escrowed {
    /// The volume's UUID, with its label if it has one.
    pub volume: String,
    /// The server's answer, when uploaded.
    pub uploaded: Option<api::Escrowed>,
    /// The keyslot the random recovery passphrase went into.
    pub added_slot: Option<u32>,
}

/// Escrows `key` (already checked against `volume`): seals the packet, adds the random
/// recovery passphrase when asked, and stores the packet. A failure leaves neither a packet
/// for a passphrase that was never added nor a keyslot nobody knows.
pub fn escrow_volume(
    volume: &mut LuksVolume,
    key: VolumeKey,
    to: &Destination<'_>,
) -> Result<Escrowed, Failure> {
    let luks = volume.info()?;
    let recovery_passphrase = if to.random_passphrase {
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
            machine_id: to.machine_id.clone(),
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
        use_token: None,
    };
    let packet = EscrowPacket::seal(&record, to.recipient)?;

    let fingerprint = crate::secret::key_fingerprint(
        &record.volume_key,
        &luks.uuid,
        record.recovery_passphrase.as_ref(),
    );

    // Order matters: the packet is on disk (under a temporary name) before the keyslot exists,
    // and becomes visible (file) or stored (server) only once the keyslot is in place.
    let staged =
        match to.out {
            Some(out) => Some(atomic_file::stage(out, &packet, 0o600).map_err(|e| {
                Failure::new(Exit::Failure, format!("cannot write the packet: {e}"))
            })?),
            None => None,
        };
    let mut added_slot = None;
    if let Some(pass) = &record.recovery_passphrase {
        if let Some(n) = to.pbkdf2_iterations {
            volume.set_pbkdf2_iterations(n)?;
        }
        added_slot = Some(volume.add_passphrase(&record.volume_key, pass)?);
    }
    let undo = |volume: &mut LuksVolume| {
        if let Some(slot) = added_slot {
            let _ = volume.destroy_keyslot(slot);
        }
    };
    let uploaded = match to.server {
        Some(s) => {
            let query = api::EscrowQuery {
                fingerprint,
                key: Some(crate::secret::key_fingerprint(
                    &record.volume_key,
                    &luks.uuid,
                    None,
                )),
                obsolete_older: to.obsolete_older,
            };
            match s.post_bytes::<api::Escrowed>(&query.path(), &packet) {
                Ok((_, answer)) => Some(answer),
                Err(e) => {
                    undo(volume);
                    return Err(e.into());
                }
            }
        }
        None => None,
    };
    if let Some(staged) = staged {
        if let Err(e) = staged.commit() {
            undo(volume);
            return Err(Failure::new(
                Exit::Failure,
                format!("cannot write the packet: {e}"),
            ));
        }
    }
    if let Some(slot) = added_slot {
        // Only a help for `lifeline status`: the passphrase is in escrow and works without it.
        if let Err(e) = slot::write(volume, to.state_dir, &luks.uuid, slot) {
            eprintln!(
                "warning: cannot note the recovery keyslot ({e}); lifeline status will not see it."
            );
        }
    }
    let label = luks.label.map(|l| format!(" ({l})")).unwrap_or_default();
    Ok(Escrowed {
        volume: format!("{}{label}", luks.uuid),
        uploaded,
        added_slot,
    })
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
