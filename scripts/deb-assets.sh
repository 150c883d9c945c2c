#!/usr/bin/env bash
# Writes what the Debian package carries besides the binaries into DIR/deb: the manual pages
# (gzipped, as Debian policy wants them) and the shell completions, each rendered by the binary
# in DIR from its own clap definitions, and the default plugins' builds (`make plugins`; the
# test plugins beside them stay out). `make package` runs it on the release folder, the
# package test on a folder holding the debug binaries.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:?usage: deb-assets.sh TARGET_PROFILE_DIR}"
out="$dir/deb"
rm -rf "$out"
mkdir -p "$out/man" "$out/completions" "$out/plugins"
for p in spd_selectors security_group alarm_notify; do
    cp "$ROOT/plugins/target/wasm32-wasip2/release/$p.wasm" "$out/plugins/"
done
"$dir/isthmusd" --man-page "$out/man"
"$dir/isthmus" man-pages "$out/man"
# -n: no name or time stamp in the gzip header, so the package is reproducible.
gzip -9n "$out"/man/*.[18]
"$dir/isthmus" completions bash >"$out/completions/isthmus.bash"
"$dir/isthmus" completions zsh >"$out/completions/_isthmus"
"$dir/isthmus" completions fish >"$out/completions/isthmus.fish"
