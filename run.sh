#!/usr/bin/env bash
# Set up .venv if needed, then open Stagescope on the bundled sample project
# (or, with no display, run the headless demo and print where its output went).
set -euo pipefail
cd "$(dirname "$0")"
source ./.ci/venv.sh
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ -z "${STAGESCOPE_HEADLESS:-}" ] && "$PY" -c "import app.gui" 2>/dev/null; then
    exec "$PY" -m app gui "$@"
fi
exec "$PY" -m app demo "$@"
