//! No network at all, and the PCRs changed: the helpdesk sends a recovery packet on a USB
//! stick (vfat); lifeline finds it, checks its signature and binding, and the OTP read over the
//! phone opens the root.

use crate::harness::*;

fn scenario(flavour: Flavour) {
    let mut w = World::new(flavour);
    w.provision(true);
    let (packet, otp) = w.offline_packet("srv");
    let stick = w.usb_stick("stick.img", &packet);
    let mut boot = w.boot_with_stick(&stick, false);
    boot.wait_for("recovery packet from removable media verified", 1);
    boot.type_line(&otp);
    let f = boot.finish();
    let console = assert_root(&f);
    assert!(console.contains("unlocked (recovery packet)"), "{console}");
    assert!(!console.contains(flavour.passphrase_prompt()), "{console}");
}

for_each_flavour!(scenario);
