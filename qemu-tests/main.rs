//! Real boots: a Debian 12 kernel in QEMU (TCG) with initramfs images made by dracut (with and
//! without systemd), initramfs-tools and Arch's mkinitcpio (with and without systemd)
//! containing lifeline, a LUKS2 root, swtpm as the machine's TPM, and the escrow server on the
//! host's 127.0.0.1 (reached from the guest as 10.0.2.100). One directory per scenario, named
//! for what it proves; each runs for every flavour. Two machines boot at a time. See
//! qemu-tests/README.md.

#[path = "../tests/support/mod.rs"]
mod support;

mod harness;

/// `make demo`: the narrated story (ignored by `make test`).
mod demo;

/// Initramfs sizes and boot times, by hand (ignored by `make test`).
mod benchmark;

/// What the mkinitcpio images carry, and a failed lifeline hook made impossible to miss.
mod images;

#[path = "unattended-tpm-unlock/test.rs"]
mod unattended_tpm_unlock;

#[path = "pcr-changed-recovery-through-the-server/test.rs"]
mod pcr_changed_recovery_through_the_server;

#[path = "no-network-recovery-packet-on-a-usb-stick/test.rs"]
mod no_network_recovery_packet_on_a_usb_stick;

#[path = "motherboard-swap-drsk-restored-from-the-server/test.rs"]
mod motherboard_swap_drsk_restored_from_the_server;

#[path = "forged-packet-refused-then-the-real-one-accepted/test.rs"]
mod forged_packet_refused_then_the_real_one_accepted;

#[path = "lifeline-broken-the-distribution-prompt-still-unlocks/test.rs"]
mod lifeline_broken_the_distribution_prompt_still_unlocks;

#[path = "the-distribution-prompt-never-races-lifeline/test.rs"]
mod the_distribution_prompt_never_races_lifeline;
