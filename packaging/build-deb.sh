#!/usr/bin/env bash
# Builds a .deb with the binary, man pages, shell completions and systemd
# units: release build, generate the man pages and completions from the
# clap definitions, then package with cargo-deb (`cargo install cargo-deb`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
rm -rf target/assets
target/release/gapferry generate man --out target/assets/man
target/release/gapferry generate completions bash zsh fish --out target/assets/completions
gzip -9n target/assets/man/*.1
cargo deb --no-build "$@"
