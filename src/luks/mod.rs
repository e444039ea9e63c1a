//! LUKS volumes: reading the volume key with a passphrase, checking a key, managing keyslots.
//!
//! `cryptsetup.rs` is the only file that touches libcryptsetup; its types do not leave it.

mod cryptsetup;

use std::fmt;

pub use cryptsetup::LuksVolume;

/// What the rest of lifeline needs to know about a LUKS header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksInfo {
    pub uuid: String,
    pub label: Option<String>,
    /// 1 or 2.
    pub version: u8,
    /// Cipher and mode, as cryptsetup prints them (`aes-xts-plain64`).
    pub cipher: String,
    pub key_bits: u32,
}

#[derive(Debug)]
pub enum LuksError {
    /// The device or file could not be opened.
    Open {
        path: String,
        source: std::io::Error,
    },
    /// It opened, but holds no LUKS header.
    NotLuks(String),
    /// No keyslot accepts the passphrase.
    WrongPassphrase,
    /// The key does not open this volume.
    WrongKey,
    /// Every keyslot is in use.
    NoFreeKeyslot { total: u32 },
    /// The keyslot asked for is not in use.
    SlotNotActive(u32),
    /// Anything else libcryptsetup reports.
    Other(String),
}

impl fmt::Display for LuksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LuksError::Open { path, source } => write!(f, "cannot open {path}: {source}"),
            LuksError::NotLuks(path) => {
                write!(f, "{path} is not a LUKS volume or LUKS header backup")
            }
            LuksError::WrongPassphrase => write!(f, "no keyslot accepts that passphrase"),
            LuksError::WrongKey => write!(f, "the volume key does not open this volume"),
            LuksError::NoFreeKeyslot { total } => write!(f, "all {total} keyslots are in use"),
            LuksError::SlotNotActive(n) => write!(f, "keyslot {n} is not in use"),
            LuksError::Other(m) => write!(f, "cryptsetup: {m}"),
        }
    }
}

impl std::error::Error for LuksError {}
