#!/usr/bin/env bash
# Publishing into object storage: `gapferry import --mirror s3://...` of a
# 1 GiB bundle into a single-node Garage on loopback, against `rclone copy`
# of the same files (the mirror tree the import produces) into the same
# store. Alternating, in one run; prints medians, the ratio (goal <= 1.1)
# and gapferry's peak RSS. See docs/PERFORMANCE.md, "Publishing into
# object storage".
#
#   bench/s3.sh                 # 1 GiB payload (8 x 128 MiB), 5 rounds
#   bench/s3.sh --rounds 7 --no-build
#
# Needs a release build of garage (GAPFERRY_GARAGE or on PATH; `cargo
# install --locked garage --no-default-features --features
# bundled-libs,lmdb`, 10 to 15 minutes: the debug build .ci/run installs for
# the tests is several times slower and would measure itself) and rclone
# (apt-get install rclone).

usage() {
    echo "usage: bench/s3.sh [--size 1G|8G] [--rounds N] [--no-build]"
    usage_common
}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_common "$@"
GARAGE=${GAPFERRY_GARAGE:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}
[ -x "$GARAGE" ] || { echo "bench: needs garage (GAPFERRY_GARAGE)" >&2; exit 1; }
need rclone python3 awk openssl
ensure_time
build
make_download_folder
make_key

OUT=${BENCH_OUT:-$BENCH_DIR/out}
STATE=$BENCH_DIR/state
mkdir -p "$OUT" "$STATE"
BUNDLE=$OUT/gapferry-s3.tar.zst
TIMEV=$OUT/time-v-s3.txt
X=$OUT/s3-scratch
G=$OUT/garage
# shellcheck disable=SC2086
"$GAPFERRY" export --from "$DL" --secret-key "$KEYS/bench.key" --out "$BUNDLE" \
    --state-dir "$STATE" --force --quiet $GAPFERRY_EXPORT_ARGS

# The files the peer uploads: the mirror tree of the same bundle.
rm -rf "$X" "$G"; mkdir -p "$X/tree" "$G/meta" "$G/data"
"$GAPFERRY" import "$BUNDLE" --trust "$KEYS/bench.pub" --mirror "$X/tree" \
    --state-dir "$X/tree-state" --create --quiet

# A single-node Garage on loopback.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S3P=$(port); RPCP=$(port); WEBP=$(port); ADMP=$(port)
cat >"$G/garage.toml" <<TOML
metadata_dir = "$G/meta"
data_dir = "$G/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPCP"
rpc_public_addr = "127.0.0.1:$RPCP"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3P"
[s3_web]
bind_addr = "127.0.0.1:$WEBP"
root_domain = ".web.garage"
[admin]
api_bind_addr = "127.0.0.1:$ADMP"
TOML
"$GARAGE" -c "$G/garage.toml" server >"$G/log" 2>&1 &
GPID=$!
trap 'kill $GPID 2>/dev/null || true' EXIT
gc() { "$GARAGE" -c "$G/garage.toml" "$@"; }
for _ in $(seq 1 100); do gc status >/dev/null 2>&1 && break; sleep 0.1; done
NODE=$(gc node id -q | cut -d@ -f1)
gc layout assign -z dc1 -c 10G "$NODE" >/dev/null
gc layout apply --version 1 >/dev/null
gc bucket create mirror >/dev/null
KEYINFO=$(gc key create bench --show-secret 2>/dev/null || gc key create bench)
AK=$(echo "$KEYINFO" | awk '/Key ID/ { print $NF }')
SK=$(echo "$KEYINFO" | awk '/Secret key/ { print $NF }')
gc bucket allow --read --write mirror --key bench >/dev/null
export AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK AWS_REGION=garage
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3P
export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other \
    RCLONE_CONFIG_G_ENDPOINT=$AWS_ENDPOINT_URL RCLONE_CONFIG_G_REGION=garage \
    RCLONE_CONFIG_G_ACCESS_KEY_ID=$AK RCLONE_CONFIG_G_SECRET_ACCESS_KEY=$SK \
    RCLONE_CONFIG_G_FORCE_PATH_STYLE=true

peer_copy() {
    # AWS_CA_BUNDLE (set on some machines) makes rclone's S3 client refuse
    # its own HTTP transport; loopback HTTP needs no CA anyway.
    env -u AWS_CA_BUNDLE /usr/bin/time -v -o "$OUT/time-v-rclone.txt" \
        rclone copy "$X/tree" "g:mirror/peer-$1" --exclude '.gapferry*/**'
}
gapferry_s3() {
    rm -rf "$X/state-$1"
    /usr/bin/time -v -o "$TIMEV" "$GAPFERRY" import "$BUNDLE" --trust "$KEYS/bench.pub" \
        --mirror "s3://mirror/gf-$1" --state-dir "$X/state-$1" --s3-path-style --quiet
}

machine
echo "payload: 8 x $BENCH_FILE_MIB MiB in $DL; $ROUNDS rounds; garage $("$GARAGE" --version 2>/dev/null | head -1); $(rclone version | head -1)"
peer_copy warm; gapferry_s3 warm

declare -a tp tg rg
for r in $(seq 1 "$ROUNDS"); do
    order="peer gapferry"
    [ $((r % 2)) = 0 ] && order="gapferry peer"
    line="round $r:"
    for s in $order; do
        sync
        t0=$(now_ns)
        if [ "$s" = peer ]; then peer_copy "$r"; else gapferry_s3 "$r"; fi
        t=$(elapsed "$t0" "$(now_ns)")
        if [ "$s" = peer ]; then tp+=("$t"); else tg+=("$t"); rg+=("$(rss_kib "$TIMEV")"); fi
        line="$line $s ${t}s"
    done
    echo "$line"
done

pm=$(median "${tp[@]}"); gm=$(median "${tg[@]}"); k=$(max_of "${rg[@]}")
echo
echo "publish into Garage, $(( BENCH_FILE_MIB * 8 )) MiB payload, median of $ROUNDS:"
printf '  rclone copy (the mirror tree):      %ss  peak RSS %.1f MiB\n' "$pm" \
    "$(awk -v k="$(rss_kib "$OUT/time-v-rclone.txt")" 'BEGIN { print k / 1024 }')"
printf '  gapferry import --mirror s3://...:  %ss  ratio %s (goal <= 1.1)  peak RSS %.1f MiB\n' \
    "$gm" "$(ratio "$gm" "$pm")" "$(awk -v k="$k" 'BEGIN { print k / 1024 }')"
