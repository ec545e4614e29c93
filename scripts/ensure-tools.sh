#!/usr/bin/env bash
# Installs the external tools the integration tests use, when missing.
# Idempotent; safe to run on a fresh machine (needs root for apt-get, as CI has).
set -eu
cd "$(dirname "$0")/.."

# sslscan (Debian package): protocol and cipher scan of serve_tls (tests/test_tls_scanners.py).
if ! command -v sslscan >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq sslscan >/dev/null
fi

# prometheus + promtool (Debian package prometheus): tests/test_metrics_prometheus.py scrapes
# with a real server, tests/test_metrics_server.py runs `promtool check metrics`. Installed
# without its recommends (node-exporter etc.); no service is started inside a container.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# sslyze pins its own cryptography (<47), which clashes with ours: it gets its own venv.
if ! .venv-sslyze/bin/sslyze --help >/dev/null 2>&1; then
  rm -rf .venv-sslyze
  python3 -m venv .venv-sslyze
  .venv-sslyze/bin/pip install -q --disable-pip-version-check 'sslyze==6.3.1' >/dev/null
fi
