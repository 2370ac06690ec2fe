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
