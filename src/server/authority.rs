//! The recovery authority: the master age identity that escrow packets are encrypted to, and
//! the minisign key that signs recovery packets.
//!
//! Both secret keys live in the authority directory encrypted under the administrator
//! passphrase, in the stock tools' own formats, so an administrator without lifeline can still
//! use them: `age -d identity.age` gives the identity (age's scrypt passphrase encryption),
//! and `minisign -S -s minisign.key` signs (minisign's own scrypt-encrypted key).
//! They are decrypted in memory only for an operation that needs them.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use age::armor::{ArmoredReader, ArmoredWriter, Format};
use age::secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::atomic_file;
use crate::escrow::{
    otp, Binding, EscrowPacket, PacketError, RecoveryPacket, SCRYPT_MAX_WORK_FACTOR,
    SCRYPT_WORK_FACTOR,
};
use crate::hex::encode_secret;
use crate::secret::{random_bytes, Otp, Passphrase};

pub const IDENTITY_FILE: &str = "identity.age";
pub const RECIPIENT_FILE: &str = "recipient.txt";
pub const SIGNING_KEY_FILE: &str = "minisign.key";
pub const TRUST_KEY_FILE: &str = "minisign.pub";

/// Shortest administrator passphrase accepted: it guards every escrowed key.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

#[derive(Debug)]
pub enum AuthorityError {
    /// `init` on a directory that already holds an authority (or anything else).
    Exists(PathBuf),
    /// A directory without the authority's files.
    Missing(PathBuf),
    WeakPassphrase,
    WrongPassphrase,
    /// A key file is damaged.
    Corrupt(String),
    Packet(PacketError),
    Io(std::io::Error),
}

impl fmt::Display for AuthorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthorityError::Exists(p) => write!(
                f,
                "{} is not empty; an authority is never overwritten",
                p.display()
            ),
            AuthorityError::Missing(p) => write!(f, "{} does not hold an authority", p.display()),
            AuthorityError::WeakPassphrase => write!(
                f,
                "the administrator passphrase must have at least {MIN_PASSPHRASE_CHARS} characters"
            ),
            AuthorityError::WrongPassphrase => write!(f, "the administrator passphrase is wrong"),
            AuthorityError::Corrupt(what) => write!(f, "{what} is damaged"),
            AuthorityError::Packet(e) => e.fmt(f),
            AuthorityError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AuthorityError {}

impl From<std::io::Error> for AuthorityError {
    fn from(e: std::io::Error) -> Self {
        AuthorityError::Io(e)
    }
}

impl From<PacketError> for AuthorityError {
    fn from(e: PacketError) -> Self {
        AuthorityError::Packet(e)
    }
}

/// Creates a new authority in `dir` (which must be missing or empty). `extra` adds more files
/// (TLS material, configuration) to the directory before it appears.
pub fn init(
    dir: &Path,
    passphrase: &Passphrase,
    extra: impl FnOnce(&Path) -> Result<(), AuthorityError>,
) -> Result<(), AuthorityError> {
    let text = passphrase_text(passphrase)?;
    if text.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(AuthorityError::WeakPassphrase);
    }
    create_whole(dir, |staging| {
        write_keys(staging, passphrase, &text)?;
        extra(staging)
    })
}

/// Creates `dir` holding only the public halves of the authority in `from` (its recipient and
/// trust key), for a server that never holds the secret keys. `extra` as for [`init`].
pub fn init_public(
    dir: &Path,
    from: &Path,
    extra: impl FnOnce(&Path) -> Result<(), AuthorityError>,
) -> Result<(), AuthorityError> {
    let read = |name: &str| {
        let path = from.join(name);
        match fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(AuthorityError::Missing(from.to_path_buf()))
            }
            Err(e) => Err(e.into()),
            Ok(text) if text.len() > 4096 => {
                Err(AuthorityError::Corrupt(path.display().to_string()))
            }
            Ok(text) => Ok((path, text)),
        }
    };
    let (recipient_path, recipient) = read(RECIPIENT_FILE)?;
    if recipient.trim().parse::<age::x25519::Recipient>().is_err() {
        return Err(AuthorityError::Corrupt(
            recipient_path.display().to_string(),
        ));
    }
    let (_, trust) = read(TRUST_KEY_FILE)?;
    trust_key(from)?;
    create_whole(dir, |staging| {
        atomic_file::write_new(&staging.join(RECIPIENT_FILE), recipient.as_bytes(), 0o644)?;
        atomic_file::write_new(&staging.join(TRUST_KEY_FILE), trust.as_bytes(), 0o644)?;
        extra(staging)
    })
}

