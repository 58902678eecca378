#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer, AddressSanitizer) of every
# provider response parser and the config loader, for a bounded time each.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, all targets)
#
# Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
# Findings land in tests/fuzz/artifacts/<target>/; new corpus entries in
# tests/fuzz/work/ (both ignored by git). Seeds are read from corpus/<target>
# and regressions/<target>, which the stable run (tests/fuzz_parsers.rs) replays too.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(em_latest em_forecast watttime uk_national uk_regional noaa_points noaa_grid
           retry_after valid_time config_args config_yaml)
fi

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: needs cargo-fuzz: cargo install cargo-fuzz" >&2
  exit 1
fi

for target in "${targets[@]}"; do
  mkdir -p "work/corpus/$target" "artifacts/$target"
  seeds=("corpus/$target")
  [ -d "regressions/$target" ] && seeds+=("regressions/$target")
  echo "fuzz: $target for ${seconds}s" >&2
  # The first directory receives new inputs; the seeds stay as checked in.
  cargo +nightly fuzz run --fuzz-dir . "$target" "work/corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$target/" -print_final_stats=1
done
