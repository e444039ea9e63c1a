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
fn library_seal_backup_board_swap_restore_unseal() {
    let sb = Sandbox::new();
    let server_tpm = Swtpm::start(&sb.path("server-tpm"));
    let mut server = open(&server_tpm);
    let server_key = server.create_server_key(None).unwrap();
    let server_name = name_of_public(&server_key.public).unwrap();

    let client_tpm = Swtpm::start(&sb.path("tpm-a"));
    let mut a = open(&client_tpm);
    assert_eq!(
        a.provision(&[server_name.clone()], None, false).unwrap(),
        tpm::Provisioned::Created
    );
    assert_eq!(
        a.provision(&[server_name.clone()], None, false).unwrap(),
        tpm::Provisioned::AlreadyThere
    );
    let key = VolumeKey::from_slice(&[42; 64]);
    let (blob, _) = a.seal(&key, &[]).unwrap();
    assert!(a.unseal(&blob, None).unwrap().ct_eq(&key));
    let client_id = tpm::client_id(&a.drsk_public().unwrap());
    let dup = a
        .duplicate_drsk(&server_key.public, &[server_name.clone()])
        .unwrap();
    let stored = server.import_client(&server_key, &dup, None).unwrap();
    drop(a);
    drop(client_tpm);

    // New motherboard: a fresh TPM.
    let new_tpm = Swtpm::start(&sb.path("tpm-c"));
    let mut c = open(&new_tpm);
    assert!(matches!(c.unseal(&blob, None), Err(TpmError::DrskMissing)));
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
        c.unseal(&blob, None).unwrap().ct_eq(&key),
        "transient DRSK unseals"
    );
    let mut c2 = open(&new_tpm);
    c2.restore_drsk(&restore, true, None).unwrap();
    drop(c2);
    let mut c3 = open(&new_tpm);
    assert!(
        c3.unseal(&blob, None).unwrap().ct_eq(&key),
        "persisted DRSK unseals"
    );
}
