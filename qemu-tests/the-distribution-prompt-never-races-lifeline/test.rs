//! Two prompts must never ask for the same disk: while lifeline waits at its prompt (the PCRs
//! changed, no server, nobody typing yet), the distribution's own prompt does not ask too —
//! lifeline runs strictly before it (a script before the next, or systemd ordering that holds
//! in every image: cryptsetup-pre.target and a drop-in ordering systemd-cryptsetup after
//! lifeline). The user then types the disk's passphrase at lifeline's prompt; the volume opens,
//! the distribution's step finds it open, and the boot goes on to the root: no second prompt,
//! no "busy" device, no emergency mode, no hang.

use crate::harness::*;
use crate::support::OLD_PASSPHRASE;

/// How long the harness watches lifeline's prompt for a second one before typing.
const WATCH: std::time::Duration = std::time::Duration::from_secs(15);

fn scenario(flavour: Flavour) {
    let mut w = World::new(flavour);
    w.provision(true);
    let (initrd, tpm) = (w.initrd(), w.tpm.clone());
    let mut boot = w.boot_with(&initrd, Some(&tpm), false, None, "");
    boot.wait_for("Passphrase or one-time password:", 1);
    std::thread::sleep(WATCH);
    let waiting = boot.console();
    assert!(
        !waiting.contains(flavour.passphrase_prompt()),
        "the distribution asks while lifeline does:\n{waiting}"
    );
    boot.type_line(OLD_PASSPHRASE);
    let f = boot.finish();
    let console = assert_root(&f);
    assert!(console.contains("unlocked (passphrase)"), "{console}");
    // ("Device cryptroot already exists, not doing any crypt setup" is mkinitcpio's encrypt
    // hook finding the volume open: what should happen.)
    for never in [
        flavour.passphrase_prompt(),
        "mergency",
        "resource busy",
        "Failed to activate",
    ] {
        assert!(
            !console.contains(never),
            "{never:?} on the console:\n{console}"
        );
    }
}

for_each_flavour!(scenario);
