//! The TPM objects on real swtpm processes: the seed's demo, duplication lockdown, failure
//! classes, and tpm2-tools interop.

use std::time::Duration;

use lifeline::secret::VolumeKey;
use lifeline::tpm::{self, name_of_public, TpmError, TssTpm};

use crate::support::swtpm::Swtpm;
use crate::support::Sandbox;

fn open(t: &Swtpm) -> TssTpm {
    TssTpm::open(&t.tcti(), Duration::from_secs(5)).expect("connect to swtpm")
}

#[test]
fn transient_restore_unseals_in_the_same_process_as_the_initramfs_will() {
    use tpm::KeyAlgorithm::{Ecc, Rsa};
    // ECC where swtpm has it (the default), RSA-2048 as on TPMs without P-256, and a client
    // of one algorithm backed up to a server of the other.
    for (client, server) in [(None, None), (Some(Rsa), Some(Rsa)), (Some(Rsa), Some(Ecc))] {
        board_swap_through_a_transient_drsk(client, server);
    }
}

fn board_swap_through_a_transient_drsk(
    client_algorithm: Option<tpm::KeyAlgorithm>,
    server_algorithm: Option<tpm::KeyAlgorithm>,
) {
    let sb = Sandbox::new();
    let server_tpm = Swtpm::start(&sb.path("server-tpm"));
    let mut server = open(&server_tpm);
    let server_key = server.create_server_key(None, server_algorithm).unwrap();
    let server_name = name_of_public(&server_key.public).unwrap();

    let client_tpm = Swtpm::start(&sb.path("tpm-a"));
    let mut a = open(&client_tpm);
    assert_eq!(
        a.provision(
            std::slice::from_ref(&server_name),
            None,
            false,
            client_algorithm
        )
        .unwrap(),
        tpm::Provisioned::Created
    );
    assert_eq!(
        a.drsk_algorithm().unwrap(),
        client_algorithm.unwrap_or(tpm::KeyAlgorithm::Ecc)
    );
    // Run again without saying: what is there is kept. Asking for the other algorithm is
    // refused without --force, and says why.
    assert_eq!(
        a.provision(std::slice::from_ref(&server_name), None, false, None)
            .unwrap(),
        tpm::Provisioned::AlreadyThere
    );
    let other = match a.drsk_algorithm().unwrap() {
        tpm::KeyAlgorithm::Ecc => tpm::KeyAlgorithm::Rsa,
        tpm::KeyAlgorithm::Rsa => tpm::KeyAlgorithm::Ecc,
    };
    match a.provision(std::slice::from_ref(&server_name), None, false, Some(other)) {
        Err(TpmError::ForeignObject(why)) => assert!(why.contains("asked for"), "{why}"),
        other => panic!("provisioning the other algorithm without --force: {other:?}"),
    }
    let key = VolumeKey::from_slice(&[42; 64]);
    let (blob, _) = a.seal(&key, &[], None).unwrap();
    let client_id = tpm::client_id(&a.drsk_public().unwrap());
    assert!(a.unseal(&client_id, &blob, None, None).unwrap().ct_eq(&key));
    let dup = a
        .duplicate_drsk(&server_key.public, std::slice::from_ref(&server_name))
        .unwrap();
    let stored = server.import_client(&server_key, &dup, None).unwrap();
    drop(a);
    drop(client_tpm);

    // New motherboard: a fresh TPM.
    let new_tpm = Swtpm::start(&sb.path("tpm-c"));
    let mut c = open(&new_tpm);
    assert!(matches!(
        c.unseal(&client_id, &blob, None, None),
        Err(TpmError::DrskMissing)
    ));
    let srk = c.srk_public(None).unwrap();
    let restore = server
        .reduplicate_client(
            &server_key,
            &dup.public,
            &stored,
            &[server_name],
            &srk,
            None,
        )
        .unwrap();
    assert_eq!(c.restore_drsk(&restore, false, None).unwrap(), client_id);
    assert!(
        c.unseal(&client_id, &blob, None, None).unwrap().ct_eq(&key),
        "transient DRSK unseals"
    );
    let mut c2 = open(&new_tpm);
    c2.restore_drsk(&restore, true, None).unwrap();
    drop(c2);
    let mut c3 = open(&new_tpm);
    assert!(
        c3.unseal(&client_id, &blob, None, None)
            .unwrap()
            .ct_eq(&key),
        "persisted DRSK unseals"
    );
}

