//! The two packet files.
//!
//! Both are text: a short clear part, then an ASCII-armored `age` file. Text so they survive
//! e-mail and can be printed for a safe; armored age so the stock `age` tool opens them once the
//! clear part is cut off (`docs/FORMAT.md` gives the one-line commands).
//!
//! - Escrow packet: `lifeline-escrow-packet v1`, the volume's description as `key: value`
//!   lines, a blank line, then the record encrypted to the authority's X25519 recipient. The
//!   clear lines only help people and servers find packets; the encrypted record is the truth,
//!   and opening a packet whose clear lines disagree with it fails.
//! - Recovery packet: a minisign signature (its four lines) over the armored age file that
//!   follows, which is the record encrypted under the one-time password. The binding (packet,
//!   machine, volume, expiry, OTP length) is in the signed trusted comment, so it is checked
//!   before anyone is asked to type a code.

use std::io::{Cursor, Read, Write};
use std::iter;
use std::time::SystemTime;

use age::armor::{ArmoredReader, ArmoredWriter, Format};
use zeroize::Zeroizing;

use super::record::{self, check_version_line, Binding, Fields, Kind, Record, VolumeInfo};
use super::{PacketError, MAX_PACKET_BYTES, SCRYPT_MAX_WORK_FACTOR, SCRYPT_WORK_FACTOR};
use crate::secret::Otp;

const ESCROW_TAG: &str = "lifeline-escrow-packet";
const RECOVERY_TAG: &str = "lifeline-recovery";
const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
const ARMOR_END: &str = "-----END AGE ENCRYPTED FILE-----";
/// minisign's first line is not covered by the signature, so lifeline fixes its text and
/// refuses any other: a changed byte anywhere in a packet is then always detected.
const UNTRUSTED_COMMENT: &str = "lifeline recovery packet";

/// An escrow packet whose clear part has been read; the record is still encrypted.
#[derive(Debug)]
pub struct EscrowPacket {
    /// From the clear header; `open` checks it against the encrypted record.
    pub info: VolumeInfo,
    armored: Vec<u8>,
}

impl EscrowPacket {
    /// Encrypts `record` to the authority and returns the packet file's bytes.
    pub fn seal(
        record: &Record,
        recipient: &age::x25519::Recipient,
    ) -> Result<Vec<u8>, PacketError> {
        let mut out = String::new();
        out.push_str(&format!("{ESCROW_TAG} v{}\n", record::VERSION));
        record::write_info(&mut out, &record.info);
        out.push('\n');
        let mut bytes = out.into_bytes();
        let plaintext = record.to_plaintext(Kind::Escrow);
        encrypt_armored(
            &mut bytes,
            iter::once(recipient as &dyn age::Recipient),
            plaintext.as_bytes(),
        )?;
        Ok(bytes)
    }

    /// Reads the clear part. Says nothing about the encrypted part's integrity.
    pub fn parse(bytes: &[u8]) -> Result<EscrowPacket, PacketError> {
        let text = packet_text(bytes)?;
        let (head, armored) = text.split_once("\n\n").ok_or_else(|| {
            PacketError::Malformed("no blank line after the header (truncated?)".into())
        })?;
        let mut lines = head.lines();
        check_version_line(lines.next().unwrap_or(""), ESCROW_TAG)?;
        let info = record::info_from_fields(&Fields::parse(lines)?)?;
        check_armor(armored.as_bytes())?;
        Ok(EscrowPacket {
            info,
            armored: armored.as_bytes().to_vec(),
        })
    }

    /// Decrypts with the authority's identity and checks the clear header against the record.
    pub fn open(&self, identity: &age::x25519::Identity) -> Result<Record, PacketError> {
        let plaintext = decrypt_armored(&self.armored, identity).map_err(|e| match e {
            PacketError::WrongPassphrase => PacketError::NotOurRecipient,
            other => other,
        })?;
        let record = Record::parse(&plaintext, Kind::Escrow)?;
        check_same_info(&self.info, &record.info)?;
        Ok(record)
    }
}