/// The authority's public signing key: what every recovery packet it makes verifies against.
pub fn trust_key(dir: &Path) -> Result<minisign::PublicKey, AuthorityError> {
    let path = dir.join(TRUST_KEY_FILE);
    let text = fs::read_to_string(&path)?;
    minisign::PublicKeyBox::from_string(&text)
        .and_then(|b| b.into_public_key())
        .map_err(|_| AuthorityError::Corrupt(path.display().to_string()))
}

/// True when `dir` holds the authority's secret keys (not only its public halves).
pub fn holds_secret_keys(dir: &Path) -> bool {
    dir.join(IDENTITY_FILE).exists() && dir.join(SIGNING_KEY_FILE).exists()
}

/// Makes `dir` (missing or empty) with what `fill` writes, all or nothing.
fn create_whole(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), AuthorityError>,
) -> Result<(), AuthorityError> {
    atomic_file::create_dir_whole(dir, || AuthorityError::Exists(dir.to_path_buf()), fill)
}

fn write_keys(
    dir: &Path,
    passphrase: &Passphrase,
    text: &Zeroizing<String>,
) -> Result<(), AuthorityError> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let created = humantime::format_rfc3339_seconds(SystemTime::now());
    // age-keygen's file layout, so `age -d -i` reads the decrypted file as is.
    let mut identity_file =
        Zeroizing::new(format!("# created: {created}\n# public key: {recipient}\n"));
    // expose_secret: written into the file that is encrypted right below.
    identity_file.push_str(identity.to_string().expose_secret());
    identity_file.push('\n');
    let encrypted = encrypt_to_passphrase(identity_file.as_bytes(), passphrase)?;
    atomic_file::write_new(&dir.join(IDENTITY_FILE), &encrypted, 0o600)?;
    atomic_file::write_new(
        &dir.join(RECIPIENT_FILE),
        format!("{recipient}\n").as_bytes(),
        0o644,
    )?;

    let keypair = minisign::KeyPair::generate_encrypted_keypair(Some(text.to_string()))
        .map_err(|e| std::io::Error::other(format!("minisign key generation failed: {e}")))?;
    let sk_box = keypair
        .sk
        .to_box(Some("lifeline recovery authority signing key"))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let pk_box = keypair
        .pk
        .to_box()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    atomic_file::write_new(
        &dir.join(SIGNING_KEY_FILE),
        sk_box.into_string().as_bytes(),
        0o600,
    )?;
    atomic_file::write_new(
        &dir.join(TRUST_KEY_FILE),
        pk_box.into_string().as_bytes(),
        0o644,
    )?;
    Ok(())
}

fn passphrase_text(passphrase: &Passphrase) -> Result<Zeroizing<String>, AuthorityError> {
    // expose_secret: age and minisign take passphrases as text.
    std::str::from_utf8(passphrase.expose_secret())
        .map(|s| Zeroizing::new(s.to_owned()))
        .map_err(|_| AuthorityError::Corrupt("the passphrase (not UTF-8)".into()))
}

fn encrypt_to_passphrase(
    plaintext: &[u8],
    passphrase: &Passphrase,
) -> Result<Vec<u8>, AuthorityError> {
    let secret = passphrase_text(passphrase)?;
    let mut recipient =
        age::scrypt::Recipient::new(age::secrecy::SecretString::from(secret.to_string()));
    recipient.set_work_factor(SCRYPT_WORK_FACTOR);
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut out = Vec::new();
    let mut writer =
        encryptor.wrap_output(ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor)?)?;
    writer.write_all(plaintext)?;
    writer.finish()?.finish()?;
    Ok(out)
}

/// The authority's secret keys, decrypted. Dropped (and the age identity wiped) right after use.
pub struct Unlocked {
    identity: age::x25519::Identity,
    // minisign's SecretKey does not zeroize itself; it lives only as long as this value.
    signer: minisign::SecretKey,
}

impl fmt::Debug for Unlocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Unlocked([redacted])")
    }
}

