//! `lifeline-server drsk`: custody of clients' DRSKs in the server's TPM, by files (the HTTPS
//! API does the same through `lifeline backup --server` and `lifeline restore --server`).
//! `server::custody` does the work and describes the files.

use std::path::{Path, PathBuf};

use argh::FromArgs;

use crate::atomic_file;
use crate::cmd::{owner_auth, read_small, CmdResult, Exit, Failure, Globals};
use crate::server::custody::{self, Custody, CustodyError, Pending};
use crate::tpm::{self, transfer};

#[derive(FromArgs, Debug)]
/// Custody of client DRSKs in this server's TPM.
#[argh(subcommand, name = "drsk")]
pub struct Args {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Init(InitArgs),
    Import(ImportArgs),
    Challenge(ChallengeArgs),
    Restore(RestoreArgs),
}

#[derive(FromArgs, Debug)]
/// Create the server's own storage key in its TPM and write its public part (DIR/drsk.pub) for
/// clients to provision with.
#[argh(
    subcommand,
    name = "init",
    example = "{command_name} --dir /var/lib/lifeline --ek-ca ek-ca.pem"
)]
pub struct InitArgs {
    /// the server directory
    #[argh(option)]
    pub dir: PathBuf,
    /// require a genuine-TPM proof before every restore: EK certificates must be signed by one
    /// of the CA certificates in this PEM file (copied to DIR/ek-ca.pem)
    #[argh(option)]
    pub ek_ca: Option<PathBuf>,
    /// the TPM owner authorization, first line of this file (asked for when set)
    #[argh(option)]
    pub owner_auth_file: Option<PathBuf>,
    /// the server key's algorithm: ecc (P-256) or rsa (RSA-2048); default: ecc when the TPM
    /// has it (clients of either algorithm back up to either)
    #[argh(option)]
    pub key_algorithm: Option<tpm::KeyAlgorithm>,
}

#[derive(FromArgs, Debug)]
/// Import a client's DRSK backup (from lifeline backup) into this server's TPM. Only the
/// TPM-wrapped copy is kept, under the client ID.
#[argh(
    subcommand,
    name = "import",
    example = "{command_name} --dir /var/lib/lifeline drsk.backup"
)]
pub struct ImportArgs {
    /// the server directory
    #[argh(option)]
    pub dir: PathBuf,
    /// the client's backup file
    #[argh(positional)]
    pub backup: PathBuf,
    /// the TPM owner authorization, if set and this TPM's SRK is not persistent
    #[argh(option)]
    pub owner_auth_file: Option<PathBuf>,
}

#[derive(FromArgs, Debug)]
/// Re-duplicate a client's DRSK to a replacement TPM's storage key (from lifeline srk-public),
/// for lifeline restore on the replacement machine.
#[argh(
    subcommand,
    name = "restore",
    example = "{command_name} --dir /var/lib/lifeline --client 4ccb07… --new-parent new.srk --proof proof.txt --out restore.txt"
)]
pub struct RestoreArgs {
    /// the server directory
    #[argh(option)]
    pub dir: PathBuf,
    /// the client ID
    #[argh(option)]
    pub client: String,
    /// the replacement TPM's storage key public part
    #[argh(option)]
    pub new_parent: PathBuf,
    /// where to write the restore file (must not exist)
    #[argh(option)]
    pub out: PathBuf,
    /// the client's answer to the challenge (lifeline activate); required when the server has
    /// an ek-ca.pem
    #[argh(option)]
    pub proof: Option<PathBuf>,
    /// the TPM owner authorization, if set and this TPM's SRK is not persistent
    #[argh(option)]
    pub owner_auth_file: Option<PathBuf>,
}

pub fn run(args: Args, g: &Globals) -> CmdResult {
    match args.command {
        Command::Init(a) => init(a, g),
        Command::Import(a) => import(a, g),
        Command::Challenge(a) => challenge(a, g),
        Command::Restore(a) => restore(a, g),
    }
}

