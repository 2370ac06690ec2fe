#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for the tests: a fresh initdb in a temporary
# directory, listening on 127.0.0.1 on a free port (its Unix socket in that
# directory too), with a random password. Used by .ci/run and by developers:
#
#   dir=$(mktemp -d)
#   eval "$(scripts/pg-throwaway.sh start "$dir")"   # exports ONETRIP_TEST_POSTGRES_URL
#   cargo test -p onetrip-server store::
#   scripts/pg-throwaway.sh stop "$dir"              # stops it by PID, removes the directory
#   (halt DIR / resume DIR: stop it and start it again on the same port, data kept)
#
# PostgreSQL refuses to run as root: as root, the cluster runs as the `postgres`
# user when it exists (`nobody` otherwise), which then owns the directory.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR | stop DIR | halt DIR | resume DIR" >&2
  exit 2
}

bindir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
    return
  fi
  local newest
  newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$newest" ] && [ -x "$newest/initdb" ]; then
    echo "$newest"
    return
  fi
  local initdb
  initdb=$(command -v initdb || true)
  [ -n "$initdb" ] || { echo "PostgreSQL not found: apt-get install -y postgresql" >&2; exit 1; }
  dirname "$(readlink -f "$initdb")"
}

# Runs a command as the cluster's user.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid="$OWNER" --regid="$(id -g "$OWNER")" --init-groups -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

[ $# -eq 2 ] || usage
cmd=$1
dir=$(readlink -f "$2")
if [ "$(id -u)" = 0 ]; then
  if id postgres >/dev/null 2>&1; then OWNER=postgres; else OWNER=nobody; fi
else
  OWNER=$(id -un)
fi

case "$cmd" in
start)
  bin=$(bindir)
  mkdir -p "$dir"
  chmod 0700 "$dir"
  password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  umask 077
  printf '%s\n' "$password" >"$dir/pwfile"
  [ "$(id -u)" = 0 ] && chown -R "$OWNER" "$dir"
  as_owner "$bin/initdb" -D "$dir/data" -U onetrip --pwfile="$dir/pwfile" --auth=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  rm -f "$dir/pwfile"
  # A port can be taken between the probe and the bind: try a few.
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=300" start >/dev/null; then
      echo "$port" >"$dir/port"
      echo "export ONETRIP_TEST_POSTGRES_URL='postgres://onetrip:$password@127.0.0.1:$port/postgres?sslmode=disable'"
      exit 0
    fi
  done
  cat "$dir/postgres.log" >&2
  exit 1
  ;;
stop | halt)
  # halt: stop the server but keep the cluster, so `resume` starts it again on the
  # same port (tests of what onetrip does while its database is down).
  pidfile="$dir/data/postmaster.pid"
  if [ -f "$pidfile" ]; then
    pid=$(head -n 1 "$pidfile")
    # SIGINT: PostgreSQL's fast shutdown (ends sessions, checkpoints, exits).
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  if [ "$cmd" = stop ]; then rm -rf "$dir"; fi
  ;;
resume)
  bin=$(bindir)
  port=$(cat "$dir/port")
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=300" start >/dev/null \
    || { cat "$dir/postgres.log" >&2; exit 1; }
  ;;
*)
  usage
  ;;
esac
