# The two commands of the README's quick start.
#   make demo   the recovery story, end to end, narrated, booting a laptop in QEMU
#   make test   every test
# Both install what they need (Debian 12, as root).

CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all deps build release test fuzz demo demo-offline screenshots clean

all: build

deps:
	./scripts/install-deps.sh

build: deps
	$(CARGO) build --all-features

release: deps
	$(CARGO) build --release --all-features

# Formatting and lints first (they fail fastest), the tests, the client binary's size budget,
# then every fuzz target briefly: one that stops building or crashes on its seeds fails here.
test: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --all-features -- -D warnings
	$(CARGO) test --all-features
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

clean:
	$(CARGO) clean
