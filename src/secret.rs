//! Every secret type lifeline handles.
//!
//! Each is zeroized on drop, prints as `[redacted]` under `Debug` and is not `Clone`. The only
//! way to the bytes is `expose_secret()`, and every call site says why: `git grep
//! expose_secret` is the audit of where secrets go. Those that travel in the escrow server's
//! API (`api`) have a JSON form — the one other way out, taken only by the request and answer
//! types there — and are read from JSON without a plain `String` in between.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

macro_rules! secret_bytes {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(Zeroizing<Vec<u8>>);

        impl $name {
            /// Takes ownership of `bytes`; they are wiped when this value is dropped.
            pub fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
                Self(bytes)
            }

            /// Copies `bytes` into a new secret. The caller wipes its own copy.
            pub fn from_slice(bytes: &[u8]) -> Self {
                Self(Zeroizing::new(bytes.to_vec()))
            }

            /// The secret bytes. Callers say at the call site why they need them.
            pub fn expose_secret(&self) -> &[u8] {
                &self.0
            }

            pub fn len(&self) -> usize {
                self.0.len()
            }

            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "([redacted; {} bytes])"), self.0.len())
            }
        }
    };
}

secret_bytes!(
    /// A LUKS volume key (the data encryption key). Opens the volume without any keyslot.
    VolumeKey
);

secret_bytes!(
    /// A passphrase: a LUKS keyslot passphrase, the random recovery passphrase, or the
    /// administrator passphrase that protects the authority's keys.
    Passphrase
);

secret_bytes!(
    /// Proof of having opened a recovery packet: a random value inside its encrypted record,
    /// which the server knows only by hash. Reporting the packet used needs it, so nobody who
    /// merely fetched the (public) packet can delete it.
    UseToken
);

impl VolumeKey {
    /// Fresh zeroed buffer of `len` bytes, for libcryptsetup to fill.
    pub fn zeroed(len: usize) -> Self {
        Self(Zeroizing::new(vec![0; len]))
    }

    /// Mutable access for the one adapter that fills the key in place (libcryptsetup).
    pub fn expose_secret_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    /// Constant-time equality, so comparing keys (re-escrow detection) leaks nothing by timing.
    pub fn ct_eq(&self, other: &VolumeKey) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Passphrase {
    /// A random recovery passphrase for a keyslot: seven groups of five digits (116 bits).
    /// Digits because they sit in the same place on every keyboard layout a boot prompt may
    /// have; 35 digits because that is not a multiple of six, so it can never be taken for a
    /// one-time password at a prompt that accepts both.
    pub fn generate_recovery() -> std::io::Result<Self> {
        const GROUPS: usize = 7;
        let mut raw = Zeroizing::new([0u8; GROUPS * 4]);
        random_bytes(&mut raw[..])?;
        let mut text = Zeroizing::new(String::with_capacity(GROUPS * 6));
        for (i, chunk) in raw.chunks(4).enumerate() {
            if i > 0 {
                text.push('-');
            }
            // 2^32 is not a multiple of 100000; the bias this leaves is below 2^-15 per group.
            let mut value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) % 100_000;
            let mut group = Zeroizing::new(format!("{value:05}"));
            text.push_str(&group);
            value.zeroize();
            group.zeroize();
        }
        Ok(Self::from_slice(text.as_bytes()))
    }
}

/// A one-time password in its canonical form: groups of six digits joined by `-`.
///
/// Only `escrow::otp` makes these, after checking every group.
pub struct Otp(Zeroizing<String>);

impl Otp {
    pub(crate) fn from_canonical(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// The canonical text, which is the age passphrase of a recovery packet.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// How many six-digit groups the code has.
    pub fn groups(&self) -> usize {
        self.0.split('-').count()
    }
}

impl fmt::Debug for Otp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Otp([redacted; {} groups])", self.groups())
    }
}

macro_rules! secret_text {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(Zeroizing<String>);

        impl $name {
            /// Takes ownership of `text`; it is wiped when this value is dropped.
            pub fn new(text: Zeroizing<String>) -> Self {
                Self(text)
            }

            /// The secret text. Callers say at the call site why they need it.
            pub fn expose_secret(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                wire_text(d).map(Self)
            }
        }
    };
}

secret_text!(
    /// What a machine or an administrator proves who they are with on every request: the
    /// bearer token the server gave at join (machines) or at `admin add` (administrators).
    Credential
);

secret_text!(
    /// One administrator's share of a K-of-N administrator passphrase (`lifeline-share v1 …`).
    ShareText
);

secret_text!(
    /// A one-time enrollment token: an administrator's permission for one machine to join.
    EnrollmentToken
);