fn check_same_info(clear: &VolumeInfo, inner: &VolumeInfo) -> Result<(), PacketError> {
    let checks: [(&'static str, bool); 5] = [
        ("host", clear.host == inner.host),
        ("machine-id", clear.machine_id == inner.machine_id),
        ("volume-uuid", clear.volume_uuid == inner.volume_uuid),
        ("client-id", clear.client_id == inner.client_id),
        ("created", clear.created == inner.created),
    ];
    match checks.iter().find(|(_, same)| !same) {
        Some((field, _)) => Err(PacketError::HeaderMismatch(field)),
        None if clear != inner => Err(PacketError::HeaderMismatch("volume description")),
        None => Ok(()),
    }
}

/// A recovery packet whose signature verified against the trusted key. Its binding is
/// authentic; it has not been checked against this machine yet (see `check_binding`).
#[derive(Debug)]
pub struct RecoveryPacket {
    pub binding: Binding,
    armored: Vec<u8>,
}

impl RecoveryPacket {
    /// Encrypts `record` under `otp`, signs it, and returns the packet file's bytes.
    /// `record.binding` must be set.
    pub fn seal(
        record: &Record,
        otp: &Otp,
        signer: &minisign::SecretKey,
    ) -> Result<Vec<u8>, PacketError> {
        let binding = record
            .binding
            .as_ref()
            .ok_or_else(|| PacketError::Malformed("a recovery record needs a binding".into()))?;
        let plaintext = record.to_plaintext(Kind::Recovery);
        // expose_secret: the OTP is the age passphrase by design.
        let mut recipient = age::scrypt::Recipient::new(age::secrecy::SecretString::from(
            otp.expose_secret().to_owned(),
        ));
        recipient.set_work_factor(SCRYPT_WORK_FACTOR);
        let mut armored = Vec::new();
        encrypt_armored(
            &mut armored,
            iter::once(&recipient as &dyn age::Recipient),
            plaintext.as_bytes(),
        )?;
        let signature = minisign::sign(
            None,
            signer,
            Cursor::new(&armored),
            Some(&trusted_comment(binding)),
            Some(UNTRUSTED_COMMENT),
        )
        .map_err(|e| PacketError::Io(std::io::Error::other(format!("signing failed: {e}"))))?;
        let mut out = signature.into_string().into_bytes();
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(&armored);
        Ok(out)
    }

    /// Checks the signature against `trusted` and reads the signed binding.
    pub fn verify(
        bytes: &[u8],
        trusted: &minisign::PublicKey,
    ) -> Result<RecoveryPacket, PacketError> {
        let (sig, armored) = split_signature(bytes)?;
        if sig.keynum() != trusted.keynum() {
            return Err(PacketError::OtherSigner);
        }
        // lifeline signs pre-hashed (minisign's default); a legacy signature is not "altered".
        if !sig.is_prehashed() {
            return Err(PacketError::LegacySignature);
        }
        minisign::verify(trusted, &sig, Cursor::new(armored), true, false, false)
            .map_err(|_| PacketError::BadSignature)?;
        let comment = sig
            .trusted_comment()
            .map_err(|_| PacketError::Malformed("the trusted comment is not text".into()))?;
        Ok(RecoveryPacket {
            binding: parse_trusted_comment(&comment)?,
            armored: armored.to_vec(),
        })
    }

    /// Reads the binding without checking the signature, for `lifeline inspect`.
    pub fn peek_unverified(bytes: &[u8]) -> Result<Binding, PacketError> {
        let (sig, _) = split_signature(bytes)?;
        let comment = sig
            .trusted_comment()
            .map_err(|_| PacketError::Malformed("the trusted comment is not text".into()))?;
        parse_trusted_comment(&comment)
    }

    /// Refuses a packet that is for another volume or machine, or expired.
    pub fn check_binding(
        &self,
        machine_id: &str,
        volume_uuid: &str,
        now: SystemTime,
    ) -> Result<(), PacketError> {
        let b = &self.binding;
        if !b.volume_uuid.eq_ignore_ascii_case(volume_uuid) {
            return Err(PacketError::OtherVolume {
                packet: b.volume_uuid.clone(),
                device: volume_uuid.to_string(),
            });
        }
        if !b.machine_id.eq_ignore_ascii_case(machine_id) {
            return Err(PacketError::OtherMachine {
                packet: b.machine_id.clone(),
                local: machine_id.to_string(),
            });
        }
        if now >= b.expires {
            return Err(PacketError::Expired(b.expires));
        }
        Ok(())
    }

    /// Decrypts with the one-time password. The record inside must repeat the signed binding.
    pub fn open(&self, otp: &Otp) -> Result<Record, PacketError> {
        // expose_secret: the OTP is the age passphrase by design.
        let identity = age::scrypt::Identity::new(age::secrecy::SecretString::from(
            otp.expose_secret().to_owned(),
        ));
        let mut identity = identity;
        identity.set_max_work_factor(SCRYPT_MAX_WORK_FACTOR);
        let plaintext = decrypt_armored(&self.armored, &identity)?;
        let record = Record::parse(&plaintext, Kind::Recovery)?;
        if record.binding.as_ref() != Some(&self.binding) {
            return Err(PacketError::Malformed(
                "the encrypted record's binding differs from the signed one".into(),
            ));
        }
        Ok(record)
    }
}

fn trusted_comment(b: &Binding) -> String {
    format!(
        "{RECOVERY_TAG} v{} packet={} machine={} volume={} expires={} otp-groups={}",
        record::VERSION,
        b.packet_id,
        b.machine_id,
        b.volume_uuid,
        humantime::format_rfc3339_seconds(b.expires),
        b.otp_groups
    )
}

fn parse_trusted_comment(comment: &str) -> Result<Binding, PacketError> {
    let mut words = comment.split(' ');
    let version = format!(
        "{} {}",
        words.next().unwrap_or(""),
        words.next().unwrap_or("")
    );
    check_version_line(&version, RECOVERY_TAG)?;
    let mut get = |key: &str| -> Result<String, PacketError> {
        words
            .next()
            .and_then(|w| w.strip_prefix(key)?.strip_prefix('='))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| PacketError::Malformed(format!("trusted comment: '{key}' is missing")))
    };
    use crate::id::exactly;
    let id = |checked: Result<String, crate::id::IdError>| {
        checked.map_err(|e| PacketError::Malformed(format!("trusted comment: {e}")))
    };
    let packet_id = id(exactly(&get("packet")?, crate::id::packet_id))?;
    let machine_id = id(exactly(&get("machine")?, crate::id::machine_id))?;
    let volume_uuid = id(exactly(&get("volume")?, crate::id::volume_uuid))?;
    let expires = record::parse_time(&get("expires")?, "expires")?;
    let otp_groups = record::parse_num(&get("otp-groups")?, "otp-groups")?;
    Ok(Binding {
        packet_id,
        machine_id,
        volume_uuid,
        expires,
        otp_groups,
    })
}

