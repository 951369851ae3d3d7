#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite headless.
set -euo pipefail
cd "$(dirname "$0")"
source ./.ci/venv.sh
export QT_QPA_PLATFORM=offscreen
export MPLBACKEND=Agg
exec "$PY" -m pytest "$@"