/// seeds/003's demo.sh: TPM A provisions, seals a real LUKS image's key, backs up to server
/// TPM B; A's state is thrown away (new TPM C = new motherboard); B restores to C; C unseals
/// the original sealed blob and the key opens the image. Then the same with a PCR-bound blob.
#[test]
fn seed_demo_board_swap_restore_unseals_the_original_blob() {
    seed_demo(&[]);
}

/// The same with RSA-2048 storage keys on the client and the server, as on TPMs without
/// ECC P-256; the new TPM's own SRK is ECC (swtpm has it), which is fine for an RSA DRSK.
#[test]
fn the_seed_demo_with_rsa_2048_storage_keys() {
    seed_demo(&["--key-algorithm", "rsa"]);
}

/// seeds/003's demo, with `algorithm` (options) for both TPMs' storage keys.
fn seed_demo(algorithm: &[&str]) {
    let sb = Sandbox::new();
    let b = Swtpm::start(&sb.path("tpm-b"));
    let mut init = vec!["drsk", "init", "--dir", "srv"];
    init.extend_from_slice(algorithm);
    sb.server_on(&b, &init).ok();

    let img = sb.luks_image("disk.img", 2);
    let pcr_img = sb.luks_image("pcr.img", 1);
    let image = img.path.to_str().unwrap();
    let pcr_image = pcr_img.path.to_str().unwrap();
    let a = Swtpm::start(&sb.path("tpm-a"));
    let mut provision = vec!["provision", "--backup-server-key", "srv/drsk.pub"];
    provision.extend_from_slice(algorithm);
    let provisioned = sb.lifeline_on(&a, &provision);
    let label = match algorithm {
        [] => "(ECC P-256)",
        _ => "(RSA-2048)",
    };
    assert!(
        provisioned.ok().stderr.contains(label),
        "{}",
        provisioned.stderr
    );
    let client_id = provisioned.stdout.trim().to_string();
    assert_eq!(client_id.len(), 64);
    let enrolled = enroll(&sb, &a, &img, &[]);
    assert!(enrolled.ok().stderr.contains(label), "{}", enrolled.stderr);
    sb.lifeline_on(&a, &["unseal-check", image]).ok();
    // PCR 16 is the resettable debug PCR: give it a value, bind the LUKS1 volume's key to it.
    extend_pcr16(&a);
    enroll(&sb, &a, &pcr_img, &["--pcrs", "16"]).ok();
    sb.lifeline_on(&a, &["unseal-check", pcr_image]).ok();
    sb.lifeline_on(
        &a,
        &["backup", "--server-key", "srv/drsk.pub", "--out", "a.dup"],
    )
    .ok();
    sb.server_on(&b, &["drsk", "import", "--dir", "srv", "a.dup"])
        .ok();
    drop(a);
    std::fs::remove_dir_all(sb.path("tpm-a")).unwrap();

    let c = Swtpm::start(&sb.path("tpm-c"));
    sb.lifeline_on(&c, &["unseal-check", image])
        .fails(8, "no lifeline storage key (DRSK)");
    sb.lifeline_on(&c, &["srk-public", "--out", "c.srk"]).ok();
    let args = [
        "drsk",
        "restore",
        "--dir",
        "srv",
        "--client",
        &client_id,
        "--new-parent",
        "c.srk",
        "--out",
        "c.restore",
    ];
    sb.server_on(&b, &args).ok();
    let restored = sb
        .lifeline_on(&c, &["restore", "--in", "c.restore", "--persist"])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(restored, client_id);
    sb.lifeline_on(&c, &["unseal-check", image]).ok();
    assert_eq!(sb.lifeline_on(&c, &["id"]).ok().stdout.trim(), client_id);

    // The PCR-bound blob: refused while PCR 16 differs, unsealed once it holds the value again.
    sb.lifeline_on(&c, &["unseal-check", pcr_image])
        .fails(8, "PCR 16 changed");
    extend_pcr16(&c);
    sb.lifeline_on(&c, &["unseal-check", pcr_image]).ok();
}