fn split_signature(bytes: &[u8]) -> Result<(minisign::SignatureBox, &[u8]), PacketError> {
    let text = packet_text(bytes)?;
    // The signature is the first four lines.
    let mut end = 0;
    for _ in 0..4 {
        let nl = text[end..].find('\n').ok_or_else(|| {
            PacketError::Malformed("the signature is incomplete (truncated?)".into())
        })?;
        end += nl + 1;
    }
    if !text.starts_with(&format!("untrusted comment: {UNTRUSTED_COMMENT}\n")) {
        return Err(PacketError::Malformed(format!(
            "the first line must be 'untrusted comment: {UNTRUSTED_COMMENT}'"
        )));
    }
    // The global signature (fourth line) is 64 bytes: 88 characters of padded base64.
    // minisign 0.10 does not check its length and panics on a shorter one (found by fuzzing).
    let global = text[..end].lines().nth(3).unwrap_or("").trim_end();
    if global.len() != 88 || !global.ends_with("==") {
        return Err(PacketError::Malformed(
            "the signature's last line is not a signature (truncated?)".into(),
        ));
    }
    let sig = minisign::SignatureBox::from_string(&text[..end])
        .map_err(|e| PacketError::Malformed(format!("not a recovery packet signature: {e}")))?;
    let armored = &bytes[end..];
    check_armor(armored)?;
    Ok((sig, armored))
}

