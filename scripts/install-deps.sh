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
"

missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done

if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages:$missing; run as root (or install them) and try again" >&2
    exit 1
  fi
  echo "install-deps: installing$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends $missing
fi

command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] || {
  echo "install-deps: cargo (Rust 1.85 or newer) is needed; install it with rustup" >&2
  exit 1
}
