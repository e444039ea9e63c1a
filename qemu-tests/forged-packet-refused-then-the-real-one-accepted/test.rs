//! Someone plants a USB stick with a packet signed by another authority (well formed, bound to
//! this machine and volume): lifeline refuses it, says why, and does not ask for its OTP. The
//! real packet comes from the escrow server after approval, and its OTP opens the root.

use crate::harness::*;

fn scenario(flavour: Flavour) {
    let mut w = World::new(flavour);
    w.provision(true);
    w.sb.authority("mallory");
    let (forged, forged_otp) = w.offline_packet("mallory");
    let stick = w.usb_stick("forged.img", &forged);
    let mut boot = w.boot_with_stick(&stick, true);
    boot.wait_for("refused a recovery packet from removable media", 1);
    boot.wait_for(
        &format!("recovery request filed with the escrow server {GUEST_SERVER}."),
        1,
    );
    // The forged packet's OTP opens nothing: no packet was accepted.
    boot.type_line(&forged_otp);
    boot.wait_for("no recovery packet has arrived yet", 1);
    let otp = w.approve_recovery();
    boot.wait_for(
        &format!("recovery packet from the escrow server {GUEST_SERVER} verified"),
        1,
    );
    boot.type_line(&otp);
    let f = boot.finish();
    let console = assert_root(&f);
    assert!(console.contains("unlocked (recovery packet)"), "{console}");
    assert_eq!(
        console.matches("refused a recovery packet").count(),
        1,
        "named once: {console}"
    );
}

for_each_flavour!(scenario);
