# The two commands of the README's quick start.
#   make demo   the recovery story, end to end, narrated, booting a laptop in QEMU
#   make test   every test
# Both install what they need (Debian 12, as root).

CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

# make install: PREFIX for the binaries, man pages and completions; the generators' and
# systemd's directories are where those tools look, whatever PREFIX says. DESTDIR stages it.
PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
DOCDIR ?= $(PREFIX)/share/doc/lifeline
DRACUTDIR ?= /usr/lib/dracut/modules.d
INITRAMFSTOOLSDIR ?= /usr/share/initramfs-tools
INITCPIODIR ?= /usr/lib/initcpio
# What mkinitcpio's hooks copy into the image from the host.
LIBDIR ?= /usr/lib/lifeline
UNITDIR ?= /usr/lib/systemd/system
SYSCONFDIR ?= /etc
# Where install-files takes the binaries from (install builds them in target/release).
BUILT ?= target/release

.PHONY: all deps build release test fuzz demo demo-offline screenshots install install-files deb clean

all: build

deps:
	./scripts/install-deps.sh

build: deps
	$(CARGO) build --all-features

release: deps
	$(CARGO) build --release --all-features

# Formatting and lints first (they fail fastest), the tests, every test that starts a server
# again with its database on PostgreSQL (tests/support/pg.rs), the client binary's size
# budget, then every fuzz target briefly: one that stops building or crashes on its seeds
# fails here.
test: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --all-features -- -D warnings
	$(CARGO) test --all-features
	LIFELINE_TEST_DATABASE=postgresql $(CARGO) test --all-features --test tests -- \
		server:: status:: approvals:: console:: unlock:: \
		--skip two_instances_on_one_postgresql --skip the_packet_limit_holds_across_instances
	./scripts/check-size.sh
	FUZZ_SECONDS=3 ./scripts/fuzz.sh

# Each fuzz target for FUZZ_SECONDS (default 300); figures in docs/benchmarks.md.
fuzz: deps
	./scripts/fuzz.sh

demo: deps
	./scripts/demo.sh

# The web console's pages, as the tests' Chromium sees them, into docs/screenshots/.
screenshots: deps
	LIFELINE_SCREENSHOTS=docs/screenshots $(CARGO) test --all-features --test tests -- console approvals drsk_backup

demo-offline: release
	./scripts/demo-offline.sh

# The client as the initramfs gets it (default features: only the device TCTI), the server
# with its feature.
install: deps
	$(CARGO) build --release --bin lifeline
	$(CARGO) build --release --features server --bin lifeline-server
	$(MAKE) install-files

install-files:
	install -D -m 0755 $(BUILT)/lifeline $(DESTDIR)$(SBINDIR)/lifeline
	install -D -m 0755 $(BUILT)/lifeline-server $(DESTDIR)$(SBINDIR)/lifeline-server
	install -d $(DESTDIR)$(DRACUTDIR)/90lifeline
	install -m 0755 dracut/90lifeline/module-setup.sh dracut/90lifeline/lifeline-unlock.sh $(DESTDIR)$(DRACUTDIR)/90lifeline/
	install -m 0644 dracut/90lifeline/lifeline-unlock.service dracut/90lifeline/lifeline-cryptsetup.conf $(DESTDIR)$(DRACUTDIR)/90lifeline/
	install -D -m 0755 initramfs-tools/hooks/lifeline $(DESTDIR)$(INITRAMFSTOOLSDIR)/hooks/lifeline
	install -D -m 0755 initramfs-tools/scripts/init-premount/lifeline $(DESTDIR)$(INITRAMFSTOOLSDIR)/scripts/init-premount/lifeline
	install -D -m 0644 mkinitcpio/install/lifeline $(DESTDIR)$(INITCPIODIR)/install/lifeline
	install -D -m 0644 mkinitcpio/install/sd-lifeline $(DESTDIR)$(INITCPIODIR)/install/sd-lifeline
	install -D -m 0644 mkinitcpio/hooks/lifeline $(DESTDIR)$(INITCPIODIR)/hooks/lifeline
	install -D -m 0644 mkinitcpio/lifeline-unlock.service $(DESTDIR)$(LIBDIR)/lifeline-unlock.service
	install -D -m 0755 mkinitcpio/udhcpc $(DESTDIR)$(LIBDIR)/udhcpc
	install -d $(DESTDIR)$(UNITDIR)
	for u in lifeline-server.service lifeline-status.service lifeline-status.timer; do \
	  sed 's|@SBINDIR@|$(SBINDIR)|g' contrib/$$u > $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	install -D -m 0644 etc/lifeline.toml.example $(DESTDIR)$(SYSCONFDIR)/lifeline/lifeline.toml.example
	install -d $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(BASHCOMPDIR)
	for b in lifeline lifeline-server; do \
	  help2man --no-info --section 8 --version-string="$$($(BUILT)/$$b --version | cut -d' ' -f2)" \
	    --name "$$($(BUILT)/$$b --help | sed -n '3s/^[^:]*: //p' | cut -d. -f1)" $(BUILT)/$$b > $(DESTDIR)$(MANDIR)/man8/$$b.8 && \
	  ./scripts/completions.py $(BUILT)/$$b $$b > $(DESTDIR)$(BASHCOMPDIR)/$$b || exit 1; \
	done
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -m 0644 docs/*.md $(DESTDIR)$(DOCDIR)/

# lifeline and lifeline-server .deb packages in target/debian, checked by lintian.
deb: deps
	$(CARGO) build --release --bin lifeline
	$(CARGO) build --release --features server --bin lifeline-server
	./scripts/build-debs.sh target/release target/debian

clean:
	$(CARGO) clean
