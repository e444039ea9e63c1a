//! The motherboard was replaced: a TPM with fresh state, without the DRSK. The new board's
//! restore request is approved on the server (its TPM re-duplicates the DRSK to the new SRK);
//! at boot lifeline finds the DRSK missing, loads the approved restore from the server, and
//! unseals the old token: no prompt at all.

use crate::harness::*;
use crate::support::swtpm::Swtpm;

fn scenario(flavour: Flavour) {
    let mut w = World::new(flavour);
    w.provision(false);
    let new_board = w.sb.path("tpm-new-board");
    {
        let t = Swtpm::start(&new_board);
        let root = w.root.path.to_str().unwrap();
        w.sb.lifeline_on(&t, &["restore", "--server", &w.srv.url, "--device", root])
            .fails(5, "is not approved yet");
    }
    let rows = w.srv.admin(&w.sb, &["restores"]).ok().stdout.clone();
    let row: serde_json::Value = serde_json::from_str(rows.lines().next().unwrap()).unwrap();
    assert_eq!(row["client_id"], w.client_id.as_str());
    w.srv
        .admin(
            &w.sb,
            &["approve-restore", row["request"].as_str().unwrap()],
        )
        .ok();

    let initrd = w.initrd();
    let f = w
        .boot_with(&initrd, Some(&new_board), true, None, "")
        .finish();
    let console = assert_root(&f);
    assert!(
        console.contains("DRSK restored from the escrow server"),
        "{console}"
    );
    assert!(
        console.contains("unlocked (TPM, DRSK restored from the server)"),
        "{console}"
    );
    assert!(
        !console.contains("Passphrase or one-time password"),
        "{console}"
    );
}

#[test]
fn dracut() {
    scenario(Flavour::Dracut);
}

#[test]
fn initramfs_tools() {
    scenario(Flavour::InitramfsTools);
}
