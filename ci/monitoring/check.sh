#!/usr/bin/env bash
# The alert rules and the Grafana dashboard, checked with promtool (Debian's
# `prometheus` package, installed when missing):
#   - promtool check rules on ci/monitoring/xks-operator.rules.yaml (the
#     chart's PrometheusRule as a plain rules file; ci/check-chart.sh checks
#     that it is current);
#   - every metric the rules and the dashboard query is in the contract;
#   - the promtool tests have a firing case per alert and series shaped like
#     the contract;
#   - every PromQL expression of the dashboard parses;
#   - promtool test rules on ci/monitoring/tests/*.yaml.
# Closes with "monitoring: N passed, N failed"; exits 1 on any failure.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
py="${PYTHON:-python3}"

bash ./install-promtool.sh || { echo "monitoring: 0 passed, 1 failed (no promtool)"; exit 1; }
if ! "$py" -c 'import yaml' 2>/dev/null; then
  "$py" -m pip install --quiet --disable-pip-version-check PyYAML \
    || "$py" -m pip install --quiet --disable-pip-version-check --user --break-system-packages PyYAML
fi

passed=0
failed=0
run() {
  local name="$1"
  shift
  local out
  if out="$("$@" 2>&1)"; then
    passed=$((passed + 1))
    printf 'ok   %s\n' "$name"
  else
    failed=$((failed + 1))
    printf 'FAIL %s\n%s\n' "$name" "$out"
  fi
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

run "promtool check rules xks-operator.rules.yaml" promtool check rules xks-operator.rules.yaml
run "rules and dashboard query only metrics of the contract" "$py" monitoring.py check-names
run "promtool tests: a firing case per alert, series shaped like the contract" "$py" monitoring.py check-tests
run "every PromQL expression of the dashboard parses" \
  sh -c "\"$py\" monitoring.py dashboard-rules \"$tmp/dashboard.rules.yaml\" && promtool check rules \"$tmp/dashboard.rules.yaml\""
for t in tests/*.yaml; do
  run "promtool test rules $t" promtool test rules "$t"
done

echo "metrics the rules and the dashboard query (ci/monitoring/metric-names.sh):"
"$py" monitoring.py metric-names | sed 's/^/  /'
echo "monitoring: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
