//! The motherboard was replaced: a TPM with fresh state, without the DRSK. The new board's
//! restore request is approved on the server (its TPM re-duplicates the DRSK to the new SRK);
//! at boot lifeline finds the DRSK missing, loads the approved restore from the server, and
//! unseals the old token: no prompt at all.

use crate::harness::*;

fn scenario(flavour: Flavour) {
    let mut w = World::new(flavour);
    w.provision(false);
    let new_board = w.sb.path("tpm-new-board");
    w.approve_restore(&new_board);

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

for_each_flavour!(scenario);
