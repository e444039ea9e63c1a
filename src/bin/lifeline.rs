//! `lifeline`: the client. Escrow and recover volume keys; provision the TPM, seal volume keys
//! under its recoverable storage key, back that key up and restore it after a board swap.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use argh::FromArgs;
use lifeline::cmd::{
    self, backup, enroll, escrow, inspect, join, provision, recover, recovery, status, unlock,
    Globals,
};

#[derive(FromArgs, Debug)]
/// lifeline: never be locked out of your LUKS disk. Escrow a volume's key to your recovery
/// authority; get back in with a recovery packet and a one-time password from your helpdesk;
/// unlock with the TPM through a storage key that survives a motherboard swap.
/// Exit codes: 0 ok, 1 failure, 2 usage, 3 wrong passphrase or one-time password, 4 bad packet,
/// 5 packet not for this volume/machine or expired, 6 volume problem, 7 target exists, 8 TPM,
/// 9 unlock stepped aside (the distribution's own unlock step takes over).
struct Lifeline {
    /// TPM to use, as a TCTI string (default: $LIFELINE_TCTI, else device:/dev/tpmrm0; other
    /// than device:PATH only when built with the any-tcti feature)
    #[argh(option)]
    tcti: Option<String>,
    /// directory for lifeline's state files (default: $LIFELINE_STATE_DIR, else /etc/lifeline)
    #[argh(option)]
    state_dir: Option<PathBuf>,
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Escrow(escrow::Args),
    Recover(recover::Args),
    Inspect(inspect::Args),
    Provision(provision::Args),
    Id(provision::IdArgs),
    Enroll(enroll::Args),
    UnsealCheck(enroll::CheckArgs),
    Pin(enroll::PinArgs),
    Backup(backup::Args),
    SrkPublic(backup::SrkArgs),
    Restore(backup::RestoreArgs),
    Activate(backup::ActivateArgs),
    Join(join::Args),
    Recovery(recovery::Args),
    Status(status::Args),
    Unlock(unlock::Args),
}

fn main() {
    // Started again by `lifeline unlock` to mount and read one removable device.
    if std::env::var_os(lifeline::escrow::usb::READER_ENV).is_some() {
        std::process::exit(lifeline::escrow::usb::serve_reader());
    }
    let started = std::time::Instant::now();
    cmd::quiet_tss_log();
    let args: Lifeline = cmd::parse_args();
    let g = Globals::new(args.tcti, args.state_dir);
    let result = match args.command {
        Command::Escrow(a) => escrow::run(a, &g),
        Command::Recover(a) => recover::run(a, &g),
        Command::Inspect(a) => inspect::run(a),
        Command::Provision(a) => provision::run(a, &g),
        Command::Id(a) => provision::run_id(a, &g),
        Command::Enroll(a) => enroll::run(a, &g),
        Command::UnsealCheck(a) => enroll::run_check(a, &g),
        Command::Pin(a) => enroll::run_pin(a, &g),
        Command::Backup(a) => backup::run(a, &g),
        Command::SrkPublic(a) => backup::run_srk(a, &g),
        Command::Restore(a) => backup::run_restore(a, &g),
        Command::Activate(a) => backup::run_activate(a, &g),
        Command::Join(a) => join::run(a, &g),
        Command::Recovery(a) => recovery::run(a, &g),
        Command::Status(a) => status::run(a, &g),
        Command::Unlock(a) => unlock::run(a, &g, started),
    };
    std::process::exit(cmd::finish("lifeline", result));
}
