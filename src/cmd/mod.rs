//! The command-line front ends of both binaries, one file per subcommand.
//!
//! Every failure becomes a [`Failure`]: what happened, what to do next, and an exit code from
//! [`Exit`], the one place exit codes are defined (`docs/EXIT-CODES.md` repeats the table).

pub mod backup;
pub mod enroll;
pub mod escrow;
pub mod inspect;
pub mod join;
pub mod provision;
pub mod recover;
pub mod recovery;
#[cfg(feature = "server")]
pub mod server;
pub mod unlock;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::escrow::otp::OtpError;
use crate::escrow::PacketError;
use crate::luks::LuksError;
use crate::prompt::PromptError;
use crate::secret::Passphrase;
use crate::tpm::{TpmError, TssTpm, DEFAULT_TCTI};

/// Exit codes of `lifeline` and `lifeline-server`: a contract with scripts and initramfs glue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// Anything not listed below (I/O errors, bugs).
    Failure = 1,
    /// Bad arguments or unreadable input files.
    Usage = 2,
    /// A passphrase or one-time password was wrong (after the allowed attempts).
    Denied = 3,
    /// A packet is damaged, altered, of an unknown version, or signed by an untrusted key.
    BadPacket = 4,
    /// A valid packet that does not apply here: other volume, other machine, or expired.
    NotApplicable = 5,
    /// The volume cannot do what was asked: not LUKS, the key does not open it, no free
    /// keyslot, keyslot not in use.
    Volume = 6,
    /// The target exists already (an authority, an output file); nothing was changed.
    Exists = 7,
    /// The TPM cannot do it: no TPM, no DRSK, PCRs changed, lockout, refused by policy,
    /// or a foreign object where lifeline's should be.
    Tpm = 8,
    /// `lifeline unlock` did not open every volume (gave up, timed out, disabled): the
    /// distribution's own unlock step takes over.
    StepAside = 9,
}

/// A failed command: what happened and what the person should do next.
#[derive(Debug)]
pub struct Failure {
    pub code: Exit,
    pub what: String,
    pub todo: Option<String>,
}

pub type CmdResult = Result<(), Failure>;

impl Failure {
    pub fn new(code: Exit, what: impl Into<String>) -> Self {
        Failure {
            code,
            what: what.into(),
            todo: None,
        }
    }

    pub fn todo(mut self, todo: impl Into<String>) -> Self {
        self.todo = Some(todo.into());
        self
    }

    pub fn usage(what: impl Into<String>) -> Self {
        Failure::new(Exit::Usage, what)
    }

    /// Prefixes the message with where it happened (a file name, a step).
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.what = format!("{ctx}: {}", self.what);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.what)?;
        if let Some(todo) = &self.todo {
            write!(f, "\n  what to do: {todo}")?;
        }
        Ok(())
    }
}

impl From<PacketError> for Failure {
    fn from(e: PacketError) -> Self {
        let what = e.to_string();
        let (code, todo) = match e {
            PacketError::Malformed(_) => (
                Exit::BadPacket,
                "ask for the packet again; it was cut short or changed on the way",
            ),
            PacketError::UnknownVersion(_) => (Exit::BadPacket, "use a newer lifeline to read this packet"),
            PacketError::OtherSigner => (
                Exit::BadPacket,
                "check that --trust names your organisation's key, and get the packet from your helpdesk",
            ),
            PacketError::BadSignature => (Exit::BadPacket, "do not use this packet; ask the helpdesk for a new one"),
            PacketError::LegacySignature => (
                Exit::BadPacket,
                "sign it again without -l (minisign -S signs pre-hashed), or have lifeline-server issue it",
            ),
            PacketError::OtherVolume { .. } | PacketError::OtherMachine { .. } => (
                Exit::NotApplicable,
                "ask the helpdesk for the packet of this volume; read them the volume UUID",
            ),
            PacketError::Expired(_) => (Exit::NotApplicable, "ask the helpdesk to issue a new recovery packet"),
            PacketError::WrongPassphrase => (
                Exit::Denied,
                "check the one-time password with the helpdesk and type it again",
            ),
            PacketError::NotOurRecipient => (
                Exit::BadPacket,
                "this packet was escrowed to another authority; use that authority's directory",
            ),
            PacketError::ExcessiveWork(_) => (Exit::BadPacket, "this packet was not made by lifeline; do not use it"),
            PacketError::HeaderMismatch(_) => (Exit::BadPacket, "do not use this packet; find an unaltered copy"),
            PacketError::Io(_) => (Exit::Failure, "check the file name and permissions"),
        };
        Failure::new(code, what).todo(todo)
    }
}

