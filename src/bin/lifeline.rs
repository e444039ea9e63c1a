//! `lifeline`: the client. Escrow a volume's key, recover access with a recovery packet.

#![forbid(unsafe_code)]

use argh::FromArgs;
use lifeline::cmd::{self, escrow, inspect, recover};

#[derive(FromArgs, Debug)]
/// lifeline: never be locked out of your LUKS disk. Escrow a volume's key to your recovery
/// authority; get back in with a recovery packet and a one-time password from your helpdesk.
/// Exit codes: 0 ok, 1 failure, 2 usage, 3 wrong passphrase or one-time password, 4 bad packet,
/// 5 packet not for this volume/machine or expired, 6 volume problem, 7 target exists.
struct Lifeline {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Escrow(escrow::Args),
    Recover(recover::Args),
    Inspect(inspect::Args),
}

fn main() {
    let args: Lifeline = cmd::parse_args();
    let result = match args.command {
        Command::Escrow(a) => escrow::run(a),
        Command::Recover(a) => recover::run(a),
        Command::Inspect(a) => inspect::run(a),
    };
    std::process::exit(cmd::finish("lifeline", result));
}
