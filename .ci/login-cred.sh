#!/usr/bin/env bash
# CI steps of the database login credential (issue 14 items 1, 2, 4):
#  1. onetrip-client builds without its HTTP stack, and then pulls in no hyper,
#     tokio or rustls (the verifier-only build a database or PAM module uses);
#  2. the PAM module and the real PostgreSQL login tests (bindings/pam).
# Run from the repository root, as root in CI (the PAM test writes /etc/pam.d/).
set -euo pipefail

echo "== onetrip-client verifier-only build (no http feature)"
for backend in aws-lc rustcrypto; do
  cargo build -p onetrip-client --no-default-features --features "$backend"
  tree=$(cargo tree -p onetrip-client --no-default-features --features "$backend" -e normal --prefix none)
  if grep -E '^(hyper|hyper-util|hyper-rustls|tokio|rustls|http|webpki-roots) ' <<<"$tree"; then
    echo "onetrip-client --no-default-features --features $backend pulls in an HTTP stack or runtime" >&2
    exit 1
  fi
done

echo "== pam_onetrip.so and a real PostgreSQL login (psycopg, pytest)"
if [ "$(id -u)" = 0 ]; then
  need=()
  dpkg -s libpam0g-dev >/dev/null 2>&1 || need+=(libpam0g-dev)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update
    apt-get install -y "${need[@]}"
  fi
fi
python3 -c 'import psycopg, pytest' 2>/dev/null || python3 -m pip install 'psycopg[binary]' pytest
cargo test -p onetrip-pam
cargo build -p onetrip-server --bin onetrip
cargo build -p onetrip-pam --example login_credential
# Last, on its own: the module as a database host loads it, without the HTTP stack
# the example's dev-dependency adds to a shared build.
cargo build -p onetrip-pam --lib
if strings target/debug/libpam_onetrip.so | grep -qE 'hyper-[0-9]|tokio-[0-9]'; then
  echo "pam_onetrip.so links hyper or tokio" >&2
  exit 1
fi
ONETRIP_REQUIRE_TOOLS=${ONETRIP_REQUIRE_TOOLS:-1} python3 -m pytest -s -v -p no:cacheprovider bindings/pam/tests/test_pg_login.py
