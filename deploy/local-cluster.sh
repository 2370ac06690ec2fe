#!/usr/bin/env bash
# deploy/local-cluster.sh: the reference cluster on this machine's loopback, for
# trying several replicas out and for the tests that run it.
#
#   deploy/local-cluster.sh start    # prints the endpoint and the server-key fingerprint
#   deploy/local-cluster.sh status   # what runs, by PID
#   deploy/local-cluster.sh stop     # stops everything by PID, removes the state
#
# What runs (all on 127.0.0.1, ports picked free at start):
#   - a Redis Cluster of 6 nodes (3 primaries + 3 replicas, redis-cli --cluster create)
#     holding the shared state (replay ids, rate limits, OTP send windows, revocations);
#   - a throw-away PostgreSQL store (scripts/pg-throwaway.sh);
#   - 3 `onetrip serve` replicas on that store, hence one identity, with
#     --shared redis://..., --proxy-protocol-from 127.0.0.1/32 and --drain-secs;
#   - HAProxy in front (deploy/haproxy.cfg, ports filled in): round robin, PROXY v2,
#     health checks on /healthz.
# Missing packages (redis-server, redis-tools, haproxy, postgresql) are installed with
# apt-get when running as root. The binary is $ONETRIP_BIN, else target/release/onetrip,
# else target/debug/onetrip. State (pid files, logs, data) lives in
# $ONETRIP_CLUSTER_DIR, default ${XDG_RUNTIME_DIR:-/tmp}/onetrip-local-cluster.
# ONETRIP_DRAIN_SECS (default 2) is the replicas' drain time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${ONETRIP_CLUSTER_DIR:-${XDG_RUNTIME_DIR:-/tmp}/onetrip-local-cluster}
DRAIN=${ONETRIP_DRAIN_SECS:-2}
REPLICAS=3
REDIS_NODES=6

usage() {
  echo "usage: $0 start | stop | status" >&2
  exit 2
}

