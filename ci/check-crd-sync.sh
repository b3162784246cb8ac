#!/usr/bin/env bash
# Fail when the CRD chart's copy differs from the generated CRD in crds/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/crds/externalkeystores.xks-operator.io.yaml"
dst="$root/charts/xks-operator-crds/files/externalkeystores.xks-operator.io.yaml"
echo "check-crd-sync: comparing crds/$(basename "$src") with charts/xks-operator-crds/files/$(basename "$dst")"
if ! cmp -s "$src" "$dst"; then
  echo "check-crd-sync: FAIL: the CRD chart's copy differs from crds/ (run ci/sync-crd.sh and commit):" >&2
  diff -u "$src" "$dst" | head -40 >&2 || true
  exit 1
fi
echo "check-crd-sync: OK (identical, $(wc -c < "$src") bytes)"
