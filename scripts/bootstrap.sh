#!/usr/bin/env bash
# Installs what the tests, benchmarks and lab need on a fresh Debian 12 machine that has the Rust
# toolchain. Idempotent and quiet when everything is present: each step checks before it installs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"   # rust-toolchain.toml decides which toolchain gets the targets
TOOLS="$ROOT/.tools"            # private, git-ignored: unpacked QEMU lives here
QEMU_DIR="$TOOLS/qemu"

say() { echo "bootstrap: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages the tests and the lab need. Checked by package status, so a present set costs one
# dpkg-query call.
PKGS=(
    iproute2 nftables tcpdump iperf3 iputils-ping
    strongswan-charon strongswan-swanctl libcharon-extra-plugins
    libstrongswan-standard-plugins libstrongswan-extra-plugins
    ovmf mtools dosfstools gdisk e2fsprogs cpio systemd-boot-efi busybox-static
    qemu-system-data seabios ipxe-qemu
    zstd binutils kmod musl-tools
    lintian
)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        as_root apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
}

if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    say "installing ${missing[*]}"
    # charon must not start as a service: tests run their own instances in namespaces.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# QEMU: `apt-get install qemu-system-x86` would replace the machine's newer qemu-utils, so the two
# packages are unpacked into a private folder with the firmware linked next to the binary.
if [ ! -x "$QEMU_DIR/usr/bin/qemu-system-x86_64" ]; then
    apt_update_once
    say "unpacking qemu-system-x86 into $QEMU_DIR"
    tmp="$(mktemp -d)"
    chmod 755 "$tmp"   # apt downloads as the _apt user
    (cd "$tmp" && apt-get download -qq qemu-system-x86 qemu-system-common >/dev/null)
    mkdir -p "$QEMU_DIR"
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$QEMU_DIR"; done
    rm -rf "$tmp"
    # QEMU looks for its firmware in ../share/qemu relative to the binary; the unpacked package
    # may already hold that folder, so link the installed firmware files into it one by one.
    mkdir -p "$QEMU_DIR/usr/share/qemu"
    cp -rsn /usr/share/qemu/. "$QEMU_DIR/usr/share/qemu/" 2>/dev/null || true
    ln -sfn /usr/share/seabios "$QEMU_DIR/usr/share/seabios"
fi
# Its shared libraries come from Debian normally (they do not touch qemu-utils).
if ldd "$QEMU_DIR/usr/bin/qemu-system-x86_64" | grep -q "not found"; then
    apt_update_once
    libs="$(apt-cache depends qemu-system-x86 qemu-system-common \
        | awk '/Depends: lib/ {print $2}' | sort -u | tr '\n' ' ')"
    say "installing QEMU's libraries"
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $libs >/dev/null
fi

# Rust targets: plugins are wasm32-wasip2 components; the image's PID 1 is a static musl binary.
installed_targets="$(rustup target list --installed)"
for t in wasm32-wasip2 x86_64-unknown-linux-musl; do
    if ! grep -qx "$t" <<<"$installed_targets"; then
        say "rustup target add $t"
        rustup target add "$t" >/dev/null 2>&1
    fi
done
for c in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
        say "rustup component add $c"
        rustup component add "$c" >/dev/null 2>&1
    fi
done

# cargo-deny checks licences, bans and sources in `make test`.
if ! cargo deny --version >/dev/null 2>&1; then
    say "cargo install cargo-deny (a few minutes, once)"
    cargo install --locked --quiet cargo-deny
fi
# cargo-deb builds the Debian package (`make package`, and the package test). Pinned: the
# package's layout and maintainer scripts are its output.
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    say "cargo install cargo-deb $CARGO_DEB_VERSION (a few minutes, once)"
    cargo install --locked --quiet "cargo-deb@$CARGO_DEB_VERSION"
fi
