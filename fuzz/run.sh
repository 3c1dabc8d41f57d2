#!/usr/bin/env bash
# Runs every fuzz target in turn for SECONDS each (default 60), or only the
# targets named after SECONDS.
#
#   fuzz/run.sh 1800                    # the issue's 30 minutes per target
#   fuzz/run.sh 1800 bundle manifest    # just these two
#
# Seeds fuzz/corpus/<target>/ first from bundles the tool makes and the
# hostile cases of the tests (tests/it/fuzz_seeds.rs). cargo-fuzz needs
# nightly-only flags: on a stable toolchain RUSTC_BOOTSTRAP=1 lets rustc
# accept them. Crashes land in fuzz/artifacts/<target>/; each one found must
# become a regression test in tests/ (see tests/it/regressions.rs).
set -euo pipefail

secs=${1:-60}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
all=(keys signature manifest bundle bundle_signed)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
    [[ " ${all[*]} " == *" $t "* ]] || {
        echo "fuzz/run.sh: no target '$t'; the targets are: ${all[*]}" >&2
        exit 2
    }
done

command -v cargo-fuzz >/dev/null || {
    echo "fuzz/run.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 1
}

mkdir -p "$here/corpus"
# Plain cargo here: RUSTC_BOOTSTRAP in the environment would make cargo
# rebuild the whole root target directory.
(cd "$root" && GAPFERRY_FUZZ_CORPUS="$here/corpus" \
    cargo test --test it fuzz_seeds:: -- --ignored --quiet >/dev/null)

cd "$here"
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz/run.sh: $t for ${secs}s" >&2
    # 2 GiB RSS and 64 MiB per allocation: the readers' own caps (16 MiB
    # manifest, 16 MiB zstd window) sit well inside; growth with a length
    # field instead of the input would trip them. 10 s per input is a hang.
    if ! cargo fuzz run -O "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -malloc_limit_mb=64 -max_len=262144 -print_final_stats=1; then
        echo "fuzz/run.sh: $t found a failure; see fuzz/artifacts/$t/" >&2
        status=1
    fi
done
exit $status
