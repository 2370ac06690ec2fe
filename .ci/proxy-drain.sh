#!/usr/bin/env bash
# proxy-drain: installs HAProxy (the PROXY-protocol and deploy/haproxy.cfg tests run a
# real one) and runs those tests with missing tools as failures, not skips.
# Call from .ci/run after the "tools tests run against" install step, before the
# workspace test run (or instead of a separate run: the workspace run includes them).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v haproxy >/dev/null 2>&1; then
  apt-get update && apt-get install -y haproxy
fi
haproxy -v | head -1
haproxy -c -f deploy/haproxy.cfg

export ONETRIP_REQUIRE_TOOLS=1
cargo test -p onetrip-server --lib -- proxy_protocol ip_tests
cargo test -p onetrip-server --test proxy_drain
cargo test -p onetrip-server --test deploy
