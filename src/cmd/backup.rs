//! `lifeline backup`, `lifeline srk-public`, `lifeline restore`: the DRSK's way to a backup
//! server and back to a replacement TPM.

use std::path::PathBuf;

use argh::FromArgs;

use super::provision::{server_key_name, POLICY_FILE};
use super::{owner_auth, read_small, CmdResult, Exit, Failure, Globals};
use crate::escrow::https::{FetchError, Https};
use crate::tpm::{self, transfer};
use crate::{api, atomic_file};

fn write_out(path: &std::path::Path, bytes: &[u8]) -> CmdResult {
    atomic_file::write_new(path, bytes, 0o644).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::AlreadyExists {
            Exit::Exists
        } else {
            Exit::Failure
        };
        Failure::new(code, e.to_string())
    })
}

#[derive(FromArgs, Debug)]
/// Back up the DRSK to a backup server: duplicate it, wrapped for that server's TPM key. The
/// duplicate holds no usable secret: upload it to the escrow server this machine joined
/// (--server), which imports it into its TPM at once, or write it to a file (--out) for
/// lifeline-server drsk import.
#[argh(
    subcommand,
    name = "backup",
    example = "{command_name} --server https://escrow.example.org:8443",
    example = "{command_name} --server-key drsk.pub --out drsk.backup"
)]
pub struct Args {
    /// the server's key (drsk.pub); must be one the DRSK was provisioned with (default with
    /// --server: the key that server announces)
    #[argh(option)]
    pub server_key: Option<PathBuf>,
    /// where to write the duplicate (must not exist)
    #[argh(option)]
    pub out: Option<PathBuf>,
    /// upload the duplicate to this escrow server (see lifeline join)
    #[argh(option)]
    pub server: Option<String>,
}

pub fn run(args: Args, g: &Globals) -> CmdResult {
    if args.out.is_none() && args.server.is_none() {
        return Err(Failure::usage(
            "say where the backup goes: --out FILE, --server URL, or both",
        ));
    }
    let server = match &args.server {
        Some(url) => Some(super::join::joined_server(g, Some(url), true)?),
        None => None,
    };
    let (server_public, server_name) = match (&args.server_key, &server) {
        (Some(path), _) => server_key_name(path)?,
        (None, Some(s)) => announced_server_key(s)?,
        (None, None) => return Err(Failure::usage("give the server's key with --server-key")),
    };
    let key_label = args.server_key.as_ref().map_or_else(
        || "the escrow server announces".to_string(),
        |p| p.display().to_string(),
    );
    let policy_path = g.state_dir.join(POLICY_FILE);
    let text = std::fs::read_to_string(&policy_path).map_err(|e| {
        Failure::usage(format!("cannot read {}: {e}", policy_path.display()))
            .todo("run lifeline provision first")
    })?;
    let servers = transfer::parse_policy(&text)
        .map_err(|e| Failure::usage(format!("{}: {e}", policy_path.display())))?;
    if !servers.contains(&server_name) {
        return Err(Failure::new(Exit::Tpm, format!("the DRSK was not provisioned for the server key {key_label}"))
            .todo("back up to a server named at provisioning, or provision again with --force and this server"));
    }
    let mut tpm = g.open_tpm()?;
    let dup = tpm.duplicate_drsk(&server_public, &servers)?;
    let file = transfer::DrskFile {
        client_id: tpm::client_id(&dup.public),
        servers,
        dup,
    };
    if let Some(out) = &args.out {
        write_out(out, file.to_text().as_bytes())?;
        eprintln!(
            "DRSK of client {} duplicated for the server into {}.",
            file.client_id,
            out.display()
        );
    }
    if let Some(s) = &server {
        s.post_bytes::<api::BackedUp>(&api::DRSK_BACKUP.path(&[]), file.to_text().as_bytes())?;
        eprintln!(
            "DRSK of client {} is in the escrow server's custody.",
            file.client_id
        );
        if let Err(e) = record_backup(g, &file.client_id, &server_name) {
            eprintln!("warning: cannot note the backup in {BACKUPS_FILE} ({e}); lifeline status will not see it.");
        }
    }
    Ok(())
}

