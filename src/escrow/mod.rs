//! Escrow and recovery packets, and the one-time passwords that open recovery packets.
//!
//! See `docs/FORMAT.md` for the byte-level specification and `tests/vectors/` for examples.

pub mod https;
pub mod otp;
pub mod packet;
pub mod record;
pub mod slot;
pub mod usb;

use std::fmt;
use std::time::SystemTime;

pub use packet::{EscrowPacket, RecoveryPacket};
pub use record::{Binding, Kind, Record, VolumeInfo};

/// Largest packet file we read. Real packets are about 1 KiB; this bounds what a hostile file,
/// server or USB stick can make us allocate.
pub const MAX_PACKET_BYTES: u64 = 64 * 1024;

/// scrypt work factor (log2 N) for everything lifeline encrypts under a passphrase: the same as
/// the stock `age` tool, about a second and 256 MiB on a laptop.
pub const SCRYPT_WORK_FACTOR: u8 = 18;
/// The most we accept when decrypting: a hostile packet must not make a small initramfs
/// allocate gigabytes or spin for minutes.
pub const SCRYPT_MAX_WORK_FACTOR: u8 = 18;

/// Why a packet was refused. Each names what happened; `cmd` adds what to do.
#[derive(Debug)]
pub enum PacketError {
    /// Not a packet of the expected kind, or damaged (truncated, edited, garbage).
    Malformed(String),
    /// A packet from a newer lifeline.
    UnknownVersion(u32),
    /// Signed by a key other than the trusted one.
    OtherSigner,
    /// The signature does not match the content: the packet was altered.
    BadSignature,
    /// A legacy (not pre-hashed) minisign signature: only pre-hashed ones are accepted.
    LegacySignature,
    /// The packet is for another volume.
    OtherVolume {
        packet: String,
        device: String,
    },
    /// The packet is for another machine.
    OtherMachine {
        packet: String,
        local: String,
    },
    /// The packet's validity ended.
    Expired(SystemTime),
    /// The one-time password (or the passphrase) does not open it.
    WrongPassphrase,
    /// The escrow packet is not encrypted to this authority's key.
    NotOurRecipient,
    /// Its scrypt work factor is above what we accept.
    ExcessiveWork(u8),
    /// The clear header of an escrow packet disagrees with its encrypted record.
    HeaderMismatch(&'static str),
    Io(std::io::Error),
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketError::Malformed(why) => write!(f, "the packet is damaged or not a lifeline packet: {why}"),
            PacketError::UnknownVersion(v) => {
                write!(f, "the packet has format version {v}, which this lifeline does not know")
            }
            PacketError::OtherSigner => write!(f, "the packet is signed by a key that is not trusted"),
            PacketError::BadSignature => {
                write!(f, "the packet's signature does not match its content: it was altered")
            }
            PacketError::LegacySignature => write!(
                f,
                "the packet has a legacy minisign signature; only pre-hashed signatures are accepted"
            ),
            PacketError::OtherVolume { packet, device } => write!(
                f,
                "the packet is for volume {packet}, but this volume is {device}"
            ),
            PacketError::OtherMachine { packet, local } => write!(
                f,
                "the packet is for machine {packet}, but this machine is {local}"
            ),
            PacketError::Expired(t) => write!(
                f,
                "the packet expired at {}",
                humantime::format_rfc3339_seconds(*t)
            ),
            PacketError::WrongPassphrase => write!(f, "the one-time password does not open the packet"),
            PacketError::NotOurRecipient => {
                write!(f, "the escrow packet is not encrypted to this authority's key")
            }
            PacketError::ExcessiveWork(n) => write!(
                f,
                "the packet asks for scrypt work factor {n}; at most {SCRYPT_MAX_WORK_FACTOR} is accepted"
            ),
            PacketError::HeaderMismatch(field) => write!(
                f,
                "the packet's clear header does not match its encrypted content ({field}): it was altered"
            ),
            PacketError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PacketError {}

impl From<std::io::Error> for PacketError {
    fn from(e: std::io::Error) -> Self {
        PacketError::Io(e)
    }
}

/// Reads a packet file: a regular file of at most `MAX_PACKET_BYTES`.
pub fn read_packet_file(path: &std::path::Path) -> Result<Vec<u8>, PacketError> {
    crate::input::read_regular(path, MAX_PACKET_BYTES).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => {
            PacketError::Malformed(format!("{}: {e}", path.display()))
        }
        kind => PacketError::Io(std::io::Error::new(
            kind,
            format!("{}: {e}", path.display()),
        )),
    })
}