die() {
  echo "local-cluster: $*" >&2
  exit 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A free port whose Redis Cluster bus port (+10000) is free too.
redis_port() {
  python3 - <<'PY'
import socket
for _ in range(200):
    a = socket.socket(); a.bind(("127.0.0.1", 0)); port = a.getsockname()[1]
    if port + 10000 > 65535:
        continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", port + 10000))
    except OSError:
        continue
    print(port); break
else:
    raise SystemExit("no free port pair for Redis")
PY
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# Waits up to $2 tenths of a second for file $1 to contain $3.
wait_for_line() {
  local file=$1 tenths=$2 pattern=$3
  for _ in $(seq 1 "$tenths"); do
    grep -q -- "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

binary() {
  if [ -n "${ONETRIP_BIN:-}" ]; then
    echo "$ONETRIP_BIN"
  elif [ -x "$ROOT/target/release/onetrip" ]; then
    echo "$ROOT/target/release/onetrip"
  elif [ -x "$ROOT/target/debug/onetrip" ]; then
    echo "$ROOT/target/debug/onetrip"
  else
    die "no onetrip binary: cargo build --release -p onetrip-server, or set ONETRIP_BIN"
  fi
}

install_missing() {
  local need=()
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v redis-cli >/dev/null || need+=(redis-tools)
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
  command -v pg_config >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  command -v python3 >/dev/null || need+=(python3)
  ((${#need[@]} == 0)) && return 0
  [ "$(id -u)" = 0 ] || die "missing packages (${need[*]}): apt-get install -y ${need[*]}"
  echo "local-cluster: installing ${need[*]}" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

# Every PID this script started, one pid file each.
pidfiles() { ls "$STATE"/*.pid 2>/dev/null || true; }

stop_all() {
  [ -d "$STATE" ] || return 0
  local f pid
  # The front first (no new requests), then the replicas, then what they use.
  for f in "$STATE"/haproxy.pid "$STATE"/onetrip-*.pid "$STATE"/redis-*.pid; do
    [ -f "$f" ] || continue
    pid=$(head -n 1 "$f")
    alive "$pid" && kill -TERM "$pid" 2>/dev/null || true
  done
  for f in "$STATE"/haproxy.pid "$STATE"/onetrip-*.pid "$STATE"/redis-*.pid; do
    [ -f "$f" ] || continue
    pid=$(head -n 1 "$f")
    # The replicas drain first ($DRAIN s); allow for it, then insist.
    for _ in $(seq 1 $(((DRAIN + 10) * 10))); do
      alive "$pid" || break
      sleep 0.1
    done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  [ -d "$STATE/pg" ] && bash "$ROOT/scripts/pg-throwaway.sh" stop "$STATE/pg" || true
  rm -rf "$STATE"
}

start_redis() {
  local i port dir nodes=()
  for i in $(seq 1 $REDIS_NODES); do
    port=$(redis_port)
    dir="$STATE/redis-$port"
    mkdir -p "$dir"
    # cluster-node-timeout 1000: a dead primary is replaced in about two seconds.
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
      --save '' --appendonly no --daemonize yes \
      --pidfile "$STATE/redis-$port.pid" --logfile "$dir/redis.log"
    nodes+=("127.0.0.1:$port")
  done
  for n in "${nodes[@]}"; do
    for _ in $(seq 1 50); do
      redis-cli -h 127.0.0.1 -p "${n#*:}" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$STATE/redis-create.log" 2>&1 \
    || { cat "$STATE/redis-create.log" >&2; die "redis-cli --cluster create failed"; }
  for _ in $(seq 1 100); do
    redis-cli -h 127.0.0.1 -p "${nodes[0]#*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
    sleep 0.1
  done
  redis-cli -h 127.0.0.1 -p "${nodes[0]#*:}" cluster info | grep -q 'cluster_state:ok' || die "the Redis Cluster is not ok"
  REDIS_URL="redis://$(
    IFS=,
    echo "${nodes[*]}"
  )"
  echo "$REDIS_URL" >"$STATE/redis-url"
}

start_replica() {
  local i=$1 bin=$2 port
  port=$(free_port)
  mkdir -p "$STATE/replica$i"
  # setsid: the replica is not in this shell's process group, so a Ctrl-C here does
  # not stop the cluster.
  setsid "$bin" serve --data-dir "$STATE/replica$i" --listen "127.0.0.1:$port" \
    --store "$PG_URL" --shared "$REDIS_URL" --proxy-protocol-from 127.0.0.1/32 --drain-secs "$DRAIN" \
    </dev/null >"$STATE/replica$i.out" 2>"$STATE/replica$i.log" &
  echo $! >"$STATE/onetrip-$i.pid"
  wait_for_line "$STATE/replica$i.out" 300 "listening on" \
    || { cat "$STATE/replica$i.log" >&2; die "replica $i did not start"; }
  echo "$port" >"$STATE/replica$i.port"
}

start_haproxy() {
  local front servers="" i
  front=$(free_port)
  for i in $(seq 1 $REPLICAS); do
    servers+="    server onetrip$i 127.0.0.1:$(cat "$STATE/replica$i.port") check send-proxy-v2 check-send-proxy inter 200ms fall 2 rise 2"$'\n'
  done
  # deploy/haproxy.cfg with this cluster's ports: its `bind` line and its server lines.
  awk -v front="127.0.0.1:$front" -v servers="$servers" '
    /^[ \t]*bind[ \t]/ { sub(/bind[ \t]+[^ \t]+/, "bind " front) }
    /^[ \t]*server[ \t]/ { if (!done) { printf "%s", servers; done = 1 } next }
    { print }
  ' "$ROOT/deploy/haproxy.cfg" >"$STATE/haproxy.cfg"
  local haproxy
  haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
  "$haproxy" -c -q -f "$STATE/haproxy.cfg" || die "haproxy rejects $STATE/haproxy.cfg"
  # Foreground (-db) in its own session: its log (stderr) goes to a file, its PID is ours.
  setsid "$haproxy" -db -f "$STATE/haproxy.cfg" </dev/null >"$STATE/haproxy.log" 2>&1 &
  echo $! >"$STATE/haproxy.pid"
  echo "$front" >"$STATE/endpoint-port"
  # Healthy once every replica answers its check through the balancer.
  for _ in $(seq 1 100); do
    python3 - "$front" <<'EOF' && return 0
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
    sleep 0.1
  done
  die "no healthy replica behind HAProxy"
}

start_all() {
  [ -f "$STATE/endpoint-port" ] && die "already running ($STATE); stop it first"
  install_missing
  local bin
  bin=$(binary)
  mkdir -p "$STATE"
  # PostgreSQL may run as another user (as root: postgres): it must reach its
  # directory below this one.
  chmod 0711 "$STATE"
  trap 'echo "local-cluster: start failed, stopping what started" >&2; stop_all' ERR
  start_redis
  eval "$(bash "$ROOT/scripts/pg-throwaway.sh" start "$STATE/pg")"
  PG_URL=$ONETRIP_TEST_POSTGRES_URL
  # The first replica creates the identity in the store; the others load it.
  start_replica 1 "$bin"
  for i in $(seq 2 $REPLICAS); do start_replica "$i" "$bin"; done
  start_haproxy
  trap - ERR
  local fp
  fp=$(sed -n 's/^identity fingerprint: //p' "$STATE/replica1.out" | head -n 1)
  for i in $(seq 2 $REPLICAS); do
    [ "$(sed -n 's/^identity fingerprint: //p' "$STATE/replica$i.out" | head -n 1)" = "$fp" ] \
      || die "replica $i has another identity"
  done
  echo "$fp" >"$STATE/fingerprint"
  umask 077
  echo "$PG_URL" >"$STATE/store-url"
  echo "endpoint: http://127.0.0.1:$(cat "$STATE/endpoint-port")"
  echo "fingerprint: $fp"
  echo "store: $STATE/store-url (keys: $bin keys create --store \"\$(cat $STATE/store-url)\" --data-dir $STATE/cli)"
  echo "shared: $REDIS_URL"
  echo "state: $STATE (deploy/local-cluster.sh stop)"
}

status_all() {
  [ -d "$STATE" ] || {
    echo "not running ($STATE)"
    return 3
  }
  local f pid down=0
  for f in $(pidfiles); do
    pid=$(head -n 1 "$f")
    if alive "$pid"; then
      echo "$(basename "$f" .pid) pid $pid running"
    else
      echo "$(basename "$f" .pid) pid $pid gone"
      down=1
    fi
  done
  if [ -f "$STATE/pg/data/postmaster.pid" ]; then
    pid=$(head -n 1 "$STATE/pg/data/postmaster.pid")
    if alive "$pid"; then echo "postgres pid $pid running"; else
      echo "postgres pid $pid gone"
      down=1
    fi
  fi
  [ -f "$STATE/endpoint-port" ] && echo "endpoint: http://127.0.0.1:$(cat "$STATE/endpoint-port")"
  [ -f "$STATE/fingerprint" ] && echo "fingerprint: $(cat "$STATE/fingerprint")"
  return $down
}

[ $# -eq 1 ] || usage
case "$1" in
start) start_all ;;
stop) stop_all ;;
status) status_all ;;
*) usage ;;
esac