/// Reads a JSON string into wiped memory: borrowed text is copied once, owned text (a string
/// with escapes) is wiped after the copy.
fn wire_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = Zeroizing<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Zeroizing::new(v.to_string()))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Zeroizing::new(v))
        }
    }
    d.deserialize_str(Text)
}

/// On the wire a passphrase is JSON text: one that is not UTF-8 cannot be sent.
impl serde::Serialize for Passphrase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(&self.0)
            .map_err(|_| serde::ser::Error::custom("the passphrase is not UTF-8 text"))?;
        s.serialize_str(text)
    }
}

impl<'de> serde::Deserialize<'de> for Passphrase {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = wire_text(d)?;
        Ok(Passphrase::from_slice(text.as_bytes()))
    }
}

/// On the wire a use token is hex.
impl serde::Serialize for UseToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::hex::encode_secret(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for UseToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = wire_text(d)?;
        crate::hex::decode_secret(&text)
            .map(UseToken)
            .ok_or_else(|| serde::de::Error::custom("use_token is not hex"))
    }
}

/// On the wire a one-time password is its canonical text, checked as a typed one is.
impl serde::Serialize for Otp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Otp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = wire_text(d)?;
        crate::escrow::otp::parse(&text, text.split('-').count())
            .map_err(|e| serde::de::Error::custom(format!("otp: {e}")))
    }
}

/// A volume key's fingerprint: HMAC-SHA-256 keyed with the key over a label and the volume
/// UUID, hex. Lets a server recognise a key already in escrow without ever seeing it; the key's
/// 256+ bits make the fingerprint useless for guessing it.
pub fn key_fingerprint(
    key: &VolumeKey,
    volume_uuid: &str,
    recovery: Option<&Passphrase>,
) -> String {
    use hmac::{Hmac, Mac};
    // expose_secret: the HMAC key. `Hmac` keeps only the hash states after the padded key
    // blocks (one-way functions of the key), not the key; hmac 0.12 has no zeroize support,
    // so those states and the padded block in its constructor's stack frame are not wiped.
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.expose_secret())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"lifeline key fingerprint v1\0");
    mac.update(volume_uuid.as_bytes());
    // expose_secret: a packet with another recovery passphrase is another packet.
    mac.update(recovery.map(|p| p.expose_secret()).unwrap_or_default());
    crate::hex::encode(&mac.finalize().into_bytes())
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    getrandom::fill(buf)
        .map_err(|e| std::io::Error::other(format!("no randomness from the OS: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_shows_no_secret_bytes() {
        let key = VolumeKey::from_slice(&[0xab; 32]);
        let pass = Passphrase::from_slice(b"correct horse");
        let otp = Otp::from_canonical("123453-000000-720874-000011".into());
        let shown = format!("{key:?} {pass:?} {otp:?}");
        assert!(!shown.contains("ab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
        assert!(!shown.contains("horse"), "{shown}");
        assert!(!shown.contains("123453"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn recovery_passphrases_are_digit_groups_and_never_look_like_an_otp() {
        let p = Passphrase::generate_recovery().unwrap();
        let text = std::str::from_utf8(p.expose_secret()).unwrap();
        assert_eq!(text.len(), 7 * 5 + 6);
        assert!(text
            .split('-')
            .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit())));
        assert!(!crate::escrow::otp::looks_like_otp(text));
        assert_ne!(
            p.expose_secret(),
            Passphrase::generate_recovery().unwrap().expose_secret()
        );
    }

    #[test]
    fn key_fingerprint_is_hmac_sha256() {
        // Expected values from Python's hmac module over the same label and UUID.
        let short = key_fingerprint(
            &VolumeKey::from_slice(b"Jefe"),
            "what do ya want for nothing?",
            None,
        );
        assert_eq!(
            short,
            "13fb47385183f99e022c6cdab45f878b9f97b241633b5c88d20b7436d3bb579b"
        );
        let key: Vec<u8> = (0..64).collect();
        let fp = key_fingerprint(
            &VolumeKey::from_slice(&key),
            "8f14e45f-ceea-467a-9af3-6b1d2c3e4f50",
            None,
        );
        assert_eq!(
            fp,
            "15af991ca9f891969cb5b7f0f305c8519dd8fe972f7f70f01e1682f022ee28a9"
        );
    }

    #[test]
    fn constant_time_compare() {
        let a = VolumeKey::from_slice(&[1, 2, 3]);
        assert!(a.ct_eq(&VolumeKey::from_slice(&[1, 2, 3])));
        assert!(!a.ct_eq(&VolumeKey::from_slice(&[1, 2, 4])));
        assert!(!a.ct_eq(&VolumeKey::from_slice(&[1, 2])));
    }
}
