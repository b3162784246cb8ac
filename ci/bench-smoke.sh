#!/bin/sh
# Smoke test of `xks-operator bench --quick` plus a short soak (about two
# minutes on 2 cores): the benchmark runs end to end against the embedded
# emulator and exits non-zero if any store failed to reach CONNECTED or the
# soak broke a promise: a second store, a store left disconnected, a stale
# credential in KMS, a secret in status, a store that did not converge by
# itself after the faults stopped (the soak never requests a reconcile, but
# for the person who put a late secret on the proxies), a store declared
# Connected down more than 30 s after a fault episode ended, or a stall for
# a failure that can pass. Other figures are printed, not asserted: CI
# machines are too noisy for timing thresholds.
set -eu
cd "$(dirname "$0")/.."
cargo build --locked --quiet
./target/debug/xks-operator bench --quick --soak 30s --soak-stores 4
