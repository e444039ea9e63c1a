//! The libcryptsetup adapter. Works on block devices, image files and detached header
//! backups alike, without device-mapper (activation with no name only checks the key).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use libcryptsetup_rs::consts::flags::{CryptActivate, CryptPbkdf, CryptVolumeKey};
use libcryptsetup_rs::consts::vals::{CryptKdf, EncryptionFormat, KeyslotInfo};
use libcryptsetup_rs::{
    CryptDevice, CryptInit, CryptKeyslotHandle, CryptPbkdfType, CryptTokenInfo, Either,
    LibcryptErr, TokenInput,
};

use super::{LuksError, LuksInfo};
use crate::secret::{Passphrase, VolumeKey};

/// Largest volume key LUKS allows (bytes).
const MAX_KEY_BYTES: usize = 512;
/// EPERM: libcryptsetup's answer when no keyslot matches the passphrase or key.
const EPERM: i32 = 1;

pub struct LuksVolume {
    device: CryptDevice,
    path: String,
    /// 1 or 2.
    version: u8,
}

impl std::fmt::Debug for LuksVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LuksVolume({})", self.path)
    }
}

fn other(e: LibcryptErr) -> LuksError {
    LuksError::Other(e.to_string())
}

fn errno(e: &LibcryptErr) -> Option<i32> {
    match e {
        LibcryptErr::IOError(io) => io.raw_os_error(),
        _ => None,
    }
}

impl LuksVolume {
    /// Opens a LUKS1 or LUKS2 device, image file or header backup file.
    pub fn open(path: &Path) -> Result<Self, LuksError> {
        let shown = path.display().to_string();
        // Say "cannot open" for a missing file before libcryptsetup says something vaguer.
        File::open(path).map_err(|source| LuksError::Open {
            path: shown.clone(),
            source,
        })?;
        let mut device = CryptInit::init(path).map_err(|e| {
            // A character device, a directory: libcryptsetup will not even look at it.
            use std::os::unix::fs::FileTypeExt;
            match std::fs::metadata(path).map(|m| m.file_type()) {
                Ok(t) if !t.is_file() && !t.is_block_device() => LuksError::NotLuks(shown.clone()),
                _ => other(e),
            }
        })?;
        device
            .context_handle()
            .load::<()>(None, None)
            .map_err(|_| LuksError::NotLuks(shown.clone()))?;
        let format = device
            .format_handle()
            .get_type()
            .map_err(|_| LuksError::NotLuks(shown.clone()))?;
        let version = match format {
            EncryptionFormat::Luks1 => 1,
            EncryptionFormat::Luks2 => 2,
            _ => return Err(LuksError::NotLuks(shown)),
        };
        Ok(LuksVolume {
            device,
            path: shown,
            version,
        })
    }

    pub fn info(&mut self) -> Result<LuksInfo, LuksError> {
        let mut status = self.device.status_handle();
        let uuid = status.get_uuid().map_err(other)?.hyphenated().to_string();
        let cipher = format!(
            "{}-{}",
            status.get_cipher().map_err(other)?,
            status.get_cipher_mode().map_err(other)?
        );
        let key_bits = u32::try_from(status.get_volume_key_size()).unwrap_or(0) * 8;
        let version = self.version;
        let label = if version == 2 {
            self.read_label()
        } else {
            None
        };
        Ok(LuksInfo {
            uuid,
            label,
            version,
            cipher,
            key_bits,
        })
    }

    /// The LUKS2 label: 48 NUL-padded bytes at offset 24 of the binary header. libcryptsetup
    /// has no safe binding for `crypt_get_label`, and reading it ourselves needs no `unsafe`.
    fn read_label(&self) -> Option<String> {
        let mut head = [0u8; 72];
        File::open(&self.path).ok()?.read_exact(&mut head).ok()?;
        let raw = &head[24..72];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let label = String::from_utf8_lossy(&raw[..end]).into_owned();
        (!label.is_empty()).then_some(label)
    }

    /// Reads the volume key with a keyslot passphrase; also says which keyslot took it.
    pub fn unlock(&mut self, passphrase: &Passphrase) -> Result<(u32, VolumeKey), LuksError> {
        let mut key = VolumeKey::zeroed(MAX_KEY_BYTES);
        // expose_secret: libcryptsetup derives the keyslot key from it.
        let result = self.device.volume_key_handle().get(
            None,
            key.expose_secret_mut(),
            Some(passphrase.expose_secret()),
        );
        match result {
            Ok((slot, len)) => {
                key.expose_secret_mut().truncate(len);
                let slot =
                    u32::try_from(slot).map_err(|_| LuksError::Other("negative keyslot".into()))?;
                Ok((slot, key))
            }
            Err(e) if errno(&e) == Some(EPERM) => Err(LuksError::WrongPassphrase),
            Err(e) => Err(other(e)),
        }
    }

    /// Proves `key` opens the volume: activation without a name, which checks the key
    /// against the header's digest and maps nothing.
    pub fn check_key(&mut self, key: &VolumeKey) -> Result<(), LuksError> {
        self.activate_as(None, key)
    }

