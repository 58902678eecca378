#!/usr/bin/env bash
# Checks a release tag against the versions in the repository and prints
# `version=X.Y.Z` (for $GITHUB_OUTPUT). The tag must be vX.Y.Z with X.Y.Z equal
# to Cargo.toml's package version and to the chart's version and appVersion:
# the chart's default image tag is its appVersion, so a mismatch would publish
# a chart that pulls an image nobody pushed.
#
# Usage: deploy/release-version.sh vX.Y.Z
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tag="${1:-}"
if ! [[ "$tag" =~ ^v([0-9]+\.[0-9]+\.[0-9]+)$ ]]; then
  echo "release-version.sh: tag '$tag' is not vX.Y.Z" >&2
  exit 1
fi
version="${BASH_REMATCH[1]}"

# The first `version = "..."` in Cargo.toml is [package]'s.
cargo="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
chart="$(sed -n 's/^version: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' deploy/helm/carbon-kube/Chart.yaml)"
app="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' deploy/helm/carbon-kube/Chart.yaml)"
status=0
for pair in "Cargo.toml version:$cargo" "Chart.yaml version:$chart" "Chart.yaml appVersion:$app"; do
  if [ "${pair##*:}" != "$version" ]; then
    echo "release-version.sh: tag $tag, but ${pair%%:*} is '${pair##*:}'" >&2
    status=1
  fi
done
[ "$status" = 0 ] || exit 1
echo "version=$version"
