//! The TPM unseals the root's key through the DRSK in the initramfs: no prompt at all, the
//! root is mounted, and lifeline says how.

use crate::harness::*;

fn scenario(flavour: Flavour) {
    let mut w = World::new(flavour);
    w.provision(false);
    let boot = w.boot();
    let f = boot.finish();
    let console = assert_root(&f);
    assert!(console.contains("unlocked (TPM)"), "{console}");
    assert!(
        !console.contains("Passphrase or one-time password"),
        "{console}"
    );
    assert!(!console.contains(flavour.passphrase_prompt()), "{console}");
}

for_each_flavour!(scenario);
