//! `lifeline-server backup` and `restore`: the server directory as one file, and back.

use std::path::PathBuf;

use argh::FromArgs;

use crate::cmd::{CmdResult, Exit, Failure};
use crate::server::backup::{self, BackupError};

#[derive(FromArgs, Debug)]
/// Back up a server directory into one tar file, while the server runs: a consistent snapshot
/// of the database and every other file as it is (the authority's keys stay encrypted under
/// the administrator passphrase, DRSKs stay wrapped by the server's TPM; the TLS key is as on
/// disk). The file is readable by root only; keep it as you keep the server.
#[argh(
    subcommand,
    name = "backup",
    example = "{command_name} --dir /var/lib/lifeline --out /backup/lifeline-$(date +%F).tar"
)]
pub struct BackupArgs {
    /// the server directory
    #[argh(option)]
    pub dir: PathBuf,
    /// the backup file to write (must not exist)
    #[argh(option)]
    pub out: PathBuf,
}

#[derive(FromArgs, Debug)]
/// Restore a server directory from a backup made by lifeline-server backup, into a new
/// directory: checked first (the database opens and its audit log verifies), then made whole
/// or not at all. The database is brought to this server's schema.
#[argh(
    subcommand,
    name = "restore",
    example = "{command_name} --from /backup/lifeline-2026-12-01.tar --dir /var/lib/lifeline",
    example = "{command_name} --from lifeline.tar --dir /var/lib/lifeline --database postgresql:///lifeline?host=/run/postgresql"
)]
pub struct RestoreArgs {
    /// the backup file
    #[argh(option)]
    pub from: PathBuf,
    /// the directory to restore into (must be missing or empty)
    #[argh(option)]
    pub dir: PathBuf,
    /// the database to restore into, written into the restored server.toml: a PostgreSQL
    /// URL (an empty database; this is how a server moves from SQLite to PostgreSQL) or an
    /// SQLite file name; default: the one the backup's server.toml names
    #[argh(option)]
    pub database: Option<String>,
}

impl From<BackupError> for Failure {
    fn from(e: BackupError) -> Self {
        let what = e.to_string();
        match e {
            BackupError::Exists(_) => Failure::new(Exit::Exists, what)
                .todo("choose a new name; nothing is ever overwritten"),
            BackupError::Bad(_) => Failure::usage(what),
            BackupError::Io(_) => Failure::new(Exit::Failure, what),
        }
    }
}

pub fn run_backup(args: BackupArgs) -> CmdResult {
    let files = backup::backup(&args.dir, &args.out)?;
    eprintln!(
        "Backed up {} ({files} files) to {}.",
        args.dir.display(),
        args.out.display()
    );
    Ok(())
}

pub fn run_restore(args: RestoreArgs) -> CmdResult {
    let files = backup::restore(&args.from, &args.dir, args.database.as_deref())?;
    eprintln!(
        "Restored {files} files from {} into {}; its audit log verifies. Start the server on it (lifeline-server serve --dir {}).",
        args.from.display(),
        args.dir.display(),
        args.dir.display()
    );
    Ok(())
}
