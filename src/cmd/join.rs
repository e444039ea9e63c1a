//! `lifeline join` and the joined server: the client side of the escrow server.
//!
//! After joining, the state directory holds `server-url`, `server-ca.pem`, `credential`
//! (root-only), and the authority's public keys `recipient.txt` and `minisign.pub`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use argh::FromArgs;
use serde_json::json;

use super::{machine_id, read_small, CmdResult, Exit, Failure, Globals};
use crate::atomic_file;
use crate::escrow::https::{FetchError, Https};

/// How long one request to the server may take.
const TIMEOUT: Duration = Duration::from_secs(30);

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Self {
        let code = match e {
            FetchError::NotFound(_) => Exit::NotApplicable,
            FetchError::Refused {
                status: 401 | 403, ..
            } => Exit::Denied,
            _ => Exit::Failure,
        };
        let failure = Failure::new(code, e.to_string());
        match e.what_to_do() {
            Some(todo) => failure.todo(todo),
            None => failure,
        }
    }
}

/// The server this machine joined, from the state directory; `url` overrides the recorded URL.
pub fn joined_server(
    g: &Globals,
    url: Option<&str>,
    with_credential: bool,
) -> Result<Https, Failure> {
    let not_joined = || {
        Failure::usage("this machine has not joined an escrow server")
            .todo("run lifeline join first")
    };
    let recorded = std::fs::read_to_string(g.state_dir.join("server-url")).ok();
    let url = url
        .map(str::to_string)
        .or(recorded.map(|u| u.trim().to_string()))
        .ok_or_else(not_joined)?;
    let ca = std::fs::read(g.state_dir.join("server-ca.pem")).map_err(|_| not_joined())?;
    let https = Https::new(&url, &ca, TIMEOUT)?;
    if !with_credential {
        return Ok(https);
    }
    let credential = zeroize::Zeroizing::new(
        std::fs::read_to_string(g.state_dir.join("credential")).map_err(|_| not_joined())?,
    );
    Ok(https.with_credential(credential.trim()))
}

#[derive(FromArgs, Debug)]
/// Register this machine with an escrow server, using a one-time enrollment token from an
/// administrator. Stores the server's address, CA, the authority's public keys and this
/// machine's credential (readable by root only) in the state directory.
#[argh(subcommand, name = "join")]
pub struct Args {
    /// the server's URL, e.g. https://escrow.example.org:8443
    #[argh(option)]
    pub server: String,
    /// the server's CA certificate (PEM); only it is trusted
    #[argh(option)]
    pub ca: PathBuf,
    /// the one-time enrollment token
    #[argh(option)]
    pub token: String,
    /// this machine's ID (default: /etc/machine-id)
    #[argh(option)]
    pub machine_id: Option<String>,
}

fn write_state(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> CmdResult {
    atomic_file::replace(&dir.join(name), bytes, mode).map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!("cannot write {}: {e}", dir.join(name).display()),
        )
    })
}

pub fn run(args: Args, g: &Globals) -> CmdResult {
    let ca = read_small(&args.ca, 64 * 1024)?;
    let https = Https::new(&args.server, &ca, TIMEOUT)?;
    let authority = https.get_json("/v1/authority")?;
    let (Some(recipient), Some(minisign)) = (
        authority["recipient"].as_str(),
        authority["minisign"].as_str(),
    ) else {
        return Err(FetchError::Bad("the server did not give its authority keys".into()).into());
    };
    // The client ID, if this machine's TPM is provisioned; joining works without a TPM.
    let client_id = crate::tpm::TssTpm::open(&g.tcti, Duration::ZERO)
        .and_then(|mut t| t.drsk_public())
        .map(|p| crate::tpm::client_id(&p))
        .ok();
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into());
    let answer = https.post_json(
        "/v1/join",
        &json!({ "token": args.token, "machine_id": machine_id(args.machine_id.as_deref())?, "client_id": client_id, "host": host }),
    )?;
    let credential = zeroize::Zeroizing::new(
        answer["credential"]
            .as_str()
            .ok_or_else(|| Failure::from(FetchError::Bad("no credential".into())))?
            .to_string(),
    );
    std::fs::create_dir_all(&g.state_dir)
        .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?;
    write_state(
        &g.state_dir,
        "server-url",
        format!("{}\n", args.server).as_bytes(),
        0o644,
    )?;
    write_state(&g.state_dir, "server-ca.pem", &ca, 0o644)?;
    write_state(
        &g.state_dir,
        "recipient.txt",
        format!("{recipient}\n").as_bytes(),
        0o644,
    )?;
    write_state(&g.state_dir, "minisign.pub", minisign.as_bytes(), 0o644)?;
    write_state(&g.state_dir, "credential", credential.as_bytes(), 0o600)?;
    eprintln!(
        "Joined {} as machine {}.",
        args.server,
        answer["machine"].as_str().unwrap_or("?")
    );
    Ok(())
}
