#!/usr/bin/env bash
# The end-to-end suite: both charts installed into a real API server, the
# real `xks-operator run` (two replicas, the chart ServiceAccount's token)
# and the emulator as AWS. See tests/e2e/README.md.
#
#   tests/e2e/run.sh [pytest args]
#
# Without KUBECONFIG it builds (once, cached) and starts its own control plane
# and stops it afterwards; with KUBECONFIG it uses that cluster and starts
# nothing but the operator and emulator processes.
#
#   XKS_OPERATOR_BIN   binary under test (default target/debug/xks-operator);
#                      copied first, so a rebuild during the run changes nothing
#   XKS_EMULATOR_BIN   the emulator as AWS (default target/debug/xks-emulator
#                      when built, else `xks-operator emulator`)
#   KUBECTL            kubectl for a KUBECONFIG cluster (default: kubectl on PATH)
#   XKS_E2E_REPORT     API-server load figures (default target/e2e/api-load.md)
#   XKS_E2E_KEEP=1     keep the work dir (logs, audit log) instead of removing it
#   XKS_E2E_AUDIT_LOG  with KUBECONFIG: that API server's audit log, if readable here
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
here="$root/tests/e2e"
cd "$root"

started=$SECONDS
bin="${XKS_OPERATOR_BIN:-target/debug/xks-operator}"
[[ -x "$bin" ]] || { echo "e2e: $bin is not built (cargo build, or set XKS_OPERATOR_BIN)" >&2; exit 2; }
report="${XKS_E2E_REPORT:-$root/target/e2e/api-load.md}"

work="$(mktemp -d "${TMPDIR:-/tmp}/xks-e2e.XXXXXX")"
cp_dir=""
cleanup() {
  local rc=$?
  if [[ -n "$cp_dir" ]]; then bash "$here/control-plane.sh" stop "$cp_dir" || true; fi
  if [[ "${XKS_E2E_KEEP:-}" == 1 ]]; then
    echo "e2e: kept $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Snapshots: the binary and the files the suite reads, as they are now.
cp "$bin" "$work/xks-operator"
export XKS_OPERATOR_BIN="$work/xks-operator"
emulator_bin="${XKS_EMULATOR_BIN:-target/debug/xks-emulator}"
if [[ -x "$emulator_bin" ]]; then
  cp "$emulator_bin" "$work/xks-emulator"
  export XKS_EMULATOR_BIN="$work/xks-emulator"
elif [[ -n "${XKS_EMULATOR_BIN:-}" ]]; then
  echo "e2e: XKS_EMULATOR_BIN=$XKS_EMULATOR_BIN is not an executable" >&2; exit 2
fi
mkdir -p "$work/tree/tests"
cp -r charts crds examples "$work/tree/"
cp -r tests/corpus "$work/tree/tests/"
export XKS_E2E_TREE="$work/tree"
export XKS_E2E_WORKDIR="$work/run"
export XKS_E2E_LOAD_REPORT="$work/api-load.md"

py="${PYTHON:-python3}"
if ! "$py" -c 'import helm_python, pytest, yaml' 2>/dev/null; then
  echo "e2e: installing tests/e2e/requirements.txt from PyPI"
  # A Debian system python refuses global installs (PEP 668).
  "$py" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" \
    || "$py" -m pip install --quiet --disable-pip-version-check --user --break-system-packages -r "$here/requirements.txt"
fi

if [[ -n "${KUBECONFIG:-}" ]]; then
  echo "e2e: using the cluster of KUBECONFIG=$KUBECONFIG"
  export KUBECTL="${KUBECTL:-kubectl}"
else
  t=$SECONDS
  bash "$here/control-plane.sh" build >/dev/null
  echo "e2e: control plane binaries ready in $((SECONDS - t))s"
  t=$SECONDS
  cp_dir="$work/control-plane"
  bash "$here/control-plane.sh" start "$cp_dir"
  set -a
  # shellcheck disable=SC1091
  . "$cp_dir/env"
  set +a
  echo "e2e: control plane started in $((SECONDS - t))s"
fi

t=$SECONDS
set +e
# This suite only (not the repository's other Python suites), unless told.
if [[ $# -eq 0 ]]; then
  set -- "$here"
fi
"$py" -m pytest -c "$here/pytest.ini" -p no:cacheprovider -rfE --durations=8 "$@"
rc=$?
set -e
echo "e2e: suite took $((SECONDS - t))s (whole run $((SECONDS - started))s), pytest exit $rc"
if [[ -f "$XKS_E2E_LOAD_REPORT" ]]; then
  mkdir -p "$(dirname "$report")"
  cp "$XKS_E2E_LOAD_REPORT" "$report"
  echo "e2e: API-server load figures ($report):"
  cat "$report"
fi
if [[ $rc -ne 0 && -d "$XKS_E2E_WORKDIR" ]]; then
  for f in "$XKS_E2E_WORKDIR"/xks-operator-*.log; do
    [[ -f "$f" ]] || continue
    echo "---- last lines of $(basename "$f")"
    tail -n 15 "$f"
  done
fi
exit "$rc"
