#!/usr/bin/env bash
# bench/cluster.sh: handshakes/s and latency through HAProxy with 1, 2 and 3 replicas
# on one PostgreSQL store, with the shared state on a 6-node Redis Cluster and in
# memory (per replica), in one run; the added latency of the Redis round trip (one
# connection, one replica, no balancer, Redis vs memory); and the CPU each process
# spent per handshake (from /proc/<pid>/stat), so that a rate can be turned into
# cores. Not run in CI.
#
#   bench/cluster.sh                       # ~3 minutes after the build
#   BENCH_SECONDS=5 BENCH_CONNECTIONS=32 bench/cluster.sh
#
# On a 2-core machine the load generator, HAProxy, Redis and every replica share the
# same two cores: more replicas cannot add throughput there, they only show the cost
# of the extra hop and of the sharing. Read the CPU-per-handshake rows for capacity.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${BENCH_SECONDS:-8}
CONNS=${BENCH_CONNECTIONS:-32}
WORK=$(mktemp -d /tmp/onetrip-bench-cluster.XXXXXX)
chmod 0711 "$WORK"
PIDS=()
TCK=$(getconf CLK_TCK)

cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  [ -d "$WORK/pg" ] && bash "$ROOT/scripts/pg-throwaway.sh" stop "$WORK/pg" || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
say() { printf '== %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis_port() {
  python3 -c '
import socket
while True:
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    if p + 10000 > 65535: continue
    try: socket.socket().bind(("127.0.0.1", p + 10000))
    except OSError: continue
    print(p); break'
}
# utime + stime of a pid, in clock ticks (0 once gone).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
sum_ticks() {
  local t=0 p
  for p in "$@"; do t=$((t + $(ticks "$p"))); done
  echo $t
}

say "cargo build --release"
(cd "$ROOT" && cargo build --release -q -p onetrip-server -p onetrip-load)
BIN=$ROOT/target/release/onetrip
LOAD=$ROOT/target/release/onetrip-load
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

say "PostgreSQL"
eval "$(bash "$ROOT/scripts/pg-throwaway.sh" start "$WORK/pg")"
PG=$ONETRIP_TEST_POSTGRES_URL

say "Redis Cluster (6 nodes)"
NODES=()
REDIS_PIDS=()
for i in 1 2 3 4 5 6; do
  port=$(redis_port)
  mkdir -p "$WORK/redis$i"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$WORK/redis$i" --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 1000 --save '' --appendonly no \
    --logfile redis.log >/dev/null &
  PIDS+=($!)
  REDIS_PIDS+=($!)
  NODES+=("127.0.0.1:$port")
done
for n in "${NODES[@]}"; do until redis-cli -p "${n#*:}" ping >/dev/null 2>&1; do sleep 0.1; done; done
redis-cli --cluster create "${NODES[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
until redis-cli -p "${NODES[0]#*:}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
REDIS="redis://$(
  IFS=,
  echo "${NODES[*]}"
)"

