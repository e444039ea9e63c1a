//! `lifeline-server serve` and `lifeline-server audit verify`.

use std::path::PathBuf;

use argh::FromArgs;

use crate::cmd::{CmdResult, Exit, Failure};
use crate::server::{http, store};

#[derive(FromArgs, Debug)]
/// Run the escrow server over HTTPS, as configured in DIR/server.toml.
#[argh(subcommand, name = "serve")]
pub struct Args {
    /// the server directory (from lifeline-server init --tls-name)
    #[argh(option)]
    pub dir: PathBuf,
}

pub fn run(args: Args, g: &crate::cmd::Globals) -> CmdResult {
    http::serve(args.dir, g.tcti.clone()).map_err(|e| Failure::new(Exit::Failure, e))
}

#[derive(FromArgs, Debug)]
/// The audit log.
#[argh(subcommand, name = "audit")]
pub struct AuditArgs {
    #[argh(subcommand)]
    pub command: AuditCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum AuditCommand {
    Verify(VerifyArgs),
}

#[derive(FromArgs, Debug)]
/// Check the audit log's hash chain: any edited, removed or reordered entry is named.
#[argh(subcommand, name = "verify")]
pub struct VerifyArgs {
    /// the server directory
    #[argh(option)]
    pub dir: PathBuf,
}

pub fn run_audit(args: AuditArgs) -> CmdResult {
    let AuditCommand::Verify(args) = args.command;
    let db = store::open(&args.dir.join("lifeline.db"))
        .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?;
    match store::verify_audit(&db).map_err(|e| Failure::new(Exit::Failure, e.to_string()))? {
        Ok(n) => {
            eprintln!("Audit log intact: {n} entries.");
            Ok(())
        }
        Err(what) => Err(Failure::new(
            Exit::BadPacket,
            format!("the audit log was tampered with: {what}"),
        )
        .todo("restore the database from a backup and investigate")),
    }
}