/// The encrypted part must be whole: a cut file is named as truncated, not as altered.
fn check_armor(armored: &[u8]) -> Result<(), PacketError> {
    if !armored.starts_with(ARMOR_BEGIN.as_bytes()) {
        return Err(PacketError::Malformed(
            "the encrypted part is missing (truncated?)".into(),
        ));
    }
    let trimmed = armored.strip_suffix(b"\n").unwrap_or(armored);
    if !trimmed.ends_with(ARMOR_END.as_bytes()) {
        return Err(PacketError::Malformed(
            "the encrypted part is incomplete (truncated?)".into(),
        ));
    }
    Ok(())
}

fn packet_text(bytes: &[u8]) -> Result<&str, PacketError> {
    if bytes.len() as u64 > MAX_PACKET_BYTES {
        return Err(PacketError::Malformed("larger than any packet".into()));
    }
    std::str::from_utf8(bytes).map_err(|_| PacketError::Malformed("not a text file".into()))
}

fn encrypt_armored<'a>(
    out: &mut Vec<u8>,
    recipients: impl Iterator<Item = &'a dyn age::Recipient>,
    plaintext: &[u8],
) -> Result<(), PacketError> {
    let encryptor = age::Encryptor::with_recipients(recipients)
        .map_err(|e| PacketError::Io(std::io::Error::other(format!("encryption failed: {e}"))))?;
    let armor = ArmoredWriter::wrap_output(out, Format::AsciiArmor)?;
    let mut writer = encryptor.wrap_output(armor)?;
    writer.write_all(plaintext)?;
    writer.finish()?.finish()?;
    Ok(())
}

