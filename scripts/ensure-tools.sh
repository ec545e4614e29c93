#!/usr/bin/env bash
# Installs the external tools the integration tests use, when missing (`make tools`).
#
# Idempotent. Debian packages come from apt-get when it exists and we are root (or may use
# `sudo -n`, without a password); sslyze goes into its own venv (no root needed). Whatever
# cannot be installed is listed with how to get it. Exit status: non-zero only under CI
# (CI=true), where every tool must be there; elsewhere the tests that need a missing tool
# skip themselves (and say how to get it), and CI=true makes them fail instead.
set -u
cd "$(dirname "$0")/.."

case "${CI:-}" in
  "" | 0 | false | False | FALSE | no) ci=false ;;
  *) ci=true ;;
esac

# How to get each tool by hand (tests/_tools.py says the same when it skips a test).
SSLSCAN_HOW="apt-get install sslscan (Debian/Ubuntu), brew install sslscan (macOS)"
PROMETHEUS_HOW="apt-get install --no-install-recommends prometheus (Debian/Ubuntu),"
PROMETHEUS_HOW+=" brew install prometheus (macOS), or a release from"
PROMETHEUS_HOW+=" https://prometheus.io/download/ on PATH (prometheus and promtool)"
SSLYZE_HOW="python3 -m venv .venv-sslyze && .venv-sslyze/bin/pip install sslyze==6.3.1"
REDIS_HOW="apt-get install redis-server (Debian/Ubuntu; /usr/bin/redis-server), brew install redis (macOS)"
ETCD_HOW="apt-get install etcd-server etcd-client (Debian/Ubuntu: etcd 3.4), or a release from"
ETCD_HOW+=" https://github.com/etcd-io/etcd/releases on PATH (etcd and etcdctl)"

missing=()  # "tool|how to get it"
apt_updated=false

# apt_install PACKAGE [apt-get options...]: install a Debian package if we can; false if not.
apt_install() {
  local sudo=""
  command -v apt-get >/dev/null 2>&1 || return 1
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      return 1
    fi
  fi
  if ! $apt_updated; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
    apt_updated=true
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

have() { command -v "$1" >/dev/null 2>&1; }

# sslscan (Debian package): protocol and cipher scan of serve_tls (tests/test_tls_scanners.py).
if ! have sslscan; then
  apt_install sslscan || true
  have sslscan || missing+=("sslscan|$SSLSCAN_HOW")
fi

# prometheus + promtool (Debian package prometheus): tests/test_metrics_prometheus.py scrapes
# with a real server, tests/test_metrics_server.py and tests/test_metrics_docs.py run promtool.
# Installed without its recommends (node-exporter etc.); no service is started in a container.
if ! have prometheus || ! have promtool; then
  apt_install --no-install-recommends prometheus || true
  for tool in prometheus promtool; do
    have "$tool" || missing+=("$tool|$PROMETHEUS_HOW")
  done
fi

# etcd + etcdctl (Debian packages etcd-server, etcd-client): `make cluster-demo` and
# tests/test_examples_cluster.py run their own 3-member cluster on free loopback ports (a
# packaged etcd service, where one starts, is not used).
if ! have etcd || ! have etcdctl; then
  apt_install etcd-server etcd-client || true
  for tool in etcd etcdctl; do
    have "$tool" || missing+=("$tool|$ETCD_HOW")
  done
fi

# redis-server (Debian package): tests/test_redis*.py start their own server on a free loopback
# port (no persistence) and stop it by its pid; no service is started here.
if ! have redis-server; then
  apt_install redis-server || true
  have redis-server || missing+=("redis-server|$REDIS_HOW")
fi

# sslyze pins its own cryptography (<47), which clashes with ours: it gets its own venv.
if ! .venv-sslyze/bin/sslyze --help >/dev/null 2>&1; then
  rm -rf .venv-sslyze
  if python3 -m venv .venv-sslyze \
    && .venv-sslyze/bin/pip install -q --disable-pip-version-check 'sslyze==6.3.1' >/dev/null
  then
    :
  else
    missing+=("sslyze|$SSLYZE_HOW")
  fi
fi

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
echo "ensure-tools: missing external tools (the tests that need them will not run):" >&2
for entry in "${missing[@]}"; do
  echo "  ${entry%%|*}: ${entry#*|}" >&2
done
if $ci; then
  echo "ensure-tools: CI=true: every tool is required, failing" >&2
  exit 1
fi
echo "ensure-tools: not under CI: those tests skip (CI=true makes them fail)" >&2
exit 0
