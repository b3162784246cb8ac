#!/usr/bin/env bash
# Regenerate ci/monitoring/xks-operator.rules.yaml from the chart's
# templates/prometheusrule.yaml (default values). ci/check-chart.sh fails when
# it is stale. Installs ci/requirements.txt from PyPI when missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
py="${PYTHON:-python3}"
if ! "$py" -c 'import helm_python, kubernetes_validate, jsonschema, celpy, yaml' 2>/dev/null; then
  "$py" -m pip install --quiet --disable-pip-version-check -r "$root/ci/requirements.txt" \
    || "$py" -m pip install --quiet --disable-pip-version-check --user --break-system-packages -r "$root/ci/requirements.txt"
fi
exec "$py" "$root/ci/check_chart.py" --write-rules
