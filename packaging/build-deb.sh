#!/usr/bin/env bash
# Builds a .deb with the binary, man pages, shell completions and systemd
# units: release build, stage the stripped binary, the man pages and the
# completions in target/assets (packaging/stage-assets.sh), then package
# with cargo-deb (`cargo install cargo-deb`). Honours CARGO_TARGET_DIR for
# the build; the staged assets are always in ./target/assets, where
# Cargo.toml's [package.metadata.deb] finds them.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
cargo build --release --locked
packaging/stage-assets.sh "$target_dir/release/gapferry" target/assets
cargo deb --no-build "$@"