impl From<LuksError> for Failure {
    fn from(e: LuksError) -> Self {
        let what = e.to_string();
        let (code, todo) = match e {
            LuksError::Open { .. } => (Exit::Usage, "check the device or file name"),
            LuksError::NotLuks(_) => (Exit::Volume, "name the LUKS partition itself (see lsblk -f) or a LUKS header backup"),
            LuksError::WrongPassphrase => (Exit::Denied, "type the passphrase again, or recover with a recovery packet"),
            LuksError::WrongKey => (
                Exit::Volume,
                "the volume was re-created or re-encrypted after this key was escrowed; escrow it again",
            ),
            LuksError::NoFreeKeyslot { .. } => (
                Exit::Volume,
                "free a keyslot first (cryptsetup luksKillSlot DEVICE N, keeping one you can open)",
            ),
            LuksError::SlotNotActive(_) => (Exit::Volume, "list keyslots with cryptsetup luksDump DEVICE"),
            LuksError::Other(_) => (Exit::Failure, "run cryptsetup luksDump DEVICE to check the header"),
        };
        Failure::new(code, what).todo(todo)
    }
}

impl From<TpmError> for Failure {
    fn from(e: TpmError) -> Self {
        let what = e.to_string();
        let (code, todo) = match e {
            TpmError::NoDevice(_) => (
                Exit::Tpm,
                "check that the TPM is enabled in the firmware, or name it with --tcti or LIFELINE_TCTI",
            ),
            TpmError::DrskMissing => (
                Exit::Tpm,
                "run lifeline provision; after a motherboard swap, restore the DRSK from a backup server (lifeline restore)",
            ),
            TpmError::ForeignObject(_) => (
                Exit::Tpm,
                "lifeline leaves keys it did not make alone; provision --force replaces them, and everything sealed under the old DRSK must be enrolled again",
            ),
            TpmError::OtherKey(_) => (Exit::Tpm, "restore the DRSK from its backup server, or enroll again"),
            TpmError::PcrMismatch(_) => (
                Exit::Tpm,
                "boot the way the key was enrolled, or recover with a recovery packet and enroll again",
            ),
            TpmError::Lockout => (
                Exit::Tpm,
                "wait for the lockout to end, or reset it with the lockout authorization (tpm2_dictionarylockout -c)",
            ),
            TpmError::OwnerAuthNeeded => (Exit::Usage, "give the TPM owner authorization with --owner-auth-file"),
            TpmError::OwnerAuthWrong => (Exit::Denied, "check the TPM owner authorization"),
            TpmError::PolicyRefused(_) => (
                Exit::Tpm,
                "the DRSK can be backed up only to the servers named when it was provisioned",
            ),
            TpmError::Other(_) => (Exit::Tpm, "run the command again; if it persists, check the TPM with tpm2_getcap"),
        };
        Failure::new(code, what).todo(todo)
    }
}

impl From<OtpError> for Failure {
    fn from(e: OtpError) -> Self {
        Failure::new(Exit::Denied, e.to_string())
            .todo("read the code back to the helpdesk group by group")
    }
}

impl From<PromptError> for Failure {
    fn from(e: PromptError) -> Self {
        Failure::new(Exit::Usage, e.to_string())
            .todo("answer at the prompt, or give the answer in a file (see --help)")
    }
}

/// Runs a subcommand and turns its outcome into the process exit code.
pub fn finish(program: &str, result: CmdResult) -> i32 {
    match result {
        Ok(()) => Exit::Ok as i32,
        Err(f) => {
            // An empty message: the command has said why already.
            if !f.what.is_empty() {
                eprintln!("{program}: {f}");
            }
            f.code as i32
        }
    }
}

/// Reads a key file byte for byte, as `cryptsetup --key-file` does.
pub fn read_key_file(path: &Path) -> Result<Passphrase, Failure> {
    let bytes = zeroize::Zeroizing::new(read_small(path, 8192)?);
    Ok(Passphrase::from_slice(&bytes))
}

/// Reads a passphrase file: its first line, without the line ending. Someone who writes
/// `echo secret > file` means "secret", and the passphrase will later be typed at a prompt.
/// The passphrase in `file`'s first line, when a file is named.
pub fn passphrase_from(file: Option<&Path>) -> Result<Option<Passphrase>, Failure> {
    file.map(read_passphrase_file).transpose()
}

