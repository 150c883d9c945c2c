# The front door. Every target bootstraps first (idempotent, quiet when all is present).
SHELL := /bin/bash
CARGO ?= cargo
ARGS ?=
PLUGINS_WASM_DIR := plugins/target/wasm32-wasip2/release

.PHONY: bootstrap test lint fmt-check clippy deny plugins unit bench lab image package doc clean

bootstrap:
	@scripts/bootstrap.sh

## make test: everything CI runs. Root-only tests (network namespaces) run when invoked as root.
test: bootstrap lint plugins unit
	@echo "make test: all checks passed"

lint: fmt-check clippy doc deny

fmt-check: bootstrap
	$(CARGO) fmt --all --check
	cd plugins && $(CARGO) fmt --all --check

clippy: bootstrap
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd plugins && $(CARGO) clippy --all-targets -- -D warnings

doc: bootstrap
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet

# `cargo metadata` (which cargo-deny reads) resolves every platform's crates, and `cargo build`
# only downloads the host's: fetch them all first, or a fresh CARGO_HOME fails on windows-sys.
deny: bootstrap
	$(CARGO) fetch --quiet
	$(CARGO) deny --offline check licenses bans sources

plugins: bootstrap
	cd plugins && $(CARGO) build --release --quiet
	@ls $(PLUGINS_WASM_DIR)/*.wasm

unit: bootstrap plugins
	$(CARGO) test --workspace --no-fail-fast

## make bench: every benchmark; each result is one line `BENCH <name> <value> <unit>`.
bench: bootstrap plugins
	$(CARGO) bench --workspace --quiet 2>&1 | grep --line-buffered -E "^(BENCH|  )" ; \
		exit $${PIPESTATUS[0]}

lab: bootstrap
	$(CARGO) run --release --quiet -p isthmus-lab -- $(ARGS)

image: bootstrap
	$(CARGO) run --release --quiet -p isthmus-image -- $(ARGS)

## make package: the Debian package (target/debian/isthmus_*.deb); see docs/install.md.
# The plugins come first: isthmusd embeds their release builds. scripts/deb-assets.sh writes
# the manual pages and completions from the binaries just built.
package: bootstrap plugins
	$(CARGO) build --release --quiet -p isthmusd -p isthmus
	scripts/deb-assets.sh "$$($(CARGO) metadata --format-version 1 --no-deps \
		| sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release"
	$(CARGO) deb -p isthmusd --no-build --strip

clean:
	$(CARGO) clean
	cd plugins && $(CARGO) clean