/// `lifeline enroll` of `img` with its key file on the machine with TPM `t`.
fn enroll(
    sb: &Sandbox,
    t: &Swtpm,
    img: &crate::support::Image,
    extra: &[&str],
) -> crate::support::Run {
    let mut args = vec![
        "enroll",
        img.path.to_str().unwrap(),
        "--key-file",
        img.key_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    sb.lifeline_on(t, &args)
}

fn extend_pcr16(t: &Swtpm) {
    let out = t
        .tools("tpm2_pcrextend")
        .arg("16:sha256=0101010101010101010101010101010101010101010101010101010101010101")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn drsk_goes_only_to_a_server_named_at_provisioning() {
    let sb = Sandbox::new();
    let b = Swtpm::start(&sb.path("tpm-b"));
    let mut server = open(&b);
    let good = server.create_server_key(None, None).unwrap();
    let rogue = server.create_server_key(None, None).unwrap();
    let good_name = name_of_public(&good.public).unwrap();
    let rogue_name = name_of_public(&rogue.public).unwrap();
    let a = Swtpm::start(&sb.path("tpm-a"));
    let mut client = open(&a);
    client
        .provision(std::slice::from_ref(&good_name), None, false, None)
        .unwrap();

    // The TPM refuses: through the real branch list, and through a list that names the rogue.
    let honest = client.duplicate_drsk(&rogue.public, std::slice::from_ref(&good_name));
    assert!(
        matches!(honest, Err(TpmError::PolicyRefused(_))),
        "{honest:?}"
    );
    let lying = client.duplicate_drsk(&rogue.public, &[good_name.clone(), rogue_name]);
    assert!(
        matches!(lying, Err(TpmError::PolicyRefused(_))),
        "{lying:?}"
    );
    assert!(client.duplicate_drsk(&good.public, &[good_name]).is_ok());

    // The command line says so before asking the TPM.
    std::fs::write(sb.path("good.pub"), &good.public).unwrap();
    std::fs::write(sb.path("rogue.pub"), &rogue.public).unwrap();
    sb.lifeline_on(&a, &["provision", "--backup-server-key", "good.pub"])
        .ok();
    sb.lifeline_on(&a, &["backup", "--server-key", "rogue.pub", "--out", "x"])
        .fails(8, "not provisioned for the server key");
}

/// An attacker on the client's TPM who knows the server key's public part tries the other
/// branch: PolicySecret against that key (loaded from its public part), PolicyCommandCode,
/// PolicyOR, then Duplicate to a key of their own.
fn secret_branch_without_the_server_key(
    tcti: &str,
    server_public: &[u8],
    target_public: &[u8],
    names: &[Vec<u8>],
) -> tss_esapi::Result<()> {
    use std::str::FromStr;
    use tss_esapi::constants::{CommandCode, SessionType};
    use tss_esapi::handles::{ObjectHandle, PersistentTpmHandle, TpmHandle};
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    use tss_esapi::interface_types::resource_handles::Hierarchy;
    use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
    use tss_esapi::structures::{
        Digest, DigestList, Nonce, Public, SymmetricDefinition, SymmetricDefinitionObject,
    };
    use tss_esapi::traits::UnMarshall;

    let mut ctx = tss_esapi::Context::new(tss_esapi::tcti_ldr::TctiNameConf::from_str(tcti)?)?;
    let server =
        ctx.load_external_public(Public::unmarshall(&server_public[2..])?, Hierarchy::Null)?;
    let target =
        ctx.load_external_public(Public::unmarshall(&target_public[2..])?, Hierarchy::Null)?;
    let drsk = ctx.tr_from_tpm_public(TpmHandle::Persistent(PersistentTpmHandle::new(
        tpm::DRSK_HANDLE,
    )?))?;
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )?
        .expect("session");
    let ps = PolicySession::try_from(session)?;
    let server_auth = ObjectHandle::from(server).into();
    // Each step may already fail; any failure is the refusal we want.
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.policy_secret(
            ps,
            server_auth,
            Nonce::default(),
            Digest::default(),
            Nonce::default(),
            None,
        )
    })?;
    ctx.policy_command_code(ps, CommandCode::Duplicate)?;
    let mut list = DigestList::new();
    for b in tpm::policy::drsk_branches(names) {
        list.add(Digest::try_from(b.to_vec())?)?;
    }
    ctx.policy_or(ps, list)?;
    ctx.execute_with_session(Some(session), |ctx| {
        ctx.duplicate(drsk, target.into(), None, SymmetricDefinitionObject::Null)
    })?;
    Ok(())
}

