# Shared helpers for bench/export.sh and bench/import.sh (sourced, not run).
# Bench data lives outside the repository: $BENCH_DIR (default /work/bench-data).

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/work/bench-data}
BENCH_FILE_MIB=${BENCH_FILE_MIB:-128}
ROUNDS=${ROUNDS:-5}
GAPFERRY=${GAPFERRY:-$REPO/target/release/gapferry}
# Extra flags for `gapferry export` (e.g. "--zstd-level -3"), word-split on purpose.
GAPFERRY_EXPORT_ARGS=${GAPFERRY_EXPORT_ARGS:-}
PEER_LEVEL=${PEER_LEVEL:-3}

usage_common() {
    cat <<USAGE
  --size SIZE     total payload: 1G (default, 8 x 128 MiB) or e.g. 8G (8 x 1 GiB);
                  same as BENCH_FILE_MIB=<per-file MiB>
  --rounds N      timed rounds of each side (default 5; ROUNDS=N)
  --no-build      do not run cargo build --release first
Environment: BENCH_DIR (default /work/bench-data), GAPFERRY (binary),
  GAPFERRY_EXPORT_ARGS (extra export flags, e.g. "--zstd-level -3").
USAGE
}

NO_BUILD=0
parse_common() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --size)
                local s=${2:?--size needs a value like 1G or 8G}
                s=${s%iB}; s=${s%B}
                case "$s" in
                    *G|*g) BENCH_FILE_MIB=$(( ${s%[Gg]} * 1024 / 8 )) ;;
                    *M|*m) BENCH_FILE_MIB=$(( ${s%[Mm]} / 8 )) ;;
                    *) echo "--size: use e.g. 1G, 8G or 512M" >&2; exit 2 ;;
                esac
                shift 2 ;;
            --rounds) ROUNDS=${2:?}; shift 2 ;;
            --no-build) NO_BUILD=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
        esac
    done
}

need() {
    for t in "$@"; do
        command -v "$t" >/dev/null || { echo "bench: needs $t" >&2; exit 1; }
    done
}

ensure_time() {
    if [ ! -x /usr/bin/time ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "bench: installing GNU time" >&2
            apt-get install -y -q time >/dev/null
        else
            echo "bench: needs GNU time at /usr/bin/time (apt-get install time)" >&2
            exit 1
        fi
    fi
}

build() {
    if [ "$NO_BUILD" = 0 ]; then
        (cd "$REPO" && cargo build --release --quiet)
    fi
    [ -x "$GAPFERRY" ] || { echo "bench: no binary at $GAPFERRY" >&2; exit 1; }
}

# Builds (once, cached) a download folder of 8 random, structurally valid
# updates.zip files of BENCH_FILE_MIB MiB each, laid out as Microsoft's
# downloader leaves them. Sets DL.
make_download_folder() {
    DL=$BENCH_DIR/download-${BENCH_FILE_MIB}m
    if [ -f "$DL.complete" ]; then
        return
    fi
    echo "bench: generating $DL (8 x $BENCH_FILE_MIB MiB of random zips, once)" >&2
    rm -rf "$DL"
    mkdir -p "$DL"
    python3 - "$DL" "$BENCH_FILE_MIB" <<'PY'
import os, sys, zipfile
root, mib = sys.argv[1], int(sys.argv[2])
# A stored (uncompressed) zip whose member is random bytes: incompressible,
# like real updates.zip files, and it passes export's zip structure check.
size = mib * 1024 * 1024 - 4096  # leave room for zip headers
for platform in ("linux", "mac"):
    for ring in ("production", "preview"):
        for arch in ("x86_64", "arm64"):
            d = os.path.join(root, platform, ring, "arch_" + arch)
            os.makedirs(d)
            with zipfile.ZipFile(os.path.join(d, "updates.zip"), "w",
                                 compression=zipfile.ZIP_STORED, allowZip64=True) as z:
                with z.open("mpavbase.vdm", "w", force_zip64=True) as m:
                    left = size
                    while left:
                        n = min(left, 8 << 20)
                        m.write(os.urandom(n))
                        left -= n
            with open(os.path.join(d, "manifest.json"), "w") as f:
                f.write('{"EngineVersion": "1.1.24090.4", "DefinitionVersion": "1.419.1.0"}\n')
PY
    touch "$DL.complete"
}

make_key() {
    KEYS=$BENCH_DIR/keys
    if [ ! -f "$KEYS/bench.key" ]; then
        mkdir -p "$KEYS"
        "$GAPFERRY" keygen --secret-key "$KEYS/bench.key" --public-key "$KEYS/bench.pub" \
            --unencrypted --force >/dev/null 2>&1
    fi
}

now_ns() { date +%s%N; }

# seconds (3 decimals) between two now_ns stamps
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
max_of() { printf '%s\n' "$@" | sort -g | tail -n 1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

# Peak RSS in KiB from a `/usr/bin/time -v` report.
rss_kib() { awk -F': ' '/Maximum resident set size/ { print $2 }' "$1"; }

machine() {
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/ { print $2 }') GiB RAM, load $(cut -d' ' -f1-3 /proc/loadavg)"
}
