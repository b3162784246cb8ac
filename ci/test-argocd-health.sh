#!/usr/bin/env bash
# Run the Argo CD health check (gitops/argocd/health.lua) against every fixture
# in gitops/argocd/fixtures/ with Debian's lua5.1 (the Lua version Argo CD's
# gopher-lua implements). Installs lua5.1 with apt-get when it is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v lua5.1 >/dev/null 2>&1; then
  echo "test-argocd-health: installing lua5.1 (apt-get)"
  sudo_=""
  [ "$(id -u)" -ne 0 ] && sudo_="sudo"
  $sudo_ apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq lua5.1 >/dev/null
fi
echo "test-argocd-health: $(lua5.1 -v 2>&1 | head -n1); health.lua against gitops/argocd/fixtures/*.json"
exec lua5.1 "$root/gitops/argocd/test.lua"
