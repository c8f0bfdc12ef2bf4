#!/usr/bin/env bash
# Installs everything the tests need (venv, package, Chromium for the browser tests) and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian chromium for the browser tests..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "chromium could not be installed: browser tests will be skipped"
fi
exec .venv/bin/python -m pytest -q -ra "$@"
