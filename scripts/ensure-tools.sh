#!/usr/bin/env bash
# Installs the external tools the integration tests use, when missing.
# Idempotent; safe to run on a fresh machine (needs root for apt-get, as CI has).
set -eu
cd "$(dirname "$0")/.."
