#!/usr/bin/env bash
# bench/profile.sh: where the server's CPU goes per handshake. Starts onetrip with
# KEYS keys (default 10,000) on core 0, drives it with pre-built handshakes from core 1, samples the
# server with `perf record` (DWARF call graphs) during the run, and prints the
# server CPU per answer, a flat profile and the inclusive cost of the main stages.
#
#   bench/profile.sh [SECONDS]        # default 8; needs perf (apt-get install linux-perf)
#   KEYS=1000000 bench/profile.sh     # the flat-cost case (waits for the key cache to warm)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${1:-8}
KEYS=${KEYS:-10000}
WORK=$(mktemp -d /tmp/onetrip-profile.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK/data"
}
trap cleanup EXIT

if ! command -v perf >/dev/null; then
  apt-get update -qq && (apt-get install -y -qq linux-perf >/dev/null || apt-get install -y -qq linux-tools-generic >/dev/null)
fi
(cd "$ROOT" && cargo build --release -q -p onetrip-server -p onetrip-load)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
ONETRIP=$TARGET/release/onetrip
LOAD=$TARGET/release/onetrip-load
if (($(nproc) >= 2)); then SRV=(taskset -c 0); LDR=(taskset -c 1); else SRV=(); LDR=(); fi

"$LOAD" gen-keys --data-dir "$WORK/data" --count "$KEYS" --out "$WORK/keys.txt" >/dev/null
"${SRV[@]}" "$ONETRIP" serve --data-dir "$WORK/data" --listen 127.0.0.1:0 --auth-rate-per-ip 100000000 --max-connections-per-ip 1024 \
  --replay-cache-capacity 4000000 --log warn >"$WORK/server.out" 2>"$WORK/server.err" &
SPID=$!
PIDS+=("$SPID")
for _ in $(seq 1 500); do grep -q 'listening on' "$WORK/server.out" && break; sleep 0.02; done
URL=$(grep -o 'http://[0-9.:]*' "$WORK/server.out" | head -1)
FP=$(grep -o 'SHA256:[^ ]*' "$WORK/server.out" | head -1)
# Profile the steady state: every key's static-static computed (35 s for 1M keys).
"$LOAD" wait-warm --url "$URL" --timeout 600 >/dev/null

# Pool: enough pre-built requests for warm-up + SECS at ~30k/s.
"${LDR[@]}" "$LOAD" handshake --url "$URL" --keys "$WORK/keys.txt" --fingerprint "$FP" --connections 128 \
  --threads 1 --seconds $((SECS + 4)) --pregenerate $(((SECS + 4) * 30000)) --server-pid "$SPID" \
  >"$WORK/load.out" 2>"$WORK/load.err" &
LPID=$!
PIDS+=("$LPID")
# Wait for the pool to be built, then 2 s of warm-up.
until grep -q 'pre-generated' "$WORK/load.err" 2>/dev/null; do sleep 0.2; done
sleep 2
perf record -q -F 1999 -g --call-graph dwarf,16384 -p "$SPID" -o "$WORK/perf.data" -- sleep "$SECS" 2>/dev/null
wait "$LPID" || true
grep -v '^RESULT' "$WORK/load.out"

report() { perf report -i "$WORK/perf.data" --stdio "$@" 2>/dev/null | grep -v '^#' | grep -v '^$'; }
echo
echo "== self time by DSO"
report --no-children --sort dso -g none | head -8
echo
echo "== self time by symbol (>= 0.5%)"
report --no-children --sort symbol -g none --percent-limit 0.5 | sed 's/ *- *- *$//' | cut -c1-110
echo
echo "== inclusive time of the stages"
report --children --sort symbol -g none | awk '{print $1, $4}' |
  grep -E ' (onetrip_protocol::handshake::server::Responder<B>::open_request|<onetrip_protocol::backend::aws_lc::AwsLc as onetrip_protocol::backend::CryptoBackend>::x25519|onetrip_protocol::handshake::server::Authenticated<B>::respond|onetrip_protocol::token::TokenVerifier<B>::seal|onetrip_server::keys::KeyDirectory::static_static|hyper::proto::h1::io::Buffered<T,B>::parse|__GI___writev|__libc_read|epoll_wait|_blake3_compress_in_place_avx512|chacha20_poly1305_seal_avx2|chacha20_poly1305_open_avx2|malloc|_int_free|cfree|sock_def_readable|onetrip_server::handshake::handle_auth::\{\{closure\}\}|onetrip_server::http::route::\{\{closure\}\})$' |
  head -30
echo
echo "perf data: $WORK/perf.data"
