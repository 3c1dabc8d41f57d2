#!/usr/bin/env bash
# Parity benchmark: split export of the same download folder into 64 MiB
# volumes three ways, alternating, in one run:
#   plain   gapferry export --split 64Mi
#   parity  gapferry export --split 64Mi --parity 2
#   peer    tar | zstd -T0 -3 | split -b 64M, then par2 create -r10
# and the rebuild of two lost volumes: gapferry repair against par2 repair
# (of a par2 set made with enough recovery data for two of the volumes:
# -r10 is less than two volumes of seventeen). Prints medians and ratios.
# See docs/PERFORMANCE.md, "Parity volumes".
#
#   bench/parity.sh                 # 8 x 128 MiB = 1 GiB, 3 rounds
#   bench/parity.sh --rounds 5
#   PEER=0 bench/parity.sh --rounds 5   # gapferry only (par2 takes minutes a round)

usage() {
    echo "usage: bench/parity.sh [--size 1G|8G] [--rounds N] [--no-build]"
    usage_common
}
ROUNDS=${ROUNDS:-3}
PEER=${PEER:-1}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common "$@"
need zstd tar split par2 python3 awk
ensure_time
build
make_download_folder
make_key

OUT=${BENCH_OUT:-$BENCH_DIR/parity}
STATE=$BENCH_DIR/state
VOL=64Mi
mkdir -p "$OUT/plain" "$OUT/parity" "$OUT/peer" "$OUT/peer-repair" "$STATE"
TIMEV=$OUT/time-v.txt

gf_split() { # dir extra...
    local dir=$1; shift
    rm -f "$dir"/b.tar.zst*
    /usr/bin/time -v -o "$TIMEV" "$GAPFERRY" export --from "$DL" \
        --secret-key "$KEYS/bench.key" --out "$dir/b.tar.zst" --state-dir "$STATE" \
        --split "$VOL" --force --quiet "$@"
}

peer_split() { # dir redundancy
    local dir=$1 r=$2
    rm -f "$dir"/peer.*
    tar -cf - -C "$DL" . | zstd -q -T0 -3 | split -b 64M - "$dir/peer.tar.zst."
    par2 create -q -q "-r$r" "$dir/peer.par2" "$dir"/peer.tar.zst.* >/dev/null
}

payload_mib=$(( BENCH_FILE_MIB * 8 ))
machine
echo "output: $OUT ($(df -T "$OUT" | awk 'NR == 2 { print $2 }'))"
echo "payload: 8 x $BENCH_FILE_MIB MiB ($payload_mib MiB) in $DL; volumes of $VOL; $ROUNDS rounds, alternating"
echo "par2: $(par2 --version 2>&1 | head -n 1)"

# Warm-up, untimed: each once, from the same page cache.
gf_split "$OUT/plain"
gf_split "$OUT/parity" --parity 2
[ "$PEER" = 1 ] && peer_split "$OUT/peer" 10

plain_t=(); parity_t=(); peer_t=(); parity_rss=()
for r in $(seq 1 "$ROUNDS"); do
    order="plain parity peer"
    [ $((r % 2)) = 0 ] && order="peer parity plain"
    [ "$PEER" = 1 ] || peer_t+=("-")
    for side in $order; do
        [ "$side" = peer ] && [ "$PEER" != 1 ] && continue
        # The last round's output goes before the clock starts: deleting a
        # GiB of files is not part of an export.
        case $side in
            plain) rm -f "$OUT/plain"/b.tar.zst* ;;
            parity) rm -f "$OUT/parity"/b.tar.zst* ;;
            peer) rm -f "$OUT/peer"/peer.* ;;
        esac
        sync
        t0=$(now_ns)
        case $side in
            plain) gf_split "$OUT/plain" ;;
            parity) gf_split "$OUT/parity" --parity 2 ;;
            peer) peer_split "$OUT/peer" 10 ;;
        esac
        t=$(elapsed "$t0" "$(now_ns)")
        case $side in
            plain) plain_t+=("$t") ;;
            parity) parity_t+=("$t"); parity_rss+=("$(rss_kib "$TIMEV")") ;;
            peer) peer_t+=("$t") ;;
        esac
    done
    printf 'export round %d: plain %ss  parity %ss  peer %ss  (parity peak RSS %d MiB)\n' \
        "$r" "${plain_t[-1]}" "${parity_t[-1]}" "${peer_t[-1]}" $(( ${parity_rss[-1]} / 1024 ))
