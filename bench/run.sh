#!/usr/bin/env bash
# bench/run.sh: builds in release mode and measures, in one run on this machine,
# onetrip against its physical limits (X25519, the hyper HTTP floor) and against
# reference servers (snow Noise IK, node oidc-provider), then prints one table with
# ratios and targets. See bench/README.md for what each row means.
#
#   bench/run.sh                      # everything, ~6-8 minutes after the build
#   BENCH_SECONDS=5 bench/run.sh      # shorter load runs
#
# Everything listens on 127.0.0.1 (ephemeral ports) and is stopped on exit.
# Environment: BENCH_SECONDS (10), BENCH_CONNECTIONS (32), BENCH_BIG_KEYS (1000000),
# BENCH_RSS_HANDSHAKES (1000000), BENCH_SKIP_CRITERION (unset), BENCH_OUT (a temp dir).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNECTIONS:-128}
BIG=${BENCH_BIG_KEYS:-1000000}
# The flat-cost sizes (section 8): small and mid beside BIG.
SMALL=1000
MID=100000
RSS_HS=${BENCH_RSS_HANDSHAKES:-1000000}
T0=$(date +%s)
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d /tmp/onetrip-bench.XXXXXX)
OUT=${BENCH_OUT:-$WORK/results}
mkdir -p "$OUT"
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  # Benchmark stores and their API key files (secrets of throw-away stores) go; results stay.
  rm -rf "$WORK/data" "$WORK"/keys-*.txt "$WORK/introspect.json" "$WORK/introspect.headers"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n== %s (t=%ds)\n' "$*" "$(($(date +%s) - T0))" >&2; }

