#!/bin/sh
# Smoke test of `xks-operator bench --quick` (about a minute on 2 cores): the
# benchmark runs end to end against the embedded emulator and exits non-zero
# if any store failed to reach CONNECTED. Figures are printed, not asserted:
# CI machines are too noisy for timing thresholds.
set -eu
cd "$(dirname "$0")/.."
cargo build --quiet
./target/debug/xks-operator bench --quick
