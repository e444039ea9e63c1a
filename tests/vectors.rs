//! The format test vectors in tests/vectors/, read through the library, and their agreement
//! with docs/FORMAT.md.
//!
//! Each `*.vector` file is a header of `key: value` lines saying what must happen, a blank
//! line, then the packet bytes. The keys under tests/vectors/keys/ are test-only.
//! `cargo test --all-features --test tests -- --ignored regenerate_vectors` rewrites them all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lifeline::escrow::{
    otp, Binding, EscrowPacket, PacketError, Record, RecoveryPacket, VolumeInfo,
};
use lifeline::secret::{Passphrase, VolumeKey};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

struct Vector {
    name: String,
    header: BTreeMap<String, String>,
    packet: Vec<u8>,
}

fn load_all() -> Vec<Vector> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "vector"))
    {
        let bytes = std::fs::read(&path).unwrap();
        let split = bytes
            .windows(2)
            .position(|w| w == b"\n\n")
            .expect("header ends with a blank line");
        let header = std::str::from_utf8(&bytes[..split])
            .unwrap()
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(": ").expect("key: value");
                (k.to_string(), v.to_string())
            })
            .collect();
        out.push(Vector {
            name: path.file_stem().unwrap().to_string_lossy().into_owned(),
            header,
            packet: bytes[split + 2..].to_vec(),
        });
    }
    out
}

fn identity() -> age::x25519::Identity {
    let text = std::fs::read_to_string(dir().join("keys/identity.txt")).unwrap();
    text.lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .parse()
        .unwrap()
}

fn trusted() -> minisign::PublicKey {
    let text = std::fs::read_to_string(dir().join("keys/minisign.pub")).unwrap();
    minisign::PublicKeyBox::from_string(&text)
        .unwrap()
        .into_public_key()
        .unwrap()
}

fn kind(e: &PacketError) -> &'static str {
    match e {
        PacketError::Malformed(_) => "malformed",
        PacketError::UnknownVersion(_) => "unknown version",
        PacketError::OtherSigner => "other signer",
        PacketError::BadSignature => "bad signature",
        PacketError::LegacySignature => "legacy signature",
        PacketError::OtherVolume { .. } => "other volume",
        PacketError::OtherMachine { .. } => "other machine",
        PacketError::Expired(_) => "expired",
        PacketError::WrongPassphrase => "wrong otp",
        PacketError::NotOurRecipient => "other recipient",
        PacketError::ExcessiveWork(_) => "excessive work",
        PacketError::HeaderMismatch(_) => "header mismatch",
        PacketError::Io(_) => "io",
    }
}

/// Runs one vector the way lifeline does: escrow packets are opened with the authority's
/// identity; recovery packets are verified, checked against the binding, then opened.
fn run(v: &Vector) -> Result<Record, PacketError> {
    let h = |k: &str| {
        v.header
            .get(k)
            .unwrap_or_else(|| panic!("{}: no '{k}'", v.name))
            .as_str()
    };
    match h("kind") {
        "escrow" => EscrowPacket::parse(&v.packet)?.open(&identity()),
        "recovery" => {
            let packet = RecoveryPacket::verify(&v.packet, &trusted())?;
            let now = humantime::parse_rfc3339(h("now")).unwrap();
            packet.check_binding(h("machine-id"), h("volume-uuid"), now)?;
            let code = otp::parse(h("otp"), packet.binding.otp_groups)
                .expect("vector OTPs are well-formed");
            packet.open(&code)
        }
        other => panic!("{}: unknown kind {other}", v.name),
    }
}

#[test]
fn every_vector_gives_its_expected_result() {
    let vectors = load_all();
    assert!(
        vectors.len() >= 12,
        "vectors are missing: {}",
        vectors.len()
    );
    for v in &vectors {
        let expect = v.header["expect"].as_str();
        match (run(v), expect) {
            (Ok(record), "success") => {
                let key = lifeline::hex::encode_secret(record.volume_key.expose_secret());
                assert_eq!(key.as_str(), v.header["volume-key"], "{}", v.name);
            }
            (Ok(_), _) => panic!("{}: opened, but expected {expect}", v.name),
            (Err(e), "success") => panic!("{}: {e}", v.name),
            (Err(e), _) => assert_eq!(kind(&e), expect, "{}: {e}", v.name),
        }
    }
}

