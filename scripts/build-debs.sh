#!/bin/sh
# Builds the Debian packages lifeline and lifeline-server from the tree with dpkg-deb, from
# the files `make install-files` installs (without mkinitcpio's glue: Debian has no mkinitcpio)
# and the control files in debian/, then checks both with lintian. Usage: scripts/build-debs.sh [BUILT [OUT]]: the binaries from BUILT (default
# target/release), the packages into OUT (default target/debian).
set -eu
cd "$(dirname "$0")/.."
built=${1:-target/release}
out=${2:-target/debian}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
maintainer="lifeline maintainers <lifeline@example.org>"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
make -s install-files PREFIX=/usr DESTDIR="$stage/all" BUILT="$built"

# The packages of the shared libraries a binary links, for Depends.
depends() {
	ldd "$1" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p' | while read -r lib; do
		dpkg -S "$(readlink -f "$lib")" 2> /dev/null || dpkg -S "$lib"
	done | sed 's/:.*//' | sort -u | paste -sd, - | sed 's/,/, /g'
}

# Moves $1 (a path under the staged install) into package $2.
take() {
	mkdir -p "$stage/$2/$(dirname "$1")"
	mv "$stage/all/$1" "$stage/$2/$1"
}

docs() {
	pkg=$1
	doc=$stage/$pkg/usr/share/doc/$pkg
	mkdir -p "$doc"
	install -m 0644 debian/copyright "$doc/copyright"
	printf '%s (%s) unstable; urgency=medium\n\n  * Built from the lifeline tree.\n\n -- %s  %s\n' \
		"$pkg" "$version" "$maintainer" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2> /dev/null || date +%s)}")" |
		gzip -9n > "$doc/changelog.gz"
}

control() {
	pkg=$1 deps=$2 summary=$3 description=$4
	mkdir -p "$stage/$pkg/DEBIAN"
	for script in postinst postrm; do
		if [ -e "debian/$pkg.$script" ]; then
			install -m 0755 "debian/$pkg.$script" "$stage/$pkg/DEBIAN/$script"
		fi
	done
	size=$(du -sk --exclude=DEBIAN "$stage/$pkg" | cut -f1)
	{
		echo "Package: $pkg"
		echo "Version: $version"
		echo "Architecture: $arch"
		echo "Maintainer: $maintainer"
		echo "Installed-Size: $size"
		echo "Depends: $deps"
		echo "Section: admin"
		echo "Priority: optional"
		echo "Homepage: https://example.org/lifeline"
		echo "Description: $summary"
		echo "$description" | fold -s -w 78 | sed 's/ *$//; s/^/ /'
	} > "$stage/$pkg/DEBIAN/control"
	if [ -d "$stage/$pkg/etc" ]; then
		(cd "$stage/$pkg" && find etc -type f | sed 's|^|/|') > "$stage/$pkg/DEBIAN/conffiles"
	fi
}

for f in usr/sbin/lifeline-server usr/lib/systemd/system/lifeline-server.service \
	usr/share/man/man8/lifeline-server.8 usr/share/bash-completion/completions/lifeline-server; do
	take "$f" lifeline-server
done
take usr/share/doc/lifeline/SERVER.md lifeline-server
mkdir -p "$stage/lifeline-server/usr/share/doc/lifeline-server"
mv "$stage/lifeline-server/usr/share/doc/lifeline/SERVER.md" "$stage/lifeline-server/usr/share/doc/lifeline-server/"
rmdir "$stage/lifeline-server/usr/share/doc/lifeline"
# Debian has no mkinitcpio: its glue stays out of the packages.
rm -r "$stage/all/usr/lib/initcpio" "$stage/all/usr/lib/lifeline"
mv "$stage/all" "$stage/lifeline"
for pkg in lifeline lifeline-server; do
	find "$stage/$pkg/usr/sbin" -type f -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} +
	find "$stage/$pkg/usr/share/man" -type f -name '*.8' -exec gzip -9n {} +
	docs "$pkg"
done
gzip -9n "$stage"/lifeline/usr/share/doc/lifeline/*.md "$stage"/lifeline-server/usr/share/doc/lifeline-server/*.md
control lifeline "$(depends "$stage/lifeline/usr/sbin/lifeline"), libtss2-tcti-device0, cryptsetup-bin" \
	"never be locked out of a LUKS disk: TPM unlock with recovery" \
	"lifeline unlocks LUKS volumes at boot with the TPM through a storage key that can be restored after a motherboard swap, and when the TPM cannot help, recovers them with a packet from an escrow server (or a USB stick) and a one-time password read out by a helpdesk. This package has the client and its initramfs glue for initramfs-tools and dracut; nothing is added to an initramfs until /etc/lifeline/lifeline.toml exists."
control lifeline-server "$(depends "$stage/lifeline-server/usr/sbin/lifeline-server"), adduser" \
	"escrow server for lifeline recovery packets" \
	"lifeline-server keeps machines' escrowed LUKS volume keys encrypted, releases one-time-password recovery packets once an administrator approves (from the command line or its web console, with K-of-N shares or an authority kept off the server), and holds the machines' TPM storage keys in its own TPM for motherboard-swap restores. The service runs as the lifeline system user; it is not enabled until its directory is made."
mkdir -p "$out"
for pkg in lifeline lifeline-server; do
	find "$stage/$pkg" -type d -exec chmod 0755 {} +
	dpkg-deb --root-owner-group -Zxz --build "$stage/$pkg" "$out/${pkg}_${version}_${arch}.deb" > /dev/null
	echo "$out/${pkg}_${version}_${arch}.deb"
done
status=0
lintian --fail-on error,warning --suppress-tags-from-file debian/lintian-overrides \
	"$out/lifeline_${version}_${arch}.deb" "$out/lifeline-server_${version}_${arch}.deb" \
	> "$stage/lintian.txt" 2>&1 || status=$?
grep -v '^running with root privileges' "$stage/lintian.txt" || true
if [ "$status" != 0 ]; then
	echo "build-debs: lintian found the problems above" >&2
	exit 1
fi
echo "lintian: no errors or warnings"
