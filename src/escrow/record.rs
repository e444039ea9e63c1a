//! The plaintext record inside both packet kinds.
//!
//! A record is UTF-8 text: a first line naming kind and version, then `key: value` lines.
//! Text rather than JSON or CBOR because an administrator who has only the stock `age` tool
//! must be able to read it, and because parsing it ourselves lets the secret fields go straight
//! from the decrypted buffer into zeroized types with no intermediate copies.
//! Unknown keys are ignored (later minor additions); a change of meaning bumps the version.

use std::fmt::Write as _;
use std::time::SystemTime;

use zeroize::Zeroizing;

use super::PacketError;
use crate::hex::{decode_secret, encode_secret};
use crate::secret::{Passphrase, UseToken, VolumeKey};

/// Which record: the first line of the plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Escrow,
    Recovery,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Escrow => "lifeline-escrow",
            Kind::Recovery => "lifeline-recovery",
        }
    }
}

pub const VERSION: u32 = 1;

/// What identifies a volume and its machine. Not secret; shown by `lifeline inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub host: String,
    pub machine_id: String,
    /// The TPM client ID (hex SHA-256 of the DRSK public area), once the machine is provisioned.
    pub client_id: Option<String>,
    pub volume_uuid: String,
    pub volume_label: Option<String>,
    pub luks_version: u8,
    pub cipher: String,
    pub key_bits: u32,
    pub created: SystemTime,
}

/// Where and until when a recovery packet may be used. Not secret; signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub packet_id: String,
    pub machine_id: String,
    pub volume_uuid: String,
    pub expires: SystemTime,
    pub otp_groups: usize,
}

/// A decrypted record: the volume's description and its secrets.
#[derive(Debug)]
pub struct Record {
    pub info: VolumeInfo,
    pub volume_key: VolumeKey,
    pub recovery_passphrase: Option<Passphrase>,
    /// Present in recovery records only.
    pub binding: Option<Binding>,
    /// Recovery records issued by a server carry one (see `secret::UseToken`).
    pub use_token: Option<UseToken>,
}

/// Writes `key: value` lines for the non-secret description; shared with the packet's clear
/// header so both are produced by one piece of code.
pub(crate) fn write_info(out: &mut String, info: &VolumeInfo) {
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(out, "{k}: {}", one_line(v));
    };
    line("host", &info.host);
    line("machine-id", &info.machine_id);
    if let Some(c) = &info.client_id {
        line("client-id", c);
    }
    line("volume-uuid", &info.volume_uuid);
    if let Some(l) = &info.volume_label {
        line("volume-label", l);
    }
    line("luks-version", &info.luks_version.to_string());
    line("cipher", &info.cipher);
    line("key-bits", &info.key_bits.to_string());
    line(
        "created",
        &humantime::format_rfc3339_seconds(info.created).to_string(),
    );
}