# ---- tools -------------------------------------------------------------------
need_apt=()
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if ((${#need_apt[@]})); then
  say "installing ${need_apt[*]}"
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
say "npm ci (bench/oidc, committed lockfile)"
(cd "$ROOT/bench/oidc" && npm ci --no-audit --no-fund --silent >/dev/null)

# ---- build -------------------------------------------------------------------
say "cargo build --release"
B0=$(date +%s)
(cd "$ROOT" && cargo build --release -q -p onetrip-server -p onetrip-load)
if [[ -z ${BENCH_SKIP_CRITERION:-} ]]; then
  (cd "$ROOT" && cargo bench -q --no-run -p onetrip-protocol --bench handshake >/dev/null 2>&1)
fi
BUILD_S=$(($(date +%s) - B0))
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
ONETRIP=$TARGET/release/onetrip
LOAD=$TARGET/release/onetrip-load

# ---- cores -------------------------------------------------------------------
NCPU=$(nproc)
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
if ((NCPU >= 2)); then
  SRV=(taskset -c 0)
  LDR=(taskset -c "1-$((NCPU - 1))")
  LOAD_THREADS=$((NCPU - 1))
  PIN="server on core 0 (1 core), load generator on cores 1-$((NCPU - 1)) ($LOAD_THREADS threads)"
else
  SRV=()
  LDR=()
  LOAD_THREADS=1
  PIN="1 core: server and load generator share it (no pinning)"
fi

# res FILE KEY: a value from the last RESULT line of FILE.
res() { grep '^RESULT' "$1" | tail -1 | tr ' ' '\n' | sed -n "s/^$2=//p"; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }

# start NAME CMD...: runs a server in the background, waits for `listening on`.
start() {
  local name=$1
  shift
  "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 3000); do
    if grep -q 'listening on' "$OUT/$name.out" 2>/dev/null; then
      URL=$(grep -o 'http://[0-9.:]*' "$OUT/$name.out" | head -1)
      SPID=$pid
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$OUT/$name.err" >&2; return 1; }
    sleep 0.02
  done
  echo "$name did not start" >&2
  return 1
}
stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Defaults users get, except the per-IP limits: all load comes from one address here,
# as it does behind a load balancer. The replay cache and the per-key limit are the
# defaults (the smallest key pool below, 100 keys, stays under 1,000/s per key).
serve_args=(serve --listen 127.0.0.1:0 --auth-rate-per-ip 100000000 --max-connections-per-ip 1024 --log warn)
start_onetrip() { # NAME DATA_DIR
  start "$1" "${SRV[@]}" "$ONETRIP" "${serve_args[@]}" --data-dir "$2"
  FP=$(grep -o 'SHA256:[^ ]*' "$OUT/$1.out" | head -1)
}
load() { "${LDR[@]}" "$LOAD" "$@" --threads "$LOAD_THREADS" --connections "$CONNS" --server-pid "$SPID"; }

# pctl P VALUES...: the P-th percentile (nearest rank) of integer values.
pctl() {
  local p=$1
  shift
  printf '%s\n' "$@" | sort -n | awk -v p="$p" '{ v[NR] = $1 } END { i = int((p * NR + 99) / 100); if (i < 1) i = 1; print v[i] }'
}

# key_changes N DATA_DIR: 100 creates then 100 revokes through the running server's
# admin socket, each timed from the CLI's start to its exit (so a fixed few ms of
# process start-up are in every row alike); sets CREATE_P50/P99[N], REVOKE_P50/P99[N]
# in ms.
key_changes() {
  local n=$1 dir=$2 t0 id ids=() c=() r=()
  for i in $(seq 1 100); do
    t0=$(date +%s%N)
    id=$("${LDR[@]}" "$ONETRIP" keys create --name "change$i" --json --data-dir "$dir" | sed -n 's/.*"id": *"\([0-9a-f]*\)".*/\1/p' | head -1)
    c+=($((($(date +%s%N) - t0) / 1000)))
    [[ -n $id ]] || { echo "keys create printed no id" >&2; return 1; }
    ids+=("$id")
  done
  for id in "${ids[@]}"; do
    t0=$(date +%s%N)
    "${LDR[@]}" "$ONETRIP" keys revoke "$id" --data-dir "$dir" >/dev/null
    r+=($((($(date +%s%N) - t0) / 1000)))
  done
  CREATE_P50[$n]=$(calc "$(pctl 50 "${c[@]}") / 1000" 1)
  CREATE_P99[$n]=$(calc "$(pctl 99 "${c[@]}") / 1000" 1)
  REVOKE_P50[$n]=$(calc "$(pctl 50 "${r[@]}") / 1000" 1)
  REVOKE_P99[$n]=$(calc "$(pctl 99 "${r[@]}") / 1000" 1)
}

# Pre-generated request pools are sized from the client-in-loop rate: 3x that rate for
# the run's length, so the pool normally outlasts the run (if not, the run ends when it
# is used up and the rate is over the time actually run).
pool_for() { calc "($1 * 3 * $SECS) + 20000" 0; }

# ---- 1. criterion: server handshake CPU / one DH ---------------------------------
if [[ -z ${BENCH_SKIP_CRITERION:-} ]]; then
  say "criterion: cargo bench -p onetrip-protocol --bench handshake"
  (cd "$ROOT" && "${SRV[@]}" cargo bench -q -p onetrip-protocol --bench handshake >"$OUT/criterion.out" 2>&1)
  CRIT_ROW=$(sed -n '/ratios measured in this run/,$p' "$OUT/criterion.out" | grep '^aws-lc-rs' | head -1)
  CRIT_DH=$(echo "$CRIT_ROW" | awk '{print $2}')
  CRIT_HS=$(echo "$CRIT_ROW" | awk '{print $4}')
  CRIT_RATIO=$(echo "$CRIT_ROW" | awk '{print $6}')
  CRIT_ROW_RC=$(sed -n '/ratios measured in this run/,$p' "$OUT/criterion.out" | grep '^rustcrypto' | head -1)
  CRIT_HS_RC=$(echo "$CRIT_ROW_RC" | awk '{print $4}')
  CRIT_RATIO_RC=$(echo "$CRIT_ROW_RC" | awk '{print $6}')
else
  CRIT_DH=- CRIT_HS=- CRIT_RATIO=- CRIT_HS_RC=- CRIT_RATIO_RC=-
fi

# ---- 2. in-process rates ------------------------------------------------------------
say "in-process: X25519, token verify, PoP verify, snow steps"
"${SRV[@]}" "$LOAD" inproc --seconds 1 | tee "$OUT/inproc.out" >&2
DH_AWS=$(res "$OUT/inproc.out" x25519_awslc_ns)
DH_RC=$(res "$OUT/inproc.out" x25519_rustcrypto_ns)
TV=$(res "$OUT/inproc.out" token_verify_ns)
TPV=$(res "$OUT/inproc.out" token_pop_verify_ns)
SNOW_RESP=$(res "$OUT/inproc.out" snow_responder_ns)

# ---- 3. start-up, empty store ----------------------------------------------------------
say "start-up time, empty store"
mkdir -p "$WORK/data"
"$LOAD" startup --runs 1 -- "${SRV[@]}" "$ONETRIP" serve --log warn --data-dir "$WORK/data/empty" >/dev/null
"$LOAD" startup --runs 7 -- "${SRV[@]}" "$ONETRIP" serve --log warn --data-dir "$WORK/data/empty" | tee "$OUT/startup-empty.out" >&2
START_EMPTY=$(res "$OUT/startup-empty.out" median_ms)
start_onetrip idle "$WORK/data/empty"
sleep 1
IDLE_RSS_EMPTY=$("$LOAD" rss "$SPID")
stop "$SPID"

# ---- 4. HTTP floor: hyper hello ------------------------------------------------------
say "HTTP floor: hyper hello server"
start hello "${SRV[@]}" "$LOAD" hello-server
load http --url "$URL" --path /v1/auth --seconds "$SECS" --expect-len 400 | tee "$OUT/hello.out" >&2
HELLO=$(res "$OUT/hello.out" rps)
HELLO_CPU=$(res "$OUT/hello.out" server_cpu_us)
HELLO_UTIL=$(res "$OUT/hello.out" server_util)
stop "$SPID"
say "composed limit, measured: hyper hello + one X25519 per request"
start hellodh "${SRV[@]}" "$LOAD" hello-dh-server
load http --url "$URL" --path /v1/auth --seconds "$SECS" --expect-len 400 | tee "$OUT/hello-dh.out" >&2
HELLO_DH=$(res "$OUT/hello-dh.out" rps)
HELLO_DH_CPU=$(res "$OUT/hello-dh.out" server_cpu_us)
HELLO_DH_UTIL=$(res "$OUT/hello-dh.out" server_util)
stop "$SPID"

# ---- 5. onetrip, 10,000 keys -----------------------------------------------------------
say "onetrip: 10,000 keys (bulk), handshakes, introspection"
"$LOAD" gen-keys --data-dir "$WORK/data/k10k" --count 10000 --out "$WORK/keys-10k.txt" | tee "$OUT/gen-10k.out" >&2
start_onetrip main "$WORK/data/k10k"
MAIN_PID=$SPID
MAIN_URL=$URL
"$LOAD" wait-warm --url "$URL" >&2
sleep 0.5
IDLE_RSS_10K=$("$LOAD" rss "$MAIN_PID")
load handshake --url "$URL" --keys "$WORK/keys-10k.txt" --fingerprint "$FP" --seconds "$SECS" | tee "$OUT/hs-inline.out" >&2
HS_INLINE=$(res "$OUT/hs-inline.out" rps)
HS_INLINE_P99=$(res "$OUT/hs-inline.out" p99_us)
POOL=$(pool_for "$HS_INLINE")
load handshake --url "$URL" --keys "$WORK/keys-10k.txt" --fingerprint "$FP" --seconds "$SECS" --pregenerate "$POOL" | tee "$OUT/hs-pregen.out" >&2
HS=$(res "$OUT/hs-pregen.out" rps)
HS_P50=$(res "$OUT/hs-pregen.out" p50_us)
HS_P99=$(res "$OUT/hs-pregen.out" p99_us)
HS_P999=$(res "$OUT/hs-pregen.out" p999_us)
HS_CPU=$(res "$OUT/hs-pregen.out" server_cpu_us)
HS_UTIL=$(res "$OUT/hs-pregen.out" server_util)
# Introspection is asked by a resource server's own key, for tokens of its audience.
new_key() { "${SRV[@]}" "$ONETRIP" keys create --data-dir "$WORK/data/k10k" --json "$@" | sed -n 's/.*"api_key": *"\([^"]*\)".*/\1/p'; }
RS_CLIENT=$(new_key --name bench-client --audience bench)
RS_CALLER=$(new_key --name bench-resource-server --audience bench --scope introspect)
"$LOAD" introspect-body --url "$URL" --key "$RS_CLIENT" --caller-key "$RS_CALLER" --fingerprint "$FP" --out "$WORK/introspect.json"
mapfile -t INTROSPECT_HEADERS < "$WORK/introspect.headers"
load http --url "$URL" --path /v1/introspect --body-file "$WORK/introspect.json" --header "content-type: application/json" \
  --header "${INTROSPECT_HEADERS[0]}" --header "${INTROSPECT_HEADERS[1]}" \
  --seconds "$SECS" --expect-contains '"active":true' | tee "$OUT/introspect.out" >&2
INTROSPECT=$(res "$OUT/introspect.out" rps)
INTROSPECT_CPU=$(res "$OUT/introspect.out" server_cpu_us)
DONE_HS=$(($(res "$OUT/hs-inline.out" ok) + $(res "$OUT/hs-pregen.out" ok) + 1))
if ((RSS_HS > DONE_HS)); then
  say "sustained handshakes up to $RSS_HS in total (for RSS), at most 150 s"
  load handshake --url "$URL" --keys "$WORK/keys-10k.txt" --fingerprint "$FP" --seconds 150 \
    --requests $((RSS_HS - DONE_HS)) | tee "$OUT/hs-sustained.out" >&2
  DONE_HS=$((DONE_HS + $(res "$OUT/hs-sustained.out" ok)))
fi
RSS_AFTER=$("$LOAD" rss "$MAIN_PID")
stop "$MAIN_PID"

# ---- 6. snow Noise IK ----------------------------------------------------------------------
say "snow Noise IK responder, same harness"
start noise "${SRV[@]}" "$LOAD" noise-server
load noise --url "$URL" --seconds "$SECS" --pregenerate "$(calc "6000 * $SECS" 0)" | tee "$OUT/noise.out" >&2
NOISE=$(res "$OUT/noise.out" rps)
NOISE_P99=$(res "$OUT/noise.out" p99_us)
NOISE_CPU=$(res "$OUT/noise.out" server_cpu_us)
NOISE_UTIL=$(res "$OUT/noise.out" server_util)
stop "$SPID"

# ---- 7. OAuth2 client_credentials: node oidc-provider ---------------------------------------
say "OAuth2 client_credentials: node oidc-provider $(node -p "require('$ROOT/bench/oidc/node_modules/oidc-provider/package.json').version" 2>/dev/null || true), node $(node --version)"
start oidc "${SRV[@]}" env NODE_ENV=production PORT=0 node "$ROOT/bench/oidc/server.js"
OIDC_PID=$SPID
BASIC=$(printf 'bench:bench-secret-0123456789abcdef' | base64 | tr -d '\n')
"$LOAD" http --url "$URL" --path /token --connections 1 --seconds 0.2 --requests 1 --threads 1 \
  --body 'grant_type=client_credentials&scope=api:read' --header "authorization: Basic $BASIC" \
  --header 'content-type: application/x-www-form-urlencoded' --expect-contains '"access_token"' >&2
load http --url "$URL" --path /token --seconds "$SECS" \
  --body 'grant_type=client_credentials&scope=api:read' --header "authorization: Basic $BASIC" \
  --header 'content-type: application/x-www-form-urlencoded' --expect-contains '"access_token"' | tee "$OUT/oidc-load.out" >&2
OIDC=$(res "$OUT/oidc-load.out" rps)
OIDC_P99=$(res "$OUT/oidc-load.out" p99_us)
OIDC_ERR=$(res "$OUT/oidc-load.out" errors)
OIDC_CPU=$(res "$OUT/oidc-load.out" server_cpu_us)
OIDC_UTIL=$(res "$OUT/oidc-load.out" server_util)
stop "$OIDC_PID"

# ---- 8. flat cost: 1,000, 100,000, BIG keys --------------------------------------------------
# (Not 1 key: one key is limited to 1,000 handshakes/s by default.)
declare -A FLAT FLAT_GEN FLAT_WARM FLAT_RSS FLAT_CPU CREATE_P50 CREATE_P99 REVOKE_P50 REVOKE_P99
for n in "$SMALL" "$MID" "$BIG"; do
  say "flat cost: $n keys"
  "$LOAD" gen-keys --data-dir "$WORK/data/flat$n" --count "$n" --out "$WORK/keys-flat$n.txt" | tee "$OUT/gen-$n.out" >&2
  FLAT_GEN[$n]=$(res "$OUT/gen-$n.out" secs)
  if [[ $n == "$BIG" ]]; then
    "$LOAD" startup --runs 3 -- "${SRV[@]}" "$ONETRIP" serve --log warn --data-dir "$WORK/data/flat$n" | tee "$OUT/startup-big.out" >&2
    START_BIG=$(res "$OUT/startup-big.out" median_ms)
  fi
  start_onetrip "flat$n" "$WORK/data/flat$n"
  "$LOAD" wait-warm --url "$URL" --timeout 600 | tee "$OUT/warm-$n.out" >&2
  FLAT_WARM[$n]=$(res "$OUT/warm-$n.out" secs)
  FLAT_RSS[$n]=$("$LOAD" rss "$SPID")
  load handshake --url "$URL" --keys "$WORK/keys-flat$n.txt" --fingerprint "$FP" --seconds "$SECS" \
    --pregenerate "$POOL" | tee "$OUT/flat-$n.out" >&2
  FLAT[$n]=$(res "$OUT/flat-$n.out" rps)
  FLAT_CPU[$n]=$(res "$OUT/flat-$n.out" server_cpu_us)
  say "key creates and revokes at $n keys"
  key_changes "$n" "$WORK/data/flat$n"
  if [[ $n == "$BIG" ]]; then
    # Handshakes while 1,000 keys are created: server CPU per handshake beside the
    # quiet run above (the creates' own CPU is in it, as it is in production).
    say "handshakes during 1,000 key creates at $n keys"
    load handshake --url "$URL" --keys "$WORK/keys-flat$n.txt" --fingerprint "$FP" --seconds "$SECS" \
      --pregenerate "$POOL" >"$OUT/flat-creates.out" 2>&1 &
    LOADPID=$!
    for i in $(seq 1 1000); do
      "${LDR[@]}" "$ONETRIP" keys create --name "busy$i" --data-dir "$WORK/data/flat$n" >/dev/null
    done
    wait "$LOADPID"
    BUSY=$(res "$OUT/flat-creates.out" rps)
    BUSY_CPU=$(res "$OUT/flat-creates.out" server_cpu_us)
    # `keys list` through the serving process: its peak RSS (VmHWM, reset first
    # through clear_refs) must not grow with the key count.
    say "keys list over $n keys"
    echo 5 > "/proc/$SPID/clear_refs"
    LIST_BEFORE=$(awk '/^VmHWM:/ {print $2}' "/proc/$SPID/status")
    LIST_T0=$(date +%s.%N)
    LISTED=$("${SRV[@]}" "$ONETRIP" keys list --json --data-dir "$WORK/data/flat$n" | grep -c '"id"')
    LIST_SECS=$(calc "$(date +%s.%N) - $LIST_T0" 1)
    LIST_GROWTH=$(( $(awk '/^VmHWM:/ {print $2}' "/proc/$SPID/status") - LIST_BEFORE ))
    # The store's keys, the 100 created (and revoked) by key_changes and the 1,000 above.
    [[ $LISTED == "$((n + 1100))" ]] || { echo "keys list printed $LISTED keys, not $((n + 1100))" >&2; exit 1; }
  fi
  stop "$SPID"
  rm -rf "$WORK/data/flat$n"
done

# ---- table -------------------------------------------------------------------------------------
TOTAL_S=$(($(date +%s) - T0))
DH_US=$(calc "$DH_AWS / 1000" 2)
# Per core = 1 / (server CPU per answer): what one fully busy core would serve.
pc() { calc "1000000 / $1" 0; }
COMPOSED=$(calc "1000000 / ($DH_US + $HELLO_CPU)" 0)
COMPOSED_M=$(pc "$HELLO_DH_CPU")
PC_HS=$(pc "$HS_CPU")
PC_NOISE=$(pc "$NOISE_CPU")
PC_OIDC=$(pc "$OIDC_CPU")
pct() { calc "$1 * 100" 0; }
mb() { calc "$1 / 1024" 1; }
row() { printf '| %-46s | %-34s | %-22s | %-16s |\n' "$1" "$2" "$3" "$4"; }

{
  echo
  echo "onetrip benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $NCPU cores ($CPU_MODEL)"
  echo "pinning: $PIN"
  echo "load: closed loop, $CONNS keep-alive HTTP/1.1 connections, ${SECS} s per run, every answer verified"
  echo "build ${BUILD_S} s; measurements $((TOTAL_S - BUILD_S)) s; total ${TOTAL_S} s"
  echo "load average at start: $LOADAVG_START; at end: $(cut -d' ' -f1-3 /proc/loadavg) (other processes compete for the same cores;"
  echo "  'server core busy' below 90% means the throughput rows were not server-bound, the CPU-per-answer rows still hold)"
  echo
  row "measurement" "value" "ratio" "target"
  row "---" "---" "---" "---"
  row "X25519, aws-lc-rs (in-process)" "$DH_US us = $(calc "1e9 / $DH_AWS" 0)/s" "" ""
  row "X25519, pure Rust (x25519-dalek)" "$(calc "$DH_RC / 1000" 2) us = $(calc "1e9 / $DH_RC" 0)/s" "$(calc "$DH_RC / $DH_AWS")x aws-lc-rs time" ""
  row "HTTP floor: hyper hello, per core (1/CPU)" "$HELLO_CPU us = $(pc "$HELLO_CPU")/s" "" ""
  row "  measured (384 B in, 400 B out)" "$HELLO /s, core $(pct "$HELLO_UTIL")% busy" "" ""
  row "composed limit 1/(t_DH + t_hello), computed" "$COMPOSED /s" "" ""
  row "composed limit, measured: hello + 1 X25519" "$HELLO_DH_CPU us = $COMPOSED_M/s" "$(calc "$COMPOSED_M / $COMPOSED")x computed" ""
  row "  measured rate" "$HELLO_DH /s, core $(pct "$HELLO_DH_UTIL")% busy" "" ""
  row "onetrip handshakes, per core (1/CPU)" "$HS_CPU us = $PC_HS/s" "$(calc "$PC_HS / $COMPOSED_M")x measured limit" ">= 0.85"
  row "" "" "$(calc "$PC_HS / $COMPOSED")x computed limit" ""
  row "  measured end to end (requests pre-built)" "$HS /s, core $(pct "$HS_UTIL")% busy" "$(calc "$HS / $HELLO_DH")x measured limit" ""
  row "  latency p50 / p99 / p99.9" "$HS_P50 / $HS_P99 / $HS_P999 us" "" ""
  row "  measured, client crypto in the timed loop" "$HS_INLINE /s, p99 $HS_INLINE_P99 us" "" "(load-gen bound)"
  row "server handshake CPU (criterion, aws-lc-rs)" "$CRIT_HS us (DH $CRIT_DH us)" "${CRIT_RATIO}x one DH" "<= 1.2"
  row "server handshake CPU (criterion, pure Rust)" "$CRIT_HS_RC us" "${CRIT_RATIO_RC}x one DH" ""
  row "snow Noise IK, per core (1/CPU)" "$NOISE_CPU us = $PC_NOISE/s" "onetrip $(calc "$PC_HS / $PC_NOISE")x" ">= 10"
  row "  measured (requests pre-built)" "$NOISE /s, core $(pct "$NOISE_UTIL")% busy" "onetrip $(calc "$HS / $NOISE")x" ""
  row "  snow IK responder CPU, in-process" "$(calc "$SNOW_RESP / 1000" 1) us" "$(calc "$SNOW_RESP / $DH_AWS" 1)x one DH" ""
  row "oidc-provider client_credentials, per core" "$OIDC_CPU us = $PC_OIDC/s" "onetrip $(calc "$PC_HS / $PC_OIDC")x" ">= 3"
  row "  measured tokens/s" "$OIDC /s, core $(pct "$OIDC_UTIL")% busy" "onetrip $(calc "$HS / $OIDC")x" ""
  row "  p99: onetrip / oidc-provider" "$HS_P99 / $OIDC_P99 us" "$(calc "$HS_P99 / $OIDC_P99")x" "< 1"
  row "token verify (in-process, aws-lc-rs)" "$(calc "$TV / 1000" 2) us = $(calc "1e9 / $TV" 0)/s" "" "< 2 us"
  row "token + PoP verify (in-process)" "$(calc "$TPV / 1000" 2) us = $(calc "1e9 / $TPV" 0)/s" "" ""
  row "POST /v1/introspect (token + PoP), per core" "$INTROSPECT_CPU us = $(pc "$INTROSPECT_CPU")/s" "" ""
  row "  measured over HTTP" "$INTROSPECT /s" "" ""
  row "idle RSS, empty store" "$(mb "$IDLE_RSS_EMPTY") MB" "" "<= 8 MB"
  row "idle RSS, 10,000 keys" "$(mb "$IDLE_RSS_10K") MB" "" ""
  row "RSS after $DONE_HS handshakes (10,000 keys)" "$(mb "$RSS_AFTER") MB" "" ""
  row "start-up to first /healthz 200, empty store" "$START_EMPTY ms (median of 7)" "" "<= 20 ms"
  row "start-up to first /healthz 200, $BIG keys" "$START_BIG ms (median of 3)" "" ""
  row "bulk creation of $BIG keys (gen-keys)" "${FLAT_GEN[$BIG]} s" "" ""
  row "static-static cache warm, $BIG keys" "${FLAT_WARM[$BIG]} s (background)" "" ""
  row "RSS with $BIG keys, warm, idle" "$(mb "${FLAT_RSS[$BIG]}") MB" "" ""
  row "keys list --json over $BIG keys: time / server peak RSS growth" "$LIST_SECS s / $(mb "$LIST_GROWTH") MB" "" "< 50 MB"
  row "handshakes, $SMALL keys: per core / measured" "$(pc "${FLAT_CPU[$SMALL]}")/s / ${FLAT[$SMALL]}/s" "1.00" ""
  for n in "$MID" "$BIG"; do
    row "handshakes, $n keys: per core / measured" "$(pc "${FLAT_CPU[$n]}")/s / ${FLAT[$n]}/s" "$(calc "${FLAT_CPU[$SMALL]} / ${FLAT_CPU[$n]}") / $(calc "${FLAT[$n]} / ${FLAT[$SMALL]}")x $SMALL keys" ">= 0.9"
  done
  for n in "$SMALL" "$MID" "$BIG"; do
    row "key create p50 / p99 (CLI), $n keys" "${CREATE_P50[$n]} / ${CREATE_P99[$n]} ms" "$(calc "${CREATE_P50[$n]} / ${CREATE_P50[$SMALL]}")x $SMALL keys" "<= 2"
    row "key revoke p50 / p99 (CLI), $n keys" "${REVOKE_P50[$n]} / ${REVOKE_P99[$n]} ms" "$(calc "${REVOKE_P50[$n]} / ${REVOKE_P50[$SMALL]}")x $SMALL keys" "<= 2"
  done
  row "handshakes during 1,000 creates, $BIG keys" "$(pc "$BUSY_CPU")/s / $BUSY/s" "$(calc "${FLAT_CPU[$BIG]} / $BUSY_CPU") / $(calc "$BUSY / ${FLAT[$BIG]}")x quiet" ""
  echo
  echo "errors: every load run above ended with 0 errors (a run with errors stops this script); oidc-provider non-2xx: $OIDC_ERR"
  echo "raw outputs: $OUT"
} | tee "$OUT/table.md"
