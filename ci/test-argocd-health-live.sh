#!/usr/bin/env bash
# Argo CD health check against statuses written by the real engine: starts
# `xks-operator emulator` on 127.0.0.1, reconciles scenarios derived from
# examples/ (created, awaiting approval, suspended, ObserveOnly drift, missing
# adopted id, wrong credential) and runs gitops/argocd/health.lua on them.
# Needs a built binary: pass its path, default target/debug/xks-operator.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/debug/xks-operator}"
if ! command -v lua5.1 >/dev/null 2>&1; then
  echo "test-argocd-health-live: installing lua5.1 (apt-get)"
  sudo_=""
  [ "$(id -u)" -ne 0 ] && sudo_="sudo"
  $sudo_ apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq lua5.1 >/dev/null
fi
py="${PYTHON:-python3}"
if ! "$py" -c 'import yaml' 2>/dev/null; then
  "$py" -m pip install --quiet --disable-pip-version-check 'PyYAML>=6,<7' \
    || "$py" -m pip install --quiet --disable-pip-version-check --user --break-system-packages 'PyYAML>=6,<7'
fi
echo "test-argocd-health-live: engine statuses from $bin against its emulator"
exec "$py" "$root/ci/argocd_live.py" "$bin"
