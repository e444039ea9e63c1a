//! `lifeline-server drsk`: custody of clients' DRSKs in the server's TPM.
//!
//! Files in the server directory: `drsk.pub` (the server key's TPM2B_PUBLIC, for clients),
//! `drsk.priv` (its TPM2B_PRIVATE, loadable only by this TPM), and `clients/<client-id>.drsk`
//! (each client's DRSK, wrapped so only the server key can load it).

use std::path::{Path, PathBuf};

use argh::FromArgs;

use crate::atomic_file;
use crate::cmd::{owner_auth, read_small, CmdResult, Exit, Failure, Globals};
use crate::tpm::{self, policy, transfer, ServerKey};

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
    Restore(RestoreArgs),
}

#[derive(FromArgs, Debug)]
/// Create the server's own storage key in its TPM and write its public part (DIR/drsk.pub) for
/// clients to provision with.
#[argh(subcommand, name = "init")]
pub struct InitArgs {
    /// the server directory
    #[argh(option)]
    pub dir: PathBuf,
    /// the TPM owner authorization, first line of this file (asked for when set)
    #[argh(option)]
    pub owner_auth_file: Option<PathBuf>,
}

#[derive(FromArgs, Debug)]
/// Import a client's DRSK backup (from lifeline backup) into this server's TPM. Only the
/// TPM-wrapped copy is kept, under the client ID.
#[argh(subcommand, name = "import")]
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
#[argh(subcommand, name = "restore")]
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
    /// the TPM owner authorization, if set and this TPM's SRK is not persistent
    #[argh(option)]
    pub owner_auth_file: Option<PathBuf>,
}

pub fn run(args: Args, g: &Globals) -> CmdResult {
    match args.command {
        Command::Init(a) => init(a, g),
        Command::Import(a) => import(a, g),
        Command::Restore(a) => restore(a, g),
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

fn auth_from_file(file: Option<&Path>) -> Result<Option<crate::secret::Passphrase>, Failure> {
    file.map(crate::cmd::read_passphrase_file).transpose()
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
    std::fs::create_dir_all(&args.dir).map_err(io_failure)?;
    let mut tpm = g.open_tpm()?;
    let auth = owner_auth(&mut tpm, args.owner_auth_file.as_deref())?;
    let key = tpm.create_server_key(auth.as_ref())?;
    atomic_file::write_new(&args.dir.join("drsk.priv"), &key.private, 0o600).map_err(io_failure)?;
    atomic_file::write_new(&public_path, &key.public, 0o644).map_err(io_failure)?;
    eprintln!(
        "Server key created; give {} to clients (lifeline provision --backup-server-key).",
        public_path.display()
    );
    println!("{}", crate::hex::encode(&tpm::name_of_public(&key.public)?));
    Ok(())
}

fn load_key(dir: &Path) -> Result<ServerKey, Failure> {
    let read = |name: &str| {
        read_small(&dir.join(name), 4096)
            .map_err(|f| f.todo("name the directory lifeline-server drsk init made"))
    };
    Ok(ServerKey {
        public: read("drsk.pub")?,
        private: read("drsk.priv")?,
    })
}

fn client_file(dir: &Path, client: &str) -> Result<PathBuf, Failure> {
    if client.len() != 64 || !client.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::usage(format!(
            "'{client}' is not a client ID (64 hex digits)"
        )));
    }
    Ok(dir
        .join("clients")
        .join(format!("{}.drsk", client.to_ascii_lowercase())))
}

fn read_drsk_file(path: &Path) -> Result<transfer::DrskFile, Failure> {
    let text = String::from_utf8(read_small(path, 64 * 1024)?)
        .map_err(|_| Failure::usage(format!("{} is not a DRSK file", path.display())))?;
    transfer::DrskFile::parse(&text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

fn import(args: ImportArgs, g: &Globals) -> CmdResult {
    let key = load_key(&args.dir)?;
    let backup = read_drsk_file(&args.backup)?;
    let own_name = tpm::name_of_public(&key.public)?;
    // Accept only DRSKs whose policy really is lifeline's, built for this server among others:
    // then the copy kept here can go back only to a TPM this server chooses.
    if !backup.servers.contains(&own_name) {
        return Err(Failure::new(
            Exit::Tpm,
            "this DRSK was not provisioned for this server's key",
        ));
    }
    if tpm::auth_policy_of(&backup.dup.public)? != policy::drsk_auth_policy(&backup.servers) {
        return Err(Failure::new(
            Exit::Tpm,
            "the DRSK's duplication policy is not the one its file describes; refused",
        ));
    }
    let mut tpm = g.open_tpm()?;
    let auth = auth_from_file(args.owner_auth_file.as_deref())?;
    let private = tpm.import_client(&key, &backup.dup, auth.as_ref())?;
    let stored = transfer::DrskFile {
        client_id: backup.client_id.clone(),
        servers: backup.servers,
        dup: tpm::Duplicate {
            public: backup.dup.public,
            private,
            seed: Vec::new(),
        },
    };
    let path = client_file(&args.dir, &backup.client_id)?;
    atomic_file::replace(&path, stored.to_text().as_bytes(), 0o600).map_err(io_failure)?;
    eprintln!(
        "DRSK of client {} is in custody ({}).",
        backup.client_id,
        path.display()
    );
    Ok(())
}

fn restore(args: RestoreArgs, g: &Globals) -> CmdResult {
    let key = load_key(&args.dir)?;
    let path = client_file(&args.dir, &args.client)?;
    if !path.exists() {
        return Err(
            Failure::usage(format!("no DRSK in custody for client {}", args.client))
                .todo("check the client ID (lifeline id on the old machine, or its backup file)"),
        );
    }
    let stored = read_drsk_file(&path)?;
    let new_parent = read_small(&args.new_parent, 4096)?;
    let mut tpm = g.open_tpm()?;
    let auth = auth_from_file(args.owner_auth_file.as_deref())?;
    let dup = tpm.reduplicate_client(
        &key,
        &stored.dup.public,
        &stored.dup.private,
        &stored.servers,
        &new_parent,
        auth.as_ref(),
    )?;
    let out = transfer::DrskFile {
        client_id: stored.client_id,
        servers: stored.servers,
        dup,
    };
    atomic_file::write_new(&args.out, out.to_text().as_bytes(), 0o644).map_err(io_failure)?;
    eprintln!(
        "Restore file for client {} written to {}.",
        out.client_id,
        args.out.display()
    );
    Ok(())
}
