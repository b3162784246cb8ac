#!/usr/bin/env bash
# Print every xks_operator_* metric the alert rules and the Grafana dashboard
# query, one per line, sorted: the names a real /metrics must contain.
#   (no flag)    sample names as on /metrics lines (..._total, ..._bucket)
#   --families   metric families as on `# TYPE` lines (no _total/_bucket/_sum/_count)
# Needs python3 and PyYAML.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/monitoring.py" metric-names "$@"