KEY=$("$BIN" keys create --store "$PG" --data-dir "$WORK/cli" --name bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
PROXY_FLAGS=()
SEND_PROXY=""
if "$BIN" serve --help | grep -q -- '--proxy-protocol-from '; then
  PROXY_FLAGS=(--proxy-protocol-from 127.0.0.1/32)
  SEND_PROXY=" send-proxy-v2 check-send-proxy"
fi

# start_replicas N MODE: N replicas, shared state on Redis (redis) or in memory.
REPLICA_PIDS=()
REPLICA_PORTS=()
# A third argument "direct": no balancer in front, so no PROXY header expected.
start_replicas() {
  local n=$1 mode=$2 i port shared=() proxy=("${PROXY_FLAGS[@]}")
  [ "$mode" = redis ] && shared=(--shared "$REDIS")
  [ "${3:-}" = direct ] && proxy=()
  REPLICA_PIDS=()
  REPLICA_PORTS=()
  for i in $(seq 1 "$n"); do
    port=$(free_port)
    "$BIN" serve --log warn --data-dir "$WORK/r$i" --listen "127.0.0.1:$port" --store "$PG" "${shared[@]}" \
      "${proxy[@]}" --auth-rate-per-ip 10000000 --auth-rate-per-key 10000000 >"$WORK/r$i.out" 2>&1 &
    PIDS+=($!)
    REPLICA_PIDS+=($!)
    REPLICA_PORTS+=("$port")
    until grep -q "listening on" "$WORK/r$i.out"; do sleep 0.1; done
  done
  FP=$(sed -n 's/^identity fingerprint: //p' "$WORK/r1.out" | head -n 1)
}
stop_replicas() {
  local p
  for p in "${REPLICA_PIDS[@]}" ${HA_PID:-}; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${REPLICA_PIDS[@]}" ${HA_PID:-}; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
  HA_PID=
}
start_haproxy() {
  HA_PORT=$(free_port)
  {
    printf 'global\n    maxconn 4000\n    nbthread 1\ndefaults\n    mode http\n    timeout connect 1s\n'
    printf '    timeout client 30s\n    timeout server 30s\n    option http-keep-alive\n'
    printf 'frontend fe\n    bind 127.0.0.1:%s\n    default_backend be\n' "$HA_PORT"
    printf 'backend be\n    balance roundrobin\n    option httpchk GET /healthz\n'
    local i=0 p
    for p in "${REPLICA_PORTS[@]}"; do
      i=$((i + 1))
      printf '    server r%s 127.0.0.1:%s check inter 1s%s\n' "$i" "$p" "$SEND_PROXY"
    done
  } >"$WORK/haproxy.cfg"
  "$HAPROXY" -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  HA_PID=$!
  PIDS+=($!)
  until curl -fs "http://127.0.0.1:$HA_PORT/healthz" >/dev/null 2>&1; do sleep 0.1; done
}

# run LABEL URL CONNS: one timed handshake run; appends a row with CPU per handshake.
ROWS=()
run() {
  local label=$1 url=$2 conns=$3 t_on t_re t_ha out
  t_on=$(sum_ticks "${REPLICA_PIDS[@]}")
  t_re=$(sum_ticks "${REDIS_PIDS[@]}")
  t_ha=$(sum_ticks ${HA_PID:-})
  out=$("$LOAD" handshake --url "$url" --key "$KEY" --fingerprint "$FP" --seconds "$SECS" --connections "$conns" | grep '^RESULT')
  local ok rps p50 p99
  ok=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$out")
  rps=$(sed -n 's/.* rps=\([0-9.]*\).*/\1/p' <<<"$out")
  p50=$(sed -n 's/.* p50_us=\([0-9]*\).*/\1/p' <<<"$out")
  p99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' <<<"$out")
  local d_on=$(($(sum_ticks "${REPLICA_PIDS[@]}") - t_on)) d_re=$(($(sum_ticks "${REDIS_PIDS[@]}") - t_re))
  local d_ha=$(($(sum_ticks ${HA_PID:-}) - t_ha))
  local us="1000000 / $TCK / max($ok, 1)"
  ROWS+=("$(printf '%-28s %9.0f %8s %8s %9.1f %9.1f %9.1f' "$label" "$rps" "$p50" "$p99" \
    "$(python3 -c "print($d_on * $us)" 2>/dev/null || echo 0)" \
    "$(python3 -c "print($d_re * $us)" 2>/dev/null || echo 0)" \
    "$(python3 -c "print($d_ha * $us)" 2>/dev/null || echo 0)")")
  LAST_RPS=$rps
}

declare -A RPS
for mode in redis memory; do
  for n in 1 2 3; do
    say "$mode, $n replica(s) behind HAProxy"
    start_replicas "$n" "$mode"
    start_haproxy
    "$LOAD" handshake --url "http://127.0.0.1:$HA_PORT" --key "$KEY" --fingerprint "$FP" --seconds 1 --connections 4 >/dev/null
    run "$mode, $n via haproxy" "http://127.0.0.1:$HA_PORT" "$CONNS"
    RPS[$mode$n]=$LAST_RPS
    stop_replicas
  done
  say "$mode, 1 replica direct, 1 connection (latency)"
  start_replicas 1 "$mode" direct
  run "$mode, 1 direct, 1 conn" "http://127.0.0.1:${REPLICA_PORTS[0]}" 1
  stop_replicas
done

echo
echo "bench/cluster.sh: $(nproc) cores, $(date -u +%FT%TZ), ${SECS}s runs, $CONNS connections through HAProxy, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-28s %9s %8s %8s %9s %9s %9s\n' "run" "hs/s" "p50 µs" "p99 µs" "onetrip" "redis" "haproxy"
printf '%-28s %9s %8s %8s %9s %9s %9s\n' "" "" "" "" "µs CPU/hs" "µs CPU/hs" "µs CPU/hs"
for r in "${ROWS[@]}"; do echo "$r"; done
echo
python3 - "${RPS[redis1]}" "${RPS[redis2]}" "${RPS[redis3]}" "${RPS[memory1]}" "${RPS[memory2]}" "${RPS[memory3]}" <<'EOF'
import sys
r1, r2, r3, m1, m2, m3 = map(float, sys.argv[1:])
print(f"replicas 2/1: redis {r2 / r1:.2f}  memory {m2 / m1:.2f}")
print(f"replicas 3/1: redis {r3 / r1:.2f}  memory {m3 / m1:.2f}")
print(f"redis/memory: 1 replica {r1 / m1:.2f}  2 {r2 / m2:.2f}  3 {r3 / m3:.2f}")
EOF
echo "Added Redis latency per handshake: p50 of 'redis, 1 direct, 1 conn' minus 'memory, 1 direct, 1 conn'."
echo "Cores for a rate R hs/s: R x (onetrip + redis + haproxy µs CPU/hs) / 1e6, plus headroom."
