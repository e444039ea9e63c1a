//! `lifeline-server init`: create the recovery authority.

use std::path::PathBuf;

use argh::FromArgs;

use super::admin_passphrase;
use crate::cmd::{CmdResult, Failure};
use crate::server::authority::{self, AuthorityError, RECIPIENT_FILE, TRUST_KEY_FILE};
use crate::server::config::{self, AuthorityMode};

#[derive(FromArgs, Debug)]
/// Create a recovery authority: the age key that escrow packets are encrypted to and the
/// minisign key that signs recovery packets, both encrypted under an administrator passphrase.
/// Hand DIR/recipient.txt and DIR/minisign.pub to clients; back up the whole directory.
/// With --authority-public, make a server directory that holds only an authority's public keys.
#[argh(
    subcommand,
    name = "init",
    example = "{command_name} --dir /var/lib/lifeline --tls-name escrow.example.org --listen 0.0.0.0:8443",
    example = "{command_name} --dir /var/lib/lifeline --tls-name escrow.example.org --shares 2/3 --shares-dir shares",
    example = "{command_name} --dir /var/lib/lifeline --tls-name escrow.example.org --authority-public ~/authority"
)]
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
    /// split the administrator passphrase K-of-N: a random one is made, N share files are
    /// written to --shares-dir, and any K of them are needed for approvals (e.g. 2/3)
    #[argh(option)]
    pub shares: Option<String>,
    /// where to write the share files (must not exist; hand them out, then delete them)
    #[argh(option)]
    pub shares_dir: Option<PathBuf>,
    /// with --tls-name: the address server.toml listens on (default 127.0.0.1:8443)
    #[argh(option, default = "String::from(\"127.0.0.1:8443\")")]
    pub listen: String,
    /// make a server for the authority in this directory, kept elsewhere: only its public
    /// files are copied, and server.toml says authority = "offline" (approvals are made with
    /// admin approve-recovery --authority on the administrator's machine); needs --tls-name
    #[argh(option)]
    pub authority_public: Option<PathBuf>,
}

pub fn run(args: Args) -> CmdResult {
    if let Some(from) = &args.authority_public {
        return offline_server(&args, from);
    }
    let (passphrase, shares) = match &args.shares {
        None => (
            admin_passphrase(args.passphrase_file.as_deref(), true)?,
            None,
        ),
        Some(spec) => {
            let (k, n) = spec
                .split_once('/')
                .and_then(|(k, n)| Some((k.parse::<u8>().ok()?, n.parse::<u8>().ok()?)))
                .ok_or_else(|| {
                    crate::cmd::Failure::usage(format!("--shares {spec}: write it K/N, e.g. 2/3"))
                })?;
            let dir = args.shares_dir.as_ref().ok_or_else(|| {
                crate::cmd::Failure::usage("--shares needs --shares-dir for the share files")
            })?;
            if dir.exists() {
                return Err(crate::cmd::Failure::new(
                    crate::cmd::Exit::Exists,
                    format!("{} exists", dir.display()),
                ));
            }
            let (passphrase, shares) =
                crate::server::shares::split(k, n).map_err(crate::cmd::Failure::usage)?;
            (passphrase, Some((dir.clone(), shares, k)))
        }
    };
    if args.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(crate::cmd::Failure::usage(format!(
            "--listen {}: not an address:port",
            args.listen
        )));
    }
    let (names, listen) = (args.tls_name.clone(), args.listen.clone());
    // Shares first: if the authority cannot be made, they are removed again; an authority never
    // exists without the shares that open it.
    if let Some((dir, shares, _)) = &shares {
        let written = std::fs::create_dir_all(dir).and_then(|()| {
            for (i, share) in shares.iter().enumerate() {
                crate::atomic_file::write_new(
                    &dir.join(format!("share-{}.txt", i + 1)),
                    share.as_bytes(),
                    0o600,
                )?;
            }
            Ok(())
        });
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(dir);
            return Err(crate::cmd::Failure::new(
                crate::cmd::Exit::Failure,
                format!("cannot write the shares: {e}"),
            ));
        }
    }
    let made = authority::init(&args.dir, &passphrase, |dir| {
        if names.is_empty() {
            return Ok(());
        }
        write_server_files(dir, &names, &listen, AuthorityMode::Server)
    });
    if let Err(e) = made {
        if let Some((dir, _, _)) = &shares {
            let _ = std::fs::remove_dir_all(dir);
        }
        return Err(e.into());
    }
    if let Some((dir, shares, k)) = &shares {
        eprintln!(
            "The administrator passphrase is split {k}-of-{}: {} holds the shares. Give one to each administrator, then delete them there; any {k} are needed for approvals.",
            shares.len(),
            dir.display()
        );
    }
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

/// The TLS material and server.toml of a server directory.
fn write_server_files(
    dir: &std::path::Path,
    names: &[String],
    listen: &str,
    mode: AuthorityMode,
) -> Result<(), AuthorityError> {
    config::make_tls(dir, names).map_err(std::io::Error::other)?;
    crate::atomic_file::write_new(
        &dir.join(config::CONFIG_FILE),
        config::default_text(listen, mode).as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// `init --authority-public FROM`: a server directory without the authority's secret keys.
fn offline_server(args: &Args, from: &std::path::Path) -> CmdResult {
    if args.shares.is_some() || args.passphrase_file.is_some() {
        return Err(Failure::usage(
            "--authority-public makes a server without the authority's secret keys: it takes no passphrase and no shares",
        ));
    }
    if args.tls_name.is_empty() {
        return Err(Failure::usage(
            "--authority-public needs --tls-name for the server's certificate",
        ));
    }
    if args.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(Failure::usage(format!(
            "--listen {}: not an address:port",
            args.listen
        )));
    }
    authority::init_public(&args.dir, from, |dir| {
        write_server_files(dir, &args.tls_name, &args.listen, AuthorityMode::Offline)
    })?;
    eprintln!(
        "Server for the authority in {} created in {}; it holds no secret key (authority = \"offline\").",
        from.display(),
        args.dir.display()
    );
    eprintln!(
        "  approve recoveries on your own machine: lifeline-server admin approve-recovery ID --authority {}",
        from.display()
    );
    Ok(())
}
