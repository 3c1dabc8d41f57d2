#!/usr/bin/env bash
# Import-side benchmark: on the same bundles, the peer pipeline
# (zstd -d | tar -x, then sha256sum -c) against `gapferry verify` and, when the
# binary has it, `gapferry import` into a fresh mirror. Alternating, in one
# run; prints medians, ratios and gapferry's peak RSS. See docs/PERFORMANCE.md.
#
#   bench/import.sh                 # 1 GiB payload, 5 rounds
#   bench/import.sh --size 8G
#   BASELINE=/path/to/older/gapferry bench/import.sh   # also time that binary's import

usage() {
    echo "usage: bench/import.sh [--size 1G|8G] [--rounds N] [--no-build]"
    usage_common
}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common "$@"
need zstd tar sha256sum python3 awk
ensure_time
build
make_download_folder
make_key

OUT=${BENCH_OUT:-$BENCH_DIR/out}
STATE=$BENCH_DIR/state
mkdir -p "$OUT" "$STATE"
PEER_BUNDLE=$OUT/peer-import.tar.zst
GF_BUNDLE=$OUT/gapferry-import.tar.zst
TIMEV=$OUT/time-v-import.txt
X=$OUT/import-scratch

# The bundles under test, made once per run, as bench/export.sh makes them.
(cd "$DL" && find . -type f -print0 | sort -z | xargs -0 sha256sum >"$OUT/SHA256SUMS")
tar -cf - -C "$DL" . | zstd -q -f -T0 "-$PEER_LEVEL" -o "$PEER_BUNDLE"
# shellcheck disable=SC2086
"$GAPFERRY" export --from "$DL" --secret-key "$KEYS/bench.key" --out "$GF_BUNDLE" \
    --state-dir "$STATE" --force --quiet $GAPFERRY_EXPORT_ARGS

HAVE_IMPORT=0
if "$GAPFERRY" import --help >/dev/null 2>&1; then
    HAVE_IMPORT=1
fi

peer_import() {
    rm -rf "$X"; mkdir -p "$X/peer"
    zstd -q -dc "$PEER_BUNDLE" | tar -xf - -C "$X/peer"
    (cd "$X/peer" && sha256sum -c --quiet "$OUT/SHA256SUMS")
}

gapferry_verify() {
    /usr/bin/time -v -o "$TIMEV" "$GAPFERRY" verify "$GF_BUNDLE" --trust "$KEYS/bench.pub" --quiet
}

gapferry_import() {
    local bin=${1:-$GAPFERRY}
    rm -rf "$X"; mkdir -p "$X/mirror" "$X/state"
    /usr/bin/time -v -o "$TIMEV" "$bin" import "$GF_BUNDLE" --trust "$KEYS/bench.pub" \
        --mirror "$X/mirror" --state-dir "$X/state" --quiet
}

sides="peer verify"
[ "$HAVE_IMPORT" = 1 ] && sides="$sides import"
# An older build on the same bundle, to measure a change in one run.
[ -n "${BASELINE:-}" ] && sides="$sides baseline"

machine
echo "output: $OUT ($(df -T "$OUT" | awk 'NR == 2 { print $2 }'))"
echo "payload: 8 x $BENCH_FILE_MIB MiB in $DL; $ROUNDS rounds; sides: $sides"
[ "$HAVE_IMPORT" = 1 ] || echo "($GAPFERRY has no import subcommand yet: verify only)"

run_side() {
    case "$1" in
        peer) peer_import ;;
        verify) gapferry_verify ;;
        import) gapferry_import ;;
        baseline) gapferry_import "$BASELINE" ;;
    esac
}

# Warm-up, untimed.
for s in $sides; do run_side "$s"; done

declare -A times rss
for r in $(seq 1 "$ROUNDS"); do
    order=$sides
    [ $((r % 2)) = 0 ] && order=$(echo "$sides" | tr ' ' '\n' | tac | tr '\n' ' ')
    line="round $r:"
    for s in $order; do
        rm -rf "$X"
        sync
        t0=$(now_ns)
        run_side "$s"
        t=$(elapsed "$t0" "$(now_ns)")
        times[$s]="${times[$s]:-} $t"
        [ "$s" != peer ] && rss[$s]="${rss[$s]:-} $(rss_kib "$TIMEV")"
        line="$line $s ${t}s"
    done
    echo "$line"
done
rm -rf "$X"

# shellcheck disable=SC2086
pm=$(median ${times[peer]})
echo
echo "import side, $(( BENCH_FILE_MIB * 8 )) MiB payload, median of $ROUNDS:"
printf '  peer (zstd -d | tar -x; sha256sum -c): %ss\n' "$pm"
for s in $sides; do
    [ "$s" = peer ] && continue
    # shellcheck disable=SC2086
    m=$(median ${times[$s]}); k=$(max_of ${rss[$s]})
    printf '  gapferry %-7s %ss  ratio %s (goal <= 0.4)  peak RSS %.1f MiB\n' \
        "$s:" "$m" "$(ratio "$m" "$pm")" "$(awk -v k="$k" 'BEGIN { print k / 1024 }')"
done
