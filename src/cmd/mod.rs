//! The command-line front ends of both binaries, one file per subcommand.
//!
//! Every failure becomes a [`Failure`]: what happened, what to do next, and an exit code from
//! [`Exit`], the one place exit codes are defined (`docs/EXIT-CODES.md` repeats the table;
//! `exit.rs`). What a person hands a command — files, passphrases, IDs — is read in `input.rs`.

mod args;
pub mod backup;
pub mod enroll;
pub mod escrow;
mod exit;
mod input;
pub mod inspect;
pub mod join;
pub mod provision;
pub mod recover;
pub mod recovery;
#[cfg(feature = "server")]
pub mod server;
pub mod status;
pub mod unlock;

use std::path::PathBuf;
use std::time::Duration;

pub use args::parse_args;
pub use exit::{finish, CmdResult, Exit, Failure};
pub use input::{
    machine_id, new_pin, owner_auth, parse_duration, passphrase_from, pin_from, read_key_file,
    read_passphrase_file, read_secret_line, read_small, unreadable, volume_key_from_user,
};

use crate::tpm::{TssTpm, DEFAULT_TCTI};

/// Options every TPM command shares.
#[derive(Debug, Clone)]
pub struct Globals {
    /// TCTI configuration: `--tcti`, else `LIFELINE_TCTI`, else the kernel resource manager.
    pub tcti: String,
    /// Where lifeline keeps its small state files (`--state-dir`, `LIFELINE_STATE_DIR`).
    pub state_dir: PathBuf,
}

/// How long commands wait for a TPM to appear.
const TPM_WAIT: Duration = Duration::from_secs(5);

impl Globals {
    pub fn new(tcti: Option<String>, state_dir: Option<PathBuf>) -> Globals {
        Globals {
            tcti: tcti
                .or_else(|| std::env::var("LIFELINE_TCTI").ok())
                .unwrap_or_else(|| DEFAULT_TCTI.to_string()),
            state_dir: state_dir
                .or_else(|| std::env::var_os("LIFELINE_STATE_DIR").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("/etc/lifeline")),
        }
    }

    pub fn open_tpm(&self) -> Result<TssTpm, Failure> {
        Ok(TssTpm::open(&self.tcti, TPM_WAIT)?)
    }
}

/// Keeps the TSS libraries' own error logging off the console: lifeline reports every TPM
/// failure itself, in one line. Respects a TSS2_LOG the user set. Called first thing in
/// `main`, before any thread exists.
pub fn quiet_tss_log() {
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+none");
    }
}