/// A duration option such as `90s` or `10m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration like 90s or 10m: {e}"))
}

pub fn read_passphrase_file(path: &Path) -> Result<Passphrase, Failure> {
    let bytes = zeroize::Zeroizing::new(read_small(path, 8192)?);
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(Failure::usage(format!(
            "{}: the passphrase file is empty",
            path.display()
        )));
    }
    Ok(Passphrase::from_slice(line))
}

/// Reads a small regular file, refusing anything larger than `limit` (and FIFOs, devices).
pub fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, Failure> {
    crate::input::read_regular(path, limit)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))
}

/// Passphrase attempts at the prompt, as cryptsetup allows.
const PASSPHRASE_TRIES: u32 = 3;

/// Reads a volume's key with its passphrase: from a key file (byte for byte, as cryptsetup
/// does), else asked for up to three times.
pub fn volume_key_from_user(
    volume: &mut crate::luks::LuksVolume,
    device: &Path,
    key_file: Option<&Path>,
) -> Result<crate::secret::VolumeKey, Failure> {
    use crate::prompt::Prompt;
    if let Some(file) = key_file {
        let pass = read_key_file(file)?;
        return Ok(volume.unlock(&pass)?.1);
    }
    let mut console = crate::prompt::Console::new();
    let question = format!("Enter passphrase for {}:", device.display());
    for attempt in 1..=PASSPHRASE_TRIES {
        let answer = console.ask_secret(&question)?;
        let pass = Passphrase::from_slice(answer.as_bytes());
        match volume.unlock(&pass) {
            Ok((_, key)) => return Ok(key),
            Err(LuksError::WrongPassphrase) if attempt < PASSPHRASE_TRIES => {
                console.say("No keyslot accepts that passphrase. Try again.");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(LuksError::WrongPassphrase.into())
}

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

/// The TPM owner authorization: from a file, else asked for when the TPM has one set.
pub fn owner_auth(tpm: &mut TssTpm, file: Option<&Path>) -> Result<Option<Passphrase>, Failure> {
    if let Some(f) = file {
        return read_passphrase_file(f).map(Some);
    }
    if !tpm.owner_auth_set()? {
        return Ok(None);
    }
    use crate::prompt::Prompt;
    let answer = crate::prompt::Console::new().ask_secret("TPM owner authorization:")?;
    Ok(Some(Passphrase::from_slice(answer.as_bytes())))
}

/// The machine ID packets are bound to: `given` (a `--machine-id` option), else this machine's
/// own (`/etc/machine-id`); checked either way.
pub fn machine_id(given: Option<&str>) -> Result<String, Failure> {
    const PATH: &str = "/etc/machine-id";
    if let Some(id) = given {
        return crate::id::machine_id(id).map_err(|e| {
            Failure::usage(format!("--machine-id: {e}"))
                .todo("give the 32 hex digits of the machine's /etc/machine-id")
        });
    }
    let text = std::fs::read_to_string(PATH).unwrap_or_default();
    crate::id::machine_id(text.trim()).map_err(|_| {
        Failure::usage(format!("{PATH} does not hold a machine ID"))
            .todo("give the ID of the machine this volume belongs to with --machine-id")
    })
}

/// Parses the command line like `argh::from_env`, but exits with [`Exit::Usage`] on bad
/// arguments (argh's own choice is 1, which we reserve for failures).
pub fn parse_args<T: argh::TopLevelCommand>() -> T {
    let strings: Vec<String> = std::env::args_os()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let cmd = strings
        .first()
        .map(|p| {
            Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(p)
        })
        .unwrap_or("lifeline");
    let rest: Vec<&str> = strings.iter().skip(1).map(String::as_str).collect();
    T::from_args(&[cmd], &rest).unwrap_or_else(|early| match early.status {
        Ok(()) => {
            println!("{}", early.output);
            std::process::exit(Exit::Ok as i32);
        }
        Err(()) => {
            eprintln!("{}\nRun {cmd} --help for more information.", early.output);
            std::process::exit(Exit::Usage as i32);
        }
    })
}

/// Keeps the TSS libraries' own error logging off the console: lifeline reports every TPM
/// failure itself, in one line. Respects a TSS2_LOG the user set. Called first thing in
/// `main`, before any thread exists.
pub fn quiet_tss_log() {
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+none");
    }
}
