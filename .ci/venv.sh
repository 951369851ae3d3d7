# Sourced by run.sh and test.sh: make sure .venv exists and holds this project
# with its test extra; re-install only when pyproject.toml changed.
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating $VENV (first run installs torch and Qt: several minutes) ..." >&2
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.stagescope-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$PY" -m pip install --quiet --upgrade pip >&2
    "$PY" -m pip install --quiet -e ".[test]" >&2
    touch "$stamp"
fi
export PY
