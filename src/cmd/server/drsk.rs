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
    Challenge(ChallengeArgs),
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
    /// require a genuine-TPM proof before every restore: EK certificates must be signed by one
    /// of the CA certificates in this PEM file (copied to DIR/ek-ca.pem)
    #[argh(option)]
    pub ek_ca: Option<PathBuf>,
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
    let key = tpm.create_server_key(auth.as_ref())?;
    atomic_file::write_new(&args.dir.join("drsk.priv"), &key.private, 0o600).map_err(io_failure)?;
    atomic_file::write_new(&public_path, &key.public, 0o644).map_err(io_failure)?;
    if let Some((pem, count)) = ek_ca {
        atomic_file::write_new(&args.dir.join(EK_CA_FILE), &pem, 0o644).map_err(io_failure)?;
        eprintln!("Restores need a genuine-TPM proof: EK certificates must come from the {count} CA certificate(s) given.");
    }
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
    check_proof(&args, &new_parent)?;
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

/// Where a server that demands the genuine-TPM proof keeps its trusted EK CA certificates.
const EK_CA_FILE: &str = "ek-ca.pem";
const PENDING_TAG: &str = "lifeline-pending-proof";

#[derive(FromArgs, Debug)]
/// Challenge a replacement machine to prove that its storage key lives in a genuine TPM: checks
/// its EK certificate against DIR/ek-ca.pem, then makes a credential that only that TPM can
/// activate, and only while holding that storage key. Answer with lifeline activate.
#[argh(subcommand, name = "challenge")]
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

fn pending_file(dir: &Path, client: &str) -> Result<PathBuf, Failure> {
    let drsk = client_file(dir, client)?;
    Ok(dir
        .join("pending")
        .join(drsk.with_extension("proof").file_name().unwrap_or_default()))
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

fn challenge(args: ChallengeArgs, g: &Globals) -> CmdResult {
    let ca = std::fs::read(args.dir.join(EK_CA_FILE)).map_err(|_| {
        Failure::usage(format!("{} has no {EK_CA_FILE}", args.dir.display()))
            .todo("give the TPM vendors' CA certificates with lifeline-server drsk init --ek-ca")
    })?;
    if !client_file(&args.dir, &args.client)?.exists() {
        return Err(Failure::usage(format!(
            "no DRSK in custody for client {}",
            args.client
        )));
    }
    let new_parent = read_small(&args.new_parent, 4096)?;
    let text = String::from_utf8(read_small(&args.ek, 16 * 1024)?)
        .map_err(|_| Failure::usage(format!("{} is not an EK file", args.ek.display())))?;
    let ek = transfer::parse_hex_record(
        &text,
        crate::cmd::backup::EK_TAG,
        &["public", "certificate"],
    )
    .map_err(|e| Failure::usage(format!("{}: {e}", args.ek.display())))?;
    let refused = |what: String| {
        Failure::new(Exit::Tpm, what).todo("restore only to a machine whose TPM you can vouch for")
    };
    let certified = crate::server::ekcert::verify(&ek[1], &ca).map_err(refused)?;
    let modulus = tpm::ek_modulus(&ek[0])?;
    if crate::server::ekcert::strip_zeros(&modulus) != certified.as_slice() {
        return Err(refused(
            "the EK certificate is for another key than the EK given".into(),
        ));
    }
    if !tpm::is_resident_storage_key(&new_parent) {
        return Err(refused(
            "the new storage key is not a TPM-resident storage key (fixedTPM, restricted, decrypt)"
                .into(),
        ));
    }
    let name = tpm::name_of_public(&new_parent)?;
    let mut secret = [0u8; 32];
    crate::secret::random_bytes(&mut secret)
        .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?;
    let mut server_tpm = g.open_tpm()?;
    let (credential, seed) = server_tpm.make_credential(&ek[0], &name, &secret)?;
    let pending = transfer::hex_record(
        PENDING_TAG,
        &[("new-parent", &name), ("secret-sha256", &sha256(&secret))],
    );
    atomic_file::replace(
        &pending_file(&args.dir, &args.client)?,
        pending.as_bytes(),
        0o600,
    )
    .map_err(io_failure)?;
    let out = transfer::hex_record(
        crate::cmd::backup::CHALLENGE_TAG,
        &[("credential", &credential), ("seed", &seed)],
    );
    atomic_file::write_new(&args.out, out.as_bytes(), 0o644).map_err(io_failure)?;
    eprintln!(
        "EK certificate verified. Challenge written to {}; answer it with lifeline activate.",
        args.out.display()
    );
    Ok(())
}

/// When the server demands it, checks the client's answer against the pending challenge for
/// exactly this new storage key, and consumes it.
fn check_proof(args: &RestoreArgs, new_parent: &[u8]) -> CmdResult {
    if !args.dir.join(EK_CA_FILE).exists() {
        return Ok(());
    }
    let refused = |what: &str| {
        Failure::new(Exit::Tpm, format!("this server requires proof of a genuine TPM: {what}"))
            .todo("lifeline-server drsk challenge, then lifeline activate on the new machine, then restore with --proof")
    };
    let proof_path = args
        .proof
        .as_ref()
        .ok_or_else(|| refused("no --proof given"))?;
    let pending_path = pending_file(&args.dir, &args.client)?;
    let pending_text = std::fs::read_to_string(&pending_path)
        .map_err(|_| refused("no challenge is pending for this client"))?;
    let pending =
        transfer::parse_hex_record(&pending_text, PENDING_TAG, &["new-parent", "secret-sha256"])
            .map_err(|e| Failure::new(Exit::Failure, format!("{}: {e}", pending_path.display())))?;
    let proof_text = String::from_utf8(read_small(proof_path, 4096)?).unwrap_or_default();
    let proof = transfer::parse_hex_record(&proof_text, crate::cmd::backup::PROOF_TAG, &["secret"])
        .map_err(|e| Failure::usage(format!("{}: {e}", proof_path.display())))?;
    if tpm::name_of_public(new_parent)? != pending[0] {
        return Err(refused("the challenge was made for another storage key"));
    }
    if !crate::secret::ct_eq(&sha256(&proof[0]), &pending[1]) {
        return Err(refused("the answer does not match the challenge"));
    }
    let _ = std::fs::remove_file(&pending_path);
    Ok(())
}
