#!/bin/sh
# Installs what building, testing and the demo need on Debian 12, as root.
# Quick when everything is there already: apt runs only for missing packages.
set -eu

packages="
  build-essential pkg-config libclang-dev
  libcryptsetup-dev cryptsetup-bin
  libtss2-dev swtpm swtpm-tools tpm2-tools
  age minisign
  bsdutils e2fsprogs mount
  shellcheck busybox
  dracut-core dracut-network initramfs-tools cryptsetup-initramfs kmod cpio zstd dmsetup dosfstools mtools socat
  libarchive-tools python3-fusepy
  chromium chromium-driver libnss3-tools help2man lintian
  postgresql
"
# From bookworm-backports: bookworm's own qemu-system-x86 conflicts with the preinstalled
# qemu-utils 10.
backports="qemu-system-x86"

missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done

missing_backports=""
for p in $backports; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_backports="$missing_backports $p"
done

if [ -n "$missing$missing_backports" ] && [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing packages:$missing$missing_backports; run as root (or install them) and try again" >&2
  exit 1
fi

if [ -n "$missing_backports" ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/lifeline-backports.list
fi

if [ -n "$missing$missing_backports" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
fi

if [ -n "$missing" ]; then
  echo "install-deps: installing$missing" >&2
  # shellcheck disable=SC2086 # a list of package names
  apt-get install -y -q --no-install-recommends $missing
fi

if [ -n "$missing_backports" ]; then
  echo "install-deps: installing$missing_backports from bookworm-backports" >&2
  # shellcheck disable=SC2086 # a list of package names
  apt-get install -y -q --no-install-recommends -t bookworm-backports $missing_backports
fi

command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] || {
  echo "install-deps: cargo (Rust 1.85 or newer) is needed; install it with rustup" >&2
  exit 1
}