/// Values are single-line by construction; anything that is not printable becomes `?`.
fn one_line(v: &str) -> String {
    v.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl Record {
    /// The plaintext to encrypt. It holds the key, so it is returned in a wiped buffer.
    pub fn to_plaintext(&self, kind: Kind) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::new());
        let _ = writeln!(out, "{} v{VERSION}", kind.tag());
        write_info(&mut out, &self.info);
        if let Some(b) = &self.binding {
            let _ = writeln!(out, "packet-id: {}", b.packet_id);
            let _ = writeln!(
                out,
                "expires: {}",
                humantime::format_rfc3339_seconds(b.expires)
            );
            let _ = writeln!(out, "otp-groups: {}", b.otp_groups);
        }
        // expose_secret: the record is the secret's container; it is encrypted right after.
        let key_hex = encode_secret(self.volume_key.expose_secret());
        out.push_str("volume-key: ");
        out.push_str(&key_hex);
        out.push('\n');
        if let Some(t) = &self.use_token {
            // expose_secret: inside the encrypted record, as the server expects it back.
            out.push_str("use-token: ");
            out.push_str(&encode_secret(t.expose_secret()));
            out.push('\n');
        }
        if let Some(p) = &self.recovery_passphrase {
            // expose_secret: as above. Generated passphrases are printable ASCII.
            let text = Zeroizing::new(String::from_utf8_lossy(p.expose_secret()).into_owned());
            out.push_str("recovery-passphrase: ");
            out.push_str(&text);
            out.push('\n');
        }
        out
    }

    /// Parses decrypted plaintext of the expected kind.
    pub fn parse(plaintext: &[u8], kind: Kind) -> Result<Record, PacketError> {
        let text = std::str::from_utf8(plaintext)
            .map_err(|_| PacketError::Malformed("the record is not UTF-8 text".into()))?;
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("");
        check_version_line(first, kind.tag())?;
        let fields = Fields::parse(lines)?;
        let info = info_from_fields(&fields)?;
        let key_hex = fields.require("volume-key")?;
        let key = decode_secret(key_hex)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| PacketError::Malformed("volume-key is not hex".into()))?;
        if key.len() * 8 != info.key_bits as usize {
            return Err(PacketError::Malformed(format!(
                "volume-key has {} bits but key-bits says {}",
                key.len() * 8,
                info.key_bits
            )));
        }
        let recovery_passphrase = fields
            .get("recovery-passphrase")
            .map(|p| Passphrase::from_slice(p.as_bytes()));
        let use_token = match fields.get("use-token") {
            Some(hex) => {
                Some(UseToken::new(decode_secret(hex).ok_or_else(|| {
                    PacketError::Malformed("use-token is not hex".into())
                })?))
            }
            None => None,
        };
        let binding = match kind {
            Kind::Escrow => None,
            Kind::Recovery => Some(Binding {
                packet_id: fields.require("packet-id")?.to_string(),
                machine_id: info.machine_id.clone(),
                volume_uuid: info.volume_uuid.clone(),
                expires: parse_time(fields.require("expires")?, "expires")?,
                otp_groups: parse_num(fields.require("otp-groups")?, "otp-groups")?,
            }),
        };
        Ok(Record {
            info,
            volume_key: VolumeKey::new(key),
            recovery_passphrase,
            binding,
            use_token,
        })
    }
}

/// `tag vN`: names an unknown version as such, so old readers say "upgrade" instead of "corrupt".
pub(crate) fn check_version_line(line: &str, tag: &str) -> Result<(), PacketError> {
    let Some(rest) = line.strip_prefix(tag).and_then(|r| r.strip_prefix(" v")) else {
        return Err(PacketError::Malformed(format!("expected a '{tag}' record")));
    };
    match rest.parse::<u32>() {
        Ok(VERSION) => Ok(()),
        Ok(v) => Err(PacketError::UnknownVersion(v)),
        Err(_) => Err(PacketError::Malformed(format!(
            "bad version line '{}'",
            one_line(line)
        ))),
    }
}

/// `key: value` lines. Values may hold secrets; they are borrowed from the wiped buffer.
pub(crate) struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Fields<'a> {
    pub(crate) fn parse(lines: impl Iterator<Item = &'a str>) -> Result<Self, PacketError> {
        let mut out: Vec<(&str, &str)> = Vec::new();
        for line in lines {
            if line.is_empty() {
                continue;
            }
            let (k, v) = line.split_once(": ").ok_or_else(|| {
                PacketError::Malformed("a record line is not 'key: value'".into())
            })?;
            // The format has none (docs/FORMAT.md), and the writer could not write them back.
            if line.chars().any(char::is_control) {
                return Err(PacketError::Malformed(format!(
                    "'{}' holds a control character",
                    one_line(k)
                )));
            }
            if out.iter().any(|(seen, _)| *seen == k) {
                return Err(PacketError::Malformed(format!(
                    "'{}' appears twice",
                    one_line(k)
                )));
            }
            out.push((k, v));
        }
        Ok(Fields(out))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    pub(crate) fn require(&self, key: &str) -> Result<&'a str, PacketError> {
        self.get(key)
            .ok_or_else(|| PacketError::Malformed(format!("'{key}' is missing")))
    }
}