#[test]
fn the_server_keys_public_part_alone_cannot_reduplicate() {
    let sb = Sandbox::new();
    let b = Swtpm::start(&sb.path("tpm-b"));
    let mut server = open(&b);
    let key = server.create_server_key(None, None).unwrap();
    let rogue = server.create_server_key(None, None).unwrap();
    let name = name_of_public(&key.public).unwrap();
    let a = Swtpm::start(&sb.path("tpm-a"));
    open(&a)
        .provision(std::slice::from_ref(&name), None, false, None)
        .unwrap();
    let attempt =
        secret_branch_without_the_server_key(&a.tcti(), &key.public, &rogue.public, &[name]);
    assert!(
        attempt.is_err(),
        "the client TPM duplicated its DRSK without the server key"
    );

    // Nor can another TPM use the server's files: its key is wrapped for the server's TPM.
    sb.server_on(&b, &["drsk", "init", "--dir", "srv"]).ok();
    let other = Swtpm::start(&sb.path("tpm-x"));
    sb.lifeline_on(
        &a,
        &[
            "provision",
            "--backup-server-key",
            "srv/drsk.pub",
            "--force",
        ],
    )
    .ok();
    let id = sb.lifeline_on(&a, &["id"]).ok().stdout.trim().to_string();
    sb.lifeline_on(
        &a,
        &["backup", "--server-key", "srv/drsk.pub", "--out", "a.dup"],
    )
    .ok();
    sb.server_on(&b, &["drsk", "import", "--dir", "srv", "a.dup"])
        .ok();
    sb.lifeline_on(&other, &["srk-public", "--out", "x.srk"])
        .ok();
    let args = [
        "drsk",
        "restore",
        "--dir",
        "srv",
        "--client",
        &id,
        "--new-parent",
        "x.srk",
        "--out",
        "x.restore",
    ];
    sb.server_on(&other, &args)
        .fails(8, "belongs to another TPM");
    assert!(!sb.path("x.restore").exists());
}

#[test]
fn no_tpm_is_named_after_a_bounded_wait() {
    let sb = Sandbox::new();
    let started = std::time::Instant::now();
    // Nothing listens on port 1 of the loopback.
    sb.lifeline_tcti("swtpm:host=127.0.0.1,port=1", &["id"])
        .fails(8, "no TPM");
    assert!(started.elapsed() < Duration::from_secs(30));
    sb.lifeline_tcti("device:/dev/lifeline-no-such-tpm", &["id"])
        .fails(8, "does not exist");
}

#[test]
fn foreign_objects_at_our_handles_are_left_alone_unless_forced() {
    let sb = Sandbox::new();
    let t = Swtpm::start(&sb.path("tpm"));
    let dir = sb.path("");
    t.tool(
        &dir,
        "tpm2_createprimary",
        &["-C", "o", "-G", "rsa", "-c", "other.ctx"],
    );
    t.tool(
        &dir,
        "tpm2_evictcontrol",
        &["-C", "o", "-c", "other.ctx", "0x81000004"],
    );
    let before = t.tool(&dir, "tpm2_readpublic", &["-c", "0x81000004"]);
    sb.lifeline_on(&t, &["provision"])
        .fails(8, "another object is at 0x81000004");
    assert_eq!(
        t.tool(&dir, "tpm2_readpublic", &["-c", "0x81000004"]),
        before
    );
    let handles = String::from_utf8(t.tool(&dir, "tpm2_getcap", &["handles-persistent"])).unwrap();
    assert!(
        !handles.contains("0x81000003"),
        "a refusal changed nothing: {handles}"
    );

    sb.lifeline_on(&t, &["provision", "--force"]).ok();
    let img = sb.luks_image("disk.img", 2);
    let image = img.path.to_str().unwrap();
    enroll(&sb, &t, &img, &[]).ok();
    sb.lifeline_on(&t, &["unseal-check", image]).ok();
    // A DRSK for other backup servers is ours but still not replaced silently.
    let server = Swtpm::start(&sb.path("srv-tpm"));
    sb.server_on(&server, &["drsk", "init", "--dir", "srv"])
        .ok();
    sb.lifeline_on(&t, &["provision", "--backup-server-key", "srv/drsk.pub"])
        .fails(8, "provisioned for other backup servers");
    sb.lifeline_on(&t, &["unseal-check", image]).ok();
}

