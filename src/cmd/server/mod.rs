//! Subcommands of `lifeline-server`.

pub mod admin;
pub mod backup;
pub mod drsk;
pub mod init;
mod listing;
pub mod recovery;
pub mod serve;

use std::path::Path;

use super::{read_passphrase_file, Exit, Failure};
use crate::prompt::{Prompt, Terminal};
use crate::secret::Passphrase;
use crate::server::authority::AuthorityError;

impl From<AuthorityError> for Failure {
    fn from(e: AuthorityError) -> Self {
        let what = e.to_string();
        match e {
            AuthorityError::Exists(_) => {
                Failure::new(Exit::Exists, what).todo("choose a new, empty --dir")
            }
            AuthorityError::Missing(_) => {
                Failure::usage(what).todo("name the directory lifeline-server init made")
            }
            AuthorityError::WeakPassphrase => Failure::usage(what),
            AuthorityError::WrongPassphrase => Failure::new(Exit::Denied, what),
            AuthorityError::Corrupt(_) => Failure::new(Exit::Failure, what)
                .todo("restore the authority directory from its backup"),
            AuthorityError::Packet(p) => p.into(),
            AuthorityError::Io(_) => Failure::new(Exit::Failure, what),
        }
    }
}

/// The database of server directory `dir`, for the commands run on the server's host: a
/// directory that is not one (no `server.toml`, a mistyped `--dir`) is bad input, and no
/// database is made there.
pub(crate) fn open_store(dir: &Path) -> Result<crate::server::store::Store, Failure> {
    let config = crate::server::config::CONFIG_FILE;
    if !dir.join(config).is_file() {
        return Err(Failure::usage(format!(
            "{} is not a server directory (it holds no {config})",
            dir.display()
        ))
        .todo("give the directory lifeline-server init made"));
    }
    crate::server::store::open_server(dir).map_err(|e| Failure::new(Exit::Failure, e.to_string()))
}

/// The administrator passphrase: from a file, or asked on the terminal (twice when `confirm`).
pub(crate) fn admin_passphrase(file: Option<&Path>, confirm: bool) -> Result<Passphrase, Failure> {
    if let Some(file) = file {
        return read_passphrase_file(file);
    }
    let mut console = Terminal::new();
    let first = console.ask_secret("Administrator passphrase:")?;
    if confirm {
        let second = console.ask_secret("Administrator passphrase (again):")?;
        if *first != *second {
            return Err(Failure::usage(
                "the two passphrases differ; nothing was created",
            ));
        }
    }
    Ok(Passphrase::from_slice(first.as_bytes()))
}

/// The administrator passphrase: rebuilt from K share files when given, else as
/// `admin_passphrase` gets it.
pub(crate) fn admin_secret(
    file: Option<&Path>,
    share_files: &[std::path::PathBuf],
) -> Result<Passphrase, Failure> {
    if share_files.is_empty() {
        return admin_passphrase(file, false);
    }
    let texts = share_files
        .iter()
        .map(|p| {
            let bytes = zeroize::Zeroizing::new(super::read_small(p, 4096)?);
            Ok(zeroize::Zeroizing::new(
                String::from_utf8_lossy(&bytes).into_owned(),
            ))
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    crate::server::shares::combine(texts.iter().map(|t| t.as_str()))
        .map_err(|e| Failure::usage(e).todo("bring share files from enough administrators"))
}
