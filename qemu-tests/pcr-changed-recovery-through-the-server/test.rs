//! The PCRs changed (the key was sealed to another PCR 16 value): lifeline shows the recovery
//! ID and files a request with the escrow server; the administrator approves it; the packet
//! arrives over HTTPS, is verified, and the OTP typed at the console (after a wrong one) opens
//! the root. The key is re-sealed to the current PCRs: the next boot is unattended again.

use crate::harness::*;

fn scenario(flavour: Flavour) {
    let mut w = World::new(flavour);
    w.provision(true);
    let mut boot = w.boot();
    boot.wait_for("Passphrase or one-time password:", 1);
    let recovery_id = format!("Recovery ID {}-{}", &w.client_id[..4], &w.root.uuid[..4]);
    assert!(boot.console().contains(&recovery_id), "{}", boot.console());
    boot.wait_for(
        &format!("recovery request filed with the escrow server {GUEST_SERVER}."),
        1,
    );
    let otp = w.approve_recovery();
    boot.wait_for(
        &format!("recovery packet from the escrow server {GUEST_SERVER} verified"),
        1,
    );
    boot.type_line("000000-000011-000022-000033");
    boot.wait_for("does not open the packet", 1);
    boot.type_line(&otp);
    let f = boot.finish();
    let console = assert_root(&f);
    assert!(console.contains("unlocked (recovery packet)"), "{console}");
    assert!(
        console.contains("re-sealed to the current PCR values"),
        "{console}"
    );
    assert!(!console.contains(&otp), "the OTP is not echoed: {console}");
    assert!(!console.contains(flavour.passphrase_prompt()), "{console}");

    let f = w.boot().finish();
    let console = assert_root(&f);
    assert!(
        console.contains("unlocked (TPM)"),
        "next boot unattended: {console}"
    );
}

for_each_flavour!(scenario);
