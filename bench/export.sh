#!/usr/bin/env bash
# Export benchmark: gapferry export against the pipeline an admin would script
# (sha256sum over the files, then tar | zstd -T0 -3), on the same synthetic
# download folder, alternating, in one run. Prints medians, the ratio and
# gapferry's peak RSS. See docs/PERFORMANCE.md.
#
#   bench/export.sh                 # 8 x 128 MiB = 1 GiB, 5 rounds
#   bench/export.sh --size 8G       # 8 x 1 GiB: peak RSS must not grow
#   GAPFERRY_EXPORT_ARGS="--zstd-level -3" bench/export.sh --rounds 3

usage() {
    echo "usage: bench/export.sh [--size 1G|8G] [--rounds N] [--no-build]"
    usage_common
}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common "$@"
need zstd tar sha256sum python3 awk
ensure_time
build
make_download_folder
make_key

# Where bundles are written: the bench disk by default; BENCH_OUT=/dev/shm/x
# takes the disk out of the measurement (fsync is then free).
OUT=${BENCH_OUT:-$BENCH_DIR/out}
STATE=$BENCH_DIR/state
mkdir -p "$OUT" "$STATE"
PEER_BUNDLE=$OUT/peer.tar.zst
GF_BUNDLE=$OUT/gapferry.tar.zst
TIMEV=$OUT/time-v.txt

peer_export() {
    rm -f "$PEER_BUNDLE" "$OUT/SHA256SUMS"
    (cd "$DL" && find . -type f -print0 | sort -z | xargs -0 sha256sum >"$OUT/SHA256SUMS")
    tar -cf - -C "$DL" . | zstd -q -T0 "-$PEER_LEVEL" -o "$PEER_BUNDLE"
}

gapferry_export() {
    rm -f "$GF_BUNDLE"
    # shellcheck disable=SC2086
    /usr/bin/time -v -o "$TIMEV" "$GAPFERRY" export --from "$DL" \
        --secret-key "$KEYS/bench.key" --out "$GF_BUNDLE" --state-dir "$STATE" \
        --force --quiet $GAPFERRY_EXPORT_ARGS
}

payload_mib=$(( BENCH_FILE_MIB * 8 ))
machine
echo "output: $OUT ($(df -T "$OUT" | awk 'NR == 2 { print $2 }'))"
echo "payload: 8 x $BENCH_FILE_MIB MiB ($payload_mib MiB) in $DL; $ROUNDS rounds, alternating"
echo "gapferry: $GAPFERRY export ${GAPFERRY_EXPORT_ARGS:-(defaults)}"

# Warm-up: once each, untimed, so both start from the same page cache.
peer_export
gapferry_export

peer_t=(); peer_sync_t=(); gf_t=(); gf_rss=()
for r in $(seq 1 "$ROUNDS"); do
    # Alternate which side goes first, so neither always follows the other.
    for side in $( [ $((r % 2)) = 1 ] && echo "peer gf" || echo "gf peer"); do
        # Start from clean writeback: neither side pays for the other's
        # dirty pages. (The page cache itself stays warm for both.)
        sync
        t0=$(now_ns)
        if [ "$side" = peer ]; then peer_export; else gapferry_export; fi
        t1=$(now_ns)
        t=$(elapsed "$t0" "$t1")
        if [ "$side" = peer ]; then
            peer_t+=("$t")
            # What the peer would pay to be as durable as gapferry (untimed
            # above, reported separately).
            sync "$PEER_BUNDLE"
            peer_sync_t+=("$(elapsed "$t0" "$(now_ns)")")
        else
            gf_t+=("$t"); gf_rss+=("$(rss_kib "$TIMEV")")
        fi
    done
    printf 'round %d: peer %ss (+fsync %ss)  gapferry %ss  (gapferry peak RSS %d MiB)\n' \
        "$r" "${peer_t[-1]}" "${peer_sync_t[-1]}" "${gf_t[-1]}" $(( ${gf_rss[-1]} / 1024 ))
done

pm=$(median "${peer_t[@]}"); psm=$(median "${peer_sync_t[@]}")
gm=$(median "${gf_t[@]}"); rss=$(max_of "${gf_rss[@]}")
psize=$(stat -c %s "$PEER_BUNDLE"); gsize=$(stat -c %s "$GF_BUNDLE")
echo
echo "export, $payload_mib MiB payload, median of $ROUNDS:"
printf '  peer (sha256sum; tar | zstd -T0 -%s): %ss  bundle %d bytes\n' "$PEER_LEVEL" "$pm" "$psize"
printf '  gapferry export:                     %ss  bundle %d bytes\n' "$gm" "$gsize"
printf '  peer + fsync of its bundle:          %ss\n' "$psm"
printf '  ratio gapferry/peer: %s (goal <= 0.33); against peer + fsync: %s\n' \
    "$(ratio "$gm" "$pm")" "$(ratio "$gm" "$psm")"
printf '  gapferry peak RSS: %d KiB = %.1f MiB (max over rounds; goal <= 64 MiB)\n' "$rss" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')"