impl From<CustodyError> for Failure {
    fn from(e: CustodyError) -> Self {
        let what = e.to_string();
        match e {
            CustodyError::NotSetUp(_) => {
                Failure::usage(what).todo("name the directory lifeline-server drsk init made")
            }
            CustodyError::UnknownClient(_) => Failure::usage(what)
                .todo("check the client ID (lifeline id on the old machine, or its backup file)"),
            CustodyError::Bad(_) => Failure::usage(what),
            CustodyError::Refused(_) => Failure::new(Exit::Tpm, what),
            CustodyError::Tpm(e) => e.into(),
            CustodyError::Io(e) => io_failure(e),
        }
    }
}

fn io_failure(e: std::io::Error) -> Failure {
    let code = if e.kind() == std::io::ErrorKind::AlreadyExists {
        Exit::Exists
    } else {
        Exit::Failure
    };
    Failure::new(code, e.to_string())
}

fn init(args: InitArgs, g: &Globals) -> CmdResult {
    let public_path = args.dir.join("drsk.pub");
    if public_path.exists() {
        return Err(Failure::new(
            Exit::Exists,
            format!(
                "{} exists; the server key is never replaced",
                public_path.display()
            ),
        ));
    }
    let ek_ca = match &args.ek_ca {
        Some(path) => {
            let pem = read_small(path, 1 << 20)?;
            let count = crate::server::ekcert::ca_count(&pem)
                .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
            Some((pem, count))
        }
        None => None,
    };
    std::fs::create_dir_all(&args.dir).map_err(io_failure)?;
    let mut tpm = g.open_tpm()?;
    let auth = owner_auth(&mut tpm, args.owner_auth_file.as_deref())?;
    let key = tpm.create_server_key(auth.as_ref(), args.key_algorithm)?;
    atomic_file::write_new(&args.dir.join("drsk.priv"), &key.private, 0o600).map_err(io_failure)?;
    atomic_file::write_new(&public_path, &key.public, 0o644).map_err(io_failure)?;
    if let Some((pem, count)) = ek_ca {
        atomic_file::write_new(&args.dir.join(custody::EK_CA_FILE), &pem, 0o644)
            .map_err(io_failure)?;
        eprintln!("Restores need a genuine-TPM proof: EK certificates must come from the {count} CA certificate(s) given.");
    }
    eprintln!(
        "Server key created; give {} to clients (lifeline provision --backup-server-key).",
        public_path.display()
    );
    println!("{}", crate::hex::encode(&tpm::name_of_public(&key.public)?));
    Ok(())
}

fn read_drsk_file(path: &Path) -> Result<transfer::DrskFile, Failure> {
    let text = String::from_utf8(read_small(path, 64 * 1024)?)
        .map_err(|_| Failure::usage(format!("{} is not a DRSK file", path.display())))?;
    transfer::DrskFile::parse(&text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

fn import(args: ImportArgs, g: &Globals) -> CmdResult {
    let custody = Custody::open(&args.dir)?;
    let backup = read_drsk_file(&args.backup)?;
    custody.check_backup(&backup)?;
    let client = backup.client_id.clone();
    let mut tpm = g.open_tpm()?;
    let auth = crate::cmd::passphrase_from(args.owner_auth_file.as_deref())?;
    let path = custody.import(&mut tpm, backup, auth.as_ref())?;
    eprintln!(
        "DRSK of client {client} is in custody ({}).",
        path.display()
    );
    Ok(())
}

fn restore(args: RestoreArgs, g: &Globals) -> CmdResult {
    let custody = Custody::open(&args.dir)?;
    let client = custody::check_client_id(&args.client)?;
    if !custody.has(&client)? {
        return Err(
            CustodyError::UnknownClient(format!("no DRSK in custody for client {client}")).into(),
        );
    }
    let new_parent = read_small(&args.new_parent, 4096)?;
    if custody.requires_proof() {
        check_proof(&args, &client, &new_parent)?;
    }
    let mut tpm = g.open_tpm()?;
    let auth = crate::cmd::passphrase_from(args.owner_auth_file.as_deref())?;
    let out = custody.restore(&mut tpm, &client, &new_parent, auth.as_ref())?;
    atomic_file::write_new(&args.out, out.to_text().as_bytes(), 0o644).map_err(io_failure)?;
    eprintln!(
        "Restore file for client {} written to {}.",
        out.client_id,
        args.out.display()
    );
    Ok(())
}

#[derive(FromArgs, Debug)]
/// Challenge a replacement machine to prove that its storage key lives in a genuine TPM: checks
/// its EK certificate against DIR/ek-ca.pem, then makes a credential that only that TPM can
/// activate, and only while holding that storage key. Answer with lifeline activate.
#[argh(
    subcommand,
    name = "challenge",
    example = "{command_name} --dir /var/lib/lifeline --client 4ccb07… --new-parent new.srk --ek new.ek --out challenge.txt"
)]
pub struct ChallengeArgs {
    /// the server directory
    #[argh(option)]
    pub dir: PathBuf,
    /// the client ID whose DRSK is to be restored
    #[argh(option)]
    pub client: String,
    /// the replacement TPM's storage key public part (lifeline srk-public)
    #[argh(option)]
    pub new_parent: PathBuf,
    /// its endorsement key and certificate (lifeline srk-public --ek-out)
    #[argh(option)]
    pub ek: PathBuf,
    /// where to write the challenge (must not exist)
    #[argh(option)]
    pub out: PathBuf,
}

