#!/usr/bin/env bash
# Lint, render and validate both Helm charts and the examples.
# Installs its Python packages (ci/requirements.txt) from PyPI when missing;
# needs python3 >= 3.10 and pip. See ci/check_chart.py for what is checked.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

py="${PYTHON:-python3}"
if ! "$py" -c 'import helm_python, kubernetes_validate, jsonschema, celpy, yaml' 2>/dev/null; then
  echo "check-chart: installing ci/requirements.txt from PyPI"
  # A Debian system python refuses global installs (PEP 668): fall back to
  # --user --break-system-packages there.
  "$py" -m pip install --quiet --disable-pip-version-check -r ci/requirements.txt \
    || "$py" -m pip install --quiet --disable-pip-version-check --user --break-system-packages -r ci/requirements.txt
fi

bash ci/check-crd-sync.sh
"$py" ci/check_chart.py
