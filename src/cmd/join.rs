//! `lifeline join` and the joined server: the client side of the escrow server.
//!
//! After joining, the state directory holds `server-url`, `server-ca.pem`, `credential`
//! (root-only), and the authority's public keys `recipient.txt` and `minisign.pub`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use argh::FromArgs;

use super::{machine_id, read_secret_line, read_small, CmdResult, Exit, Failure, Globals};
use crate::escrow::https::Https;
use crate::secret::{Credential, EnrollmentToken};
use crate::{api, atomic_file};

/// How long one request to the server may take.
const TIMEOUT: Duration = Duration::from_secs(30);

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
    let recorded = read_state(g, "server-url")?;
    let url = match (url, recorded) {
        (Some(url), _) => url.to_string(),
        (None, Some(bytes)) => String::from_utf8_lossy(&bytes).trim().to_string(),
        (None, None) => return Err(not_joined()),
    };
    let ca = read_state(g, "server-ca.pem")?.ok_or_else(not_joined)?;
    let https = Https::new(&url, &ca, TIMEOUT)?;
    if !with_credential {
        return Ok(https);
    }
    let file = g.state_dir.join("credential");
    if read_state(g, "credential")?.is_none() {
        return Err(not_joined());
    }
    let credential = read_secret_line(&file, "credential")?;
    Ok(https.with_credential(Credential::new(credential)))
}

/// A state file `join` wrote: `None` when it is not there; one that is there but cannot be
/// read is that, not "not joined".
fn read_state(g: &Globals, name: &str) -> Result<Option<Vec<u8>>, Failure> {
    let path = g.state_dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(super::unreadable(&path, &e)),
    }
}

#[derive(FromArgs, Debug)]
/// Register this machine with an escrow server, using a one-time enrollment token from an
/// administrator. Stores the server's address, CA, the authority's public keys and this
/// machine's credential (readable by root only) in the state directory.
#[argh(
    subcommand,
    name = "join",
    example = "{command_name} --server https://escrow.example.org:8443 --ca ca.pem --token-file token.txt"
)]
pub struct Args {
    /// the server's URL, e.g. https://escrow.example.org:8443
    #[argh(option)]
    pub server: String,
    /// the server's CA certificate (PEM); only it is trusted
    #[argh(option)]
    pub ca: PathBuf,
    /// the one-time enrollment token (visible to other users in the process list: prefer
    /// --token-file)
    #[argh(option)]
    pub token: Option<String>,
    /// a file holding the enrollment token, or - for standard input
    #[argh(option)]
    pub token_file: Option<PathBuf>,
    /// this machine's ID (default: /etc/machine-id)
    #[argh(option)]
    pub machine_id: Option<String>,
    /// also write the server, ca and trust lines into this lifeline.toml (made if missing;
    /// its other lines are kept), e.g. /etc/lifeline/lifeline.toml, so that the next
    /// initramfs carries them
    #[argh(option)]
    pub config: Option<PathBuf>,
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
    // A configuration to edit is checked before the token is spent.
    let config = args.config.as_deref().map(read_config).transpose()?;
    let token = EnrollmentToken::new(match (args.token, &args.token_file) {
        (Some(t), None) => zeroize::Zeroizing::new(t),
        (None, Some(file)) => read_secret_line(file, "enrollment token")?,
        _ => {
            return Err(Failure::usage(
                "give the enrollment token with --token or --token-file",
            ))
        }
    });
    let ca = read_small(&args.ca, 64 * 1024)?;
    let https = Https::new(&args.server, &ca, TIMEOUT)?;
    let authority: api::Authority = https.get_json(&api::AUTHORITY.path(&[]))?;
    // The client ID, if this machine's TPM is provisioned; joining works without a TPM.
    let client_id = crate::tpm::TssTpm::open(&g.tcti, Duration::ZERO)
        .and_then(|mut t| t.drsk_public())
        .map(|p| crate::tpm::client_id(&p))
        .ok();
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into());
    let request = api::Join {
        token,
        machine_id: machine_id(args.machine_id.as_deref())?,
        client_id,
        host,
    };
    let answer: api::Joined = https.post_json(&api::JOIN.path(&[]), &request)?;
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
        format!("{}\n", authority.recipient).as_bytes(),
        0o644,
    )?;
    write_state(
        &g.state_dir,
        "minisign.pub",
        authority.minisign.as_bytes(),
        0o644,
    )?;
    // expose_secret: the credential is kept, root-only, for the machine's later requests.
    let credential = answer.credential.expose_secret().as_bytes();
    write_state(&g.state_dir, "credential", credential, 0o600)?;
    eprintln!("Joined {} as machine {}.", args.server, answer.machine);
    if let (Some(path), Some(old)) = (&args.config, config) {
        write_config(path, &old, &args.server, &g.state_dir)?;
    }
    Ok(())
}

