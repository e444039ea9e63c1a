//! `lifeline-server admin`: administrators' commands. `add` works on the database directly (to
//! bootstrap); the others are HTTPS calls, so the server checks the administrator credential
//! and the administrator network.

use std::path::PathBuf;
use std::time::Duration;

use super::{admin_secret, listing};
use crate::api::{self, Route};
use crate::cmd::{read_secret_line, read_small, CmdResult, Exit, Failure};
use crate::escrow::https::Https;
use crate::secret::{Credential, ShareText};
use crate::server::{authority, config, store};
use argh::FromArgs;

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
#[argh(
    subcommand,
    name = "add",
    example = "{command_name} --dir /var/lib/lifeline --name alice > alice.cred"
)]
pub struct AddArgs {
    /// the server directory
    #[argh(option)]
    pub dir: PathBuf,
    /// the administrator's name
    #[argh(option)]
    pub name: String,
}

/// The HTTPS admin subcommands share how they reach the server (options, else the
/// environment); some also name a target, need the administrator passphrase, or take options
/// of their own.
macro_rules! admin_args {
    ($name:ident, $cmd:tt, $doc:literal, $example:tt $(, $target:ident: $target_doc:literal)? $(, passphrase: $pass:ident)? $(; $($extra:tt)*)?) => {
        #[derive(FromArgs, Debug)]
        #[doc = $doc]
        #[argh(subcommand, name = $cmd, example = $example)]
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
            /// the server's URL (default: $LIFELINE_SERVER)
            pub server: Option<String>,
            #[argh(option)]
            /// the server's CA certificate (default: $LIFELINE_CA)
            pub ca: Option<PathBuf>,
            #[argh(option)]
            /// file holding this administrator's credential (default: $LIFELINE_CREDENTIAL_FILE)
            pub credential_file: Option<PathBuf>,
            $( $($extra)* )?
            $(
                #[argh(option)]
                /// read the administrator passphrase from this file's first line (default: ask)
                pub $pass: Option<PathBuf>,
                #[argh(option)]
                /// instead of the passphrase, a share file of a K-of-N authority: once, to submit your share to the server (the K-th administrator's completes it), or K times to combine them here
                pub share_file: Vec<PathBuf>,
                #[argh(option)]
                /// the authority directory, kept on this machine: the escrow packet is opened here and only the result is uploaded, so the server never holds the passphrase
                pub authority: Option<PathBuf>,
            )?
        }

        impl $name {
            fn connect(&self) -> Result<Https, Failure> {
                connect(
                    self.dir.clone(),
                    self.server.clone(),
                    self.ca.clone(),
                    self.credential_file.clone(),
                )
            }
        }
    };
}

admin_args!(
    TokenArgs,
    "enrollment-token",
    "Make a one-time enrollment token for lifeline join.",
    "LIFELINE_CREDENTIAL_FILE=alice.cred {command_name} --dir /var/lib/lifeline"
);
admin_args!(
    MachinesArgs,
    "machines",
    "List the machines that joined, with their packet counts.",
    "{command_name} --server https://escrow.example.org:8443 --ca ca.pem --credential-file alice.cred";
    #[argh(switch)]
    /// one JSON object per line instead of a table
    pub json: bool,
);
admin_args!(
    PacketsArgs,
    "packets",
    "List the escrow packets (metadata only).",
    "{command_name} --dir /var/lib/lifeline --credential-file alice.cred --json";
    #[argh(switch)]
    /// one JSON object per line instead of a table
    pub json: bool,
);
admin_args!(
    RequestsArgs,
    "requests",
    "List recovery requests, with the recovery ID users read out.",
    "{command_name} --recovery-id 3d12-2535    # with LIFELINE_SERVER, LIFELINE_CA and LIFELINE_CREDENTIAL_FILE set";
    #[argh(option)]
    /// only the requests with this recovery ID (as the user reads it out)
    pub recovery_id: Option<String>,
    #[argh(option)]
    /// only the requests of this host
    pub host: Option<String>,
    #[argh(option)]
    /// only the requests in this state: pending, approved or used
    pub state: Option<String>,
    #[argh(switch)]
    /// one JSON object per line instead of a table
    pub json: bool,
);
admin_args!(
    ApproveArgs,
    "approve-recovery",
    "Approve a recovery request: unlocks the authority with the administrator passphrase (on the server, in memory, for this one operation; or here, with --authority), publishes a recovery packet for the machine to fetch, and prints its one-time password once. With one --share-file of a K-of-N authority, submits that share; the administrator whose share is the K-th gets the password.",
    "{command_name} 3d12-2535    # asks for the administrator passphrase",
    request: "the request: its ID, or the recovery ID the user reads out, or the host name (lifeline-server admin requests)",
    passphrase: passphrase_file
);
admin_args!(
    RestoresArgs,
    "restores",
    "List DRSK restore requests from replacement machines, with whether their TPM proved genuine.",
    "{command_name} --dir /var/lib/lifeline --credential-file alice.cred";
    #[argh(switch)]
    /// one JSON object per line instead of a table
    pub json: bool,
);
admin_args!(
    ApproveRestoreArgs,
    "approve-restore",
    "Approve a DRSK restore request: the server's TPM re-duplicates the machine's DRSK to the replacement TPM's storage key, for lifeline restore --server to fetch. Only that TPM can load it.",
    "{command_name} 4ccb-3667",
    request: "the request: its ID, or the restore ID the user reads out, or the host name (lifeline-server admin restores)"
);
admin_args!(
    DeleteRestoreArgs,
    "delete-restore",
    "Delete a DRSK restore request, approved or not (requests and approvals also expire by themselves after restore_valid_for).",
    "{command_name} 5f8b8f985d2b36fe54cac6405813ba5e",
    request: "the request ID (lifeline-server admin restores)"
);
admin_args!(ObsoleteArgs, "obsolete", "Mark an escrow packet obsolete: kept, no longer used for recovery.",
    "{command_name} 67bb36faf4d6944dc99a548e7732cd94", packet: "the packet ID");
