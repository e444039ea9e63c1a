//! `lifeline-server admin`: administrators' commands. `add` works on the database directly (to
//! bootstrap); the others are HTTPS calls, so the server checks the administrator credential
//! and the administrator network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use argh::FromArgs;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::admin_secret;
use crate::api::{self, Route};
use crate::cmd::{read_secret_line, read_small, CmdResult, Exit, Failure};
use crate::escrow::https::Https;
use crate::secret::Credential;
use crate::server::{config, store};

#[derive(FromArgs, Debug)]
/// Administration: administrators, enrollment tokens, listings, approvals, packets.
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
    Machines(MachinesArgs),
    Packets(PacketsArgs),
    Requests(RequestsArgs),
    ApproveRecovery(ApproveArgs),
    Restores(RestoresArgs),
    ApproveRestore(ApproveRestoreArgs),
    DeleteRestore(DeleteRestoreArgs),
    Obsolete(ObsoleteArgs),
    Delete(DeleteArgs),
    ShowPassphrase(ShowPassphraseArgs),
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

/// The HTTPS admin subcommands share how they reach the server; some also name a target and
/// need the administrator passphrase.
macro_rules! admin_args {
    ($name:ident, $cmd:literal, $doc:literal $(, $target:ident: $target_doc:literal)? $(, passphrase: $pass:ident)?) => {
        #[derive(FromArgs, Debug)]
        #[doc = $doc]
        #[argh(subcommand, name = $cmd)]
        pub struct $name {
            $(
                #[argh(positional)]
                #[doc = $target_doc]
                pub $target: String,
            )?
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
            $(
                #[argh(option)]
                /// read the administrator passphrase from this file's first line (default: ask)
                pub $pass: Option<PathBuf>,
                #[argh(option)]
                /// instead of the passphrase, a share file (repeat for K shares of a K-of-N authority)
                pub share_file: Vec<PathBuf>,
            )?
        }

        impl $name {
            fn connect(&self) -> Result<Https, Failure> {
                connect(self.dir.as_deref(), self.server.as_deref(), self.ca.as_deref(), &self.credential_file)
            }
        }
    };
}

admin_args!(
    TokenArgs,
    "enrollment-token",
    "Make a one-time enrollment token for lifeline join."
);
admin_args!(
    MachinesArgs,
    "machines",
    "List the machines that joined, with their packet counts."
);
admin_args!(
    PacketsArgs,
    "packets",
    "List the escrow packets (metadata only)."
);
admin_args!(
    RequestsArgs,
    "requests",
    "List recovery requests, with the recovery ID users read out."
);
admin_args!(
    ApproveArgs,
    "approve-recovery",
    "Approve a recovery request: unlocks the authority with the administrator passphrase (on the server, in memory, for this one operation), publishes a recovery packet for the machine to fetch, and prints its one-time password once.",
    request: "the request ID (lifeline-server admin requests)",
    passphrase: passphrase_file
);
admin_args!(
    RestoresArgs,
    "restores",
    "List DRSK restore requests from replacement machines, with whether their TPM proved genuine."
);
admin_args!(
    ApproveRestoreArgs,
    "approve-restore",
    "Approve a DRSK restore request: the server's TPM re-duplicates the machine's DRSK to the replacement TPM's storage key, for lifeline restore --server to fetch. Only that TPM can load it.",
    request: "the request ID (lifeline-server admin restores)"
);
admin_args!(
    DeleteRestoreArgs,
    "delete-restore",
    "Delete a DRSK restore request, approved or not (requests and approvals also expire by themselves after restore_valid_for).",
    request: "the request ID (lifeline-server admin restores)"
);
admin_args!(ObsoleteArgs, "obsolete", "Mark an escrow packet obsolete: kept, no longer used for recovery.", packet: "the packet ID");
admin_args!(DeleteArgs, "delete", "Delete an escrow packet.", packet: "the packet ID");
admin_args!(
    ShowPassphraseArgs,
    "show-passphrase",
    "Show the random recovery passphrase escrowed in a packet (needs the administrator passphrase; audited).",
    packet: "the packet ID",
    passphrase: passphrase_file
);

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
    let credential = Credential::new(read_secret_line(credential_file, "credential")?);
    Ok(Https::new(&url, &ca_pem, Duration::from_secs(60))?.with_credential(credential))
}