done

# Rebuild: two lost volumes (the 3rd and the 7th) each round.
nvol=$(ls "$OUT/parity"/b.tar.zst.[0-9][0-9][0-9] | wc -l)
t0=$(now_ns)
[ "$PEER" = 1 ] && peer_split "$OUT/peer-repair" 13
peer_repair_create=$(elapsed "$t0" "$(now_ns)")
peer_lost=("$OUT/peer-repair/peer.tar.zst.ac" "$OUT/peer-repair/peer.tar.zst.ag")
gf_lost=("$OUT/parity/b.tar.zst.003" "$OUT/parity/b.tar.zst.007")
gf_rep_t=(); peer_rep_t=(); rep_rss=()
for r in $(seq 1 "$ROUNDS"); do
    [ "$PEER" = 1 ] || peer_rep_t+=("-")
    for side in $( [ $((r % 2)) = 1 ] && echo "gf peer" || echo "peer gf"); do
        [ "$side" = peer ] && [ "$PEER" != 1 ] && continue
        sync
        if [ "$side" = gf ]; then
            rm -f "${gf_lost[@]}"
            t0=$(now_ns)
            /usr/bin/time -v -o "$TIMEV" "$GAPFERRY" repair "$OUT/parity" \
                --trust "$KEYS/bench.pub" --quiet
            gf_rep_t+=("$(elapsed "$t0" "$(now_ns)")"); rep_rss+=("$(rss_kib "$TIMEV")")
        else
            rm -f "${peer_lost[@]}"
            t0=$(now_ns)
            par2 repair -q -q "$OUT/peer-repair/peer.par2" >/dev/null
            peer_rep_t+=("$(elapsed "$t0" "$(now_ns)")")
            rm -f "$OUT/peer-repair"/*.1
        fi
    done
    printf 'repair round %d: gapferry %ss  par2 %ss  (gapferry peak RSS %d MiB)\n' \
        "$r" "${gf_rep_t[-1]}" "${peer_rep_t[-1]}" $(( ${rep_rss[-1]} / 1024 ))
done

if [ "$PEER" != 1 ]; then peer_t=(1); peer_rep_t=(1); fi
pm=$(median "${plain_t[@]}"); qm=$(median "${parity_t[@]}"); xm=$(median "${peer_t[@]}")
gr=$(median "${gf_rep_t[@]}"); xr=$(median "${peer_rep_t[@]}")
psize=$(du -cb "$OUT/parity"/b.tar.zst.p* | tail -n 1 | cut -f1)
xsize=$( { du -cb "$OUT/peer"/peer*.par2 2>/dev/null || true; } | tail -n 1 | cut -f1)
xsize=${xsize:-0}
echo
echo "split export, $payload_mib MiB payload, $nvol volumes of $VOL, median of $ROUNDS:"
printf '  gapferry --split:                       %ss\n' "$pm"
printf '  gapferry --split --parity 2:            %ss  (parity %d bytes)\n' "$qm" "$psize"
printf '  tar | zstd -3 | split; par2 create -r10: %ss  (par2 files %d bytes)\n' "$xm" "$xsize"
printf '  parity over plain: %s (goal <= 1.15); parity/peer: %s\n' \
    "$(ratio "$qm" "$pm")" "$(ratio "$qm" "$xm")"
printf '  gapferry --parity 2 peak RSS: %d MiB (max over rounds)\n' $(( $(max_of "${parity_rss[@]}") / 1024 ))
echo "rebuild of two lost volumes, median of $ROUNDS:"
printf '  gapferry repair:  %ss  (peak RSS %d MiB)\n' "$gr" $(( $(max_of "${rep_rss[@]}") / 1024 ))
printf '  par2 repair:      %ss  (its set made with -r13 in %ss)\n' "$xr" "$peer_repair_create"
printf '  ratio gapferry/par2: %s (goal <= 0.25)\n' "$(ratio "$gr" "$xr")"
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg) (at the start: see machine above)"
[ "$PEER" = 1 ] || echo "(PEER=0: the peer figures above are placeholders, not measured)"
