//! What a person hands a command: files named on the command line (regular files only, of
//! a bounded size; `-` for standard input, on every option that names a file to read),
//! passphrases typed or in files, machine IDs.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use zeroize::Zeroizing;

use super::Failure;
use crate::luks::LuksError;
use crate::secret::Passphrase;
use crate::tpm::TssTpm;

/// Reads a key file byte for byte, as `cryptsetup --key-file` does.
pub fn read_key_file(path: &Path) -> Result<Passphrase, Failure> {
    let bytes = zeroize::Zeroizing::new(read_small(path, 8192)?);
    Ok(Passphrase::from_slice(&bytes))
}

/// The passphrase in `file`'s first line (see `read_passphrase_file`), when a file is named.
pub fn passphrase_from(file: Option<&Path>) -> Result<Option<Passphrase>, Failure> {
    file.map(read_passphrase_file).transpose()
}

/// A duration option such as `90s` or `10m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration like 90s or 10m: {e}"))
}

/// Reads a passphrase file: its first line, without the line ending. Someone who writes
/// `echo secret > file` means "secret", and the passphrase will later be typed at a prompt.
/// `-` is standard input.
pub fn read_passphrase_file(path: &Path) -> Result<Passphrase, Failure> {
    Ok(Passphrase::from_slice(&first_line(path, "passphrase")?))
}

/// A secret kept as one line of text (a credential, an enrollment token) in `path`, or on
/// standard input for `-`: the first line, surrounding white space removed.
pub fn read_secret_line(path: &Path, what: &str) -> Result<Zeroizing<String>, Failure> {
    let line = first_line(path, what)?;
    let text = std::str::from_utf8(&line)
        .map_err(|_| Failure::usage(format!("{}: the {what} is not text", path.display())))?;
    if text.trim().is_empty() {
        return Err(Failure::usage(format!(
            "{}: the {what} is blank",
            path.display()
        )));
    }
    Ok(Zeroizing::new(text.trim().to_string()))
}

/// The first line of a small file (or of standard input for `-`), in wiped memory; an empty
/// one is refused.
fn first_line(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let bytes = Zeroizing::new(read_small(path, 8192)?);
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(Failure::usage(format!(
            "{}: the {what} file is empty",
            shown(path)
        )));
    }
    Ok(Zeroizing::new(line.to_vec()))
}

/// A file that is there but cannot be read, with the fix when it is a matter of permissions.
pub fn unreadable(path: &Path, e: &std::io::Error) -> Failure {
    let failure = Failure::usage(format!("cannot read {}: {e}", path.display()));
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            failure.todo("run it as root (lifeline's files are readable by root only), or give a file you can read")
        }
        _ => failure,
    }
}

/// How a file given on the command line is named in messages.
fn shown(path: &Path) -> String {
    match path == Path::new("-") {
        true => "standard input".to_string(),
        false => path.display().to_string(),
    }
}

/// Reads a small regular file, refusing anything larger than `limit` (and FIFOs, devices);
/// `-` is standard input, read up to the same limit. Callers wrap secrets in wiped memory;
/// the buffer is allocated once, so no copy is left behind by growing it.
pub fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, Failure> {
    if path != Path::new("-") {
        return crate::input::read_regular(path, limit).map_err(|e| unreadable(path, &e));
    }
    let mut bytes = Vec::with_capacity(limit as usize + 1);
    std::io::stdin()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::usage(format!("cannot read standard input: {e}")))?;
    if bytes.len() as u64 > limit {
        zeroize::Zeroize::zeroize(&mut bytes);
        return Err(Failure::usage(format!(
            "standard input holds more than {limit} bytes"
        )));
    }
    Ok(bytes)
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
    let mut console = crate::prompt::Terminal::new();
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

/// A TPM PIN: from a file's first line, else asked for.
pub fn pin_from(file: Option<&Path>, question: &str) -> Result<Passphrase, Failure> {
    if let Some(f) = file {
        return read_passphrase_file(f);
    }
    use crate::prompt::Prompt;
    let answer = crate::prompt::Terminal::new().ask_secret(question)?;
    Ok(Passphrase::from_slice(answer.as_bytes()))
}

/// A new TPM PIN (`what`: "PIN", "new PIN"): from a file's first line, else asked for twice.
/// Refused when it could be mistaken for a one-time password at the boot prompt.
pub fn new_pin(file: Option<&Path>, what: &str) -> Result<Passphrase, Failure> {
    let pin = match file {
        Some(f) => read_passphrase_file(f)?,
        None => {
            use crate::prompt::Prompt;
            let mut t = crate::prompt::Terminal::new();
            let first = t.ask_secret(&format!("Choose the {what}:"))?;
            let again = t.ask_secret(&format!("The {what} again:"))?;
            if first.as_bytes() != again.as_bytes() {
                return Err(Failure::usage(format!("the two {what}s differ")).todo("run it again"));
            }
            Passphrase::from_slice(first.as_bytes())
        }
    };
    // Borrowed, not converted: a lossy conversion would copy the PIN into a plain String.
    let otp_shaped =
        std::str::from_utf8(pin.expose_secret()).is_ok_and(crate::escrow::otp::looks_like_otp);
    if otp_shaped {
        return Err(Failure::usage(format!(
            "that {what} has the shape of a one-time password, which the boot prompt would take it for"
        ))
        .todo("choose another"));
    }
    if pin.expose_secret().len() < 4 {
        return Err(Failure::usage(format!(
            "the {what} is shorter than 4 characters"
        )));
    }
    Ok(pin)
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
    let answer = crate::prompt::Terminal::new().ask_secret("TPM owner authorization:")?;
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