fn decrypt_armored(
    armored: &[u8],
    identity: &dyn age::Identity,
) -> Result<Zeroizing<Vec<u8>>, PacketError> {
    let damaged =
        |what: &str| PacketError::Malformed(format!("the encrypted part is damaged ({what})"));
    let decryptor = age::Decryptor::new(ArmoredReader::new(armored)).map_err(|e| match e {
        age::DecryptError::UnknownFormat => PacketError::UnknownVersion(0),
        _ => damaged("header"),
    })?;
    let mut reader = decryptor
        .decrypt(iter::once(identity))
        .map_err(|e| match e {
            age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                PacketError::WrongPassphrase
            }
            age::DecryptError::ExcessiveWork { required, .. } => {
                PacketError::ExcessiveWork(required)
            }
            _ => damaged("header"),
        })?;
    // Reserved up front so the plaintext is never reallocated, leaving unwiped copies behind.
    let mut plaintext = Zeroizing::new(Vec::with_capacity(MAX_PACKET_BYTES as usize));
    (&mut reader)
        .take(MAX_PACKET_BYTES)
        .read_to_end(&mut plaintext)
        .map_err(|_| damaged("payload"))?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escrow::otp;
    use crate::escrow::record::tests::sample_info;
    use crate::secret::VolumeKey;
    use std::time::Duration;

    fn escrow_record() -> Record {
        Record {
            info: sample_info(),
            volume_key: VolumeKey::from_slice(&[9; 64]),
            recovery_passphrase: None,
            binding: None,
            use_token: None,
        }
    }

    fn recovery_record(binding: Binding) -> Record {
        Record {
            binding: Some(binding),
            volume_key: VolumeKey::from_slice(&[5; 64]),
            ..escrow_record()
        }
    }

    fn binding(expires: SystemTime) -> Binding {
        let info = sample_info();
        Binding {
            packet_id: "00112233445566778899aabbccddeeff".into(),
            machine_id: info.machine_id,
            volume_uuid: info.volume_uuid,
            expires,
            otp_groups: 4,
        }
    }

    #[test]
    fn escrow_packet_round_trip_and_wrong_identity() {
        let id = age::x25519::Identity::generate();
        let rec = escrow_record();
        let bytes = EscrowPacket::seal(&rec, &id.to_public()).unwrap();
        let pkt = EscrowPacket::parse(&bytes).unwrap();
        assert_eq!(pkt.info, rec.info);
        assert!(pkt.open(&id).unwrap().volume_key.ct_eq(&rec.volume_key));
        let other = age::x25519::Identity::generate();
        assert!(matches!(
            pkt.open(&other),
            Err(PacketError::NotOurRecipient)
        ));

        // an edited clear header is caught when opened
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("host: laptop-17", "host: laptop-18");
        let edited = EscrowPacket::parse(text.as_bytes()).unwrap();
        assert!(matches!(
            edited.open(&id),
            Err(PacketError::HeaderMismatch("host"))
        ));
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_recovery_packet_is_refused() {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let rec = recovery_record(binding(SystemTime::now() + Duration::from_secs(3600)));
        let code = otp::generate(4).unwrap();
        let bytes = RecoveryPacket::seal(&rec, &code, &kp.sk).unwrap();
        for pos in 0..bytes.len() {
            for bit in [0x01u8, 0x20, 0x80] {
                let mut bad = bytes.clone();
                bad[pos] ^= bit;
                assert!(
                    RecoveryPacket::verify(&bad, &kp.pk).is_err(),
                    "flip {bit:#x} at {pos} accepted"
                );
            }
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_an_escrow_packet_is_refused() {
        let id = age::x25519::Identity::generate();
        let rec = escrow_record();
        let bytes = EscrowPacket::seal(&rec, &id.to_public()).unwrap();
        for pos in 0..bytes.len() {
            for bit in [0x01u8, 0x20, 0x80] {
                let mut bad = bytes.clone();
                bad[pos] ^= bit;
                let opened = EscrowPacket::parse(&bad).and_then(|p| p.open(&id));
                assert!(opened.is_err(), "flip {bit:#x} at {pos} accepted");
            }
        }
    }

    #[test]
    fn recovery_packet_round_trip_binding_and_wrong_otp() {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let expires = SystemTime::now() + Duration::from_secs(3600);
        let rec = recovery_record(binding(expires));
        let code = otp::generate(4).unwrap();
        let bytes = RecoveryPacket::seal(&rec, &code, &kp.sk).unwrap();
        let pkt = RecoveryPacket::verify(&bytes, &kp.pk).unwrap();
        let info = sample_info();
        pkt.check_binding(&info.machine_id, &info.volume_uuid, SystemTime::now())
            .unwrap();
        assert!(matches!(
            pkt.check_binding(&info.machine_id, "other", SystemTime::now()),
            Err(PacketError::OtherVolume { .. })
        ));
        assert!(matches!(
            pkt.check_binding("ffff", &info.volume_uuid, SystemTime::now()),
            Err(PacketError::OtherMachine { .. })
        ));
        assert!(matches!(
            pkt.check_binding(&info.machine_id, &info.volume_uuid, expires),
            Err(PacketError::Expired(_))
        ));
        let opened = pkt.open(&code).unwrap();
        assert!(opened.volume_key.ct_eq(&rec.volume_key));
        let wrong = otp::parse("000000-000000-000000-000000", 4).unwrap();
        assert!(matches!(
            pkt.open(&wrong),
            Err(PacketError::WrongPassphrase)
        ));

        let stranger = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        assert!(matches!(
            RecoveryPacket::verify(&bytes, &stranger.pk),
            Err(PacketError::OtherSigner)
        ));
    }
}
