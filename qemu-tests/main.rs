//! Real boots: a Debian 12 kernel in QEMU (TCG) with initramfs images made by dracut and
//! initramfs-tools containing lifeline, a LUKS2 root, swtpm as the machine's TPM, and the
//! escrow server on the host's 127.0.0.1 (reached from the guest as 10.0.2.100). One directory
//! per scenario, named for what it proves; each runs for both flavours. Boots run one at a
//! time. See qemu-tests/README.md.

#[path = "../tests/support/mod.rs"]
mod support;

mod harness;

#[path = "unattended-tpm-unlock/test.rs"]
mod unattended_tpm_unlock;