pub(crate) fn info_from_fields(f: &Fields<'_>) -> Result<VolumeInfo, PacketError> {
    use crate::id::exactly;
    let id = |key: &str, checked: Result<String, crate::id::IdError>| {
        checked.map_err(|e| PacketError::Malformed(format!("'{key}': {e}")))
    };
    Ok(VolumeInfo {
        host: f.require("host")?.to_string(),
        machine_id: id(
            "machine-id",
            exactly(f.require("machine-id")?, crate::id::machine_id),
        )?,
        client_id: match f.get("client-id") {
            Some(c) => Some(id("client-id", exactly(c, crate::id::client_id))?),
            None => None,
        },
        volume_uuid: id(
            "volume-uuid",
            exactly(f.require("volume-uuid")?, crate::id::volume_uuid),
        )?,
        volume_label: f.get("volume-label").map(str::to_string),
        luks_version: parse_num(f.require("luks-version")?, "luks-version")?,
        cipher: f.require("cipher")?.to_string(),
        key_bits: parse_num(f.require("key-bits")?, "key-bits")?,
        created: parse_time(f.require("created")?, "created")?,
    })
}

pub(crate) fn parse_num<T: std::str::FromStr>(v: &str, key: &str) -> Result<T, PacketError> {
    v.parse()
        .map_err(|_| PacketError::Malformed(format!("'{key}' is not a number")))
}

pub(crate) fn parse_time(v: &str, key: &str) -> Result<SystemTime, PacketError> {
    humantime::parse_rfc3339(v)
        .map_err(|_| PacketError::Malformed(format!("'{key}' is not an RFC 3339 time")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    pub(crate) fn sample_info() -> VolumeInfo {
        VolumeInfo {
            host: "laptop-17".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            client_id: None,
            volume_uuid: "4b3c3f55-0f2e-4a57-9d0e-2b6f8d1f6e10".into(),
            volume_label: Some("root".into()),
            luks_version: 2,
            cipher: "aes-xts-plain64".into(),
            key_bits: 512,
            created: UNIX_EPOCH + Duration::from_secs(1_790_000_000),
        }
    }

    fn escrow_record(recovery_passphrase: Option<&[u8]>) -> Record {
        Record {
            info: sample_info(),
            volume_key: VolumeKey::from_slice(&[7; 64]),
            recovery_passphrase: recovery_passphrase.map(Passphrase::from_slice),
            binding: None,
            use_token: None,
        }
    }

    #[test]
    fn escrow_record_round_trip() {
        let rec = escrow_record(Some(b"abcd-efgh"));
        let text = rec.to_plaintext(Kind::Escrow);
        assert!(text.starts_with("lifeline-escrow v1\nhost: laptop-17\n"));
        let back = Record::parse(text.as_bytes(), Kind::Escrow).unwrap();
        assert_eq!(back.info, rec.info);
        assert!(back.volume_key.ct_eq(&rec.volume_key));
        assert_eq!(
            back.recovery_passphrase.unwrap().expose_secret(),
            b"abcd-efgh"
        );
        assert!(Record::parse(text.as_bytes(), Kind::Recovery).is_err());
    }

    #[test]
    fn refuses_unknown_version_and_mismatched_key_size() {
        let rec = escrow_record(None);
        let text = rec.to_plaintext(Kind::Escrow);
        let v2 = text.replace("lifeline-escrow v1", "lifeline-escrow v2");
        assert!(matches!(
            Record::parse(v2.as_bytes(), Kind::Escrow),
            Err(PacketError::UnknownVersion(2))
        ));
        let short = text.replace("key-bits: 512", "key-bits: 256");
        assert!(matches!(
            Record::parse(short.as_bytes(), Kind::Escrow),
            Err(PacketError::Malformed(_))
        ));
        let dup = format!("{}host: again\n", text.as_str());
        assert!(Record::parse(dup.as_bytes(), Kind::Escrow).is_err());
    }

    /// Found by the `record` fuzz target: a value with a tab and a NUL parsed, but could not
    /// be written back as it was (the writer makes control characters `?`).
    #[test]
    fn control_characters_in_a_value_are_refused() {
        let rec = escrow_record(None);
        let text = rec.to_plaintext(Kind::Escrow);
        for bad in ["aes-xts-plain6\t\u{0}4", "aes\rxts", "aes\u{1b}[2J"] {
            let edited = text.replace("aes-xts-plain64", bad);
            match Record::parse(edited.as_bytes(), Kind::Escrow) {
                Err(PacketError::Malformed(why)) => {
                    assert!(why.contains("'cipher' holds a control character"), "{why}")
                }
                other => panic!("{bad:?}: {:?}", other.map(|r| r.info)),
            }
        }
    }
}
