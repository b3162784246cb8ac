#!/bin/sh
# Regenerates BENCHMARKS.md from a real run (release build; about 20 minutes
# on 2 cores, most of it the 1000-store runs paced by the 5/s KMS quota, and
# a 3-minute soak). Extra arguments go to `xks-operator bench`.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
./target/release/xks-operator bench --markdown --soak 3m "$@" > BENCHMARKS.md.tmp
mv BENCHMARKS.md.tmp BENCHMARKS.md
