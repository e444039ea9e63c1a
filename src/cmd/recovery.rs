//! `lifeline recovery request`: ask the helpdesk for a recovery packet.

use std::path::PathBuf;

use argh::FromArgs;

use super::{machine_id, CmdResult, Globals};
use crate::api;
use crate::luks::LuksVolume;

#[derive(FromArgs, Debug)]
/// Recovery requests to the escrow server.
#[argh(subcommand, name = "recovery")]
pub struct Args {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Request(RequestArgs),
}

#[derive(FromArgs, Debug)]
/// File a recovery request for a volume: it shows up for the helpdesk, who approve it. Prints
/// the recovery ID to read to them over the phone. Needs no credential.
#[argh(
    subcommand,
    name = "request",
    example = "{command_name} /dev/nvme0n1p3"
)]
pub struct RequestArgs {
    /// the LUKS device, image or header backup
    #[argh(positional)]
    pub device: PathBuf,
    /// the escrow server (default: the one this machine joined)
    #[argh(option)]
    pub server: Option<String>,
    /// the machine the volume belongs to (default: /etc/machine-id)
    #[argh(option)]
    pub machine_id: Option<String>,
}

pub fn run(args: Args, g: &Globals) -> CmdResult {
    let Command::Request(args) = args.command;
    let uuid = LuksVolume::open(&args.device)?.info()?.uuid;
    let machine = machine_id(args.machine_id.as_deref())?;
    let server = super::join::joined_server(g, args.server.as_deref(), false)?;
    let request = api::RecoveryRequest {
        machine,
        volume_uuid: uuid.clone(),
    };
    let answer: api::RecoveryRequested =
        server.post_json(&api::RECOVERY_REQUESTS.path(&[]), &request)?;
    eprintln!(
        "Recovery requested for volume {uuid}. Call your helpdesk and give them this recovery ID:"
    );
    println!("{}", answer.recovery_id);
    Ok(())
}
