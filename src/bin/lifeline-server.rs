//! `lifeline-server`: the recovery authority, DRSK custody, and the escrow server.

#![forbid(unsafe_code)]

use argh::FromArgs;
use lifeline::cmd::{self, server};

#[derive(FromArgs, Debug)]
/// lifeline-server: the recovery authority and escrow server. Creates the keys escrow packets
/// are encrypted to, stores machines' escrow packets, and issues signed recovery packets with
/// one-time passwords once an administrator approves. Holds clients' TPM storage keys (DRSKs)
/// in its own TPM for motherboard-swap restores.
/// Exit codes: 0 ok, 1 failure, 2 usage, 3 wrong passphrase or refused credential, 4 bad
/// packet, 5 not found or no longer applicable, 7 target exists, 8 TPM.
struct LifelineServer {
    /// the server's TPM, as a TCTI string (default: $LIFELINE_TCTI, else device:/dev/tpmrm0)
    #[argh(option)]
    tcti: Option<String>,
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Init(server::init::Args),
    Recovery(server::recovery::Args),
    Drsk(server::drsk::Args),
    Serve(server::serve::Args),
    Admin(server::admin::Args),
    Audit(server::serve::AuditArgs),
    Backup(server::backup::BackupArgs),
    Restore(server::backup::RestoreArgs),
}

fn main() {
    cmd::quiet_tss_log();
    let args: LifelineServer = cmd::parse_args();
    let g = cmd::Globals::new(args.tcti, None);
    let result = match args.command {
        Command::Init(a) => server::init::run(a),
        Command::Recovery(a) => server::recovery::run(a),
        Command::Drsk(a) => server::drsk::run(a, &g),
        Command::Serve(a) => server::serve::run(a, &g),
        Command::Admin(a) => server::admin::run(a),
        Command::Audit(a) => server::serve::run_audit(a),
        Command::Backup(a) => server::backup::run_backup(a),
        Command::Restore(a) => server::backup::run_restore(a),
    };
    std::process::exit(cmd::finish("lifeline-server", result));
}
