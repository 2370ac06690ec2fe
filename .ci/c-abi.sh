#!/usr/bin/env bash
# C ABI gates (bindings/c): the committed header is exactly what cbindgen generates
# from the Rust source, and the C test program links against both the shared and
# the static library. The C program itself runs against a real server, plainly and
# under valgrind, in `cargo test` (bindings/c/tests/c_program.rs); this script
# installs the tools that test needs, so call it before the README test command.
#
#   .ci/c-abi.sh               check (CI)
#   .ci/c-abi.sh --regenerate  rewrite bindings/c/include/onetrip.h after an API change
set -euo pipefail
cd "$(dirname "$0")/.."

CBINDGEN_VERSION=0.29.2
header=bindings/c/include/onetrip.h

echo "== C ABI tools: gcc, valgrind, cbindgen $CBINDGEN_VERSION"
missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update && apt-get install -y "${missing[@]}"
fi
if [ "$(cbindgen --version 2>/dev/null)" != "cbindgen $CBINDGEN_VERSION" ]; then
  cargo install --locked cbindgen --version "$CBINDGEN_VERSION"
fi

echo "== C ABI header: regenerate with cbindgen, fail on any difference"
(cd bindings/c && cbindgen --quiet --config cbindgen.toml --output include/onetrip.h)
if [ "${1:-}" = "--regenerate" ]; then
  echo "rewrote $header"
  exit 0
fi
if ! git diff --exit-code -- "$header"; then
  echo "error: $header is not what cbindgen generates from bindings/c/src; run .ci/c-abi.sh --regenerate and commit it" >&2
  exit 1
fi

echo "== C ABI: the C test compiles with -Wall -Wextra -Werror -std=c11 and links statically"
cargo build -p onetrip-ffi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
gcc -Wall -Wextra -Werror -std=c11 -pthread -I bindings/c/include \
  bindings/c/tests/c/onetrip_test.c target/debug/libonetrip.a -lm -ldl -o "$out/onetrip_test_static"
# The README's C driver (notes/c-abi.md; bindings/c/examples/driver.c) builds too.
gcc -Wall -Wextra -Werror -std=c11 -I bindings/c/include bindings/c/examples/driver.c \
  -L target/debug -lonetrip -o "$out/driver"
echo "static link ok ($(du -h "$out/onetrip_test_static" | cut -f1))"
# The C program's run against a real server, plainly and under valgrind, is
# `cargo test -p onetrip-ffi --test c_program`, part of `cargo test --workspace`.
