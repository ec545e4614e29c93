#!/usr/bin/env bash
# Clean install proof (part of `make test`): build the wheel, install it into a fresh venv with
# nothing but its runtime dependencies (anyio, prometheus-client, cryptography: no trio, no
# sniffio, no httpx, no test tools) and run scripts/clean_install_smoke.py there, outside the
# checkout, on plain asyncio. pip's cache is reused, so after the first run this takes seconds.
#
#   PYTHON   base interpreter of the fresh venv (default: python3)
#   PIP_PY   interpreter whose pip builds and installs (default: .venv/bin/python)
#   CLEAN_VENV  where the fresh venv goes (default: .venv-clean; recreated on every run)
set -eu
cd "$(dirname "$0")/.."
root=$PWD
PYTHON=${PYTHON:-python3}
PIP_PY=${PIP_PY:-.venv/bin/python}
CLEAN_VENV=${CLEAN_VENV:-.venv-clean}
start=$(date +%s%N)

out=$(mktemp -d "${TMPDIR:-/tmp}/resilience-wheel.XXXXXX")
trap 'rm -rf "$out"' EXIT

# The wheel, built by hatchling in an isolated build environment (as any installer would).
"$PIP_PY" -m pip wheel -q --disable-pip-version-check --no-deps --wheel-dir "$out" .
wheels=("$out"/anyio_resilience-*.whl)
if [ "${#wheels[@]}" -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
  echo "clean install: expected one anyio_resilience wheel, got: $(ls "$out")" >&2
  exit 1
fi
wheel=${wheels[0]}

# A fresh venv without pip (nothing in it but what the wheel pulls in); our pip installs into it.
rm -rf "$CLEAN_VENV"
"$PYTHON" -m venv --without-pip "$CLEAN_VENV"
clean_py=$(cd "$CLEAN_VENV" && pwd)/bin/python
"$PIP_PY" -m pip --python "$clean_py" install -q --disable-pip-version-check \
  "$wheel"
echo "clean install: $("$PIP_PY" -m pip --python "$clean_py" list \
  --disable-pip-version-check --format=freeze 2>/dev/null | tr '\n' ' ')"

# -I: no PYTHONPATH, no user site, not the script's directory; cwd is outside the checkout.
(cd "$out" && "$clean_py" -I "$root/scripts/clean_install_smoke.py" "$wheel")

end=$(date +%s%N)
echo "clean install: passed in $(( (end - start) / 1000000 )) ms"