#[test]
fn format_md_lists_every_vector_and_shows_the_good_ones_verbatim() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/FORMAT.md"))
        .unwrap();
    for v in load_all() {
        assert!(
            doc.contains(&format!("`{}.vector`", v.name)),
            "FORMAT.md does not list {}",
            v.name
        );
        if v.header["expect"] == "success" {
            let text = String::from_utf8(v.packet.clone()).unwrap();
            assert!(
                doc.contains(&text),
                "FORMAT.md does not show {} as it is",
                v.name
            );
        }
    }
}

// ---- generation -------------------------------------------------------------------------

const MACHINE: &str = "5a0c4e2b9d7f41c3a8e6b1d2f3c4e5a6";
const VOLUME: &str = "8f14e45f-ceea-467a-9af3-6b1d2c3e4f50";
const NOW: &str = "2026-11-23T12:00:00Z";
const OTP: &str = "123453-000011-720874-065538";
const WRONG_OTP: &str = "000000-000011-000022-000033";

fn info() -> VolumeInfo {
    VolumeInfo {
        host: "vector-host".into(),
        machine_id: MACHINE.into(),
        client_id: None,
        volume_uuid: VOLUME.into(),
        volume_label: Some("root".into()),
        luks_version: 2,
        cipher: "aes-xts-plain64".into(),
        key_bits: 512,
        created: humantime::parse_rfc3339("2026-11-01T09:30:00Z").unwrap(),
    }
}

fn key() -> VolumeKey {
    VolumeKey::from_slice(&(0u8..64).collect::<Vec<_>>())
}

fn write_vector(name: &str, header: &[(&str, &str)], packet: &[u8]) {
    let mut out = String::new();
    for (k, v) in header {
        out.push_str(&format!("{k}: {v}\n"));
    }
    out.push('\n');
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(packet);
    std::fs::write(dir().join(format!("{name}.vector")), bytes).unwrap();
}

fn recovery_bytes(sk: &minisign::SecretKey, binding: Binding, code: &str) -> Vec<u8> {
    let record = Record {
        info: info(),
        volume_key: key(),
        recovery_passphrase: None,
        binding: Some(binding),
        use_token: None,
    };
    RecoveryPacket::seal(&record, &otp::parse(code, 4).unwrap(), sk).unwrap()
}

