#!/usr/bin/env bash
# The chart passes flags to `xks-operator run` (--listen-addr, --leader-election,
# --lease-name, --watch-namespace once per watchNamespaces entry, --log-format,
# --log-level, --drift-interval, --kms-rate-limit, --concurrency). Fail when
# the built binary's `run --help` lacks any of them, or when `run` rejects the
# chart's argument list of any ci/values set (checked as `run ARGS... --help`).
# Pass the binary, default target/debug/xks-operator.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/debug/xks-operator}"
py="${PYTHON:-python3}"
if ! "$py" -c 'import helm_python, kubernetes_validate, jsonschema, celpy, yaml' 2>/dev/null; then
  "$py" -m pip install --quiet --disable-pip-version-check -r "$root/ci/requirements.txt" \
    || "$py" -m pip install --quiet --disable-pip-version-check --user --break-system-packages -r "$root/ci/requirements.txt"
fi
echo "check-chart-flags: chart flags vs \`$bin run --help\`"
exec "$py" "$root/ci/check_chart.py" --check-flags "$bin"
