//! Which keyslot holds the random recovery passphrase that `lifeline escrow
//! --random-passphrase` added, so that `lifeline status` can check it is still there and
//! `--repair` can replace it once an administrator has seen it.
//!
//! LUKS2: a token of type `lifeline-recovery` assigned to that keyslot. libcryptsetup drops the
//! assignment when the keyslot is destroyed, so a token with no keyslot means the passphrase no
//! longer opens the volume. LUKS1 has no tokens: `<state dir>/recovery/<uuid>` holds the
//! keyslot number. Neither holds a secret.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::atomic_file;
use crate::luks::{LuksError, LuksVolume};

pub const TOKEN_TYPE: &str = "lifeline-recovery";

/// What is known about a volume's random recovery passphrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoverySlot {
    /// None was added by lifeline (or before lifeline kept track of it).
    None,
    /// It is in this keyslot.
    In(u32),
    /// It was added, and its keyslot has since been removed.
    Removed,
}

fn luks1_file(state_dir: &Path, uuid: &str) -> PathBuf {
    state_dir.join("recovery").join(uuid)
}

pub fn read(
    volume: &mut LuksVolume,
    state_dir: &Path,
    uuid: &str,
) -> Result<RecoverySlot, LuksError> {
    let noted: Option<Option<u32>> = if volume.is_luks2() {
        volume.find_token(TOKEN_TYPE)?.map(|(_, json)| {
            json["keyslots"]
                .as_array()
                .and_then(|slots| slots.first())
                .and_then(|s| s.as_str())
                .and_then(|s| s.parse().ok())
        })
    } else {
        std::fs::read_to_string(luks1_file(state_dir, uuid))
            .ok()
            .map(|text| text.trim().parse().ok())
    };
    Ok(match noted {
        None => RecoverySlot::None,
        Some(Some(slot)) if volume.slot_is_active(slot) => RecoverySlot::In(slot),
        Some(_) => RecoverySlot::Removed,
    })
}

/// Notes that the recovery passphrase is now in `slot` (replacing an older note).
pub fn write(
    volume: &mut LuksVolume,
    state_dir: &Path,
    uuid: &str,
    slot: u32,
) -> Result<(), String> {
    if volume.is_luks2() {
        let token = json!({"type": TOKEN_TYPE, "keyslots": [slot.to_string()]});
        volume
            .put_token(TOKEN_TYPE, &token)
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        let file = luks1_file(state_dir, uuid);
        atomic_file::replace(&file, format!("{slot}\n").as_bytes(), 0o644)
            .map_err(|e| format!("{}: {e}", file.display()))
    }
}
