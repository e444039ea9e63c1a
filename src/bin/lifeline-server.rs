//! `lifeline-server`: the recovery authority (and, later, the escrow server).

#![forbid(unsafe_code)]

use argh::FromArgs;
use lifeline::cmd::{self, server};

#[derive(FromArgs, Debug)]
/// lifeline-server: the recovery authority. Creates the keys escrow packets are encrypted to
/// and issues signed recovery packets with one-time passwords.
/// Exit codes: 0 ok, 1 failure, 2 usage, 3 wrong passphrase, 4 bad packet, 7 target exists.
struct LifelineServer {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Init(server::init::Args),
    Recovery(server::recovery::Args),
}

fn main() {
    let args: LifelineServer = cmd::parse_args();
    let result = match args.command {
        Command::Init(a) => server::init::run(a),
        Command::Recovery(a) => server::recovery::run(a),
    };
    std::process::exit(cmd::finish("lifeline-server", result));
}