/// The DRSK backups escrow servers confirmed, one line each: client ID, the server key's Name
/// (hex), seconds since the epoch. `lifeline status` reads it for the servers it cannot ask.
pub const BACKUPS_FILE: &str = "drsk-backups";

fn record_backup(g: &Globals, client_id: &str, server: &[u8]) -> std::io::Result<()> {
    let name = crate::hex::encode(server);
    let mut text: String = recorded(g)
        .lines()
        .filter(|l| !l.starts_with(&format!("{client_id} {name} ")))
        .map(|l| format!("{l}\n"))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    text.push_str(&format!("{client_id} {name} {now}\n"));
    atomic_file::replace(&g.state_dir.join(BACKUPS_FILE), text.as_bytes(), 0o644)
}

fn recorded(g: &Globals) -> String {
    std::fs::read_to_string(g.state_dir.join(BACKUPS_FILE)).unwrap_or_default()
}

/// When an escrow server last confirmed it keeps DRSK `client_id` wrapped for its key
/// `server` (a Name), as this machine recorded it.
pub fn recorded_backup(g: &Globals, client_id: &str, server: &[u8]) -> Option<i64> {
    let name = crate::hex::encode(server);
    recorded(g).lines().find_map(|l| {
        let mut f = l.split(' ');
        match (f.next(), f.next(), f.next()) {
            (Some(c), Some(n), Some(t)) if c == client_id && n == name => t.parse().ok(),
            _ => None,
        }
    })
}

/// The backup servers' key Names the DRSK was provisioned for, if it was.
pub fn policy_servers(g: &Globals) -> Option<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(g.state_dir.join(POLICY_FILE)).ok()?;
    transfer::parse_policy(&text).ok()
}

/// The DRSK server key an escrow server announces, and its name.
pub fn announced_server_key(s: &Https) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    let authority: api::Authority = s.get_json(&api::AUTHORITY.path(&[]))?;
    let public = authority
        .drsk
        .as_deref()
        .and_then(crate::hex::decode)
        .ok_or_else(|| {
            Failure::new(Exit::NotApplicable, "the escrow server keeps no DRSKs")
                .todo("its administrator sets that up with lifeline-server drsk init")
        })?;
    let name = tpm::name_of_public(&public).map_err(|_| {
        Failure::from(FetchError::Bad(
            "the announced DRSK key is not a TPM public key".into(),
        ))
    })?;
    Ok((public, name))
}

#[derive(FromArgs, Debug)]
/// Write this TPM's storage root key (public part), which a backup server needs to restore the
/// DRSK to it after a motherboard swap.
#[argh(
    subcommand,
    name = "srk-public",
    example = "{command_name} --out new.srk --ek-out new.ek"
)]
pub struct SrkArgs {
    /// where to write it (binary TPM2B_PUBLIC; must not exist)
    #[argh(option)]
    pub out: PathBuf,
    /// the TPM owner authorization, if set and the SRK is not persistent yet
    #[argh(option)]
    pub owner_auth_file: Option<PathBuf>,
    /// also write this TPM's endorsement key and its certificate here, for servers that want
    /// proof the storage key lives in a genuine TPM (lifeline-server drsk challenge)
    #[argh(option)]
    pub ek_out: Option<PathBuf>,
}

pub fn run_srk(args: SrkArgs, g: &Globals) -> CmdResult {
    let mut tpm = g.open_tpm()?;
    let auth = super::passphrase_from(args.owner_auth_file.as_deref())?;
    let public = tpm.srk_public(auth.as_ref())?;
    let ek = match &args.ek_out {
        Some(_) => Some(tpm.ek_bundle()?),
        None => None,
    };
    write_out(&args.out, &public)?;
    eprintln!(
        "Storage key written to {}; send it to the backup server.",
        args.out.display()
    );
    if let (Some(path), Some((ek_public, cert))) = (&args.ek_out, ek) {
        let text = transfer::hex_record(
            transfer::EK_TAG,
            &[("public", &ek_public), ("certificate", &cert)],
        );
        write_out(path, text.as_bytes())?;
        eprintln!(
            "Endorsement key and certificate written to {}; send it too.",
            path.display()
        );
    }
    Ok(())
}