/// The configuration file `join --config` edits (or the start of a new one), checked to parse.
fn read_config(path: &Path) -> Result<String, Failure> {
    let text = match path.exists() {
        true => String::from_utf8(read_small(path, 64 * 1024)?)
            .map_err(|_| Failure::usage(format!("{} is not text", path.display())))?,
        false => {
            "# Written by lifeline join. Add a [[volume]] block per volume (docs/UNLOCK.md).\n"
                .into()
        }
    };
    crate::config::Config::parse(&text, &path.display().to_string())
        .map_err(|e| Failure::usage(e.to_string()).todo("fix the file first; nothing was done"))?;
    Ok(text)
}

/// Sets `server`, `ca` and `trust` in the configuration `old` (read from `path`) to what `join`
/// just stored: lines that set them are replaced, missing ones added before the first table,
/// everything else kept. The result must parse before it replaces the file.
fn write_config(path: &Path, old: &str, server: &str, state_dir: &Path) -> CmdResult {
    let absolute = |name: &str| -> Result<String, Failure> {
        let p = std::path::absolute(state_dir.join(name))
            .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?;
        Ok(p.display().to_string())
    };
    let settings = [
        ("server", server.to_string()),
        ("ca", absolute("server-ca.pem")?),
        ("trust", absolute("minisign.pub")?),
    ];
    if let Some((key, _)) = settings.iter().find(|(_, v)| v.contains(['"', '\\', '\n'])) {
        return Err(Failure::usage(format!(
            "the {key} has a quote, backslash or line break, which lifeline.toml cannot hold"
        )));
    }
    let text = set_top_level(old, &settings);
    crate::config::Config::parse(&text, &path.display().to_string()).map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!("the edited file would not parse: {e}"),
        )
    })?;
    atomic_file::replace(path, text.as_bytes(), 0o644).map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!("cannot write {}: {e}", path.display()),
        )
    })?;
    eprintln!(
        "{}: server, ca and trust set. Rebuild the initramfs so it carries them: update-initramfs -u (initramfs-tools), dracut -f, or mkinitcpio -P.",
        path.display()
    );
    Ok(())
}

/// `text` with each `key = "value"` of `settings` set among the lines before the first table.
fn set_top_level(text: &str, settings: &[(&str, String)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let tables = lines
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .unwrap_or(lines.len());
    let mut missing = Vec::new();
    for (key, value) in settings {
        let line = format!("{key} = \"{value}\"");
        let sets = |l: &String| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        };
        match lines[..tables].iter().position(sets) {
            Some(i) => lines[i] = line,
            None => missing.push(line),
        }
    }
    // After the top-level lines, before the first table (and the blank lines leading to it).
    let mut at = tables;
    while at > 0 && lines[at - 1].trim().is_empty() && at < lines.len() {
        at -= 1;
    }
    for (i, line) in missing.into_iter().enumerate() {
        lines.insert(at + i, line);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::set_top_level;

    #[test]
    fn settings_replace_their_lines_and_the_rest_stays() {
        let settings = [
            ("server", "https://b:8443".to_string()),
            ("ca", "/x/ca.pem".into()),
        ];
        let text = "# mine\nserver = \"https://a:8443\"\ntimeout = 60\n\n[[volume]]\nuuid = \"u\"\nname = \"n\"\nca = \"kept\"\n";
        assert_eq!(
            set_top_level(text, &settings),
            "# mine\nserver = \"https://b:8443\"\ntimeout = 60\nca = \"/x/ca.pem\"\n\n[[volume]]\nuuid = \"u\"\nname = \"n\"\nca = \"kept\"\n"
        );
        assert_eq!(
            set_top_level("# new\n", &settings),
            "# new\nserver = \"https://b:8443\"\nca = \"/x/ca.pem\"\n"
        );
    }
}
