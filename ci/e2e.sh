#!/usr/bin/env bash
# CI's end-to-end step (.ci/run): tests/e2e/run.sh against the control plane
# it builds from tests/e2e/control-plane (Go; cached outside the work tree in
# ${XKS_E2E_CACHE:-~/.cache/xks-operator-e2e}), never against whatever cluster
# a KUBECONFIG of the CI machine might name. Needs the debug build of
# xks-operator (and xks-emulator when the workspace has it), go, python3, openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v go >/dev/null || { echo "e2e: go is not installed (Go 1.26 builds the control plane)" >&2; exit 1; }
exec env -u KUBECONFIG bash tests/e2e/run.sh "$@"