/// The pending challenge of a client, between `challenge` and `restore --proof`.
fn pending_file(dir: &Path, client: &str) -> PathBuf {
    dir.join("pending").join(format!("{client}.proof"))
}

fn challenge(args: ChallengeArgs, g: &Globals) -> CmdResult {
    let custody = Custody::open(&args.dir)?;
    let client = custody::check_client_id(&args.client)?;
    let new_parent = read_small(&args.new_parent, 4096)?;
    let text = String::from_utf8(read_small(&args.ek, 16 * 1024)?)
        .map_err(|_| Failure::usage(format!("{} is not an EK file", args.ek.display())))?;
    let ek = transfer::parse_hex_record(&text, transfer::EK_TAG, &["public", "certificate"])
        .map_err(|e| Failure::usage(format!("{}: {e}", args.ek.display())))?;
    let mut server_tpm = g.open_tpm()?;
    let (challenge, pending) = custody
        .challenge(&mut server_tpm, &client, &new_parent, &ek[0], &ek[1])
        .map_err(|e| match e {
            CustodyError::Refused(_) => {
                Failure::from(e).todo("restore only to a machine whose TPM you can vouch for")
            }
            CustodyError::NotSetUp(_) => Failure::usage(e.to_string()).todo(
                "give the TPM vendors' CA certificates with lifeline-server drsk init --ek-ca",
            ),
            other => other.into(),
        })?;
    let path = pending_file(&args.dir, &client);
    std::fs::create_dir_all(args.dir.join("pending")).map_err(io_failure)?;
    atomic_file::replace(&path, pending.to_text().as_bytes(), 0o600).map_err(io_failure)?;
    atomic_file::write_new(&args.out, challenge.to_text().as_bytes(), 0o644).map_err(io_failure)?;
    eprintln!(
        "EK certificate verified. Challenge written to {}; answer it with lifeline activate.",
        args.out.display()
    );
    Ok(())
}

/// Checks the client's answer against the pending challenge for exactly this new storage key,
/// and consumes it.
fn check_proof(args: &RestoreArgs, client: &str, new_parent: &[u8]) -> CmdResult {
    let refused = |what: &str| {
        Failure::new(Exit::Tpm, format!("this server requires proof of a genuine TPM: {what}"))
            .todo("lifeline-server drsk challenge, then lifeline activate on the new machine, then restore with --proof")
    };
    let proof_path = args
        .proof
        .as_ref()
        .ok_or_else(|| refused("no --proof given"))?;
    let pending_path = pending_file(&args.dir, client);
    let pending_text = std::fs::read_to_string(&pending_path)
        .map_err(|_| refused("no challenge is pending for this client"))?;
    let pending = Pending::parse(&pending_text)
        .map_err(|e| Failure::new(Exit::Failure, format!("{}: {e}", pending_path.display())))?;
    let proof_text = String::from_utf8(read_small(proof_path, 4096)?).unwrap_or_default();
    let proof = transfer::parse_hex_record(&proof_text, transfer::PROOF_TAG, &["secret"])
        .map_err(|e| Failure::usage(format!("{}: {e}", proof_path.display())))?;
    pending
        .check(new_parent, &proof[0])
        .map_err(|e| refused(&e.to_string()))?;
    let _ = std::fs::remove_file(&pending_path);
    Ok(())
}