admin_args!(DeleteArgs, "delete", "Delete an escrow packet.",
    "{command_name} 67bb36faf4d6944dc99a548e7732cd94", packet: "the packet ID");
admin_args!(
    ShowPassphraseArgs,
    "show-passphrase",
    "Show the random recovery passphrase escrowed in a packet (needs the administrator passphrase, and the authority with --authority; audited). The server notes it as shown: the machine's next lifeline status --repair replaces it.",
    "{command_name} 67bb36faf4d6944dc99a548e7732cd94 --share-file alice.share --share-file bob.share",
    packet: "the packet ID",
    passphrase: passphrase_file
);

/// The server, its CA and the credential: from the options, else from `LIFELINE_SERVER`,
/// `LIFELINE_CA` and `LIFELINE_CREDENTIAL_FILE` (so a helpdesk shell sets them once).
fn connect(
    dir: Option<PathBuf>,
    server: Option<String>,
    ca: Option<PathBuf>,
    credential_file: Option<PathBuf>,
) -> Result<Https, Failure> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let server = server.or_else(|| env("LIFELINE_SERVER").map(|v| v.to_string_lossy().into()));
    let ca = ca.or_else(|| env("LIFELINE_CA").map(PathBuf::from));
    let credential_file = credential_file
        .or_else(|| env("LIFELINE_CREDENTIAL_FILE").map(PathBuf::from))
        .ok_or_else(|| {
            Failure::usage("no administrator credential")
                .todo("give --credential-file FILE, or set LIFELINE_CREDENTIAL_FILE")
        })?;
    let (url, ca_pem) = match (server.as_deref(), ca.as_deref(), dir.as_deref()) {
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
        _ => return Err(Failure::usage("the server is not named").todo(
            "give --dir on the server, or --server and --ca (or LIFELINE_SERVER and LIFELINE_CA)",
        )),
    };
    let credential = Credential::new(read_secret_line(&credential_file, "credential")?);
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
        Command::Machines(a) => {
            listing::print(&listing::fetch::<api::MachineRow>(&a.connect()?)?, a.json)
        }
        Command::Packets(a) => {
            listing::print(&listing::fetch::<api::PacketRow>(&a.connect()?)?, a.json)
        }
        Command::Requests(a) => requests(a),
        Command::ApproveRecovery(a) => approve(a),
        Command::Restores(a) => {
            listing::print(&listing::fetch::<api::RestoreRow>(&a.connect()?)?, a.json)
        }
        Command::ApproveRestore(a) => {
            let s = a.connect()?;
            let rows = listing::fetch::<api::RestoreRow>(&s)?;
            let row = listing::pick(&rows, &a.request)?;
            listing::announce(row);
            let answer: api::RestoreApproved = s.post_json(
                &api::ADMIN_RESTORE_APPROVE.path(&[&row.request]),
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
    let mut db = super::open_store(&args.dir)?;
    let credential =
        store::random_secret(32).map_err(|e| Failure::new(Exit::Failure, e.to_string()))?;
    db.add_admin(&args.name, &credential)
        .map_err(|e| Failure::new(Exit::Exists, e.to_string()))?;
    eprintln!(
        "Administrator {} added. Their credential (shown once; keep it in a root-only file):",
        args.name
    );
    println!("{}", credential.as_str());
    Ok(())
}

fn requests(a: RequestsArgs) -> CmdResult {
    let mut rows = listing::fetch::<api::RequestRow>(&a.connect()?)?;
    let same = |want: &Option<String>, have: &str| {
        want.as_deref()
            .is_none_or(|w| w.trim().eq_ignore_ascii_case(have))
    };
    rows.retain(|r| {
        same(&a.recovery_id, &r.recovery_id) && same(&a.host, &r.host) && same(&a.state, &r.state)
    });
    listing::print(&rows, a.json)
}

fn retire(s: Https, packet: &str, route: Route) -> CmdResult {
    let done: api::Done = s.post_json(&route.path(&[packet]), &api::Empty {})?;
    eprintln!("Packet {packet}: {}.", done.status);
    Ok(())
}

fn approve(a: ApproveArgs) -> CmdResult {
    let s = a.connect()?;
    let rows = listing::fetch::<api::RequestRow>(&s)?;
    let row = listing::pick(&rows, &a.request)?;
    listing::announce(row);
    if let Some(dir) = &a.authority {
        return approve_here(&s, &row.request, dir, &a);
    }
    if let [share_file] = a.share_file.as_slice() {
        return submit_share(&s, &row.request, share_file);
    }
    // The passphrase travels once, over TLS, to unlock the authority on the server.
    let body = api::Approve {
        passphrase: admin_secret(a.passphrase_file.as_deref(), &a.share_file)?,
        otp_groups: None,
    };
    let answer: api::Approved =
        s.post_json(&api::ADMIN_REQUEST_APPROVE.path(&[&row.request]), &body)?;
    print_approved(&answer);
    Ok(())
}

fn print_approved(answer: &api::Approved) {
    eprintln!(
        "Recovery packet {} published for recovery ID {}, valid until {}.",
        answer.packet, answer.recovery_id, answer.expires
    );
    eprintln!("One-time password (read it to the user group by group; it is not stored anywhere):");
    // expose_secret: reading it out to the user is what the administrator gets it for.
    println!("{}", answer.otp.expose_secret());
}

/// One administrator's share toward a K-of-N approval on the server.
fn submit_share(s: &Https, request: &str, share_file: &std::path::Path) -> CmdResult {
    let body = api::Share {
        share: ShareText::new(read_secret_line(share_file, "share")?),
        otp_groups: None,
    };
    let progress: api::ShareProgress =
        s.post_json(&api::ADMIN_REQUEST_SHARES.path(&[request]), &body)?;
    match &progress.approved {
        Some(answer) => {
            eprintln!(
                "Share {} of {} received (from {}): approved.",
                progress.received,
                progress.needed,
                progress.from.join(", ")
            );
            print_approved(answer);
        }
        None => eprintln!(
            "Share {} of {} received for request {request} (from {}). {} more administrator(s) must submit theirs within {}; the held shares are discarded after that.",
            progress.received,
            progress.needed,
            progress.from.join(", "),
            progress.needed.saturating_sub(progress.received),
            humantime::format_duration(Duration::from_secs(progress.discarded_in)),
        ),
    }
    Ok(())
}

/// `--authority DIR`: opens the request's escrow packet with the authority on this machine,
/// makes and signs the recovery packet here, and uploads only that.
fn approve_here(s: &Https, request: &str, dir: &std::path::Path, a: &ApproveArgs) -> CmdResult {
    let copy: api::EscrowCopy = s.get_json(&api::ADMIN_REQUEST_ESCROW.path(&[request]))?;
    let valid_for = humantime::parse_duration(&copy.recovery_valid_for).map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!(
                "the server's recovery_valid_for {}: {e}",
                copy.recovery_valid_for
            ),
        )
    })?;
    let passphrase = admin_secret(a.passphrase_file.as_deref(), &a.share_file)?;
    let issued = authority::unlock(dir, &passphrase)?
        .issue_recovery(
            copy.escrow_packet.as_bytes(),
            valid_for,
            crate::escrow::otp::DEFAULT_GROUPS,
        )
        .map_err(|e| Failure::from(e).context(format!("the escrow packet of request {request}")))?;
    let body = api::Publish {
        recovery_packet: String::from_utf8_lossy(&issued.packet).into_owned(),
        use_token_hash: crate::hex::encode(&issued.use_token_hash),
    };
    let published: api::Published =
        s.post_json(&api::ADMIN_REQUEST_PUBLISH.path(&[request]), &body)?;
    print_approved(&api::Approved {
        otp: issued.otp,
        packet: published.packet,
        expires: published.expires,
        recovery_id: published.recovery_id,
    });
    Ok(())
}

