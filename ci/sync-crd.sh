#!/usr/bin/env bash
# Copy the generated CRD into the CRD chart, byte for byte.
# The source of truth is crds/externalkeystores.xks-operator.io.yaml
# (regenerate it with `cargo run -q -- crd > crds/externalkeystores.xks-operator.io.yaml`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/crds/externalkeystores.xks-operator.io.yaml"
dst="$root/charts/xks-operator-crds/files/externalkeystores.xks-operator.io.yaml"
mkdir -p "$(dirname "$dst")"
cp "$src" "$dst"
echo "sync-crd: copied crds/$(basename "$src") -> charts/xks-operator-crds/files/"
