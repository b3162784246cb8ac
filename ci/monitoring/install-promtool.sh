#!/usr/bin/env bash
# Install promtool (Debian's `prometheus` package) when it is missing.
# Needs root, as on CI and the project's machines.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
echo "install-promtool: installing Debian's prometheus package (for promtool)"
export DEBIAN_FRONTEND=noninteractive
# The package's postinst enables a service; nothing here starts it.
apt-get install -y --no-install-recommends prometheus >/dev/null \
  || { apt-get update >/dev/null && apt-get install -y --no-install-recommends prometheus >/dev/null; }
promtool --version 2>&1 | head -1