fn show_passphrase(a: ShowPassphraseArgs) -> CmdResult {
    let s = a.connect()?;
    let recovery_passphrase = match &a.authority {
        Some(dir) => {
            let copy: api::EscrowCopy = s.get_json(&api::ADMIN_PACKET.path(&[&a.packet]))?;
            let passphrase = admin_secret(a.passphrase_file.as_deref(), &a.share_file)?;
            let found = authority::unlock(dir, &passphrase)?
                .open_escrow(copy.escrow_packet.as_bytes())
                .map_err(|e| Failure::from(e).context(format!("packet {}", a.packet)))?
                .recovery_passphrase;
            // Shown only once the server has noted it, so the machine replaces it.
            if found.is_some() {
                s.post_json::<api::Done>(
                    &api::ADMIN_PACKET_REVEALED.path(&[&a.packet]),
                    &api::Empty {},
                )?;
            }
            found
        }
        None => {
            let body = api::AdminPassphrase {
                passphrase: admin_secret(a.passphrase_file.as_deref(), &a.share_file)?,
            };
            let answer: api::RecoveryPassphrase =
                s.post_json(&api::ADMIN_PACKET_PASSPHRASE.path(&[&a.packet]), &body)?;
            answer.recovery_passphrase
        }
    };
    match recovery_passphrase {
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
