//! `lifeline inspect`: show what a packet is for, without any secret.

use std::path::PathBuf;

use argh::FromArgs;

use super::CmdResult;
use crate::escrow::{read_packet_file, EscrowPacket, PacketError, RecoveryPacket, VolumeInfo};

#[derive(FromArgs, Debug)]
/// Show the non-secret description of an escrow or recovery packet. A recovery packet's
/// signature is not checked here; lifeline recover checks it.
#[argh(subcommand, name = "inspect", example = "{command_name} sda2.escrow")]
pub struct Args {
    /// the packet file
    #[argh(positional)]
    pub packet: PathBuf,
}

pub fn run(args: Args) -> CmdResult {
    let bytes = read_packet_file(&args.packet)?;
    if bytes.starts_with(b"lifeline-escrow-packet ") {
        let packet = EscrowPacket::parse(&bytes)?;
        println!("kind: escrow packet (encrypted to the authority's age recipient)");
        print_info(&packet.info);
    } else if bytes.starts_with(b"untrusted comment:") {
        let b = RecoveryPacket::peek_unverified(&bytes)?;
        println!("kind: recovery packet (encrypted under a one-time password)");
        println!("packet-id: {}", b.packet_id);
        println!("machine-id: {}", b.machine_id);
        println!("volume-uuid: {}", b.volume_uuid);
        println!("expires: {}", humantime::format_rfc3339_seconds(b.expires));
        println!("otp-groups: {}", b.otp_groups);
        println!("signature: not checked here (lifeline recover --trust checks it)");
    } else {
        return Err(
            PacketError::Malformed("neither an escrow nor a recovery packet".into()).into(),
        );
    }
    Ok(())
}

fn print_info(info: &VolumeInfo) {
    let mut text = String::new();
    crate::escrow::record::write_info(&mut text, info);
    print!("{text}");
}