    /// Opens the volume with `key` as the device-mapper device `/dev/mapper/<name>`.
    pub fn activate(&mut self, name: &str, key: &VolumeKey) -> Result<(), LuksError> {
        self.activate_as(Some(name), key)
    }

    fn activate_as(&mut self, name: Option<&str>, key: &VolumeKey) -> Result<(), LuksError> {
        // expose_secret: handed to libcryptsetup to check (and, with a name, to the kernel).
        match self.device.activate_handle().activate_by_volume_key(
            name,
            Some(key.expose_secret()),
            CryptActivate::empty(),
        ) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EPERM) || errno(&e) == Some(libc_einval()) => {
                Err(LuksError::WrongKey)
            }
            Err(e) => Err(other(e)),
        }
    }

    /// Number of keyslots the format has.
    fn slot_count(&self) -> u32 {
        // LUKS1 has 8, LUKS2 32; the fallback is never used for those two formats.
        let format = if self.version == 2 {
            EncryptionFormat::Luks2
        } else {
            EncryptionFormat::Luks1
        };
        CryptKeyslotHandle::max_keyslots(format).unwrap_or(8)
    }

    /// The lowest unused keyslot, or an error saying all are used.
    pub fn free_keyslot(&mut self) -> Result<u32, LuksError> {
        let total = self.slot_count();
        for slot in 0..total {
            if matches!(
                self.device.keyslot_handle().status(slot),
                Ok(KeyslotInfo::Inactive)
            ) {
                return Ok(slot);
            }
        }
        Err(LuksError::NoFreeKeyslot { total })
    }

    pub fn slot_is_active(&mut self, slot: u32) -> bool {
        matches!(
            self.device.keyslot_handle().status(slot),
            Ok(KeyslotInfo::Active | KeyslotInfo::ActiveLast | KeyslotInfo::Unbound)
        )
    }

    /// New keyslots use PBKDF2 with this many iterations and no benchmark, instead of
    /// libcryptsetup's benchmarked default: for test images only.
    pub fn set_pbkdf2_iterations(&mut self, iterations: u32) -> Result<(), LuksError> {
        let kdf = CryptPbkdfType {
            type_: CryptKdf::Pbkdf2,
            hash: Some("sha256".into()),
            time_ms: 0,
            iterations,
            max_memory_kb: 0,
            parallel_threads: 0,
            flags: CryptPbkdf::NO_BENCHMARK,
        };
        self.device
            .settings_handle()
            .set_pbkdf_type(&kdf)
            .map_err(other)
    }

    /// Adds `passphrase` in the lowest free keyslot, using the volume key; returns the slot.
    pub fn add_passphrase(
        &mut self,
        key: &VolumeKey,
        passphrase: &Passphrase,
    ) -> Result<u32, LuksError> {
        let slot = self.free_keyslot()?;
        // expose_secret: libcryptsetup wraps the volume key under the new passphrase.
        self.device
            .keyslot_handle()
            .add_by_key(
                Some(slot),
                Some(Either::Left(key.expose_secret())),
                passphrase.expose_secret(),
                CryptVolumeKey::empty(),
            )
            .map_err(other)
    }

    /// Removes a keyslot. Callers make sure another way in exists first.
    pub fn destroy_keyslot(&mut self, slot: u32) -> Result<(), LuksError> {
        if !self.slot_is_active(slot) {
            return Err(LuksError::SlotNotActive(slot));
        }
        self.device.keyslot_handle().destroy(slot).map_err(other)
    }
}

const fn libc_einval() -> i32 {
    22
}

/// Tokens: LUKS2 only. The JSON's meaning belongs to the caller.
impl LuksVolume {
    pub fn is_luks2(&self) -> bool {
        self.version == 2
    }

    /// The first token of `token_type`, with its ID.
    pub fn find_token(
        &mut self,
        token_type: &str,
    ) -> Result<Option<(u32, serde_json::Value)>, LuksError> {
        if !self.is_luks2() {
            return Ok(None);
        }
        for id in 0..LUKS2_TOKENS {
            let mut tokens = self.device.token_handle();
            match tokens.status(id) {
                Ok(CryptTokenInfo::External(t) | CryptTokenInfo::ExternalUnknown(t))
                    if t == token_type =>
                {
                    return tokens
                        .json_get(id)
                        .map(|json| Some((id, json)))
                        .map_err(other);
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Stores `json` as the token of its type, replacing an existing one in place: one
    /// metadata write, which LUKS2 makes atomic with its two header copies.
    pub fn put_token(
        &mut self,
        token_type: &str,
        json: &serde_json::Value,
    ) -> Result<u32, LuksError> {
        let existing = self.find_token(token_type)?.map(|(id, _)| id);
        let mut tokens = self.device.token_handle();
        let input = match existing {
            Some(id) => TokenInput::ReplaceToken(id, json),
            None => TokenInput::AddToken(json),
        };
        tokens.json_set(input).map_err(other)
    }
}

/// LUKS2 has 32 token slots.
const LUKS2_TOKENS: u32 = 32;
