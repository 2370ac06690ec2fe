#!/usr/bin/env bash
# .ci/cluster-tests.sh: installs what the multi-replica suites (server/tests/cluster_*.rs)
# and deploy/local-cluster.sh run against: redis-server + redis-cli, HAProxy, PostgreSQL.
# The suites themselves run inside `cargo test --workspace`; call this before it,
# next to the other tool installs, so that under ONETRIP_REQUIRE_TOOLS=1 they fail
# rather than skip. Run from the repository root.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
# The packaged services are not wanted: the tests start their own on loopback.
for svc in redis-server haproxy postgresql; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
redis-server --version
/usr/sbin/haproxy -v 2>/dev/null | head -n 1 || haproxy -v | head -n 1
