#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, provider contract tests and
# the end-to-end tests against the real control plane (built on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
# Assigned apart from the export, so that a failing install stops the run.
tools="$(bash tests/tools/install.sh)"
export PATH="$tools:$PATH"

bash tests/controlplane/build.sh >/dev/null
# The arm64 release binary that tests/release.rs runs under qemu-user: cross-built
# before the tests (cold, the longest build of the suite) so it does not compete
# with them for the CPUs; the test's own call is then a no-op.
bash deploy/build-static.sh --arch arm64 >/dev/null
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Benches are compiled by clippy above and run on their own (`cargo bench`, see README).
cargo test --workspace --lib --bins --tests -- --test-threads=2
# The AWS lab: synthesised offline and checked with aws_cdk.assertions.
bash cdk/test.sh
