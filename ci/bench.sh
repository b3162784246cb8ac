#!/bin/sh
# Regenerates BENCHMARKS.md from real runs on this machine: a release build
# of `xks-operator bench --markdown --soak 3m` (about 20 minutes on 2 cores,
# most of it the 1000-store runs paced by the 5/s KMS quota, and a 3-minute
# soak), then the API-server load figures of the end-to-end suite against a
# real kube-apiserver (ci/e2e.sh, about 5 minutes once its control plane is
# built; skipped with XKS_BENCH_SKIP_E2E=1, which leaves that section out).
# Extra arguments go to `xks-operator bench`.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --workspace
./target/release/xks-operator bench --markdown --soak 3m "$@" > BENCHMARKS.md.tmp
if [ "${XKS_BENCH_SKIP_E2E:-0}" != 1 ]; then
    report="$PWD/target/e2e/api-load.md"
    rm -f "$report"
    XKS_E2E_REPORT="$report" \
        XKS_OPERATOR_BIN=target/release/xks-operator \
        XKS_EMULATOR_BIN=target/release/xks-emulator \
        bash ci/e2e.sh >&2
    {
        printf '\n## API-server load (a real kube-apiserver)\n\n'
        printf 'From the end-to-end suite (`ci/e2e.sh`, `tests/e2e/test_40_load.py`) at commit %s, in the same run as the figures above: kube-apiserver 1.36 built from its Go module, the chart'"'"'s two operator replicas under leader election with the proxy health watch on (every minute), the emulator as AWS. Write requests as kube-apiserver'"'"'s own `apiserver_request_total` counts them (cross-checked with its audit log). Targets (issue 11): 0 writes per idle drift round; per rotation at most one status write per step transition (2 × 5 steps) plus the finalizer.\n\n' "$(git rev-parse --short HEAD)"
        cat "$report"
    } >> BENCHMARKS.md.tmp
fi
mv BENCHMARKS.md.tmp BENCHMARKS.md
