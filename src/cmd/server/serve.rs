//! `lifeline-server serve` and `lifeline-server audit verify`.

use std::path::PathBuf;

use argh::FromArgs;

use crate::cmd::{CmdResult, Exit, Failure};
use crate::server::{http, store};

#[derive(FromArgs, Debug)]
/// Run the escrow server over HTTPS, as configured in DIR/server.toml: the API under /v1/ and
/// the helpdesk's web console under /ui/ (administrator networks only).
#[argh(
    subcommand,
    name = "serve",
    example = "{command_name} --dir /var/lib/lifeline"
)]
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
/// Check the audit log's hash chain: any edited, removed or reordered entry is named. With
/// --stream, also check it against the audit stream the server wrote (server.toml's
/// audit_stream): entries deleted from the newest end, which the chain alone cannot show, are
/// named too.
#[argh(
    subcommand,
    name = "verify",
    example = "{command_name} --dir /var/lib/lifeline",
    example = "journalctl -u lifeline-server -o cat > stream.txt; {command_name} --dir /var/lib/lifeline --stream stream.txt"
)]
pub struct VerifyArgs {
    /// the server directory
    #[argh(option)]
    pub dir: PathBuf,
    /// the audit stream as captured: the audit_stream file, or the server's journal
    /// (journalctl -u lifeline-server -o cat > stream.txt); other lines are skipped
    #[argh(option)]
    pub stream: Option<PathBuf>,
}

pub fn run_audit(args: AuditArgs) -> CmdResult {
    let AuditCommand::Verify(args) = args.command;
    let failed = |e: store::StoreError| Failure::new(Exit::Failure, e.to_string());
    let tampered = |what: String| {
        Failure::new(
            Exit::BadPacket,
            format!("the audit log was tampered with: {what}"),
        )
        .todo("restore the database from a backup and investigate")
    };
    let mut db = super::open_store(&args.dir)?;
    let n = db.verify_audit().map_err(failed)?.map_err(tampered)?;
    let Some(stream) = &args.stream else {
        eprintln!(
            "Audit log intact: {n} entries. (Entries deleted from the newest end show only \
             against the audit stream: give --stream.)"
        );
        return Ok(());
    };
    // The stream may be a journal export: large, so read whole but only as text.
    let text = std::fs::read_to_string(stream)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", stream.display())))?;
    let newest = db
        .verify_against_stream(&text)
        .map_err(failed)?
        .map_err(tampered)?
        .ok_or_else(|| {
            Failure::usage(format!("{} holds no audit entries", stream.display()))
                .todo("give the file server.toml's audit_stream names, or the server's journal")
        })?;
    eprintln!(
        "Audit log intact: {n} entries; every entry in the audit stream, up to entry {newest}, is in the database unchanged."
    );
    Ok(())
}
