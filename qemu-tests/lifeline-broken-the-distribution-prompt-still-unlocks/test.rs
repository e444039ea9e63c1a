//! Never worse than without lifeline: with the binary missing from the image, a bad setting,
//! or no TPM and the server down, the distribution's own passphrase prompt comes up and the
//! passphrase opens the root.

use crate::harness::*;
use crate::support::OLD_PASSPHRASE;

fn passphrase_opens(mut boot: Boot, flavour: Flavour) -> String {
    boot.wait_for(flavour.passphrase_prompt(), 1);
    boot.type_line(OLD_PASSPHRASE);
    let f = boot.finish();
    assert_root(&f).to_string()
}

fn scenario(flavour: Flavour) {
    let mut w = World::new(flavour);
    w.provision(false);
    let (initrd, tpm) = (w.initrd(), w.tpm.clone());

    // The binary is gone from the image (the glue is still there).
    let broken = w.sb.path("initrd-without-lifeline.img");
    initrd::without(
        &initrd,
        flavour.binary_in_image(),
        &w.sb.path("repack"),
        &broken,
    );
    let boot = w.boot_with(&broken, Some(&tpm), true, None, "");
    let console = passphrase_opens(boot, flavour);
    assert!(!console.contains("unlocked (TPM)"), "{console}");

    // A setting lifeline does not know: it says so and steps aside.
    let boot = w.boot_with(&initrd, Some(&tpm), true, None, "rd.lifeline.colour=blue");
    let console = passphrase_opens(boot, flavour);
    assert!(console.contains("unknown setting 'colour'"), "{console}");

    // No TPM, the server unreachable, nobody at lifeline's prompt: it times out.
    let boot = w.boot_with(
        &initrd,
        None,
        true,
        None,
        "rd.lifeline.server=https://10.0.2.101:8443 rd.lifeline.timeout=5 rd.lifeline.tpm_wait=1",
    );
    let console = passphrase_opens(boot, flavour);
    assert!(console.contains("not reachable"), "{console}");
    assert!(console.contains("stepping aside"), "{console}");
}

for_each_flavour!(scenario);