#[test]
#[ignore = "rewrites tests/vectors; run by hand after a deliberate format change"]
fn regenerate_vectors() {
    let keys = dir().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let id = age::x25519::Identity::generate();
    std::fs::write(
        keys.join("identity.txt"),
        format!(
            "# TEST KEY for tests/vectors only. Never use it for anything else.\n# public key: {}\n{}\n",
            id.to_public(),
            age::secrecy::ExposeSecret::expose_secret(&id.to_string())
        ),
    )
    .unwrap();
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    std::fs::write(
        keys.join("minisign.pub"),
        kp.pk.to_box().unwrap().into_string(),
    )
    .unwrap();
    let stranger = minisign::KeyPair::generate_unencrypted_keypair().unwrap();

    // escrow
    let escrow_record = Record {
        info: info(),
        volume_key: key(),
        recovery_passphrase: Some(Passphrase::from_slice(
            b"31415-92653-58979-32384-62643-38327-95028",
        )),
        binding: None,
        use_token: None,
    };
    let key_hex = lifeline::hex::encode_secret(key().expose_secret()).to_string();
    let good = EscrowPacket::seal(&escrow_record, &id.to_public()).unwrap();
    let e = |expect| [("kind", "escrow"), ("expect", expect)];
    write_vector(
        "escrow-good",
        &[
            ("kind", "escrow"),
            ("expect", "success"),
            ("volume-key", &key_hex),
        ],
        &good,
    );
    let other = EscrowPacket::seal(
        &escrow_record,
        &age::x25519::Identity::generate().to_public(),
    )
    .unwrap();
    write_vector("escrow-other-recipient", &e("other recipient"), &other);
    let edited = String::from_utf8(good.clone())
        .unwrap()
        .replace("host: vector-host", "host: vector-hosT");
    write_vector(
        "escrow-header-edited",
        &e("header mismatch"),
        edited.as_bytes(),
    );
    write_vector(
        "escrow-truncated",
        &e("malformed"),
        &good[..good.len() - 50],
    );
    let v2 = String::from_utf8(good.clone())
        .unwrap()
        .replace("lifeline-escrow-packet v1", "lifeline-escrow-packet v2");
    write_vector(
        "escrow-unknown-version",
        &e("unknown version"),
        v2.as_bytes(),
    );

    // recovery
    let binding = |volume: &str, machine: &str, expires: &str| Binding {
        packet_id: "0f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
        machine_id: machine.into(),
        volume_uuid: volume.into(),
        expires: humantime::parse_rfc3339(expires).unwrap(),
        otp_groups: 4,
    };
    let valid = binding(VOLUME, MACHINE, "2026-11-26T12:00:00Z");
    let r = |expect, code| {
        [
            ("kind", "recovery"),
            ("expect", expect),
            ("otp", code),
            ("machine-id", MACHINE),
            ("volume-uuid", VOLUME),
            ("now", NOW),
        ]
    };
    let good = recovery_bytes(&kp.sk, valid.clone(), OTP);
    let mut h = r("success", OTP).to_vec();
    h.push(("volume-key", &key_hex));
    write_vector("recovery-good", &h, &good);
    write_vector("recovery-wrong-otp", &r("wrong otp", WRONG_OTP), &good);
    write_vector(
        "recovery-other-signer",
        &r("other signer", OTP),
        &recovery_bytes(&stranger.sk, valid.clone(), OTP),
    );
    let mut flipped = good.clone();
    let last = flipped.len() - 80;
    flipped[last] ^= 0x01;
    write_vector("recovery-altered", &r("bad signature", OTP), &flipped);
    let other_volume = recovery_bytes(
        &kp.sk,
        binding(
            "00000000-1111-4222-8333-444444444444",
            MACHINE,
            "2026-11-26T12:00:00Z",
        ),
        OTP,
    );
    write_vector(
        "recovery-other-volume",
        &r("other volume", OTP),
        &other_volume,
    );
    let other_machine = recovery_bytes(
        &kp.sk,
        binding(
            VOLUME,
            "ffffffffffffffffffffffffffffffff",
            "2026-11-26T12:00:00Z",
        ),
        OTP,
    );
    write_vector(
        "recovery-other-machine",
        &r("other machine", OTP),
        &other_machine,
    );
    let expired = recovery_bytes(
        &kp.sk,
        binding(VOLUME, MACHINE, "2026-11-23T11:59:59Z"),
        OTP,
    );
    write_vector("recovery-expired", &r("expired", OTP), &expired);
    write_vector(
        "recovery-truncated",
        &r("malformed", OTP),
        &good[..good.len() / 2],
    );
    // Found by the recovery_packet fuzz target: minisign 0.10 panicked on a global signature
    // shorter than 64 bytes.
    let text = String::from_utf8(good.clone()).unwrap();
    let mut lines: Vec<&str> = text.split('\n').collect();
    lines[3] = "ArFWG9mdbQH7I83JVbrlnMYYSo2bDQ==";
    write_vector(
        "recovery-short-global-signature",
        &r("malformed", OTP),
        lines.join("\n").as_bytes(),
    );
    // A future version: same payload, signed with a v2 trusted comment.
    let text = String::from_utf8(good.clone()).unwrap();
    let payload = &text[text.find("-----BEGIN").unwrap()..];
    let comment = format!(
        "lifeline-recovery v2 packet={} machine={MACHINE} volume={VOLUME} expires=2026-11-26T12:00:00Z otp-groups=4",
        valid.packet_id
    );
    let sig = minisign::sign(
        None,
        &kp.sk,
        std::io::Cursor::new(payload),
        Some(&comment),
        Some("lifeline recovery packet"),
    )
    .unwrap();
    let v2 = format!("{}{payload}", sig.into_string());
    write_vector(
        "recovery-unknown-version",
        &r("unknown version", OTP),
        v2.as_bytes(),
    );
}
