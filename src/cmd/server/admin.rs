//! `lifeline-server admin`: administrators' commands. `add` works on the database directly (to
//! bootstrap); the others are HTTPS calls, so the server checks the administrator credential
//! and the administrator network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use argh::FromArgs;
use serde_json::json;

use super::admin_passphrase;
use crate::cmd::{read_small, CmdResult, Exit, Failure};
use crate::escrow::https::Https;
use crate::server::{config, store};

#[derive(FromArgs, Debug)]
/// Administration: administrators, enrollment tokens, listings, approvals.
#[argh(subcommand, name = "admin")]
pub struct Args {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Add(AddArgs),
    EnrollmentToken(TokenArgs),
    Packets(PacketsArgs),
    Requests(RequestsArgs),
    ApproveRecovery(ApproveArgs),
}

#[derive(FromArgs, Debug)]
/// Add an administrator (on the server host) and print their credential once.
#[argh(subcommand, name = "add")]
pub struct AddArgs {
    /// the server directory
    #[argh(option)]
    pub dir: PathBuf,
    /// the administrator's name
    #[argh(option)]
    pub name: String,
}

/// The listing subcommands share their options.
macro_rules! list_args {
    ($name:ident, $cmd:literal, $doc:literal) => {
        #[derive(FromArgs, Debug)]
        #[doc = $doc]
        #[argh(subcommand, name = $cmd)]
        pub struct $name {
            #[argh(option)]
            /// the server directory, to find the server's address and CA (or give --server and --ca)
            pub dir: Option<PathBuf>,
            #[argh(option)]
            /// the server's URL
            pub server: Option<String>,
            #[argh(option)]
            /// the server's CA certificate
            pub ca: Option<PathBuf>,
            #[argh(option)]
            /// file holding this administrator's credential
            pub credential_file: PathBuf,
        }
    };
}

list_args!(
    TokenArgs,
    "enrollment-token",
    "Make a one-time enrollment token for lifeline join."
);
list_args!(
    PacketsArgs,
    "packets",
    "List the escrow packets (metadata only)."
);
list_args!(
    RequestsArgs,
    "requests",
    "List recovery requests, with the recovery ID users read out."
);

#[derive(FromArgs, Debug)]
/// Approve a recovery request: unlocks the authority with the administrator passphrase (on the
/// server, in memory, for this one operation), publishes a recovery packet for the machine to
/// fetch, and prints its one-time password once.
#[argh(subcommand, name = "approve-recovery")]
pub struct ApproveArgs {
    #[argh(positional)]
    /// the request ID (lifeline-server admin requests)
    pub request: String,
    #[argh(option)]
    /// the server directory, to find the server's address and CA (or give --server and --ca)
    pub dir: Option<PathBuf>,
    #[argh(option)]
    /// the server's URL
    pub server: Option<String>,
    #[argh(option)]
    /// the server's CA certificate
    pub ca: Option<PathBuf>,
    #[argh(option)]
    /// file holding this administrator's credential
    pub credential_file: PathBuf,
    #[argh(option)]
    /// read the administrator passphrase from this file's first line (default: ask)
    pub passphrase_file: Option<PathBuf>,
}

fn connect(
    dir: Option<&Path>,
    server: Option<&str>,
    ca: Option<&Path>,
    credential_file: &Path,
) -> Result<Https, Failure> {
    let (url, ca_pem) = match (server, ca, dir) {
        (Some(url), Some(ca), _) => (url.to_string(), read_small(ca, 64 * 1024)?),
        (None, None, Some(dir)) => {
            let c = config::Config::load(dir).map_err(Failure::usage)?;
            let host = if c.listen.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                c.listen.ip().to_string()
            };
            (
                format!("https://{host}:{}", c.listen.port()),
                read_small(&dir.join("tls/ca.pem"), 64 * 1024)?,
            )
        }
        _ => return Err(Failure::usage("give --dir, or both --server and --ca")),
    };
    let credential = zeroize::Zeroizing::new(
        String::from_utf8(read_small(credential_file, 1024)?).unwrap_or_default(),
    );
    Ok(Https::new(&url, &ca_pem, Duration::from_secs(60))?.with_credential(credential.trim()))
}

pub fn run(args: Args) -> CmdResult {
    match args.command {
        Command::Add(a) => add(a),
        Command::EnrollmentToken(a) => {
            let s = connect(
                a.dir.as_deref(),
                a.server.as_deref(),
                a.ca.as_deref(),
                &a.credential_file,
            )?;
            let answer = s.post_json("/v1/admin/enrollment-tokens", &json!({}))?;
            eprintln!(
                "One-time enrollment token (valid {}):",
                answer["valid_for"].as_str().unwrap_or("?")
            );
            println!("{}", answer["token"].as_str().unwrap_or(""));
            Ok(())
        }
        Command::Packets(a) => list(
            &a.dir,
            &a.server,
            &a.ca,
            &a.credential_file,
            "/v1/admin/packets",
        ),
        Command::Requests(a) => list(
            &a.dir,
            &a.server,
            &a.ca,
            &a.credential_file,
            "/v1/admin/requests",
        ),
        Command::ApproveRecovery(a) => approve(a),
    }
}

fn add(args: AddArgs) -> CmdResult {
    if args.name.is_empty()
        || !args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        return Err(Failure::usage(
            "an administrator name is letters, digits and -_.@",
        ));
    }
    let mut db = store::open(&args.dir.join("lifeline.db"))
        .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?;
    let credential = store::random_id().map_err(|e| Failure::new(Exit::Failure, e.to_string()))?
        + &store::random_id().map_err(|e| Failure::new(Exit::Failure, e.to_string()))?;
    store::add_admin(&mut db, &args.name, &credential)
        .map_err(|e| Failure::new(Exit::Exists, e.to_string()))?;
    eprintln!(
        "Administrator {} added. Their credential (shown once; keep it in a root-only file):",
        args.name
    );
    println!("{credential}");
    Ok(())
}

fn list(
    dir: &Option<PathBuf>,
    server: &Option<String>,
    ca: &Option<PathBuf>,
    credential: &Path,
    path: &str,
) -> CmdResult {
    let s = connect(dir.as_deref(), server.as_deref(), ca.as_deref(), credential)?;
    let rows = s.get_json(path)?;
    for row in rows.as_array().into_iter().flatten() {
        println!("{row}");
    }
    Ok(())
}

fn approve(a: ApproveArgs) -> CmdResult {
    let s = connect(
        a.dir.as_deref(),
        a.server.as_deref(),
        a.ca.as_deref(),
        &a.credential_file,
    )?;
    let passphrase = admin_passphrase(a.passphrase_file.as_deref(), false)?;
    // expose_secret: the passphrase travels once, over TLS, to unlock the authority on the server.
    let text =
        zeroize::Zeroizing::new(String::from_utf8_lossy(passphrase.expose_secret()).into_owned());
    let answer = s.post_json(
        &format!("/v1/admin/requests/{}/approve", a.request),
        &json!({ "passphrase": text.as_str() }),
    )?;
    eprintln!(
        "Recovery packet {} published for recovery ID {}, valid until {}.",
        answer["packet"].as_str().unwrap_or("?"),
        answer["recovery_id"].as_str().unwrap_or("?"),
        answer["expires"].as_str().unwrap_or("?")
    );
    eprintln!("One-time password (read it to the user group by group; it is not stored anywhere):");
    println!("{}", answer["otp"].as_str().unwrap_or(""));
    Ok(())
}
