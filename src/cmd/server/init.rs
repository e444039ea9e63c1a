//! `lifeline-server init`: create the recovery authority.

use std::path::PathBuf;

use argh::FromArgs;

use super::admin_passphrase;
use crate::cmd::CmdResult;
use crate::server::authority::{self, RECIPIENT_FILE, TRUST_KEY_FILE};

#[derive(FromArgs, Debug)]
/// Create a recovery authority: the age key that escrow packets are encrypted to and the
/// minisign key that signs recovery packets, both encrypted under an administrator passphrase.
/// Hand DIR/recipient.txt and DIR/minisign.pub to clients; back up the whole directory.
#[argh(subcommand, name = "init")]
pub struct Args {
    /// directory to create (must be missing or empty)
    #[argh(option)]
    pub dir: PathBuf,
    /// read the administrator passphrase from this file's first line (default: ask twice)
    #[argh(option)]
    pub passphrase_file: Option<PathBuf>,
}

pub fn run(args: Args) -> CmdResult {
    let passphrase = admin_passphrase(args.passphrase_file.as_deref(), true)?;
    authority::init(&args.dir, &passphrase)?;
    eprintln!("Authority created in {}.", args.dir.display());
    eprintln!(
        "  give clients: {} and {}",
        args.dir.join(RECIPIENT_FILE).display(),
        args.dir.join(TRUST_KEY_FILE).display()
    );
    eprintln!(
        "  back up the whole directory; without it and the passphrase, escrowed keys are lost"
    );
    Ok(())
}