/// Decrypts the authority's keys with the administrator passphrase.
pub fn unlock(dir: &Path, passphrase: &Passphrase) -> Result<Unlocked, AuthorityError> {
    let identity_path = dir.join(IDENTITY_FILE);
    if !identity_path.exists() {
        return Err(AuthorityError::Missing(dir.to_path_buf()));
    }
    let text = passphrase_text(passphrase)?;
    let encrypted = fs::read(&identity_path)?;
    let decryptor = age::Decryptor::new(ArmoredReader::new(&encrypted[..]))
        .map_err(|_| AuthorityError::Corrupt(identity_path.display().to_string()))?;
    let mut scrypt = age::scrypt::Identity::new(age::secrecy::SecretString::from(text.to_string()));
    scrypt.set_max_work_factor(SCRYPT_MAX_WORK_FACTOR);
    let reader = decryptor
        .decrypt(std::iter::once(&scrypt as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                AuthorityError::WrongPassphrase
            }
            _ => AuthorityError::Corrupt(identity_path.display().to_string()),
        })?;
    let mut plain = Zeroizing::new(String::with_capacity(4096));
    reader
        .take(4096)
        .read_to_string(&mut plain)
        .map_err(|_| AuthorityError::Corrupt(identity_path.display().to_string()))?;
    let identity = plain
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .and_then(|l| l.parse::<age::x25519::Identity>().ok())
        .ok_or_else(|| AuthorityError::Corrupt(identity_path.display().to_string()))?;

    let sk_path = dir.join(SIGNING_KEY_FILE);
    let sk_text = fs::read_to_string(&sk_path)?;
    let sk_box = minisign::SecretKeyBox::from_string(&sk_text)
        .map_err(|_| AuthorityError::Corrupt(sk_path.display().to_string()))?;
    let signer = sk_box
        .into_secret_key(Some(text.to_string()))
        .map_err(|e| {
            if matches!(e.kind(), minisign::ErrorKind::Verify) {
                AuthorityError::WrongPassphrase
            } else {
                AuthorityError::Corrupt(sk_path.display().to_string())
            }
        })?;
    Ok(Unlocked { identity, signer })
}

/// A freshly issued recovery packet and the code that opens it.
#[derive(Debug)]
pub struct Issued {
    pub packet: Vec<u8>,
    pub otp: Otp,
    pub binding: Binding,
    /// SHA-256 of the use token inside the packet: what a server keeps to check a report of use.
    pub use_token_hash: Vec<u8>,
}

impl Unlocked {
    /// Opens an escrow packet made for this authority.
    pub fn open_escrow(
        &self,
        escrow_packet: &[u8],
    ) -> Result<crate::escrow::Record, AuthorityError> {
        Ok(EscrowPacket::parse(escrow_packet)?.open(&self.identity)?)
    }
    /// Opens an escrow packet and re-encrypts its secrets as a recovery packet bound to the
    /// same machine and volume, valid for `valid_for`, under a fresh one-time password.
    pub fn issue_recovery(
        &self,
        escrow_packet: &[u8],
        valid_for: Duration,
        otp_groups: usize,
    ) -> Result<Issued, AuthorityError> {
        let mut record = self.open_escrow(escrow_packet)?;
        let code = otp::generate(otp_groups).map_err(|e| match e {
            otp::GenerateError::Otp(e) => {
                AuthorityError::Corrupt(format!("the OTP settings ({e})"))
            }
            otp::GenerateError::Random(e) => AuthorityError::Io(e),
        })?;
        let mut id = [0u8; 16];
        random_bytes(&mut id)?;
        let binding = Binding {
            packet_id: encode_secret(&id).to_string(),
            machine_id: record.info.machine_id.clone(),
            volume_uuid: record.info.volume_uuid.clone(),
            expires: SystemTime::now() + valid_for,
            otp_groups,
        };
        record.binding = Some(binding.clone());
        let mut token = zeroize::Zeroizing::new([0u8; 16]);
        random_bytes(&mut token[..])?;
        let use_token_hash = {
            use sha2::Digest;
            sha2::Sha256::digest(&token[..]).to_vec()
        };
        record.use_token = Some(crate::secret::UseToken::from_slice(&token[..]));
        let packet = RecoveryPacket::seal(&record, &code, &self.signer)?;
        Ok(Issued {
            packet,
            otp: code,
            binding,
            use_token_hash,
        })
    }
}
