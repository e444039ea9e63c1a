//! The images themselves, without booting: what each mkinitcpio image carries, and that an
//! image built without lifeline (its hook failed) cannot pass unnoticed.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

/// The files in an mkinitcpio image, as Arch's own `lsinitcpio` lists them.
fn lsinitcpio(image: &Path) -> String {
    let tool = initrd::mkinitcpio();
    run(Command::new("bash")
        .arg(tool.join("lsinitcpio"))
        .arg(image)
        .env("MKINITCPIO_LIBRARY", tool))
}

#[test]
fn a_mkinitcpio_image_without_lifeline_is_impossible_to_miss() {
    for flavour in [Flavour::Mkinitcpio, Flavour::MkinitcpioSystemd] {
        let w = World::new(flavour);
        let listing = lsinitcpio(&w.initrd());
        let mut expected = vec!["usr/bin/lifeline", "etc/lifeline/lifeline.toml"];
        expected.extend(match flavour {
            Flavour::Mkinitcpio => vec!["hooks/lifeline", "usr/lib/lifeline/udhcpc"],
            _ => vec![
                "usr/lib/lifeline/hook",
                "usr/lib/systemd/system/lifeline-unlock.service",
                "usr/lib/systemd/system/cryptsetup-pre.target",
                "etc/systemd/system/systemd-cryptsetup@.service.d/lifeline.conf",
            ],
        });
        for file in expected {
            assert!(
                listing.lines().any(|l| l.trim_start_matches("./") == file),
                "{}: no {file} in the image:\n{listing}",
                flavour.name()
            );
        }

        // The binary is missing on the build host: mkinitcpio names that, fails, and the
        // image it still writes has no lifeline in it.
        let missing = w.sb.path("no-such-lifeline");
        let broken = w.sb.path("broken.img");
        let log = initrd::build(
            flavour,
            Some(&missing),
            &w.etc_lifeline(),
            &w.root,
            &w.sb.path("build-broken"),
            &broken,
        )
        .expect_err("mkinitcpio must fail when the lifeline hook does");
        for said in [
            "no-such-lifeline is not there: install lifeline",
            "the image is built WITHOUT lifeline",
            "errors were encountered during the build",
        ] {
            assert!(
                log.contains(said),
                "{}: {said:?} not said:\n{log}",
                flavour.name()
            );
        }
        assert!(
            !log.contains("fix /etc/lifeline"),
            "not a configuration problem:\n{log}"
        );
        let listing = lsinitcpio(&broken);
        assert!(
            !listing.contains("usr/bin/lifeline"),
            "{}:\n{listing}",
            flavour.name()
        );
    }
}