pub fn run(args: Args) -> CmdResult {
    match args.command {
        Command::Add(a) => add(a),
        Command::EnrollmentToken(a) => {
            let answer: api::EnrollmentTokenIssued = a
                .connect()?
                .post_json(&api::ADMIN_ENROLLMENT_TOKENS.path(&[]), &api::Empty {})?;
            eprintln!("One-time enrollment token (valid {}):", answer.valid_for);
            // expose_secret: printing the token for the administrator is this command's job.
            println!("{}", answer.token.expose_secret());
            Ok(())
        }
        Command::Machines(a) => list::<api::MachineRow>(a.connect()?, api::ADMIN_MACHINES),
        Command::Packets(a) => list::<api::PacketRow>(a.connect()?, api::ADMIN_PACKETS),
        Command::Requests(a) => list::<api::RequestRow>(a.connect()?, api::ADMIN_REQUESTS),
        Command::ApproveRecovery(a) => approve(a),
        Command::Restores(a) => list::<api::RestoreRow>(a.connect()?, api::ADMIN_RESTORES),
        Command::ApproveRestore(a) => {
            let answer: api::RestoreApproved = a.connect()?.post_json(
                &api::ADMIN_RESTORE_APPROVE.path(&[&a.request]),
                &api::Empty {},
            )?;
            eprintln!(
                "Restore {} approved for client {} ({}); the machine can now run lifeline restore --server.",
                answer.restore_id,
                answer.client_id,
                answer.host.as_deref().unwrap_or("host unknown"),
            );
            Ok(())
        }
        Command::DeleteRestore(a) => {
            a.connect()?.post_json::<api::Done>(
                &api::ADMIN_RESTORE_DELETE.path(&[&a.request]),
                &api::Empty {},
            )?;
            eprintln!("Restore request {} deleted.", a.request);
            Ok(())
        }
        Command::Obsolete(a) => retire(a.connect()?, &a.packet, api::ADMIN_PACKET_OBSOLETE),
        Command::Delete(a) => retire(a.connect()?, &a.packet, api::ADMIN_PACKET_DELETE),
        Command::ShowPassphrase(a) => show_passphrase(a),
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
    db.add_admin(&args.name, &credential)
        .map_err(|e| Failure::new(Exit::Exists, e.to_string()))?;
    eprintln!(
        "Administrator {} added. Their credential (shown once; keep it in a root-only file):",
        args.name
    );
    println!("{credential}");
    Ok(())
}

/// Prints a listing, one JSON object per line.
fn list<Row: DeserializeOwned + Serialize>(s: Https, route: Route) -> CmdResult {
    let rows: Vec<Row> = s.get_json(&route.path(&[]))?;
    for row in rows {
        let line =
            serde_json::to_string(&row).map_err(|e| Failure::new(Exit::Failure, e.to_string()))?;
        println!("{line}");
    }
    Ok(())
}

fn retire(s: Https, packet: &str, route: Route) -> CmdResult {
    let done: api::Done = s.post_json(&route.path(&[packet]), &api::Empty {})?;
    let action = if done.status == "deleted" {
        "delete"
    } else {
        "obsolete"
    };
    eprintln!("Packet {packet}: {action} done.");
    Ok(())
}

fn approve(a: ApproveArgs) -> CmdResult {
    let s = a.connect()?;
    // The passphrase travels once, over TLS, to unlock the authority on the server.
    let body = api::Approve {
        passphrase: admin_secret(a.passphrase_file.as_deref(), &a.share_file)?,
        otp_groups: None,
    };
    let answer: api::Approved =
        s.post_json(&api::ADMIN_REQUEST_APPROVE.path(&[&a.request]), &body)?;
    eprintln!(
        "Recovery packet {} published for recovery ID {}, valid until {}.",
        answer.packet, answer.recovery_id, answer.expires
    );
    eprintln!("One-time password (read it to the user group by group; it is not stored anywhere):");
    // expose_secret: reading it out to the user is what the administrator gets it for.
    println!("{}", answer.otp.expose_secret());
    Ok(())
}

fn show_passphrase(a: ShowPassphraseArgs) -> CmdResult {
    let s = a.connect()?;
    let body = api::AdminPassphrase {
        passphrase: admin_secret(a.passphrase_file.as_deref(), &a.share_file)?,
    };
    let answer: api::RecoveryPassphrase =
        s.post_json(&api::ADMIN_PACKET_PASSPHRASE.path(&[&a.packet]), &body)?;
    match answer.recovery_passphrase {
        Some(p) => {
            eprintln!("Recovery passphrase escrowed in packet {}:", a.packet);
            // expose_secret: showing it is what this audited command is for.
            println!("{}", String::from_utf8_lossy(p.expose_secret()));
            Ok(())
        }
        None => Err(Failure::new(
            Exit::NotApplicable,
            format!("packet {} holds no recovery passphrase", a.packet),
        )
        .todo("it was escrowed without --random-passphrase; approve a recovery instead")),
    }
}