#[derive(FromArgs, Debug)]
/// Answer a backup server's genuine-TPM challenge: the TPM's endorsement key activates the
/// credential only if this TPM holds the storage key the server bound it to.
#[argh(
    subcommand,
    name = "activate",
    example = "{command_name} --in challenge.txt --out proof.txt"
)]
pub struct ActivateArgs {
    /// the challenge from lifeline-server drsk challenge
    #[argh(option, long = "in")]
    pub input: PathBuf,
    /// where to write the answer for the server (must not exist)
    #[argh(option)]
    pub out: PathBuf,
    /// the TPM owner authorization, if set and the SRK is not persistent yet
    #[argh(option)]
    pub owner_auth_file: Option<PathBuf>,
}

/// Files (or finds) the restore request for this TPM's storage key on the server, answers the
/// genuine-TPM challenge if one comes, and returns the restore file once approved.
fn restore_from_server(
    args: &RestoreArgs,
    url: &str,
    g: &Globals,
) -> Result<transfer::DrskFile, Failure> {
    let client = match (&args.client, &args.device) {
        (Some(c), None) => c.to_ascii_lowercase(),
        (None, Some(device)) => {
            let mut volume = crate::luks::LuksVolume::open(device)?;
            let uuid = volume.info()?.uuid;
            super::enroll::find_sealed(&mut volume, g, &uuid)?.client_id
        }
        _ => {
            return Err(Failure::usage(
                "with --server, name the DRSK with --client ID or --device DEVICE",
            ))
        }
    };
    let server = super::join::joined_server(g, Some(url), false)?;
    let mut tpm = g.open_tpm()?;
    let auth = super::passphrase_from(args.owner_auth_file.as_deref())?;
    let srk = tpm.srk_public(auth.as_ref())?;
    let srk_name = crate::hex::encode(&tpm::name_of_public(&srk)?);
    let path = api::RESTORE_FILE.path(&[&client, &srk_name]);
    let fetch = || -> Result<Option<transfer::DrskFile>, Failure> {
        match server.get(&path) {
            Ok(body) => {
                let text = String::from_utf8(body.to_vec()).unwrap_or_default();
                transfer::DrskFile::parse(&text)
                    .map(Some)
                    .map_err(|e| FetchError::Bad(format!("the restore file: {e}")).into())
            }
            Err(FetchError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    };
    if let Some(file) = fetch()? {
        return Ok(file);
    }
    // The endorsement key goes along when the TPM has a certificate for it: servers that
    // demand the genuine-TPM proof need it, the others ignore it.
    let ek = tpm.ek_bundle().ok();
    let request = api::RestoreRequest {
        client_id: client.clone(),
        srk_public: crate::hex::encode(&srk),
        ek_public: ek.as_ref().map(|(public, _)| crate::hex::encode(public)),
        ek_certificate: ek.as_ref().map(|(_, cert)| crate::hex::encode(cert)),
    };
    let answer: api::RestoreFiled = server.post_json(&api::RESTORE_REQUESTS.path(&[]), &request)?;
    let id = &answer.request;
    if let Some(challenge) = &answer.challenge {
        let proof = answer_challenge(&mut tpm, challenge, auth.as_ref())
            .map_err(|f| f.context("the server's challenge"))?;
        server.post_json::<api::Proved>(
            &api::RESTORE_PROOF.path(&[id]),
            &api::RestoreProof { proof },
        )?;
        eprintln!("This TPM proved to the server that it is genuine.");
    }
    drop(tpm);
    if answer.state != "approved" {
        eprintln!(
            "Restore request {id} (restore ID {}) is filed; an administrator approves it with: lifeline-server admin approve-restore {id}",
            answer.restore_id
        );
    }
    let deadline = std::time::Instant::now() + args.wait.unwrap_or_default();
    loop {
        if let Some(file) = fetch()? {
            return Ok(file);
        }
        if std::time::Instant::now() >= deadline {
            return Err(Failure::new(
                Exit::NotApplicable,
                format!("restore request {id} is not approved yet"),
            )
            .todo("run this command again once an administrator has approved it (or use --wait)"));
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

/// Answers a genuine-TPM challenge record with this TPM's endorsement key: the proof record.
fn answer_challenge(
    tpm: &mut tpm::TssTpm,
    challenge: &str,
    auth: Option<&crate::secret::Passphrase>,
) -> Result<String, Failure> {
    let fields =
        transfer::parse_hex_record(challenge, transfer::CHALLENGE_TAG, &["credential", "seed"])
            .map_err(|e| Failure::usage(format!("not a challenge: {e}")))?;
    let secret = tpm.activate_credential(&fields[0], &fields[1], auth)?;
    Ok(transfer::hex_record(
        transfer::PROOF_TAG,
        &[("secret", &secret)],
    ))
}

pub fn run_activate(args: ActivateArgs, g: &Globals) -> CmdResult {
    let text = String::from_utf8(read_small(&args.input, 16 * 1024)?)
        .map_err(|_| Failure::usage(format!("{} is not a challenge", args.input.display())))?;
    let auth = super::passphrase_from(args.owner_auth_file.as_deref())?;
    let mut tpm = g.open_tpm()?;
    let proof = answer_challenge(&mut tpm, &text, auth.as_ref())
        .map_err(|f| f.context(args.input.display()))?;
    write_out(&args.out, proof.as_bytes())?;
    eprintln!(
        "Challenge answered; send {} to the backup server.",
        args.out.display()
    );
    Ok(())
}

#[derive(FromArgs, Debug)]
/// Restore the DRSK into this TPM after a motherboard swap, from a restore file (--in) or from
/// the escrow server (--server): the first run files a restore request (answering the
/// server's genuine-TPM challenge when it asks) and names it for the administrator; once
/// approved, the next run (or --wait) fetches and restores. Without --persist the DRSK is only
/// loaded and checked (the initramfs does this on every boot until it is persisted).
#[argh(
    subcommand,
    name = "restore",
    example = "{command_name} --server https://escrow.example.org:8443 --device /dev/nvme0n1p3",
    example = "{command_name} --in restore.txt --persist"
)]
pub struct RestoreArgs {
    /// the restore file from lifeline-server drsk restore
    #[argh(option, long = "in")]
    pub input: Option<PathBuf>,
    /// the escrow server (its CA is the one recorded by lifeline join)
    #[argh(option)]
    pub server: Option<String>,
    /// with --server: the client ID of the DRSK to restore (lifeline id on the old machine)
    #[argh(option)]
    pub client: Option<String>,
    /// with --server: take the client ID from this volume's lifeline-tpm2 key instead
    #[argh(option)]
    pub device: Option<PathBuf>,
    /// with --server: wait up to this long for the approval (e.g. 10m; default: do not wait)
    #[argh(option, from_str_fn(super::parse_duration))]
    pub wait: Option<std::time::Duration>,
    /// make it the DRSK at 0x81000004 (needs the TPM owner authorization if one is set)
    #[argh(switch)]
    pub persist: bool,
    /// the TPM owner authorization, first line of this file (asked for when needed)
    #[argh(option)]
    pub owner_auth_file: Option<PathBuf>,
}

pub fn run_restore(args: RestoreArgs, g: &Globals) -> CmdResult {
    let file = match (&args.input, &args.server) {
        (Some(input), None) => {
            let text = String::from_utf8(read_small(input, 64 * 1024)?).map_err(|_| {
                Failure::usage(format!("{} is not a restore file", input.display()))
            })?;
            transfer::DrskFile::parse(&text)
                .map_err(|e| Failure::usage(format!("{}: {e}", input.display())))?
        }
        (None, Some(url)) => restore_from_server(&args, url, g)?,
        _ => return Err(Failure::usage("give either --in FILE or --server URL")),
    };
    let mut tpm = g.open_tpm()?;
    let auth = if args.persist {
        owner_auth(&mut tpm, args.owner_auth_file.as_deref())?
    } else {
        None
    };
    let client_id = tpm.restore_drsk(&file.dup, args.persist, auth.as_ref())?;
    if args.persist {
        atomic_file::replace(
            &g.state_dir.join(POLICY_FILE),
            transfer::policy_text(&file.servers).as_bytes(),
            0o644,
        )
        .map_err(|e| {
            Failure::new(
                Exit::Failure,
                format!("cannot record the backup servers: {e}"),
            )
        })?;
        eprintln!("DRSK of client {client_id} restored at 0x81000004.");
    } else {
        eprintln!("DRSK of client {client_id} imported and loaded; run with --persist to keep it.");
    }
    println!("{client_id}");
    Ok(())
}
