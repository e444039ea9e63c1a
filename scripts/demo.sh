#!/bin/sh
# make demo: the whole story on one laptop booted in QEMU, narrated (two minutes once built):
# a forgotten passphrase recovered through the escrow server with a one-time password (typed
# for you, or by you with INTERACTIVE=1), unattended boots with the TPM, and a motherboard swap.
# Everything runs in scratch directories and on 127.0.0.1; the consoles are kept in
# target/tmp/qemu/logs/demo-demo/.
set -eu
cd "$(dirname "$0")/.."
exec cargo test --all-features --test qemu -- --ignored --exact demo::demo --nocapture --test-threads=1
