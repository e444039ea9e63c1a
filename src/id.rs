//! The identifiers that name machines and volumes: client IDs, machine IDs, volume UUIDs and
//! packet IDs.
//!
//! They are read from places an attacker or a damaged disk controls — a LUKS2 token, a DRSK
//! file, `/etc/machine-id`, the kernel command line, a packet — and they go into server URLs,
//! paths on removable media and the boot screen. So each is checked once, where it is read, by
//! the one function here for its kind, and from then on it is lower-case ASCII of a known
//! length: safe to slice, to put in a path or a URL, and to show.

use std::fmt;

/// Something that should be an identifier and is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError {
    /// What it should have been, e.g. "client ID (64 hex digits)".
    pub kind: &'static str,
    /// The offending text, escaped and cut short so it is safe to show.
    pub shown: String,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' is not a {}", self.shown, self.kind)
    }
}

impl std::error::Error for IdError {}

fn error(kind: &'static str, text: &str) -> IdError {
    // Control characters and non-ASCII are escaped; a long value is cut.
    let mut shown: String = text
        .chars()
        .take(72)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().count() > 72 {
        shown.push('…');
    }
    IdError { kind, shown }
}

fn hex_id(text: &str, len: usize, kind: &'static str) -> Result<String, IdError> {
    if text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(error(kind, text))
    }
}

/// For signed or sealed records, whose bytes must not change meaning: `check`, and the text
/// must already be in the form `check` gives (lower case), so "AB…" and "ab…" are not the
/// same record.
pub fn exactly(text: &str, check: fn(&str) -> Result<String, IdError>) -> Result<String, IdError> {
    let id = check(text)?;
    if id != text {
        return Err(error("lower-case identifier", text));
    }
    Ok(id)
}

/// A client ID: the hex SHA-256 of a DRSK's public area.
pub fn client_id(text: &str) -> Result<String, IdError> {
    hex_id(text, 64, "client ID (64 hex digits)")
}

/// A machine ID, as in `/etc/machine-id`.
pub fn machine_id(text: &str) -> Result<String, IdError> {
    hex_id(text, 32, "machine ID (32 hex digits)")
}

/// A recovery packet's ID.
pub fn packet_id(text: &str) -> Result<String, IdError> {
    hex_id(text, 32, "packet ID (32 hex digits)")
}

/// A LUKS volume UUID: 8-4-4-4-12 hex digits.
pub fn volume_uuid(text: &str) -> Result<String, IdError> {
    let valid = text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if valid {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(error("volume UUID", text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_kind_and_lowercases_it() {
        assert_eq!(client_id(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
        assert_eq!(
            machine_id("0123456789ABCDEF0123456789abcdef").unwrap(),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            volume_uuid("8F14E45F-CEEA-467A-9AF3-6B1D2C3E4F50").unwrap(),
            "8f14e45f-ceea-467a-9af3-6b1d2c3e4f50"
        );
        assert!(packet_id(&"0f".repeat(16)).is_ok());
        assert!(exactly(&"ab".repeat(32), client_id).is_ok());
        let e = exactly(&"AB".repeat(32), client_id).unwrap_err();
        assert!(
            e.to_string().contains("is not a lower-case identifier"),
            "{e}"
        );
        assert!(exactly("nope", machine_id)
            .unwrap_err()
            .to_string()
            .contains("machine ID"));
    }

    #[test]
    fn refuses_short_long_non_hex_non_ascii_and_paths_and_shows_them_safely() {
        for bad in [
            "",
            "abc",
            &"a".repeat(65),
            &format!("../{}", "a".repeat(61)),
            &format!("{}é", "a".repeat(62)),
            &format!("{}\n\x1b[2J", "a".repeat(61)),
        ] {
            let e = client_id(bad).unwrap_err();
            assert!(!e.shown.contains('\n') && !e.shown.contains('\x1b'), "{e}");
            assert!(e.to_string().contains("is not a client ID"), "{e}");
        }
        assert!(client_id(&"a".repeat(1000))
            .unwrap_err()
            .shown
            .ends_with('…'));
        assert!(machine_id(&"0".repeat(64)).is_err());
        for bad in [
            "8f14e45f-ceea-467a-9af3-6b1d2c3e4f5",
            "8f14e45f-ceea-467a-9af3-6b1d2c3e4f500",
            "8f14e45fxceea-467a-9af3-6b1d2c3e4f50",
            "../../../../../../../../etc/passwd00",
            "8f14e45f-ceea-467a-9af3-6b1d2c3e4f5é",
        ] {
            assert!(volume_uuid(bad).is_err(), "{bad}");
        }
    }
}
