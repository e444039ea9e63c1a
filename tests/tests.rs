//! The integration tests: one binary, so libcryptsetup and friends are linked once.

/// Fixtures: scratch dirs, real LUKS images, a real authority, runners for the binaries.
mod support;

/// The off-line escrow and recovery flow, its refusals, and secrets kept out of output.
mod offline;

/// The stock age and minisign tools against lifeline's packets, both ways.
mod interop;

/// The format vectors in tests/vectors/ and their agreement with docs/FORMAT.md.
mod vectors;

/// TPM objects on real swtpm: DRSK, sealing, backup and board-swap restore, lockdown.
mod tpm;

/// The escrow server over HTTPS on 127.0.0.1 with real clients: flows and refusals.
mod server;

/// `lifeline status` and `--repair`: every disk still recoverable, reported to the server.
mod status;

/// Approving recoveries: K-of-N shares from each administrator's seat, an off-server authority.
mod approvals;

/// The web console in a real headless Chromium.
mod console;

/// `lifeline unlock` as the initramfs runs it: real swtpm, LUKS image, server, USB image, pty.
mod unlock;

/// Crafted tokens, a replaced TPM key, FIFOs, lying sticks, stalling and lying servers.
mod hostile;

/// The initramfs glue without booting: shellcheck, mkinitcpio's hooks against a harness.
mod glue;
