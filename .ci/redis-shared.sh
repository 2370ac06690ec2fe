#!/usr/bin/env bash
# Installs what the Redis shared-state tests need (server/tests/redis_shared.rs and
# the harness in server/tests/redis_support/): redis-server and redis-cli. The tests
# themselves run in `cargo test --workspace` (under ONETRIP_REQUIRE_TOOLS=1 a missing
# redis-server fails them instead of skipping).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server redis-tools
fi
redis-server --version
redis-cli --version