#[test]
fn owner_authorization_missing_or_wrong_is_named() {
    let sb = Sandbox::new();
    let t = Swtpm::start(&sb.path("tpm"));
    let dir = sb.path("");
    t.tool(
        &dir,
        "tpm2_changeauth",
        &["-c", "owner", "right owner auth"],
    );
    sb.write("wrong", "wrong owner auth\n");
    sb.write("right", "right owner auth\n");
    sb.lifeline_on(&t, &["srk-public", "--out", "srk.pub"])
        .fails(2, "owner authorization is set and is needed");
    sb.lifeline_on(&t, &["provision", "--owner-auth-file", "wrong"])
        .fails(3, "owner authorization is wrong");
    sb.lifeline_on(&t, &["provision"]).fails(2, "no answer");
    sb.lifeline_on(&t, &["provision", "--owner-auth-file", "right"])
        .ok();
    // With the SRK persistent, exporting it needs no owner authorization.
    sb.lifeline_on(&t, &["srk-public", "--out", "srk.pub"]).ok();
}

/// Token JSON for a sealed object that tpm2-tools made.
fn token_for(client_id: &str, public: &[u8], private: &[u8]) -> String {
    format!(
        r#"{{"type":"lifeline-tpm2","keyslots":[],"lifeline-version":1,"client-id":"{client_id}","public":"{}","private":"{}"}}"#,
        lifeline::hex::encode(public),
        lifeline::hex::encode(private)
    )
}

