#!/usr/bin/env bash
# The Python package (bindings/python): installs it into a fresh venv exactly as a
# user does (`pip install ./bindings/python`, maturin fetched from PyPI as the
# build backend), type-checks the examples against the shipped stubs, and runs the
# pytest suite against a real `onetrip serve` built from this tree.
#
# The wheel is built with cargo's dev profile so it shares target/debug with the
# rest of CI (the default, release, takes ~10 minutes more on 2 cores and is what
# `pip install` gives users; set ONETRIP_PY_RELEASE=1 to test that instead).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  apt-get update && apt-get install -y python3-venv
fi

echo "== onetrip server binary for the tests (target/debug/onetrip)"
cargo build -p onetrip-server

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip)

echo "== pip install ./bindings/python into a fresh venv"
if [ "${ONETRIP_PY_RELEASE:-0}" = 1 ]; then
  "${pip[@]}" install ./bindings/python
else
  MATURIN_PEP517_ARGS="--profile dev" "${pip[@]}" install ./bindings/python
fi
"${pip[@]}" install pytest mypy

echo "== the installed package is the abi3 wheel, with stubs and py.typed"
"$work/venv/bin/python" - <<'PYCHECK'
import importlib.resources as r, onetrip, onetrip._onetrip as native
files = {p.name for p in r.files("onetrip").iterdir()}
assert {"py.typed", "_onetrip.pyi"} <= files, files
assert ".abi3." in native.__file__, native.__file__
print("onetrip", onetrip.__version__, "from", native.__file__)
PYCHECK

echo "== mypy --strict on the examples (stubs are complete enough to type-check a driver)"
(cd "$work" && "$work/venv/bin/python" -m mypy --strict "$OLDPWD/bindings/python/examples/client.py" "$OLDPWD/bindings/python/examples/verifier.py")

echo "== pytest against a real onetrip serve"
ONETRIP_REQUIRE_TOOLS=1 ONETRIP_BIN="$PWD/target/debug/onetrip" \
  "$work/venv/bin/python" -m pytest -q -p no:cacheprovider bindings/python/tests
