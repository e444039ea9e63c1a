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
    /// also make a local CA and a server certificate for this host name or IP address
    /// (repeat for several), and a server.toml for lifeline-server serve
    #[argh(option)]
    pub tls_name: Vec<String>,
    /// with --tls-name: the address server.toml listens on (default 127.0.0.1:8443)
    #[argh(option, default = "String::from(\"127.0.0.1:8443\")")]
    pub listen: String,
}

pub fn run(args: Args) -> CmdResult {
    let passphrase = admin_passphrase(args.passphrase_file.as_deref(), true)?;
    if args.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(crate::cmd::Failure::usage(format!(
            "--listen {}: not an address:port",
            args.listen
        )));
    }
    let (names, listen) = (args.tls_name.clone(), args.listen.clone());
    authority::init(&args.dir, &passphrase, |dir| {
        if names.is_empty() {
            return Ok(());
        }
        crate::server::config::make_tls(dir, &names).map_err(std::io::Error::other)?;
        crate::atomic_file::write_new(
            &dir.join(crate::server::config::CONFIG_FILE),
            crate::server::config::default_text(&listen).as_bytes(),
            0o644,
        )?;
        Ok(())
    })?;
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
