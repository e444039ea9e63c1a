//! lifeline keeps people from being locked out of their LUKS-encrypted disks without
//! weakening the encryption.
//!
//! # The story
//!
//! A volume's key (the LUKS volume key, not a passphrase) is *escrowed*: written into an escrow
//! packet encrypted to a recovery authority's age key, which only administrators can unlock.
//! When a user is locked out, an administrator turns the escrow packet into a *recovery packet*:
//! the same key, bound to that machine and volume, valid for a few days, encrypted under a fresh
//! one-time password (OTP) and signed by the authority. The user gets the packet (file, USB
//! stick, or HTTPS from the escrow server), the helpdesk reads out the OTP, and `lifeline recover` checks signature
//! and binding, opens the packet, proves the key opens the volume and sets a new passphrase.
//! The same flow works on a detached LUKS header backup, so a remote user can send a small
//! header file instead of a disk.
//!
//! For unattended unlock the volume key is sealed with the TPM under a *recoverable* storage
//! key (DRSK) at 0x81000004. The DRSK's policy lets it be duplicated only into the TPMs of the
//! backup servers named at provisioning, and onward only by a TPM holding such a server's key;
//! after a motherboard swap the server re-wraps it for the new TPM and every sealed key works
//! again. Its private part never leaves a TPM.
//!
//! At boot, `lifeline unlock` ([`unlock`]) tries the TPM, then a DRSK restore the server has
//! approved, then recovery: it shows a recovery ID, files a request, and at one prompt takes
//! the passphrase or the OTP while it polls the server and removable media for the packet.
//! Whatever fails, it steps aside with an exit code and the distribution's own prompt runs.
//! The shell glue in `dracut/`, `initramfs-tools/` and `mkinitcpio/` runs it before the
//! distribution's unlock step; `qemu-tests/` boots it (docs/INITRAMFS.md).
//!
//! # Threat model
//!
//! - Stolen escrow packets reveal nothing without the authority's identity, which is stored
//!   encrypted under the administrator passphrase and decrypted only for an approval.
//! - A stolen recovery packet is protected by the OTP: 64 bits by default behind age's scrypt
//!   KDF (work factor 18), bound to one machine and volume, with an expiry.
//! - A forged or altered recovery packet is refused before anyone types a code: the binding is
//!   in minisign's signed trusted comment.
//! - Whoever controls a client's TPM (even with the owner authorization) cannot export the
//!   DRSK to a key of their own; the TPM enforces it.
//! - Secrets are zeroized, never logged, never `Debug`-printed, never written unencrypted.
//!   Copies that third-party crates make are theirs and not wiped: the HTTP stacks' header
//!   and body buffers, the hmac crate's state for the key fingerprint.
//!
//! # Modules
//!
//! - [`secret`]: every secret type.
//! - [`api`]: the escrow server's HTTPS API — routes, requests, answers — as both sides use it.
//! - [`escrow`]: packet formats, the plaintext record, the OTP codec, the HTTPS client and
//!   removable media as sources of packets.
//! - [`luks`]: libcryptsetup adapter (volume key, keyslots, tokens, activation).
//! - [`unlock`]: the boot flow behind narrow traits, with fakes for its scenario tests;
//!   [`config`]: its `lifeline.toml` and `rd.lifeline.*` settings.
//! - [`tpm`]: tss-esapi adapter (`tpm/tss/`, a file per job), policy digests, the
//!   `lifeline-tpm2` token and where a volume keeps it, DRSK files.
//! - [`prompt`]: asking a person for secrets (console, systemd's agents, plymouth).
//! - [`cmd`]: the subcommands of both binaries, their exit codes and failures (`cmd/exit.rs`)
//!   and what a person hands them (`cmd/input.rs`).
//! - [`id`]: client IDs, machine IDs, volume UUIDs and packet IDs, each checked once where it
//!   is read (they end up in URLs, paths on removable media and on the boot screen).
//! - [`atomic_file`], [`input`], [`hex`]: files written whole or not at all; files read only
//!   when regular and small; hex for the text formats.
//! - `server` (feature `server`): the recovery authority, DRSK custody, and the HTTPS
//!   escrow server: `server/http/` (axum + rustls, a file per audience) over `server/store/`
//!   (SQLite, or PostgreSQL for several instances, with group commit and a hash-chained
//!   audit log, a file per entity, behind one `Store` type).

#![forbid(unsafe_code)]

pub mod api;
pub mod atomic_file;
pub mod cmd;
pub mod config;
pub mod escrow;
pub mod hex;
pub mod id;
pub mod input;
pub mod luks;
pub mod prompt;
pub mod secret;
#[cfg(feature = "server")]
pub mod server;
pub mod tpm;
pub mod unlock;
