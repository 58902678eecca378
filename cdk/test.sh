#!/usr/bin/env bash
# Tests of the CDK lab (cdk/): synthesizes the app offline and checks the templates.
# Creates cdk/.venv on first use, installs the pinned requirements (again only when
# requirements.txt changes), then runs pytest. Exits non-zero when anything fails.
#
#   bash cdk/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON="${PYTHON:-python3}"
VENV=.venv
log() { echo "cdk/test.sh: $*" >&2; }

command -v "$PYTHON" >/dev/null || { log "$PYTHON not found: install Python 3.10+"; exit 1; }
# aws-cdk-lib runs its constructs in Node.js (jsii).
command -v node >/dev/null || { log "node not found: install Node.js 20+ (aws-cdk-lib needs it)"; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  start=$SECONDS
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
  log "venv created in $((SECONDS - start))s"
fi

stamp="$VENV/.requirements.sha256"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  start=$SECONDS
  log "installing requirements.txt"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt >&2
  echo "$want" >"$stamp"
  log "requirements installed in $((SECONDS - start))s"
fi

# jsii warns at length about Node 20's end of life; the tests do not need to see it.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="${JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION:-20}"
# Synth output (asset staging of the image context, ~2 GB a run) is kept only for a failed run.
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -o tmp_path_retention_policy=failed -q tests "$@"