#[test]
fn tpm2_tools_unseal_lifeline_blobs_and_the_reverse_and_lockout_is_named() {
    let sb = Sandbox::new();
    let t = Swtpm::start(&sb.path("tpm"));
    let dir = sb.path("");
    let id = sb
        .lifeline_on(&t, &["provision"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let img = sb.luks_image("disk.img", 2);
    let image = img.path.to_str().unwrap();
    enroll(&sb, &t, &img, &[]).ok();

    // lifeline's token holds standard TPM2B blobs: tpm2_load + tpm2_unseal give the key.
    let exported = crate::support::cryptsetup(&["token", "export", "--token-id", "0", image]);
    let token: serde_json::Value = serde_json::from_str(exported.ok().stdout.trim()).unwrap();
    let field = |k: &str| lifeline::hex::decode(token[k].as_str().unwrap()).unwrap();
    sb.write("l.pub", field("public"));
    sb.write("l.priv", field("private"));
    let out = t
        .tools("tpm2_load")
        .args([
            "-C",
            "0x81000004",
            "-u",
            "l.pub",
            "-r",
            "l.priv",
            "-c",
            "l.ctx",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        t.tool(&dir, "tpm2_unseal", &["-c", "l.ctx"]),
        img.volume_key
    );

    // The reverse: a sealed object made by tpm2-tools under the DRSK, in lifeline's token.
    // It is DA-protected (no noda), unlike lifeline's own objects.
    let other = sb.luks_image("other.img", 2);
    let other_image = other.path.to_str().unwrap();
    sb.write("vk.bin", &other.volume_key);
    let args = [
        "-C",
        "0x81000004",
        "-i",
        "vk.bin",
        "-u",
        "t.pub",
        "-r",
        "t.priv",
        "-a",
        "fixedparent|userwithauth",
    ];
    t.tool(&dir, "tpm2_create", &args);
    let json = token_for(
        &id,
        &std::fs::read(sb.path("t.pub")).unwrap(),
        &std::fs::read(sb.path("t.priv")).unwrap(),
    );
    sb.write("token.json", json);
    crate::support::cryptsetup(&[
        "token",
        "import",
        "--json-file",
        sb.path("token.json").to_str().unwrap(),
        other_image,
    ])
    .ok();
    sb.lifeline_on(&t, &["unseal-check", other_image]).ok();

    // Dictionary-attack lockout: one wrong password on a DA-protected object locks the TPM.
    t.tool(
        &dir,
        "tpm2_dictionarylockout",
        &["-s", "-n", "1", "-t", "600", "-l", "600"],
    );
    let args = [
        "-C",
        "0x81000004",
        "-i",
        "vk.bin",
        "-u",
        "w.pub",
        "-r",
        "w.priv",
        "-a",
        "fixedparent|userwithauth",
        "-p",
        "pw",
    ];
    t.tool(&dir, "tpm2_create", &args);
    let wrong = t
        .tools("sh")
        .args([
            "-c",
            "tpm2_load -C 0x81000004 -u w.pub -r w.priv -c w.ctx && tpm2_unseal -c w.ctx -p wrong",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    t.tool(&dir, "tpm2_flushcontext", &["-t"]);
    sb.lifeline_on(&t, &["unseal-check", other_image])
        .fails(8, "dictionary-attack lockout");
    // lifeline's own sealed objects are noDA: lockout cannot keep a machine from booting.
    sb.lifeline_on(&t, &["unseal-check", image]).ok();
}

/// A storage key's public part made in software: it has the attributes of a TPM-resident key
/// but no TPM holds its private part.
fn software_storage_key() -> Vec<u8> {
    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::interface_types::{algorithm::*, ecc::EccCurve};
    use tss_esapi::structures::*;
    use tss_esapi::traits::Marshall;
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .unwrap();
    let params = PublicEccParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        EccCurve::NistP256,
    )
    .build()
    .unwrap();
    let mut x = [0u8; 32];
    getrandom::fill(&mut x).unwrap();
    let public = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(x.to_vec()).unwrap(),
            EccParameter::try_from(x.to_vec()).unwrap(),
        ))
        .build()
        .unwrap();
    tpm::tpm2b(&public.marshall().unwrap())
}

#[test]
fn restore_needs_proof_of_a_genuine_tpm_when_the_server_asks() {
    let sb = Sandbox::new();
    let ca_pem = crate::support::swtpm::manufacture(&sb.path("tpm-c"), &sb.path("ca"));
    sb.write("ek-ca.pem", &ca_pem);
    let img = sb.luks_image("disk.img", 2);
    let image = img.path.to_str().unwrap();
    let (b, id) = custody_with_proof_and_a_backed_up_machine(&sb, &img);

    let c = Swtpm::start(&sb.path("tpm-c"));
    sb.lifeline_on(&c, &["srk-public", "--out", "c.srk", "--ek-out", "c.ek"])
        .ok();
    let restore = |srk: &str, proof: Option<&str>, out: &str| {
        let mut args = vec![
            "drsk",
            "restore",
            "--dir",
            "srv",
            "--client",
            &id,
            "--new-parent",
            srk,
            "--out",
            out,
        ];
        if let Some(p) = proof {
            args.extend(["--proof", p]);
        }
        sb.server_on(&b, &args)
    };
    restore("c.srk", None, "r0").fails(8, "requires proof of a genuine TPM: no --proof given");

    // A software key posing as the new TPM's storage key, with the genuine TPM's EK: the server
    // issues a challenge, but no TPM can answer it.
    std::fs::write(sb.path("fake.srk"), software_storage_key()).unwrap();
    let challenge = [
        "drsk",
        "challenge",
        "--dir",
        "srv",
        "--client",
        &id,
        "--ek",
        "c.ek",
    ];
    sb.server_on(
        &b,
        &[
            &challenge[..],
            &["--new-parent", "fake.srk", "--out", "fake.chal"],
        ]
        .concat(),
    )
    .ok();
    sb.lifeline_on(
        &c,
        &["activate", "--in", "fake.chal", "--out", "fake.proof"],
    )
    .fails(8, "made for another TPM or another storage key");
    sb.write(
        "forged.proof",
        format!("lifeline-tpm-proof v1\nsecret: {}\n", "00".repeat(32)),
    );
    restore("fake.srk", Some("forged.proof"), "r1").fails(8, "does not match the challenge");
    assert!(!sb.path("r1").exists());

    // A movable key is refused outright, and so is an EK certified by another CA.
    let dup = std::fs::read_to_string(sb.path("a.dup")).unwrap();
    let drsk_public = dup
        .lines()
        .find_map(|l| l.strip_prefix("public: "))
        .unwrap();
    sb.write("movable.pub", lifeline::hex::decode(drsk_public).unwrap());
    sb.server_on(
        &b,
        &[
            &challenge[..],
            &["--new-parent", "movable.pub", "--out", "m.chal"],
        ]
        .concat(),
    )
    .fails(8, "not a TPM-resident storage key");
    let d_ca = crate::support::swtpm::manufacture(&sb.path("tpm-d"), &sb.path("other-ca"));
    assert_ne!(d_ca, ca_pem);
    let d = Swtpm::start(&sb.path("tpm-d"));
    sb.lifeline_on(&d, &["srk-public", "--out", "d.srk", "--ek-out", "d.ek"])
        .ok();
    let args = [
        "drsk",
        "challenge",
        "--dir",
        "srv",
        "--client",
        &id,
        "--new-parent",
        "d.srk",
        "--ek",
        "d.ek",
        "--out",
        "d.chal",
    ];
    sb.server_on(&b, &args)
        .fails(8, "not signed by a configured CA");

    // The genuine machine: challenge, activate, restore with the proof; the old key unseals.
    sb.server_on(
        &b,
        &[
            &challenge[..],
            &["--new-parent", "c.srk", "--out", "c.chal"],
        ]
        .concat(),
    )
    .ok();
    sb.lifeline_on(&c, &["activate", "--in", "c.chal", "--out", "c.proof"])
        .ok();
    restore("c.srk", Some("c.proof"), "c.restore").ok();
    restore("c.srk", Some("c.proof"), "again").fails(8, "no challenge is pending");
    sb.lifeline_on(&c, &["restore", "--in", "c.restore", "--persist"])
        .ok();
    sb.lifeline_on(&c, &["unseal-check", image]).ok();
}

/// A server (TPM B, directory srv/) whose restores need the genuine-TPM proof with EK
/// certificates from `ek-ca.pem`, and a machine (TPM A, gone afterwards: the old
/// motherboard) that provisioned for it, enrolled `img` and backed its DRSK up there. Returns
/// the server's TPM and the machine's client ID.
fn custody_with_proof_and_a_backed_up_machine(
    sb: &Sandbox,
    img: &crate::support::Image,
) -> (Swtpm, String) {
    let b = Swtpm::start(&sb.path("tpm-b"));
    sb.server_on(
        &b,
        &["drsk", "init", "--dir", "srv", "--ek-ca", "ek-ca.pem"],
    )
    .ok();
    let a = Swtpm::start(&sb.path("tpm-a"));
    let id = sb
        .lifeline_on(&a, &["provision", "--backup-server-key", "srv/drsk.pub"])
        .ok()
        .stdout
        .trim()
        .to_string();
    enroll(sb, &a, img, &[]).ok();
    sb.lifeline_on(
        &a,
        &["backup", "--server-key", "srv/drsk.pub", "--out", "a.dup"],
    )
    .ok();
    sb.server_on(&b, &["drsk", "import", "--dir", "srv", "a.dup"])
        .ok();
    (b, id)
}

/// A TPM whose only EK certificate is for its ECC P-256 EK (as some vendors ship): the proof
/// takes it, and the board swap goes through.
#[test]
fn the_genuine_tpm_proof_takes_an_ecc_p256_ek_certificate() {
    let sb = Sandbox::new();
    let ca_pem = crate::support::swtpm::manufacture(&sb.path("tpm-c"), &sb.path("ca"));
    sb.write("ek-ca.pem", &ca_pem);
    let c = Swtpm::start(&sb.path("tpm-c"));
    // The ECC P-256 EK (TCG default template), certified by the same CA, at its NV index; the
    // RSA EK certificate swtpm made is removed.
    let dir = sb.path("");
    c.tool(
        &dir,
        "tpm2_createek",
        &["-G", "ecc", "-c", "ek.ctx", "-u", "ek.pem", "-f", "pem"],
    );
    let signed = std::process::Command::new("openssl")
        .args([
            "x509",
            "-new",
            "-force_pubkey",
            "ek.pem",
            "-subj",
            "/CN=ECC EK",
        ])
        .args(["-CA", "ca/issuercert.pem", "-CAkey", "ca/signkey.pem"])
        .args(["-days", "3650", "-outform", "DER", "-out", "ek.der"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let size = std::fs::metadata(sb.path("ek.der"))
        .unwrap()
        .len()
        .to_string();
    let attributes = "ownerwrite|ownerread|authread|no_da";
    c.tool(
        &dir,
        "tpm2_nvdefine",
        &["0x1c0000a", "-C", "o", "-s", &size, "-a", attributes],
    );
    c.tool(
        &dir,
        "tpm2_nvwrite",
        &["0x1c0000a", "-C", "o", "-i", "ek.der"],
    );
    c.tool(&dir, "tpm2_nvundefine", &["-C", "p", "0x1c00002"]);

    let img = sb.luks_image("disk.img", 2);
    let (b, id) = custody_with_proof_and_a_backed_up_machine(&sb, &img);

    sb.lifeline_on(&c, &["srk-public", "--out", "c.srk", "--ek-out", "c.ek"])
        .ok();
    let server = |args: &[&str]| {
        let common = ["--dir", "srv", "--client", &id, "--new-parent", "c.srk"];
        sb.server_on(&b, &[args, &common[..]].concat())
    };
    server(&["drsk", "challenge", "--ek", "c.ek", "--out", "c.chal"]).ok();
    sb.lifeline_on(&c, &["activate", "--in", "c.chal", "--out", "c.proof"])
        .ok();
    server(&[
        "drsk",
        "restore",
        "--proof",
        "c.proof",
        "--out",
        "c.restore",
    ])
    .ok();
    sb.lifeline_on(&c, &["restore", "--in", "c.restore", "--persist"])
        .ok();
    sb.lifeline_on(&c, &["unseal-check", img.path.to_str().unwrap()])
        .ok();
}

#[test]
fn reenrolling_replaces_our_token_and_leaves_other_tokens_alone() {
    let sb = Sandbox::new();
    let t = Swtpm::start(&sb.path("tpm"));
    sb.lifeline_on(&t, &["provision"]).ok();
    let img = sb.luks_image("disk.img", 2);
    let image = img.path.to_str().unwrap();
    sb.write(
        "other.json",
        r#"{"type":"example-other","keyslots":[],"data":"not ours"}"#,
    );
    crate::support::cryptsetup(&[
        "token",
        "import",
        "--json-file",
        sb.path("other.json").to_str().unwrap(),
        image,
    ])
    .ok();
    enroll(&sb, &t, &img, &[]).ok();
    extend_pcr16(&t);
    enroll(&sb, &t, &img, &["--pcrs", "16"]).ok();
    let dump = crate::support::cryptsetup(&["luksDump", image])
        .ok()
        .stdout
        .clone();
    assert_eq!(dump.matches("lifeline-tpm2").count(), 1, "{dump}");
    assert_eq!(dump.matches("example-other").count(), 1, "{dump}");
    let ours = crate::support::cryptsetup(&["token", "export", "--token-id", "1", image]);
    assert!(
        ours.ok().stdout.contains(r#""pcrs":[16]"#),
        "the second enrollment replaced the first"
    );
    sb.lifeline_on(&t, &["unseal-check", image]).ok();
    // A wrong passphrase leaves the token as it was.
    sb.write("wrong", "wrong");
    sb.lifeline_on(&t, &["enroll", image, "--key-file", "wrong"])
        .fails(3, "no keyslot accepts");
    let again = crate::support::cryptsetup(&["token", "export", "--token-id", "1", image]);
    assert_eq!(again.ok().stdout, ours.stdout);
}
